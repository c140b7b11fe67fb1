//! TCP for Flumen: `TokioTcp` behind the `tokio` feature, `SmolTcp` behind the `smol`
//! feature. Both turn Nagle's algorithm off (`TCP_NODELAY`): Flumen batches writes itself.
//! [`TcpOptions`] adds keepalive probes and `TCP_USER_TIMEOUT`. Listeners set `SO_REUSEADDR`
//! on both runtimes, so a restarted server takes its port back while connections of its last
//! run linger in `TIME_WAIT`.
#![warn(missing_docs)]

mod options;

#[cfg(feature = "smol")]
mod smol;
#[cfg(feature = "tokio")]
mod tokio;

pub use crate::options::TcpOptions;
#[cfg(feature = "smol")]
pub use crate::smol::{SmolTcp, SmolTcpListener, SmolTcpReader, SmolTcpWriter};
#[cfg(feature = "tokio")]
pub use crate::tokio::{TokioTcp, TokioTcpListener, TokioTcpReader, TokioTcpWriter};

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

/// See [`std_listener`].
pub(crate) fn listener(addr: &std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};

    let socket = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&(*addr).into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
