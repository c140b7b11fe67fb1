//! Server push: a server-streaming ticker.
//!
//! ```text
//! cargo run --example ticker [-- --runtime smol]
//! ```

mod common;

use std::{net::SocketAddr, time::Duration};

use common::Error;
use flumen::{
    rt::{Runtime, SmolRuntime, TokioRuntime},
    stream::Transport,
    tcp::{SmolTcp, TokioTcp},
    BoxStream, Client, Server, Stream,
};
use futures_lite::StreamExt;
use serde::{Deserialize, Serialize};

/// One tick.
#[derive(Debug, Serialize, Deserialize)]
pub struct Tick {
    /// Ticks so far, from 1.
    pub n: u32,
    /// Milliseconds since the stream started.
    pub elapsed_ms: u64,
}

/// The ticker's error.
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
pub enum TickError {
    /// The period was zero.
    #[error("the period must be at least 1 ms")]
    ZeroPeriod,
}

/// Pushes ticks to the caller.
#[flumen::service]
pub trait Ticker {
    /// `count` ticks, one every `period_ms`.
    async fn ticks(
        &self,
        period_ms: u64,
        count: u32,
    ) -> impl Stream<Item = Result<Tick, TickError>>;
}

struct Clock;

impl Ticker for Clock {
    async fn ticks(
        &self,
        period_ms: u64,
        count: u32,
    ) -> impl Stream<Item = Result<Tick, TickError>> {
        // Two kinds of stream, picked at run time: boxed, they are one type.
        if period_ms == 0 {
            let refused = futures_lite::stream::once(Err(TickError::ZeroPeriod));
            return Box::pin(refused) as BoxStream<_>;
        }
        let start = std::time::Instant::now();
        let period = Duration::from_millis(period_ms);
        // async-io's timer works under either runtime.
        let ticks = futures_lite::stream::unfold(0u32, move |n| async move {
            if n == count {
                return None;
            }
            async_io::Timer::at(start + period * (n + 1)).await;
            let tick = Tick {
                n: n + 1,
                elapsed_ms: start.elapsed().as_millis() as u64,
            };
            Some((Ok(tick), n + 1))
        });
        Box::pin(ticks)
    }
}

/// The demo, on runtime `rt` over `transport`.
async fn run<R: Runtime, T: Transport<Addr = SocketAddr> + Clone>(
    rt: R,
    transport: T,
) -> Result<(), Error> {
    let server = Server::new(TickerServer::new(Clock))
        .bind(&rt, &transport, &common::loopback())
        .await?;
    let ticker = TickerClient::new(Client::connect(&rt, &transport, server.local_addr()).await?);
    let mut ticks = ticker.ticks(100, 5).await?;
    while let Some(tick) = ticks.next().await {
        let tick = tick?;
        println!("tick {} at {} ms", tick.n, tick.elapsed_ms);
    }
    let err = ticker.ticks(0, 1).await?.next().await;
    println!("period 0 -> {err:?}");
    Ok(())
}

fn main() -> Result<(), Error> {
    // The same demo on either runtime: only the runtime, its spawner and the transport differ.
    if common::smol_requested()? {
        // smol's global executor runs the server's and the client's tasks.
        smol::block_on(run(SmolRuntime::global(), SmolTcp::default()))
    } else {
        let tokio = tokio::runtime::Runtime::new()?;
        let rt = TokioRuntime::new(tokio.handle().clone());
        tokio.block_on(run(rt, TokioTcp::default()))
    }
}
