//! A server per core: single-threaded runtimes ([`Cores`]), each accepting TCP connections on
//! its own listener and serving them from accept to close, under one [`ServerHandle`]; and
//! balanced clients whose connections spread over such runtimes ([`balanced`]).
//!
//! A multi-thread runtime moves work between threads: a connection's reader, writer and
//! handlers may run on different workers, and every hand-over is a cross-thread wake-up. A
//! server per core keeps each connection on one thread, as a current-thread runtime does,
//! and uses the cores by running one such server per runtime. The kernel spreads incoming
//! connections over the listeners (`SO_REUSEPORT`, Linux and the BSDs; macOS hands them all
//! to one).
//!
//! Pick it for servers with many client connections (internal services behind pools): each
//! connection's work is then as cheap as on a current-thread runtime. With a few busy
//! connections, fewer than cores, a multi-thread runtime spreads their handlers where this
//! leaves cores idle; so it does for handlers that block or run long.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use flumen::{per_core::{self, Cores}, tcp::TokioTcp, Router, Server, Status};
//!
//! let router = Router::new().route("add", |(a, b): (u64, u64)| async move {
//!     Ok::<_, Status>(a + b)
//! });
//! let cores = Cores::tokio(2)?;
//! let server = per_core::serve(Server::new(router), &cores, &TokioTcp::default(),
//!     &"127.0.0.1:0".parse()?)?;
//! assert_eq!(server.servers(), 2);
//! server.shutdown(std::time::Duration::from_secs(1)).await;
//! # Ok(()) }
//! ```

use std::{io, net::SocketAddr};

use flumen_balance::{discovery::Discover, Address, BalanceConfig, Balancer};
use flumen_codec::Codec;
pub use flumen_rt::Cores;
use flumen_rt::Net;
use flumen_stream::{Dispatch, Server, ServerHandle, Transport};
use flumen_tcp::Tcp;

use crate::Client;

/// Serves `server` on every runtime of `cores`: binds a listener per runtime to `addr` (with
/// `SO_REUSEPORT`; port 0 picks one port for all), each registered with its runtime and
/// accepting with `transport`'s options. The handle's stats are the sums over the runtimes;
/// its shutdown drains them all. The dispatch (a `Router`, a generated server) is shared by
/// the runtimes. Shut the server down (or drop its handle) before dropping `cores`: the
/// graceful shutdown times itself on the first runtime.
///
/// # Errors
///
/// If the address cannot be bound, `SO_REUSEPORT` is missing, or `cores` is empty
/// (`InvalidInput`).
pub fn serve<D: Dispatch, R: Net>(
    server: Server<D>,
    cores: &Cores<R>,
    transport: &Tcp<R>,
    addr: &SocketAddr,
) -> io::Result<ServerHandle<SocketAddr>> {
    let listeners = flumen_tcp::std_listeners(addr, cores.len())?;
    let parts = cores
        .runtimes()
        .iter()
        .zip(listeners)
        .map(|(rt, listener)| {
            Ok((
                rt.clone(),
                rt.enter(|| transport.listener_from_std(listener))?,
            ))
        })
        .collect::<io::Result<Vec<_>>>()?;
    server
        .serve_each(parts)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no runtime to serve on"))
}

/// A balanced client whose pools spread over the runtimes of `cores` (each endpoint's on the
/// next runtime in turn, [`Balancer::spread`]): for a process that holds many connections
/// (a gateway, a service calling others through wide pools) and runs them a thread each, as a
/// server per core does. Bidirectional calls send from the first runtime.
///
/// # Panics
///
/// If `cores` is empty.
pub fn balanced<R, T, D, C>(
    cores: &Cores<R>,
    transport: T,
    discovery: D,
    config: BalanceConfig,
    codec: C,
) -> Client<C>
where
    R: Net,
    T: Transport,
    T::Addr: Address,
    D: Discover<T::Addr>,
    C: Codec,
{
    let balancer = Balancer::spread(cores.runtimes(), transport, discovery, config);
    Client::from_balancer(balancer, codec).with_runtime(&cores.runtimes()[0])
}
