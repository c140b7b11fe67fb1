//! Metrics through the `metrics` facade, exported by Prometheus's exporter on an HTTP
//! `/metrics` page: a server and a client make calls (some fail), the server's and the
//! connection's counters are published by the `flumen-metrics` thread, and the page is scraped
//! and its Flumen lines printed. With `--hold`
//! the page stays up for a real Prometheus (or `curl`) until Ctrl-C.
//!
//! ```text
//! cargo run --example metrics [-- --runtime smol] [--listen 127.0.0.1:9464] [--hold]
//! ```

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use common::Error;
use flumen::{
    rt::{Runtime, SmolRuntime, TokioRuntime},
    stream::Transport,
    tcp::{SmolTcp, TokioTcp},
    Client, Server,
};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde::{Deserialize, Serialize};

/// Why a lookup failed.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("no user {0}")]
pub struct NoSuchUser(u32);

/// A directory of users.
#[flumen::service]
pub trait Directory {
    /// The name of user `id`; ids past 99 do not exist.
    async fn lookup(&self, id: u32) -> Result<String, NoSuchUser>;
}

struct Users;

impl Directory for Users {
    async fn lookup(&self, id: u32) -> Result<String, NoSuchUser> {
        match id {
            0..100 => Ok(format!("user-{id}")),
            _ => Err(NoSuchUser(id)),
        }
    }
}

/// The demo, on runtime `rt` over `transport`.
async fn run<R: Runtime, T: Transport<Addr = SocketAddr> + Clone>(
    listen: SocketAddr,
    hold: bool,
    rt: R,
    transport: T,
) -> Result<(), Error> {
    let server = Server::new(DirectoryServer::new(Users))
        .bind(&rt, &transport, &common::loopback())
        .await?;
    let client = DirectoryClient::new(Client::connect(&rt, &transport, server.local_addr()).await?);
    for id in 0..1_000 {
        // One call in ten asks for a user that does not exist.
        let _ = client.lookup(id % 110).await;
    }
    // The server's and the connection's counters are published by the `flumen-metrics`
    // thread (every second by default): wait for a round that saw the calls.
    let requests_read = |page: &str| {
        page.lines()
            .filter(|line| line.starts_with("flumen_server_frames_read_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let mut page = scrape(listen)?;
    for _ in 0..100 {
        if requests_read(&page) >= 1_000.0 {
            break;
        }
        rt.sleep_until(Instant::now() + Duration::from_millis(50))
            .await;
        page = scrape(listen)?;
    }
    println!("GET http://{}/metrics (Flumen's lines):\n", listen);
    for line in page.lines().filter(|l| l.starts_with("flumen_")) {
        println!("{line}");
    }
    if hold {
        println!("\nserving http://{}/metrics until Ctrl-C", listen);
        loop {
            rt.sleep_until(Instant::now() + Duration::from_secs(1))
                .await;
        }
    }
    Ok(())
}

/// The body of `GET /metrics`.
fn scrape(addr: SocketAddr) -> Result<String, Error> {
    let mut stream = TcpStream::connect(addr)?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(format!("unexpected answer: {response}").into()),
    }
}

fn main() -> Result<(), Error> {
    let arg = |name: &str| std::env::args().skip_while(|a| a != name).nth(1);
    let listen: SocketAddr = arg("--listen")
        .unwrap_or_else(|| "127.0.0.1:9464".into())
        .parse()?;
    let hold = std::env::args().any(|a| a == "--hold");
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .install()
        .map_err(|e| format!("cannot serve /metrics on {listen}: {e}"))?;
    // The same demo on either runtime: only the runtime, its spawner and the transport differ.
    if common::smol_requested()? {
        // smol's global executor runs the server's and the client's tasks.
        smol::block_on(run(listen, hold, SmolRuntime::global(), SmolTcp::default()))
    } else {
        let tokio = tokio::runtime::Runtime::new()?;
        let rt = TokioRuntime::new(tokio.handle().clone());
        tokio.block_on(run(listen, hold, rt, TokioTcp::default()))
    }
}
