//! The sockets of each runtime behind one trait, [`Net`]: TCP, Unix domain sockets and UDP.
//!
//! A socket transport is written once, generic over `Net` (`flumen_tcp::Tcp<R>`,
//! `flumen_unix::Unix<R>`), and cluster membership gossips over [`Net::Udp`]. The runtime
//! types implement it: [`TokioRuntime`](crate::TokioRuntime) with tokio's sockets,
//! [`SmolRuntime`](crate::SmolRuntime) with `async-io`'s.
//!
//! Sockets are made from (or adopted as) `std` sockets, so that a transport binds them as it
//! likes (socket options, `SO_REUSEADDR`, a listener inherited from another process) and
//! hands them over here. Tokio's must be made inside its runtime's context: from one of its
//! tasks, or within [`Net::enter`].

use std::{fmt, future::Future, io, net::SocketAddr};

use flumen_stream::{Runtime, TransportRead, TransportWrite};

/// A runtime's sockets. Every function but [`enter`](Self::enter) is called from within the
/// runtime's context (a task of it), as the transports call them.
pub trait Net: Runtime {
    /// A connected TCP socket, before it is split.
    type TcpStream: Send + 'static;
    /// A TCP listener.
    type TcpListener: fmt::Debug + Send + Sync + 'static;
    /// The receiving half of a TCP connection.
    type TcpReader: TransportRead;
    /// The sending half of a TCP connection; closing it sends `FIN`.
    type TcpWriter: TransportWrite;

    /// Connects to `addr`.
    fn tcp_connect(addr: SocketAddr) -> impl Future<Output = io::Result<Self::TcpStream>> + Send;

    /// Adopts a bound, listening socket (made non-blocking here).
    ///
    /// # Errors
    ///
    /// If it cannot be made non-blocking or registered with the runtime.
    fn tcp_listener(listener: std::net::TcpListener) -> io::Result<Self::TcpListener>;

    /// The next connection and its peer's address.
    fn tcp_accept(
        listener: &Self::TcpListener,
    ) -> impl Future<Output = io::Result<(Self::TcpStream, SocketAddr)>> + Send + '_;

    /// The address `listener` is bound to.
    ///
    /// # Errors
    ///
    /// The operating system's.
    fn tcp_local_addr(listener: &Self::TcpListener) -> io::Result<SocketAddr>;

    /// The socket under `stream`, to set options on.
    fn tcp_socket(stream: &Self::TcpStream) -> socket2::SockRef<'_>;

    /// Takes `stream` out of this runtime (its reactor forgets it), non-blocking, for another
    /// runtime to adopt with [`tcp_from_std`](Self::tcp_from_std): a connection accepted on
    /// one runtime and served on another.
    ///
    /// # Errors
    ///
    /// If the runtime cannot deregister it.
    fn tcp_into_std(stream: Self::TcpStream) -> io::Result<std::net::TcpStream>;

    /// Adopts a connected socket (made non-blocking here).
    ///
    /// # Errors
    ///
    /// If it cannot be made non-blocking or registered with the runtime.
    fn tcp_from_std(stream: std::net::TcpStream) -> io::Result<Self::TcpStream>;

    /// The two halves of `stream`: the reading one, then the writing one.
    fn tcp_split(stream: Self::TcpStream) -> (Self::TcpReader, Self::TcpWriter);

    /// A connected Unix domain socket, before it is split.
    #[cfg(unix)]
    type UnixStream: Send + 'static;
    /// A Unix domain socket listener.
    #[cfg(unix)]
    type UnixListener: fmt::Debug + Send + Sync + 'static;
    /// The receiving half of a Unix socket connection.
    #[cfg(unix)]
    type UnixReader: TransportRead;
    /// The sending half of a Unix socket connection; closing it shuts its write side down.
    #[cfg(unix)]
    type UnixWriter: TransportWrite;

    /// Connects to the socket at `path`.
    #[cfg(unix)]
    fn unix_connect(
        path: &std::path::Path,
    ) -> impl Future<Output = io::Result<Self::UnixStream>> + Send + '_;

    /// Adopts a bound, listening socket (made non-blocking here).
    ///
    /// # Errors
    ///
    /// If it cannot be made non-blocking or registered with the runtime.
    #[cfg(unix)]
    fn unix_listener(listener: std::os::unix::net::UnixListener) -> io::Result<Self::UnixListener>;

    /// The next connection and its peer's address (unnamed unless the peer bound its socket).
    #[cfg(unix)]
    fn unix_accept(
        listener: &Self::UnixListener,
    ) -> impl Future<Output = io::Result<(Self::UnixStream, std::os::unix::net::SocketAddr)>> + Send + '_;

    /// The two halves of `stream`: the reading one, then the writing one.
    #[cfg(unix)]
    fn unix_split(stream: Self::UnixStream) -> (Self::UnixReader, Self::UnixWriter);

    /// A UDP socket.
    type Udp: Datagrams;

    /// Adopts a bound UDP socket (made non-blocking here).
    ///
    /// # Errors
    ///
    /// If it cannot be made non-blocking or registered with the runtime.
    fn udp(socket: std::net::UdpSocket) -> io::Result<Self::Udp>;

    /// Runs `f` inside this runtime's context, where its sockets can be made from any thread.
    fn enter<T>(&self, f: impl FnOnce() -> T) -> T;
}

/// A datagram socket, as cluster membership gossips over it: [`Net::Udp`] of each runtime, or
/// a socket of one's own.
pub trait Datagrams: Send + Sync + 'static {
    /// The address the socket is bound to.
    ///
    /// # Errors
    ///
    /// The operating system's.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Sends `data` to `to`.
    fn send_to<'a>(
        &'a self,
        data: &'a [u8],
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;

    /// Receives a datagram into `buf`: its length and sender. Cancel-safe: a datagram is not
    /// lost if the future is dropped before it completes.
    fn recv_from<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a;

    /// Receives a datagram that has arrived already, without waiting (`WouldBlock` when none
    /// has).
    ///
    /// # Errors
    ///
    /// `WouldBlock`, or the operating system's.
    fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
}

#[cfg(feature = "tokio")]
mod tokio_net {
    use std::{future::Future, io, net::SocketAddr};

    use tokio::net::{TcpListener, TcpStream, UdpSocket};

    use super::{Datagrams, Net};
    use crate::{io::TokioIo, TokioRuntime};

    impl Net for TokioRuntime {
        type TcpStream = TcpStream;
        type TcpListener = TcpListener;
        type TcpReader = TokioIo<tokio::net::tcp::OwnedReadHalf>;
        type TcpWriter = TokioIo<tokio::net::tcp::OwnedWriteHalf>;

        fn tcp_connect(addr: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> + Send {
            TcpStream::connect(addr)
        }

        fn tcp_listener(listener: std::net::TcpListener) -> io::Result<TcpListener> {
            listener.set_nonblocking(true)?;
            TcpListener::from_std(listener)
        }

        fn tcp_accept(
            listener: &TcpListener,
        ) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send + '_ {
            listener.accept()
        }

        fn tcp_local_addr(listener: &TcpListener) -> io::Result<SocketAddr> {
            listener.local_addr()
        }

        fn tcp_socket(stream: &TcpStream) -> socket2::SockRef<'_> {
            socket2::SockRef::from(stream)
        }

        fn tcp_into_std(stream: TcpStream) -> io::Result<std::net::TcpStream> {
            stream.into_std()
        }

        fn tcp_from_std(stream: std::net::TcpStream) -> io::Result<TcpStream> {
            stream.set_nonblocking(true)?;
            TcpStream::from_std(stream)
        }

        fn tcp_split(stream: TcpStream) -> (Self::TcpReader, Self::TcpWriter) {
            let (reader, writer) = stream.into_split();
            (TokioIo(reader), TokioIo(writer))
        }

        #[cfg(unix)]
        type UnixStream = tokio::net::UnixStream;
        #[cfg(unix)]
        type UnixListener = tokio::net::UnixListener;
        #[cfg(unix)]
        type UnixReader = TokioIo<tokio::net::unix::OwnedReadHalf>;
        #[cfg(unix)]
        type UnixWriter = TokioIo<tokio::net::unix::OwnedWriteHalf>;

        #[cfg(unix)]
        fn unix_connect(
            path: &std::path::Path,
        ) -> impl Future<Output = io::Result<tokio::net::UnixStream>> + Send + '_ {
            tokio::net::UnixStream::connect(path)
        }

        #[cfg(unix)]
        fn unix_listener(
            listener: std::os::unix::net::UnixListener,
        ) -> io::Result<tokio::net::UnixListener> {
            listener.set_nonblocking(true)?;
            tokio::net::UnixListener::from_std(listener)
        }

        #[cfg(unix)]
        async fn unix_accept(
            listener: &tokio::net::UnixListener,
        ) -> io::Result<(tokio::net::UnixStream, std::os::unix::net::SocketAddr)> {
            let (stream, peer) = listener.accept().await?;
            Ok((stream, peer.into()))
        }

        #[cfg(unix)]
        fn unix_split(stream: tokio::net::UnixStream) -> (Self::UnixReader, Self::UnixWriter) {
            let (reader, writer) = stream.into_split();
            (TokioIo(reader), TokioIo(writer))
        }

        type Udp = UdpSocket;

        fn udp(socket: std::net::UdpSocket) -> io::Result<UdpSocket> {
            socket.set_nonblocking(true)?;
            UdpSocket::from_std(socket)
        }

        fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
            let _context = self.handle().enter();
            f()
        }
    }

    impl Datagrams for UdpSocket {
        fn local_addr(&self) -> io::Result<SocketAddr> {
            UdpSocket::local_addr(self)
        }

        fn send_to<'a>(
            &'a self,
            data: &'a [u8],
            to: SocketAddr,
        ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
            UdpSocket::send_to(self, data, to)
        }

        fn recv_from<'a>(
            &'a self,
            buf: &'a mut [u8],
        ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a {
            UdpSocket::recv_from(self, buf)
        }

        fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
            UdpSocket::try_recv_from(self, buf)
        }
    }
}

#[cfg(feature = "smol")]
mod smol_net {
    use std::{
        future::Future,
        io,
        net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    };

    use smol::Async;

    use super::{Datagrams, Net};
    use crate::{io::SmolIo, SmolRuntime};

    impl Net for SmolRuntime {
        type TcpStream = Async<TcpStream>;
        type TcpListener = Async<TcpListener>;
        type TcpReader = SmolIo<TcpStream>;
        type TcpWriter = SmolIo<TcpStream>;

        fn tcp_connect(
            addr: SocketAddr,
        ) -> impl Future<Output = io::Result<Async<TcpStream>>> + Send {
            Async::<TcpStream>::connect(addr)
        }

        fn tcp_listener(listener: TcpListener) -> io::Result<Async<TcpListener>> {
            Async::new(listener)
        }

        fn tcp_accept(
            listener: &Async<TcpListener>,
        ) -> impl Future<Output = io::Result<(Async<TcpStream>, SocketAddr)>> + Send + '_ {
            listener.accept()
        }

        fn tcp_local_addr(listener: &Async<TcpListener>) -> io::Result<SocketAddr> {
            listener.get_ref().local_addr()
        }

        fn tcp_socket(stream: &Async<TcpStream>) -> socket2::SockRef<'_> {
            socket2::SockRef::from(stream.get_ref())
        }

        fn tcp_into_std(stream: Async<TcpStream>) -> io::Result<TcpStream> {
            stream.into_inner()
        }

        fn tcp_from_std(stream: TcpStream) -> io::Result<Async<TcpStream>> {
            Async::new(stream)
        }

        fn tcp_split(stream: Async<TcpStream>) -> (Self::TcpReader, Self::TcpWriter) {
            SmolIo::split(stream)
        }

        #[cfg(unix)]
        type UnixStream = Async<std::os::unix::net::UnixStream>;
        #[cfg(unix)]
        type UnixListener = Async<std::os::unix::net::UnixListener>;
        #[cfg(unix)]
        type UnixReader = SmolIo<std::os::unix::net::UnixStream>;
        #[cfg(unix)]
        type UnixWriter = SmolIo<std::os::unix::net::UnixStream>;

        #[cfg(unix)]
        fn unix_connect(
            path: &std::path::Path,
        ) -> impl Future<Output = io::Result<Self::UnixStream>> + Send + '_ {
            Async::<std::os::unix::net::UnixStream>::connect(path)
        }

        #[cfg(unix)]
        fn unix_listener(
            listener: std::os::unix::net::UnixListener,
        ) -> io::Result<Self::UnixListener> {
            Async::new(listener)
        }

        #[cfg(unix)]
        fn unix_accept(
            listener: &Self::UnixListener,
        ) -> impl Future<Output = io::Result<(Self::UnixStream, std::os::unix::net::SocketAddr)>>
               + Send
               + '_ {
            listener.accept()
        }

        #[cfg(unix)]
        fn unix_split(stream: Self::UnixStream) -> (Self::UnixReader, Self::UnixWriter) {
            SmolIo::split(stream)
        }

        type Udp = Async<UdpSocket>;

        fn udp(socket: UdpSocket) -> io::Result<Async<UdpSocket>> {
            Async::new(socket)
        }

        fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
            f()
        }
    }

    impl Datagrams for Async<UdpSocket> {
        fn local_addr(&self) -> io::Result<SocketAddr> {
            self.get_ref().local_addr()
        }

        fn send_to<'a>(
            &'a self,
            data: &'a [u8],
            to: SocketAddr,
        ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
            Async::<UdpSocket>::send_to(self, data, to)
        }

        fn recv_from<'a>(
            &'a self,
            buf: &'a mut [u8],
        ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a {
            Async::<UdpSocket>::recv_from(self, buf)
        }

        fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
            // The socket is non-blocking (`Async` made it so).
            self.get_ref().recv_from(buf)
        }
    }
}
