//! A fixed number of calls in process, for counting the core's instructions per call with
//! callgrind (`benches/call-cost` runs it twice and takes the difference, so that start-up and
//! warm-up cancel out). The server runs on a thread of its own (`flumen-server`) with a
//! current-thread tokio runtime, the client and its callers on the main thread with another:
//! callgrind's `--separate-threads=yes` then counts each side apart.
//!
//! ```sh
//! cargo run --release -p flumen-bench --bin call-cost -- raw|typed CALLS [IN_FLIGHT] [PAYLOAD]
//! ```
//!
//! `raw` calls carry `Bytes` bodies without a codec; `typed` ones a MessagePack byte string
//! each way. 64 calls in flight of 32 bytes by default, over the in-process transport (frames
//! handed over whole: what is counted is Flumen's work, not a socket's).

use flumen::{
    inproc::{InProc, InProcAddr},
    rt::TokioRuntime,
    Bytes, Client, ClientConfig, MethodId, Request, Router, Server, Status,
};
use serde_bytes::ByteBuf;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| usage());
    let raw = match mode.as_str() {
        "raw" => true,
        "typed" => false,
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
    let made = run(raw, calls, in_flight, payload);
    println!("{made} {mode} calls, {in_flight} in flight, {payload} B");
}

fn usage() -> ! {
    eprintln!("usage: call-cost raw|typed CALLS [IN_FLIGHT] [PAYLOAD]");
    std::process::exit(2);
}

/// Makes `calls` echo calls, `in_flight` at a time; returns how many were made.
fn run(raw: bool, calls: usize, in_flight: usize, payload: usize) -> usize {
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
                tokio::spawn(async move { echo(&client, raw, payload, mine).await })
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
async fn echo(client: &Client, raw: bool, payload: usize, calls: usize) -> usize {
    let raw_method = MethodId::from_name("raw").as_u32();
    let body = ByteBuf::from(vec![7u8; payload]);
    let raw_body = Bytes::from(vec![7u8; payload]);
    for _ in 0..calls {
        let len = if raw {
            let reply = client.raw().call(raw_method, raw_body.clone()).await;
            reply.expect("a raw echo").len()
        } else {
            let reply: ByteBuf = client.call("echo", &body).await.expect("an echo");
            reply.len()
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
