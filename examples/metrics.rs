//! Metrics through the `metrics` facade, exported by Prometheus's exporter on an HTTP
//! `/metrics` page: a server and a client make calls (some fail), the server's connection
//! counters are recorded, and the page is scraped and its Flumen lines printed. With `--hold`
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

use common::{Error, Example};
use flumen::{rt::Runtime, stream::Transport, Client, Server};
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

struct Demo {
    listen: SocketAddr,
    hold: bool,
}

impl Example for Demo {
    async fn run<R: Runtime, T: Transport<Addr = SocketAddr> + Clone>(
        self,
        rt: R,
        transport: T,
    ) -> Result<(), Error> {
        let server = Server::new(DirectoryServer::new(Users))
            .bind(&rt, &transport, &common::loopback())
            .await?;
        let client =
            DirectoryClient::new(Client::connect(&rt, &transport, server.local_addr()).await?);
        for id in 0..1_000 {
            // One call in ten asks for a user that does not exist.
            let _ = client.lookup(id % 110).await;
        }
        flumen::metrics::record_server("directory", &server.stats());
        if let Some(raw) = client.client().connection() {
            flumen::metrics::record_client("directory", &raw.stats());
        }
        let page = scrape(self.listen)?;
        println!("GET http://{}/metrics (Flumen's lines):\n", self.listen);
        for line in page.lines().filter(|l| l.starts_with("flumen_")) {
            println!("{line}");
        }
        if self.hold {
            println!("\nserving http://{}/metrics until Ctrl-C", self.listen);
            loop {
                rt.sleep_until(Instant::now() + Duration::from_secs(1))
                    .await;
                flumen::metrics::record_server("directory", &server.stats());
            }
        }
        Ok(())
    }
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

fn main() {
    let arg = |name: &str| std::env::args().skip_while(|a| a != name).nth(1);
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:9464".into());
    let hold = std::env::args().any(|a| a == "--hold");
    let installed = listen
        .parse::<SocketAddr>()
        .map_err(Error::from)
        .and_then(|listen| {
            PrometheusBuilder::new()
                .with_http_listener(listen)
                .install()
                .map_err(Error::from)
                .map(|()| listen)
        });
    match installed {
        Ok(listen) => common::main(Demo { listen, hold }),
        Err(e) => {
            eprintln!("error: cannot serve /metrics on {listen}: {e}");
            std::process::exit(1);
        }
    }
}
