//! The admin page (`flumen::admin`) fetched over HTTP while a server runs: its JSON agrees
//! with the server's own counters, limits and connections, per-method calls, errors and calls
//! running are counted, payloads never appear, and bad requests get their status while the
//! page keeps serving. Every runtime and transport.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use common::{connect, eventually, serve, Env};
use event_listener::Event;
use flumen::{
    admin::{Admin, Table, ADMIN_READ_TIMEOUT, MAX_REQUEST_HEAD},
    ClientConfig, Router, ServerConfig, Status,
};
use serde_json::Value;

/// A payload that must never show on the page.
const SECRET: &str = "payload-that-must-not-show";

/// `GET path` (or any raw request) on the admin endpoint: the status line and the body.
fn fetch(admin: SocketAddr, request: &[u8]) -> (String, String) {
    let mut stream = TcpStream::connect(admin).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

fn get(admin: SocketAddr, path: &str) -> (String, String) {
    fetch(
        admin,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
}

/// Method names of their own per test: the page sums methods by name over the process.
fn names() -> (String, String, String) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    (
        format!("Admin{n}.get"),
        format!("Admin{n}.fail"),
        format!("Admin{n}.hold"),
    )
}

async fn the_page_shows_what_the_server_counts<E: Env>(env: E) {
    let (get_name, fail_name, hold_name) = names();
    let release = std::sync::Arc::new(Event::new());
    let held = release.clone();
    let router = Router::new()
        .route(&get_name, |key: String| async move {
            Ok::<_, Status>(key.len())
        })
        .route(&fail_name, |_: String| async move {
            Err::<(), _>(Status::new(flumen::ErrorCode::INTERNAL, "no"))
        })
        .route(&hold_name, move |()| {
            let listener = held.listen();
            async move {
                listener.await;
                Ok::<_, Status>(())
            }
        });
    let config = ServerConfig::default().max_connections(77);
    let server = serve(&env, router, config).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let admin = Admin::new()
        .section("cluster", || Table {
            columns: vec!["member".into(), "state".into()],
            rows: vec![vec!["a".into(), "alive".into()]],
        })
        .metrics_text(|| "flumen_demo_total 1\n".into())
        .serve("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let at = admin.local_addr();

    for _ in 0..20 {
        let _: usize = client.call(get_name.as_str(), &SECRET).await.unwrap();
    }
    for _ in 0..5 {
        assert!(client
            .call::<_, ()>(fail_name.as_str(), &SECRET)
            .await
            .is_err());
    }
    // The held call runs in the background until released.
    let (done_tx, done_rx) = smol::channel::bounded(1);
    let (holder, held_name) = (client.clone(), hold_name.clone());
    env.spawn(async move {
        let result = holder.call::<_, ()>(held_name.as_str(), &()).await;
        let _ = done_tx.send(result.is_ok()).await;
    });
    eventually(&env, "the held call running", || {
        server.stats().in_flight == 1
    })
    .await;

    let (status, body) = get(at, "/json");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(!body.contains(SECRET), "a payload shows on the page");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["admin"]["loopback_only"], true);
    let stats = server.stats();
    let name = format!("{:?}", server.local_addr());
    let servers = page["servers"].as_array().unwrap();
    let ours = servers
        .iter()
        .find(|s| s["address"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} not among {servers:?}"));
    assert_eq!(ours["accepted"], stats.accepted);
    assert_eq!(ours["active"], stats.active as u64);
    assert_eq!(ours["in_flight"], 1);
    assert_eq!(ours["refused"], stats.refused);
    assert_eq!(ours["limits"]["max_connections"], 77);
    assert_eq!(
        ours["limits"]["max_in_flight"],
        server.limits().max_in_flight as u64
    );
    let connections = ours["connections"].as_array().unwrap();
    assert_eq!(connections.len(), stats.active);
    assert_eq!(connections[0]["in_flight"], 1);
    assert_eq!(
        connections[0]["bytes_read"],
        server.connections()[0].io.bytes_read
    );

    let method = |name: &str| {
        page["methods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} not on the page"))
            .clone()
    };
    let (gets, fails, holds) = (method(&get_name), method(&fail_name), method(&hold_name));
    assert_eq!(
        (gets["calls"].as_u64(), gets["errors"].as_u64()),
        (Some(20), Some(0))
    );
    assert_eq!(
        (fails["calls"].as_u64(), fails["errors"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(
        (holds["running"].as_u64(), holds["calls"].as_u64()),
        (Some(1), Some(0))
    );
    let (p50, p99, max) = (&gets["p50_us"], &gets["p99_us"], &gets["max_us"]);
    assert!(
        p50.as_u64() <= p99.as_u64() && p99.as_u64() <= max.as_u64(),
        "{gets}"
    );
    assert_eq!(page["sections"]["cluster"][0]["state"], "alive");

    let (status, html) = get(at, "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    for shown in ["<h2>Servers</h2>", get_name.as_str(), "<td>alive</td>"] {
        assert!(html.contains(shown), "{shown:?} not in the page");
    }
    assert!(!html.contains(SECRET));
    assert!(!html.contains("reachable from other hosts"));
    assert_eq!(get(at, "/metrics").1, "flumen_demo_total 1\n");

    release.notify(usize::MAX);
    assert!(done_rx.recv().await.unwrap(), "the held call failed");
    let (_, body) = get(at, "/json");
    let page: Value = serde_json::from_str(&body).unwrap();
    let holds = page["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == hold_name.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (holds["running"].as_u64(), holds["calls"].as_u64()),
        (Some(0), Some(1))
    );
}

e2e!(the_page_shows_what_the_server_counts);

/// Requests the page does not serve get their status; a client that sends nothing holds the
/// page up for at most the read timeout; the page still serves after each.
#[test]
fn bad_requests_are_answered_and_the_page_keeps_serving() {
    let admin = Admin::new().serve("127.0.0.1:0".parse().unwrap()).unwrap();
    let at = admin.local_addr();
    let status = |request: &[u8]| fetch(at, request).0;
    assert_eq!(
        status(b"POST / HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(
        status(b"\x16\x03\x01garbage\r\n\r\n"),
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(
        status(b"GET /nope HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        status(b"GET /metrics HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 404 Not Found"
    );
    let long = format!(
        "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(MAX_REQUEST_HEAD * 2)
    );
    assert_eq!(
        status(long.as_bytes()),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );

    let silent = TcpStream::connect(at).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(get(at, "/json").0, "HTTP/1.1 200 OK");
    assert!(
        started.elapsed() < ADMIN_READ_TIMEOUT + Duration::from_secs(8),
        "a silent client held the page for {:?}",
        started.elapsed()
    );
    drop(silent);

    // A client that sends its head a byte at a time, each just inside a per-read timeout,
    // is cut off at the deadline of the whole head, not served for ever.
    let mut drip = TcpStream::connect(at).unwrap();
    let dripping = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        for byte in b"GET / HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            .iter()
            .cycle()
        {
            if drip.write_all(&[*byte]).is_err() || started.elapsed() > Duration::from_secs(30) {
                break;
            }
            std::thread::sleep(ADMIN_READ_TIMEOUT / 4);
        }
        started.elapsed()
    });
    std::thread::sleep(ADMIN_READ_TIMEOUT / 2);
    let started = std::time::Instant::now();
    assert_eq!(get(at, "/json").0, "HTTP/1.1 200 OK");
    assert!(
        started.elapsed() < ADMIN_READ_TIMEOUT * 2 + Duration::from_secs(8),
        "a dripping client held the page for {:?}",
        started.elapsed()
    );
    let dripped = dripping.join().unwrap();
    assert!(
        dripped < Duration::from_secs(30),
        "the dripping client was never cut off"
    );
}

/// Bound to every address, the page says it can be reached from other hosts.
#[test]
fn a_page_reachable_from_elsewhere_says_so() {
    let admin = Admin::new().serve("0.0.0.0:0".parse().unwrap()).unwrap();
    let at = SocketAddr::from(([127, 0, 0, 1], admin.local_addr().port()));
    let page: Value = serde_json::from_str(&get(at, "/json").1).unwrap();
    assert_eq!(page["admin"]["loopback_only"], false);
    assert!(get(at, "/").1.contains("reachable from other hosts"));
}
