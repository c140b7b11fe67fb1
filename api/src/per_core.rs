//! A server per core: single-threaded runtimes ([`Cores`]), each accepting TCP connections on
//! its own listener and serving them from accept to close, under one [`ServerHandle`]; and
//! balanced clients whose connections spread over such runtimes ([`balanced`]).
//!
//! A multi-thread runtime moves work between threads: a connection's reader, writer and
//! handlers may run on different workers, and every hand-over is a cross-thread wake-up. A
//! server per core keeps each connection on one thread, as a current-thread runtime does,
//! and uses the cores by running one such server per runtime. Incoming connections are spread
//! over the runtimes by the kernel (a listener each with `SO_REUSEPORT`, on Linux) or by a task
//! that accepts on one listener and hands them out in turn (elsewhere, or when asked:
//! [`Spread`]).
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

/// How a server per core shares its connections out among its runtimes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spread {
    /// A listener per runtime on one port, bound with `SO_REUSEPORT`: the kernel picks one for
    /// each connection by a hash of its addresses, and nothing in the process hands out. The
    /// kernel balances so on Linux and Android; macOS gives every connection to one listener.
    /// Unix only.
    ReusePort,
    /// One listener, accepted on the first runtime, each connection handed to the next runtime
    /// in turn ([`Tcp::hand_out`]): an even share on every system, for one hop per connection
    /// (none per call).
    HandOut,
}

impl Spread {
    /// [`ReusePort`](Self::ReusePort) where the kernel balances it (Linux, Android),
    /// [`HandOut`](Self::HandOut) elsewhere.
    pub const fn native() -> Self {
        if cfg!(any(target_os = "linux", target_os = "android")) {
            Self::ReusePort
        } else {
            Self::HandOut
        }
    }
}

/// Serves `server` on every runtime of `cores`, its connections spread as this system does
/// best ([`Spread::native`]; see [`serve_with`]).
///
/// # Errors
///
/// As [`serve_with`].
pub fn serve<D: Dispatch, R: Net>(
    server: Server<D>,
    cores: &Cores<R>,
    transport: &Tcp<R>,
    addr: &SocketAddr,
) -> io::Result<ServerHandle<SocketAddr>> {
    serve_with(server, cores, transport, addr, Spread::native())
}

/// Serves `server` on every runtime of `cores`, listening on `addr` (port 0 picks one port for
/// all) with `transport`'s options, the connections spread as `spread` says; each is served
/// from accept to close on the runtime it went to. The handle's stats are the sums over the
/// runtimes; its shutdown drains them all and stops accepting. The dispatch (a `Router`,
/// a generated server) is shared by the runtimes. Shut the server down (or drop its handle)
/// before dropping `cores`: the graceful shutdown times itself on the first runtime.
///
/// # Errors
///
/// If the address cannot be bound, `SO_REUSEPORT` is missing ([`Spread::ReusePort`] outside
/// Unix), or `cores` is empty (`InvalidInput`).
pub fn serve_with<D: Dispatch, R: Net>(
    server: Server<D>,
    cores: &Cores<R>,
    transport: &Tcp<R>,
    addr: &SocketAddr,
    spread: Spread,
) -> io::Result<ServerHandle<SocketAddr>> {
    let no_runtime = || io::Error::new(io::ErrorKind::InvalidInput, "no runtime to serve on");
    let runtimes = cores.runtimes();
    let served = match spread {
        Spread::ReusePort => {
            let listeners = flumen_tcp::std_listeners(addr, runtimes.len())?;
            let parts = runtimes
                .iter()
                .zip(listeners)
                .map(|(rt, listener)| {
                    let listener = rt.enter(|| transport.listener_from_std(listener))?;
                    Ok((rt.clone(), listener))
                })
                .collect::<io::Result<Vec<_>>>()?;
            server.serve_each(parts)?
        }
        Spread::HandOut => {
            if runtimes.is_empty() {
                return Err(no_runtime());
            }
            let shares = transport.hand_out(flumen_tcp::std_listener(addr)?, runtimes)?;
            server.serve_each(runtimes.iter().cloned().zip(shares))?
        }
    };
    served.ok_or_else(no_runtime)
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
