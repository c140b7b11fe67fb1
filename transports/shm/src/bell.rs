//! The Unix socket beside the rings: the handshake, wake-up bytes, and the end of the peer.

use std::{
    future::{poll_fn, Future},
    io,
    os::fd::{BorrowedFd, OwnedFd},
    path::Path,
    sync::Arc,
    task::{Context, Poll, Wake, Waker},
};

use atomic_waker::AtomicWaker;

/// A connected Unix socket a runtime can wait on: the wake-up line of a shared-memory
/// connection, implemented for tokio ([`TokioBell`]) and async-io ([`SmolBell`]).
pub trait Bell: Send + Sync + Sized + 'static {
    /// A listener of such sockets.
    type Listener: Send + Sync + std::fmt::Debug + 'static;

    /// Connects to the listener at `path`.
    fn connect(path: &Path) -> impl Future<Output = io::Result<Self>> + Send;

    /// Binds a listener at `path` (failing if a file is there).
    ///
    /// # Errors
    ///
    /// As `bind(2)`.
    fn bind(path: &Path) -> io::Result<Self::Listener>;

    /// Accepts the next connection.
    fn accept(listener: &Self::Listener) -> impl Future<Output = io::Result<Self>> + Send;

    /// Ready when the socket may have bytes (or its end) to read.
    ///
    /// # Errors
    ///
    /// A socket error.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Ready when the socket may take bytes.
    ///
    /// # Errors
    ///
    /// A socket error.
    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Reads what is there without waiting (`WouldBlock` if nothing is).
    ///
    /// # Errors
    ///
    /// As `read(2)`.
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes what fits without waiting (`WouldBlock` if nothing does).
    ///
    /// # Errors
    ///
    /// As `write(2)`.
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;

    /// Sends the peer one wake-up byte, without waiting. A full socket buffer means wake-ups
    /// are already waiting for the peer, so nothing is lost by dropping this one; but nothing
    /// else may stop it (a runtime's cached view of the socket's readiness included).
    fn wake_peer(&self) {
        let _ = self.try_write(&[1]);
    }

    /// Writes what fits of `buf` with descriptor `fd` attached (`SCM_RIGHTS`), without
    /// waiting (`WouldBlock` if nothing fits): the handshake passes the shared region so.
    ///
    /// # Errors
    ///
    /// As `sendmsg(2)`.
    fn try_write_with_fd(&self, buf: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize>;

    /// Reads what is there without waiting (`WouldBlock` if nothing is), adding the
    /// descriptors that came with the bytes to `fds`.
    ///
    /// # Errors
    ///
    /// As `recvmsg(2)`; `InvalidData` if more descriptors came than a message may carry.
    fn try_read_with_fds(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize>;
}

/// Which half waits on the bell.
pub(crate) const READER: usize = 0;
pub(crate) const WRITER: usize = 1;

/// What waiting on the bell found.
pub(crate) enum Rang {
    /// A wake-up (or several): look at the ring again.
    Bell,
    /// The peer closed the socket: it ended, or its process did.
    Gone,
}

/// The tasks of both halves of a side. The socket's readiness wakes both: either half may be
/// the one that reads the wake-up bytes, and the other must look at its ring too (a reader
/// task held up elsewhere must not keep its writer from hearing that room came free).
#[derive(Debug, Default)]
pub(crate) struct Wakers {
    halves: [AtomicWaker; 2],
}

impl Wake for Wakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        for half in &self.halves {
            half.wake();
        }
    }
}

impl Wakers {
    /// Waits for a byte (or the end) on `bell` for half `which`.
    pub(crate) fn poll_bell<B: Bell>(
        self: &Arc<Self>,
        bell: &B,
        cx: &mut Context<'_>,
        which: usize,
    ) -> Poll<io::Result<Rang>> {
        self.halves[which].register(cx.waker());
        let both = Waker::from(self.clone());
        let mut both_cx = Context::from_waker(&both);
        let mut scratch = [0u8; 64];
        loop {
            std::task::ready!(bell.poll_readable(&mut both_cx))?;
            match bell.try_read(&mut scratch) {
                Ok(0) => return Poll::Ready(Ok(Rang::Gone)),
                Ok(_) => {
                    // Both halves look again: the bytes may have been for the other.
                    self.halves[1 - which].wake();
                    return Poll::Ready(Ok(Rang::Bell));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Poll::Ready(Ok(Rang::Gone))
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Reads exactly `buf.len()` bytes (the handshake).
pub(crate) async fn read_exact<B: Bell>(bell: &B, buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        filled += poll_fn(|cx| loop {
            std::task::ready!(bell.poll_readable(cx))?;
            match bell.try_read(&mut buf[filled..]) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        })
        .await?;
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes (the handshake), adding the descriptors that came with
/// them to `fds`.
pub(crate) async fn read_exact_with_fds<B: Bell>(
    bell: &B,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        filled += poll_fn(|cx| loop {
            std::task::ready!(bell.poll_readable(cx))?;
            match bell.try_read_with_fds(&mut buf[filled..], fds) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        })
        .await?;
    }
    Ok(())
}

/// Writes all of `buf` (the handshake), the first bytes with `fd` attached if given.
pub(crate) async fn write_all<B: Bell>(
    bell: &B,
    buf: &[u8],
    mut fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut written = 0;
    while written < buf.len() {
        written += poll_fn(|cx| loop {
            std::task::ready!(bell.poll_writable(cx))?;
            let wrote = match fd {
                Some(fd) => bell.try_write_with_fd(&buf[written..], fd),
                None => bell.try_write(&buf[written..]),
            };
            match wrote {
                Ok(n) => {
                    // The descriptor went with these bytes.
                    fd = None;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        })
        .await?;
    }
    Ok(())
}

/// A tokio Unix socket as a bell.
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub struct TokioBell(tokio::net::UnixStream);

#[cfg(feature = "tokio")]
impl Bell for TokioBell {
    type Listener = tokio::net::UnixListener;

    async fn connect(path: &Path) -> io::Result<Self> {
        Ok(Self(tokio::net::UnixStream::connect(path).await?))
    }

    fn bind(path: &Path) -> io::Result<Self::Listener> {
        tokio::net::UnixListener::bind(path)
    }

    async fn accept(listener: &Self::Listener) -> io::Result<Self> {
        Ok(Self(listener.accept().await?.0))
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_read_ready(cx)
    }

    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_write_ready(cx)
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn wake_peer(&self) {
        use std::os::fd::AsFd;
        // Straight to the socket: tokio's `try_write` answers `WouldBlock` without trying
        // while its cached readiness says not writable, which would lose the wake-up.
        let _ = rustix::net::send(
            self.0.as_fd(),
            &[1],
            rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
        );
    }

    fn try_write_with_fd(&self, buf: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
        use std::os::fd::AsFd;
        // Through `try_io`, so that `WouldBlock` clears the readiness tokio cached.
        self.0.try_io(tokio::io::Interest::WRITABLE, || {
            crate::region::send_with_fd(self.0.as_fd(), buf, fd)
        })
    }

    fn try_read_with_fds(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        use std::os::fd::AsFd;
        self.0.try_io(tokio::io::Interest::READABLE, || {
            crate::region::recv_with_fds(self.0.as_fd(), buf, fds)
        })
    }
}

/// An async-io (smol) Unix socket as a bell.
#[cfg(feature = "smol")]
#[derive(Debug)]
pub struct SmolBell(async_io::Async<std::os::unix::net::UnixStream>);

#[cfg(feature = "smol")]
impl Bell for SmolBell {
    type Listener = async_io::Async<std::os::unix::net::UnixListener>;

    async fn connect(path: &Path) -> io::Result<Self> {
        Ok(Self(
            async_io::Async::<std::os::unix::net::UnixStream>::connect(path).await?,
        ))
    }

    fn bind(path: &Path) -> io::Result<Self::Listener> {
        async_io::Async::<std::os::unix::net::UnixListener>::bind(path)
    }

    async fn accept(listener: &Self::Listener) -> io::Result<Self> {
        Ok(Self(listener.accept().await?.0))
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_readable(cx)
    }

    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_writable(cx)
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut self.0.get_ref(), buf)
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut self.0.get_ref(), buf)
    }

    fn try_write_with_fd(&self, buf: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
        use std::os::fd::AsFd;
        crate::region::send_with_fd(self.0.get_ref().as_fd(), buf, fd)
    }

    fn try_read_with_fds(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        use std::os::fd::AsFd;
        crate::region::recv_with_fds(self.0.get_ref().as_fd(), buf, fds)
    }
}
