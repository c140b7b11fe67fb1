//! TCP for Flumen: [`Tcp<R>`](Tcp), written once over the runtime's sockets
//! ([`flumen_rt::Net`]), with `TokioTcp` behind the `tokio` feature and `SmolTcp` behind the
//! `smol` feature. Both turn Nagle's algorithm off (`TCP_NODELAY`): Flumen batches writes
//! itself. [`TcpOptions`] adds keepalive probes and `TCP_USER_TIMEOUT`. Listeners set
//! `SO_REUSEADDR` on both runtimes, so a restarted server takes its port back while
//! connections of its last run linger in `TIME_WAIT`.
#![warn(missing_docs)]

#[cfg(any(feature = "tokio", feature = "smol"))]
mod hand_out;
mod options;
#[cfg(any(feature = "tokio", feature = "smol"))]
mod transport;

#[cfg(any(feature = "tokio", feature = "smol"))]
pub use crate::hand_out::{HandedOut, HAND_OUT_QUEUE};
pub use crate::options::TcpOptions;
#[cfg(any(feature = "tokio", feature = "smol"))]
pub use crate::transport::{Tcp, TcpListener};

/// TCP on tokio. Must be used from within a tokio runtime.
#[cfg(feature = "tokio")]
pub type TokioTcp = Tcp<flumen_rt::TokioRuntime>;
/// A tokio TCP listener.
#[cfg(feature = "tokio")]
pub type TokioTcpListener = TcpListener<flumen_rt::TokioRuntime>;
/// The receiving half of a tokio TCP connection.
#[cfg(feature = "tokio")]
pub type TokioTcpReader = <flumen_rt::TokioRuntime as flumen_rt::Net>::TcpReader;
/// The sending half of a tokio TCP connection; closing it sends `FIN`.
#[cfg(feature = "tokio")]
pub type TokioTcpWriter = <flumen_rt::TokioRuntime as flumen_rt::Net>::TcpWriter;

/// TCP on smol (`async-io`'s reactor). Works with any executor.
#[cfg(feature = "smol")]
pub type SmolTcp = Tcp<flumen_rt::SmolRuntime>;
/// A smol TCP listener.
#[cfg(feature = "smol")]
pub type SmolTcpListener = TcpListener<flumen_rt::SmolRuntime>;
/// The receiving half of a smol TCP connection.
#[cfg(feature = "smol")]
pub type SmolTcpReader = <flumen_rt::SmolRuntime as flumen_rt::Net>::TcpReader;
/// The sending half of a smol TCP connection; closing it sends `FIN`.
#[cfg(feature = "smol")]
pub type SmolTcpWriter = <flumen_rt::SmolRuntime as flumen_rt::Net>::TcpWriter;

/// Backlog of a listener: connections the kernel completes before the server accepts them.
pub const LISTEN_BACKLOG: i32 = 1024;

/// A non-blocking listener on `addr` bound as the transports bind (`SO_REUSEADDR`,
/// [`LISTEN_BACKLOG`]), for either runtime to adopt with `listener_from_std`, or to hand to
/// another process (a restart).
///
/// # Errors
///
/// If the address cannot be bound.
pub fn std_listener(addr: &std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    listener(addr)
}

/// `n` non-blocking listeners on one address, bound as the transports bind and with
/// `SO_REUSEPORT`, so that the kernel spreads incoming connections over them: one per runtime
/// of a server per core. With port 0, the first picks the port and the others share it.
///
/// # Errors
///
/// If the address cannot be bound, and `Unsupported` where the system has no `SO_REUSEPORT`
/// (outside Unix).
pub fn std_listeners(
    addr: &std::net::SocketAddr,
    n: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    let mut addr = *addr;
    for _ in 0..n {
        let listener = bind(&addr, true)?;
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// See [`std_listener`].
pub(crate) fn listener(addr: &std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    bind(addr, false)
}

/// A listener on `addr`, optionally with `SO_REUSEPORT`.
fn bind(addr: &std::net::SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};

    let socket = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    if reuse_port {
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        #[cfg(not(unix))]
        return Err(std::io::ErrorKind::Unsupported.into());
    }
    socket.bind(&(*addr).into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
