//! The `flumen` command line against real servers started here: list, call, watch and health
//! over TCP, Unix sockets, TLS, mutual TLS and QUIC, and each failure with its message and
//! exit status. Every assertion that a call arrived is made on the server's side.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use flumen::{
    health::{Health, ServingStatus},
    quic::QuicTransport,
    reflection::{ServerDescription, Shape},
    rt::TokioRuntime,
    stream::ServerHandle,
    tcp::TokioTcp,
    tls::{DevCa, TlsTransport},
    unix::TokioUnix,
    Attachment, CallContext, Codec, Json, Router, Server, Stream, Streaming, WithAttachment,
};
use futures_lite::{stream, StreamExt};
use serde::{Deserialize, Serialize};

#[flumen::service]
trait Shop {
    /// Adds two numbers.
    #[idempotent]
    async fn add(&self, a: u64, b: u64) -> u64;
    /// Greets a person.
    async fn greet(&self, person: Person) -> String;
    /// One over `x`.
    async fn invert(&self, x: i64) -> Result<f64, ShopError>;
    /// `0..n`.
    async fn count(&self, n: u32) -> impl Stream<Item = u32>;
    /// Sums the items.
    async fn sum(&self, items: Streaming<u64>) -> u64;
    /// Each item, doubled.
    async fn double(&self, items: Streaming<u64>) -> impl Stream<Item = Result<u64, ShopError>>;
    /// Never answers; records the deadline it was given.
    async fn stall(&self, ctx: CallContext) -> ();
    /// `n` bytes.
    async fn blob(&self, n: u32) -> serde_bytes::ByteBuf;
    /// The caller's `user` metadata.
    async fn whoami(&self, ctx: CallContext) -> Option<String>;
    /// The attachment's length, and the attachment back.
    async fn store(&self, name: String, data: Attachment) -> WithAttachment<(String, u64)>;
}

#[derive(Debug, Serialize, Deserialize)]
struct Person {
    name: String,
    age: u32,
}

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
enum ShopError {
    #[error("division by zero")]
    DivideByZero,
    #[error("bad item")]
    BadItem,
}

/// What the server saw.
#[derive(Default)]
struct Seen {
    /// Calls that reached `add`'s handler.
    adds: AtomicU64,
    /// The time left before the deadline when `stall` started, in ms (0: none seen; u64::MAX:
    /// no deadline).
    stall_deadline_ms: AtomicU64,
}

struct ShopImpl(Arc<Seen>);

impl Shop for ShopImpl {
    async fn add(&self, a: u64, b: u64) -> u64 {
        self.0.adds.fetch_add(1, Ordering::SeqCst);
        a + b
    }

    async fn greet(&self, person: Person) -> String {
        format!("Hello {} ({})", person.name, person.age)
    }

    async fn invert(&self, x: i64) -> Result<f64, ShopError> {
        match x {
            0 => Err(ShopError::DivideByZero),
            x => Ok(1.0 / x as f64),
        }
    }

    async fn count(&self, n: u32) -> impl Stream<Item = u32> {
        stream::iter(0..n)
    }

    async fn sum(&self, items: Streaming<u64>) -> u64 {
        items
            .map(|item| item.unwrap_or(0))
            .fold(0, |a, b| a + b)
            .await
    }

    async fn double(&self, items: Streaming<u64>) -> impl Stream<Item = Result<u64, ShopError>> {
        items.map(|item| item.map(|n| n * 2).map_err(|_| ShopError::BadItem))
    }

    async fn stall(&self, ctx: CallContext) {
        let left = ctx.remaining().map_or(u64::MAX, |d| d.as_millis() as u64);
        self.0
            .stall_deadline_ms
            .store(left.max(1), Ordering::SeqCst);
        std::future::pending::<()>().await;
    }

    async fn blob(&self, n: u32) -> serde_bytes::ByteBuf {
        serde_bytes::ByteBuf::from(vec![7; n as usize])
    }

    async fn whoami(&self, ctx: CallContext) -> Option<String> {
        let user = ctx.metadata().get("user")?;
        Some(String::from_utf8_lossy(user).into_owned())
    }

    async fn store(&self, name: String, data: Attachment) -> WithAttachment<(String, u64)> {
        let len = data.len() as u64;
        WithAttachment::new((name, len), data)
    }
}

/// A server on its own runtime: the shop, a raw `echo`, health and reflection.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    seen: Arc<Seen>,
    health: Health,
    dir: TempDir,
    _servers: Vec<Box<dyn Send>>,
}

impl Fixture {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let health = Health::new();
        health.set("Shop", ServingStatus::Serving);
        health.set("", ServingStatus::Serving);
        Self {
            runtime,
            seen: Arc::default(),
            health,
            dir: TempDir::new(),
            _servers: Vec::new(),
        }
    }

    /// The routes every server here serves, with `codec`, reflection mounted or not.
    fn router<C: Codec>(&self, codec: C, reflection: bool) -> Router<C> {
        let router = Router::with_codec(codec)
            .service(ShopServer::from_arc(Arc::new(ShopImpl(self.seen.clone()))))
            .unwrap()
            .route_raw("echo", |request: flumen::Request| async move {
                Ok(request.into_body())
            })
            .with_health(&self.health)
            .unwrap();
        if reflection {
            router.with_reflection().unwrap()
        } else {
            router
        }
    }

    fn keep<A: Send + 'static>(&mut self, handle: ServerHandle<A>) {
        self._servers.push(Box::new(handle));
    }

    /// Serves MessagePack over TCP; returns the address.
    fn tcp(&mut self) -> String {
        self.tcp_with(MsgPackOrJson::MsgPack, true)
    }

    fn tcp_with(&mut self, codec: MsgPackOrJson, reflection: bool) -> String {
        let handle = self.runtime.block_on(async {
            let rt = TokioRuntime::current();
            let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
            let transport = TokioTcp::default();
            match codec {
                MsgPackOrJson::MsgPack => {
                    Server::new(self.router(flumen::MsgPack::default(), reflection))
                        .bind(&rt, &transport, &addr)
                        .await
                }
                MsgPackOrJson::Json => {
                    Server::new(self.router(Json, reflection))
                        .bind(&rt, &transport, &addr)
                        .await
                }
            }
            .unwrap()
        });
        let addr = handle.local_addr().to_string();
        self.keep(handle);
        addr
    }

    fn unix(&mut self) -> String {
        let path = self.dir.path().join("shop.sock");
        let handle = self.runtime.block_on(async {
            Server::new(self.router(flumen::MsgPack::default(), true))
                .bind(&TokioRuntime::current(), &TokioUnix, &path)
                .await
                .unwrap()
        });
        self.keep(handle);
        format!("unix:{}", path.display())
    }
}

enum MsgPackOrJson {
    MsgPack,
    Json,
}

/// A directory removed at the end of the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("flumen-cli-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `flumen args...` with `stdin`.
fn flumen_with_input(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flumen"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn flumen(args: &[&str]) -> Output {
    flumen_with_input(args, "")
}

/// The output of a command that must succeed.
fn ok(args: &[&str]) -> String {
    let output = flumen(args);
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The message of a command that must fail with exit status `code`.
fn fails(args: &[&str], code: i32) -> String {
    let output = flumen(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(code),
        "{args:?}: stdout {:?}, stderr {stderr:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    stderr
}

#[test]
fn list_shows_every_method_with_its_shape() {
    let mut fixture = Fixture::new();
    let addr = fixture.tcp();
    let listing = ok(&["list", &addr]);
    for line in [
        "codec: msgpack",
        "Shop.add(a: u64, b: u64) -> u64  [idempotent]",
        "      Adds two numbers.",
        "Shop.greet(person: Person) -> String",
        "Shop.invert(x: i64) -> f64 or error ShopError",
        "Shop.count(n: u32) -> stream of u32",
        "Shop.sum() + stream of u64 -> u64",
        "Shop.double() + stream of u64 -> stream of u64 or error ShopError",
        "Shop.store(name: String) -> (String, u64)  [request attachment, reply attachment]",
        "echo(raw bytes) -> raw bytes",
        "FlumenHealth.check(service: String) -> ServingStatus",
        "FlumenReflection.describe() -> ServerDescription  [idempotent]",
    ] {
        assert!(listing.contains(line), "{line:?} missing from:\n{listing}");
    }

    let json = ok(&["list", &addr, "--json"]);
    let description: ServerDescription = serde_json::from_str(&json).unwrap();
    assert_eq!(
        description.methods.len(),
        10 + 1 + 2 + 1,
        "{description:#?}"
    );
    let shape = |name: &str| description.method(name).unwrap().shape;
    assert_eq!(shape("Shop.count"), Shape::ServerStreaming);
    assert_eq!(shape("Shop.sum"), Shape::ClientStreaming);
    assert_eq!(shape("Shop.double"), Shape::Bidirectional);
    assert_eq!(shape("Shop.add"), Shape::Unary);
}

#[test]
fn call_takes_an_array_an_object_or_one_value() {
    let mut fixture = Fixture::new();
    let addr = fixture.tcp();
    assert_eq!(ok(&["call", &addr, "Shop.add", "[2, 3]"]), "5\n");
    assert_eq!(
        ok(&["call", &addr, "Shop.add", r#"{"b": 3, "a": 4}"#]),
        "7\n"
    );
    assert_eq!(fixture.seen.adds.load(Ordering::SeqCst), 2);
    assert_eq!(
        ok(&["call", &addr, "Shop.greet", r#"{"name": "Ana", "age": 30}"#]),
        "\"Hello Ana (30)\"\n"
    );
    assert_eq!(
        ok(&["call", &addr, "echo", "plain text"]),
        "\"plain text\"\n"
    );
    // An attachment goes from the file and its size comes back.
    let file = fixture.dir.path().join("data");
    std::fs::write(&file, [1u8; 1000]).unwrap();
    let output = flumen(&[
        "call",
        &addr,
        "Shop.store",
        "\"photo\"",
        "--attachment",
        file.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{output:?}");
    let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(reply, serde_json::json!(["photo", 1000]));
    assert!(String::from_utf8_lossy(&output.stderr).contains("reply attachment: 1000 bytes"));
}

#[test]
fn an_application_error_is_shown_as_json_and_exits_1() {
    let mut fixture = Fixture::new();
    let addr = fixture.tcp();
    assert_eq!(ok(&["call", &addr, "Shop.invert", "4"]), "0.25\n");
    let message = fails(&["call", &addr, "Shop.invert", "0"], 1);
    assert!(
        message.contains("Shop.invert failed: application error: \"DivideByZero\""),
        "{message}"
    );
}

#[test]
fn streams_both_ways() {
    let mut fixture = Fixture::new();
    let addr = fixture.tcp();
    assert_eq!(ok(&["watch", &addr, "Shop.count", "3"]), "0\n1\n2\n");
    assert_eq!(ok(&["call", &addr, "Shop.count", "2"]), "0\n1\n");
    let sum = flumen_with_input(&["call", &addr, "Shop.sum"], "1\n2\n\n39\n");
    assert!(sum.status.success(), "{sum:?}");
    assert_eq!(String::from_utf8_lossy(&sum.stdout), "42\n");
    let doubled = flumen_with_input(&["call", &addr, "Shop.double"], "1\n2\n");
    assert!(doubled.status.success(), "{doubled:?}");
    assert_eq!(String::from_utf8_lossy(&doubled.stdout), "2\n4\n");
    let bad = flumen_with_input(&["call", &addr, "Shop.sum"], "1\n{oops\n");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("\"{oops\" is not valid JSON (u64)"));

    let message = fails(&["watch", &addr, "Shop.add", "[1, 2]"], 2);
    assert!(
        message.contains("does not answer with a stream"),
        "{message}"
    );
}

#[test]
fn metadata_and_the_deadline_reach_the_server() {
    let mut fixture = Fixture::new();
    let addr = fixture.tcp();
    assert_eq!(
        ok(&["call", &addr, "Shop.whoami", "-H", "user=ana"]),
        "\"ana\"\n"
    );
    assert_eq!(ok(&["call", &addr, "Shop.whoami"]), "null\n");
    let message = fails(&["call", &addr, "Shop.stall", "--timeout", "300ms"], 4);
    assert!(
        message.contains("no reply before the deadline"),
        "{message}"
    );
    let left = fixture.seen.stall_deadline_ms.load(Ordering::SeqCst);
    assert!(
        (1..=300).contains(&left),
        "the handler saw {left} ms left, not the 300 ms deadline"
    );
    let message = fails(&["call", &addr, "Shop.whoami", "-H", "user"], 2);
    assert!(message.contains("not KEY=VALUE"), "{message}");
}

#[test]
fn health_reports_the_status_and_exits_by_it() {
    let mut fixture = Fixture::new();
    let addr = fixture.tcp();
    assert_eq!(ok(&["health", &addr]), "Serving\n");
    assert_eq!(ok(&["health", &addr, "Shop"]), "Serving\n");
    fixture.health.set("Shop", ServingStatus::NotServing);
    let output = flumen(&["health", &addr, "Shop"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "NotServing\n");
    let output = flumen(&["health", &addr, "Nobody"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "Unknown\n");
}

#[test]
fn health_watch_prints_each_change() {
    let mut fixture = Fixture::new();
    let addr = fixture.tcp();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flumen"))
        .args(["health", &addr, "Shop", "--watch"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, got) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        got.recv_timeout(std::time::Duration::from_secs(30))
            .unwrap()
    };
    assert_eq!(next(), "Serving");
    fixture.health.set("Shop", ServingStatus::NotServing);
    assert_eq!(next(), "NotServing");
    fixture.health.set("Shop", ServingStatus::Serving);
    assert_eq!(next(), "Serving");
    let _ = child.kill();
    let _ = child.wait();
}

/// A server that takes the reflection call and never answers: the deadline ends the wait.
#[test]
fn a_silent_reflection_times_out() {
    let mut fixture = Fixture::new();
    let router = Router::new().route_raw(flumen::reflection::DESCRIBE, |_| {
        std::future::pending::<Result<flumen::Bytes, flumen::Status>>()
    });
    let handle = fixture.runtime.block_on(async {
        Server::new(router)
            .bind(
                &TokioRuntime::current(),
                &TokioTcp::default(),
                &"127.0.0.1:0".parse().unwrap(),
            )
            .await
            .unwrap()
    });
    let addr = handle.local_addr().to_string();
    fixture.keep(handle);
    let message = fails(&["list", &addr, "--timeout", "300ms"], 4);
    assert!(
        message.contains("no reply before the deadline"),
        "{message}"
    );
    let message = fails(
        &["call", &addr, "Shop.add", "[1, 2]", "--timeout", "300ms"],
        4,
    );
    assert!(
        message.contains("no reply before the deadline"),
        "{message}"
    );
    let message = fails(&["list", "no-port-here"], 2);
    assert!(message.contains("is not HOST:PORT"), "{message}");
}

#[test]
fn requests_that_do_not_fit_are_refused_with_the_reason() {
    let mut fixture = Fixture::new();
    let addr = fixture.tcp();
    let message = fails(&["call", &addr, "Shop.nope", "1"], 2);
    assert!(message.contains("no method \"Shop.nope\""), "{message}");
    assert!(
        message.contains("Shop.add"),
        "the known methods are listed: {message}"
    );
    let message = fails(&["call", &addr, "Shop.add", "[2,"], 2);
    assert!(message.contains("not valid JSON"), "{message}");
    let message = fails(&["call", &addr, "Shop.add", "[1, 2, 3]"], 2);
    assert!(
        message.contains("Shop.add(a: u64, b: u64) takes 2 arguments"),
        "{message}"
    );
    let message = fails(&["call", &addr, "Shop.add", r#"["x", "y"]"#], 2);
    assert!(message.contains("could not read the request"), "{message}");
    assert_eq!(
        fixture.seen.adds.load(Ordering::SeqCst),
        0,
        "no handler ran for a request that did not fit"
    );
    let message = fails(
        &["call", &addr, "Shop.add", "[1, 2]", "--codec", "bincode"],
        2,
    );
    assert!(message.contains("\"bincode\""), "{message}");
}

#[test]
fn unreachable_silent_and_foreign_servers_are_connection_failures() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let message = fails(&["list", &closed], 3);
    assert!(
        message.contains(&format!("cannot connect to {closed}")),
        "{message}"
    );

    // A server of another protocol answers the handshake with its own bytes.
    let foreign = TcpListener::bind("127.0.0.1:0").unwrap();
    let foreign_addr = foreign.local_addr().unwrap().to_string();
    let answering = std::thread::spawn(move || {
        let (mut socket, _) = foreign.accept().unwrap();
        let mut hello = [0u8; 8];
        let _ = socket.read(&mut hello);
        let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    });
    let message = fails(&["list", &foreign_addr], 3);
    assert!(message.contains("handshake failed"), "{message}");
    answering.join().unwrap();

    // A server that accepts and never answers: the connect timeout ends the wait.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let message = fails(&["list", &silent_addr, "--connect-timeout", "300ms"], 3);
    assert!(message.contains("timed out"), "{message}");
    drop(silent);
}

#[test]
fn a_reply_over_max_frame_is_refused_by_the_server() {
    let mut fixture = Fixture::new();
    let addr = fixture.tcp();
    // The client announces its limit: the server answers an error instead of the reply.
    let message = fails(
        &["call", &addr, "Shop.blob", "100000", "--max-frame", "65536"],
        1,
    );
    assert!(
        message.contains("exceeds the caller's limit of 65536"),
        "{message}"
    );
    assert!(message.contains("--max-frame"), "{message}");
    let small = ok(&["call", &addr, "Shop.blob", "3", "--max-frame", "65536"]);
    let small: Vec<u8> = serde_json::from_str(&small).unwrap();
    assert_eq!(small, [7, 7, 7]);
}

#[test]
fn unix_sockets() {
    let mut fixture = Fixture::new();
    let addr = fixture.unix();
    assert!(ok(&["list", &addr]).contains("Shop.add"));
    assert_eq!(ok(&["call", &addr, "Shop.add", "[20, 22]"]), "42\n");
    assert_eq!(fixture.seen.adds.load(Ordering::SeqCst), 1);
    let message = fails(&["call", &addr, "Shop.add", "[1, 2]", "--tls"], 2);
    assert!(message.contains("not a Unix socket"), "{message}");
}

#[test]
fn tls_mutual_tls_and_quic() {
    let mut fixture = Fixture::new();
    let ca = DevCa::new().unwrap();
    let ca_file = ca.write_pem(fixture.dir.path()).unwrap();
    let (cert, key) = ca
        .issue(&["client"])
        .unwrap()
        .write_pem(fixture.dir.path(), "client")
        .unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (tls, mutual, quic) = fixture.runtime.block_on(async {
        let rt = TokioRuntime::current();
        let serving = ca.server_tls(&["localhost"]).unwrap();
        let over_tcp = TlsTransport::new(TokioTcp::default());
        let tls = Server::new(fixture.router(flumen::MsgPack::default(), true))
            .bind(
                &rt,
                &over_tcp.clone().server(serving.clone()).unwrap(),
                &any,
            )
            .await
            .unwrap();
        let demanding = serving.clone().require_client_certs(ca.roots()).unwrap();
        let mutual = Server::new(fixture.router(flumen::MsgPack::default(), true))
            .bind(&rt, &over_tcp.server(demanding).unwrap(), &any)
            .await
            .unwrap();
        let quic = Server::new(fixture.router(flumen::MsgPack::default(), true))
            .bind(&rt, &QuicTransport::tokio().server(serving).unwrap(), &any)
            .await
            .unwrap();
        (tls, mutual, quic)
    });
    let at =
        |handle: &ServerHandle<SocketAddr>| format!("localhost:{}", handle.local_addr().port());
    let (tls_addr, mutual_addr, quic_addr) = (at(&tls), at(&mutual), at(&quic));
    fixture.keep(tls);
    fixture.keep(mutual);
    fixture.keep(quic);
    let ca_file = ca_file.to_str().unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());

    let add = |addr: &str, extra: &[&str]| {
        let mut args = vec!["call", addr, "Shop.add", "[1, 2]", "--ca", ca_file];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| flumen(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let output = run(add(&tls_addr, &["--tls"]));
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "3\n");
    // Without a client certificate the mutual-TLS server refuses; with one it serves.
    let refused = run(add(&mutual_addr, &["--tls"]));
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    let output = run(add(&mutual_addr, &["--tls", "--cert", cert, "--key", key]));
    assert!(output.status.success(), "{output:?}");
    // A wrong server name is refused.
    let wrong = run(add(&tls_addr, &["--tls", "--server-name", "elsewhere"]));
    assert_eq!(wrong.status.code(), Some(3), "{wrong:?}");
    let output = run(add(&quic_addr, &["--quic"]));
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "3\n");
    assert_eq!(fixture.seen.adds.load(Ordering::SeqCst), 3);

    let message = fails(&["call", &tls_addr, "Shop.add", "[1, 2]", "--tls"], 2);
    assert!(message.contains("need --ca"), "{message}");
}

#[test]
fn a_server_without_reflection_is_called_with_the_codec_named() {
    let mut fixture = Fixture::new();
    let json = fixture.tcp_with(MsgPackOrJson::Json, true);
    // With reflection, the codec comes from the server.
    assert!(ok(&["list", &json]).starts_with("codec: json\n"));
    assert_eq!(ok(&["call", &json, "Shop.add", "[1, 1]"]), "2\n");

    let bare = fixture.tcp_with(MsgPackOrJson::Json, false);
    let message = fails(&["list", &bare], 2);
    assert!(message.contains("does not serve reflection"), "{message}");
    // Without it, the JSON is the body as written, in the codec named.
    assert_eq!(
        ok(&["call", &bare, "Shop.add", "[2, 2]", "--codec", "json"]),
        "4\n"
    );
    let message = fails(&["call", &bare, "Shop.add", "[2, 2]"], 2);
    assert!(message.contains("could not read the request"), "{message}");
    assert_eq!(ok(&["health", &bare, "--codec", "json"]), "Serving\n");
    assert_eq!(fixture.seen.adds.load(Ordering::SeqCst), 2);
}
