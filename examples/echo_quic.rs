//! The echo service over QUIC (or TLS over TCP), with mutual TLS.
//!
//! ```text
//! # Everything in one process: a throw-away CA, a server requiring client certificates, a client.
//! cargo run --release --example echo_quic
//! cargo run --release --example echo_quic -- --runtime smol --transport tls
//!
//! # Two processes with PEM files: write a throw-away CA and certificates, then serve and connect.
//! cargo run --example echo_quic -- --write-dev-certs certs
//! cargo run --example echo_quic -- --serve 127.0.0.1:7443 --cert certs/server.pem \
//!     --key certs/server.key --client-ca certs/ca.pem
//! cargo run --example echo_quic -- --connect 127.0.0.1:7443 --ca certs/ca.pem \
//!     --cert certs/client.pem --key certs/client.key
//! ```

use std::{net::SocketAddr, path::PathBuf, time::Instant};

use clap::{Parser, ValueEnum};
use flumen::{
    quic::QuicTransport,
    rt::{Runtime, SmolRuntime, TokioRuntime},
    stream::Transport,
    tcp::{SmolTcp, TokioTcp},
    tls::{ClientTls, DevCa, ServerTls, TlsTransport},
    Client, Router, Server, Status,
};

#[derive(Parser, Debug)]
#[command(about = "Flumen echo over QUIC or TLS-TCP, with mutual TLS")]
struct Args {
    #[arg(long, value_enum, default_value_t = Rt::Tokio)]
    runtime: Rt,
    #[arg(long, value_enum, default_value_t = Wire::Quic)]
    transport: Wire,
    /// Only serve, on this address.
    #[arg(long, conflicts_with = "connect")]
    serve: Option<SocketAddr>,
    /// Only run the client, against this address.
    #[arg(long)]
    connect: Option<SocketAddr>,
    /// This side's certificate chain (PEM): the server's, or the client's for mutual TLS.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// This side's private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Client: the CA bundle (PEM) that signed the server's certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Server: require client certificates signed by this CA bundle (PEM).
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Client: the name expected in the server's certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Write ca.pem, server.pem/.key (for "localhost") and client.pem/.key here, then exit.
    #[arg(long)]
    write_dev_certs: Option<PathBuf>,
    /// Calls the client makes.
    #[arg(long, default_value_t = 10_000)]
    calls: usize,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Rt {
    Tokio,
    Smol,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// QUIC (quinn).
    Quic,
    /// TLS 1.3 over TCP.
    Tls,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() {
    if let Err(e) = try_main(Args::parse()) {
        eprintln!("echo_quic: {e}");
        std::process::exit(1);
    }
}

fn try_main(args: Args) -> Result<(), Error> {
    if let Some(dir) = &args.write_dev_certs {
        return write_dev_certs(dir);
    }
    match args.runtime {
        Rt::Tokio => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let rt = TokioRuntime::new(runtime.handle().clone());
            runtime.block_on(async {
                match args.transport {
                    Wire::Quic => run(&args, &rt, QuicTransport::tokio).await,
                    Wire::Tls => run(&args, &rt, || TlsTransport::new(TokioTcp::default())).await,
                }
            })
        }
        Rt::Smol => {
            let executor = std::sync::Arc::new(smol::Executor::new());
            let rt = SmolRuntime::new(executor.clone());
            let (_stop, stopped) = smol::channel::bounded::<()>(1);
            let worker = executor.clone();
            std::thread::spawn(move || smol::block_on(worker.run(stopped.recv())));
            smol::block_on(executor.run(async {
                match args.transport {
                    Wire::Quic => run(&args, &rt, || QuicTransport::smol_on(rt.clone())).await,
                    Wire::Tls => run(&args, &rt, || TlsTransport::new(SmolTcp::default())).await,
                }
            }))
        }
    }
}

/// A transport that takes Flumen's TLS settings.
trait Secure: Transport<Addr = SocketAddr> + Sized {
    fn client(self, tls: ClientTls) -> Result<Self, Error>;
    fn server(self, tls: ServerTls) -> Result<Self, Error>;
}

impl Secure for QuicTransport {
    fn client(self, tls: ClientTls) -> Result<Self, Error> {
        Ok(QuicTransport::client(self, tls)?)
    }
    fn server(self, tls: ServerTls) -> Result<Self, Error> {
        Ok(QuicTransport::server(self, tls)?)
    }
}

impl<T: Transport<Addr = SocketAddr>> Secure for TlsTransport<T> {
    fn client(self, tls: ClientTls) -> Result<Self, Error> {
        Ok(TlsTransport::client(self, tls)?)
    }
    fn server(self, tls: ServerTls) -> Result<Self, Error> {
        Ok(TlsTransport::server(self, tls)?)
    }
}

async fn run<R: Runtime, T: Secure>(
    args: &Args,
    rt: &R,
    make: impl Fn() -> T,
) -> Result<(), Error> {
    let router = Router::new().route("echo", |text: String| async move { Ok::<_, Status>(text) });
    match (args.serve, args.connect) {
        (Some(addr), _) => {
            let (cert, key) = args
                .cert
                .as_ref()
                .zip(args.key.as_ref())
                .ok_or("--serve needs --cert and --key")?;
            let mut tls = ServerTls::from_pem_files(cert, key)?;
            if let Some(ca) = &args.client_ca {
                tls = tls.require_client_certs_from_file(ca)?;
            }
            let server = Server::new(router)
                .bind(rt, &make().server(tls)?, &addr)
                .await?;
            println!(
                "serving echo over {:?} on {}; Ctrl-C to stop",
                args.transport,
                server.local_addr()
            );
            std::future::pending::<()>().await;
            Ok(())
        }
        (None, Some(addr)) => {
            let ca = args.ca.as_ref().ok_or("--connect needs --ca")?;
            let mut tls = ClientTls::from_ca_file(ca, &args.server_name)?;
            if let Some((cert, key)) = args.cert.as_ref().zip(args.key.as_ref()) {
                tls = tls.identity_from_pem_files(cert, key)?;
            }
            let client = Client::connect(rt, &make().client(tls)?, &addr).await?;
            calls(rt, &client, args.calls).await
        }
        (None, None) => {
            // One process: a throw-away CA, a server that requires client certificates.
            let ca = DevCa::new()?;
            let server_tls = ca
                .server_tls(&["localhost"])?
                .require_client_certs(ca.roots())?;
            let server_side = make().server(server_tls)?;
            let server = Server::new(router)
                .bind(rt, &server_side, &"127.0.0.1:0".parse()?)
                .await?;
            let identity = ca.issue(&["echo-client"])?;
            let client_tls = ca
                .client_tls(&args.server_name)?
                .identity(identity.chain().to_vec(), identity.key())?;
            let client =
                Client::connect(rt, &make().client(client_tls)?, server.local_addr()).await?;
            calls(rt, &client, args.calls).await
        }
    }
}

/// Makes `n` calls from 64 tasks at once and prints the rate.
async fn calls<R: Runtime>(rt: &R, client: &Client, n: usize) -> Result<(), Error> {
    const TASKS: usize = 64;
    let start = Instant::now();
    let (done, results) = smol::channel::bounded(TASKS);
    for task in 0..TASKS {
        let (client, done) = (client.clone(), done.clone());
        rt.spawn(async move {
            let mut result: Result<(), String> = Ok(());
            for i in (task..n).step_by(TASKS) {
                let text = format!("hello {i}");
                match client.call::<_, String>("echo", &text).await {
                    Ok(reply) if reply == text => {}
                    Ok(reply) => result = Err(format!("echo returned {reply:?} for {text:?}")),
                    Err(e) => result = Err(e.to_string()),
                }
                if result.is_err() {
                    break;
                }
            }
            let _ = done.send(result).await;
        });
    }
    for _ in 0..TASKS {
        results.recv().await??;
    }
    let elapsed = start.elapsed();
    println!(
        "{n} calls in {:.2?} ({:.0} calls/s), every reply checked",
        elapsed,
        n as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

fn write_dev_certs(dir: &std::path::Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir)?;
    let ca = DevCa::new()?;
    let ca_path = ca.write_pem(dir)?;
    let (cert, key) = ca
        .issue(&["localhost", "127.0.0.1"])?
        .write_pem(dir, "server")?;
    let (client_cert, client_key) = ca.issue(&["echo-client"])?.write_pem(dir, "client")?;
    for path in [ca_path, cert, key, client_cert, client_key] {
        println!("wrote {}", path.display());
    }
    Ok(())
}
