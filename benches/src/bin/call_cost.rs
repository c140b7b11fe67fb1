//! A fixed number of calls in process, for counting the core's instructions per call with
//! callgrind (`benches/call-cost` runs it twice and takes the difference, so that start-up and
//! warm-up cancel out). The server runs on a thread of its own (`flumen-server`) with a
//! current-thread tokio runtime, the client and its callers on the main thread with another:
//! callgrind's `--separate-threads=yes` then counts each side apart.
//!
//! ```sh
//! cargo run --release -p flumen-bench --bin call-cost -- raw|typed|blob CALLS [IN_FLIGHT] [PAYLOAD]
//! ```
//!
//! `raw` calls carry `Bytes` bodies without a codec; `typed` ones a MessagePack byte string
//! each way (a `ByteBuf`, copied out of the frame), `blob` ones the same as a `Blob`
//! (decoded as a slice of the frame). 64 calls in flight of 32 bytes by default, over the in-process transport (frames
//! handed over whole: what is counted is Flumen's work, not a socket's).

use flumen::{
    inproc::{InProc, InProcAddr},
    rt::TokioRuntime,
    Blob, Bytes, Client, ClientConfig, MethodId, Request, Router, Server, Status,
};
use serde_bytes::ByteBuf;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| usage());
    let path = match mode.as_str() {
        "raw" => Path::Raw,
        "typed" => Path::Typed,
        "blob" => Path::Blob,
        _ => usage(),
    };
    let mut number = |default: usize| {
        args.next()
            .map_or(Some(default), |a| a.parse().ok())
            .unwrap_or_else(|| usage())
    };
    let calls = number(0);
    let in_flight = number(64).max(1);
    let payload = number(32);
    if calls == 0 {
        usage();
    }
    let made = run(path, calls, in_flight, payload);
    println!("{made} {mode} calls, {in_flight} in flight, {payload} B");
}

fn usage() -> ! {
    eprintln!("usage: call-cost raw|typed|blob CALLS [IN_FLIGHT] [PAYLOAD]");
    std::process::exit(2);
}

/// What the calls carry.
#[derive(Clone, Copy)]
enum Path {
    Raw,
    Typed,
    Blob,
}

/// Makes `calls` echo calls, `in_flight` at a time; returns how many were made.
fn run(path: Path, calls: usize, in_flight: usize, payload: usize) -> usize {
    let addr = InProcAddr::new(format!("call-cost-{}", std::process::id()));
    let (bound, is_bound) = std::sync::mpsc::channel();
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    let server_addr = addr.clone();
    let server = std::thread::Builder::new()
        .name("flumen-server".into())
        .spawn(move || {
            runtime().block_on(async move {
                let rt = TokioRuntime::current();
                let router = Router::new()
                    .route("echo", |body: ByteBuf| async move { Ok::<_, Status>(body) })
                    .route("blob", |body: Blob| async move { Ok::<_, Status>(body) })
                    .route_raw(
                        "raw",
                        |request: Request| async move { Ok(request.into_body()) },
                    );
                let server = Server::new(router)
                    .bind(&rt, &InProc, &server_addr)
                    .await
                    .expect("binding the in-process server");
                bound.send(()).expect("the client waits");
                let _ = stopped.recv().await;
                drop(server);
            });
        })
        .expect("starting the server's thread");
    is_bound.recv().expect("the server started");
    let made = runtime().block_on(async move {
        let rt = TokioRuntime::current();
        let config = ClientConfig::default().max_in_flight(in_flight);
        let client = Client::connect_with(&rt, &InProc, &addr, config, flumen::MsgPack::default())
            .await
            .expect("connecting in process");
        let callers: Vec<_> = (0..in_flight)
            .map(|caller| {
                let client = client.clone();
                // Caller `i` makes the calls `i`, `i + in_flight`, ...
                let mine = (caller..calls).step_by(in_flight).count();
                tokio::spawn(async move { echo(&client, path, payload, mine).await })
            })
            .collect();
        let mut made = 0;
        for caller in callers {
            made += caller.await.expect("a caller panicked");
        }
        made
    });
    let _ = stop.try_send(());
    server.join().expect("the server's thread panicked");
    made
}

/// Makes `calls` echo calls of `payload` bytes one after another; returns how many.
async fn echo(client: &Client, path: Path, payload: usize, calls: usize) -> usize {
    let raw_method = MethodId::from_name("raw").as_u32();
    let body = ByteBuf::from(vec![7u8; payload]);
    let raw_body = Bytes::from(vec![7u8; payload]);
    let blob = Blob::from(raw_body.clone());
    for _ in 0..calls {
        let len = match path {
            Path::Raw => {
                let reply = client.raw().call(raw_method, raw_body.clone()).await;
                reply.expect("a raw echo").len()
            }
            Path::Typed => {
                let reply: ByteBuf = client.call("echo", &body).await.expect("an echo");
                reply.len()
            }
            Path::Blob => {
                let reply: Blob = client.call("blob", &blob).await.expect("a Blob echo");
                reply.len()
            }
        };
        assert_eq!(len, payload);
    }
    calls
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}
