//! How should Flumen map onto QUIC? Measures the two candidate designs side by side in one
//! process (tokio, two worker threads, loopback, raw echo, every reply checked):
//!
//! - **one stream**: Flumen's framing, sequence ids and batched writes on one long-lived
//!   bidirectional QUIC stream per connection (what `flumen-quic` does);
//! - **stream per call**: a new bidirectional QUIC stream for each call, request and reply each
//!   ended by the stream's `FIN`, and no RPC layer at all (so its cost is a lower bound for
//!   any RPC built that way).
//!
//! ```text
//! cargo run --release -p flumen-bench --bin quic-mapping -- [SECONDS]
//! ```

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use flumen::{
    quic::QuicTransport,
    rt::TokioRuntime,
    tls::{DevCa, TlsError},
    ClientConfig, MethodId, Router, Server,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

type Error = Box<dyn std::error::Error + Send + Sync>;

const ECHO: MethodId = MethodId::from_name("echo");

fn main() -> Result<(), Error> {
    let seconds: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let duration = Duration::from_secs_f64(seconds);
    println!("design          payload  inflt     calls/s  x one-stream");
    for payload in [32usize, 1024, 65536] {
        for in_flight in [1usize, 64] {
            let one = runtime.block_on(one_stream(payload, in_flight, duration))?;
            let per_call = runtime.block_on(stream_per_call(payload, in_flight, duration))?;
            println!("one stream      {payload:>7} {in_flight:>6} {one:>11.0}  1.00");
            println!(
                "stream per call {payload:>7} {in_flight:>6} {per_call:>11.0}  {:.2}",
                per_call / one
            );
        }
    }
    Ok(())
}

/// Runs `in_flight` loops of `call` for `duration`; returns calls per second.
async fn drive<F, Fut>(in_flight: usize, duration: Duration, call: F) -> Result<f64, Error>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), Error>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (call, done, stop) = (call.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                call().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, Error>(())
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let calls = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    for task in tasks {
        task.await??;
    }
    Ok(calls as f64 / elapsed.as_secs_f64())
}

async fn one_stream(payload: usize, in_flight: usize, duration: Duration) -> Result<f64, Error> {
    let ca = DevCa::new()?;
    let rt = TokioRuntime::current();
    let server_side = QuicTransport::tokio().server(ca.server_tls(&["localhost"])?)?;
    let router = Router::new().route_raw("echo", |request| async move {
        Ok(flumen::Request::into_body(request))
    });
    let server = Server::new(router)
        .bind(&rt, &server_side, &"127.0.0.1:0".parse()?)
        .await?;
    let client_side = QuicTransport::tokio().client(ca.client_tls("localhost")?)?;
    let config = ClientConfig::default().max_in_flight(in_flight);
    let client = flumen::Client::connect_with(
        &rt,
        &client_side,
        server.local_addr(),
        config,
        flumen::MsgPack::default(),
    )
    .await?;
    let body = Bytes::from(vec![7u8; payload]);
    drive(in_flight, duration, move || {
        let (client, body) = (client.clone(), body.clone());
        async move {
            let reply = client.raw().call(ECHO.as_u32(), body.clone()).await?;
            check(&reply, &body)
        }
    })
    .await
}

async fn stream_per_call(
    payload: usize,
    in_flight: usize,
    duration: Duration,
) -> Result<f64, Error> {
    let ca = DevCa::new()?;
    let endpoint_tls =
        |e: quinn::crypto::rustls::NoInitialCipherSuite| TlsError::Quic(e.to_string());
    let server_crypto = QuicServerConfig::try_from(ca.server_tls(&["localhost"])?.to_rustls()?)
        .map_err(endpoint_tls)?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1024));
    server_config.transport_config(Arc::new(transport));
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;
    let addr: SocketAddr = server.local_addr()?;
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                    tokio::spawn(async move {
                        let Ok(request) = recv.read_to_end(usize::MAX).await else {
                            return;
                        };
                        let _ = send.write_all(&request).await;
                        let _ = send.finish();
                    });
                }
            });
        }
    });
    let client_crypto = QuicClientConfig::try_from(ca.client_tls("localhost")?.to_rustls()?)
        .map_err(endpoint_tls)?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(client_crypto)));
    let connection = client.connect(addr, "localhost")?.await?;
    let body = Bytes::from(vec![7u8; payload]);
    drive(in_flight, duration, move || {
        let (connection, body) = (connection.clone(), body.clone());
        async move {
            let (mut send, mut recv) = connection.open_bi().await?;
            send.write_all(&body).await?;
            send.finish()?;
            let reply = recv.read_to_end(usize::MAX).await?;
            check(&reply, &body)
        }
    })
    .await
}

fn check(reply: &[u8], body: &[u8]) -> Result<(), Error> {
    if reply == body {
        Ok(())
    } else {
        Err("echo returned different bytes".into())
    }
}
