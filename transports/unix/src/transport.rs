//! The Unix socket transport, written once over [`Net`].

use std::{
    fmt,
    future::{ready, Ready},
    io,
    marker::PhantomData,
    os::unix::net::UnixListener as StdUnixListener,
    path::PathBuf,
};

use flumen_rt::Net;
use flumen_stream::{Listener, Transport};

/// Unix domain sockets on the runtime `R`: [`TokioUnix`](type@crate::TokioUnix) (feature `tokio`;
/// used from within a tokio runtime) or [`SmolUnix`](type@crate::SmolUnix) (feature `smol`; any
/// executor).
pub struct Unix<R> {
    rt: PhantomData<fn() -> R>,
}

/// A Unix socket listener on the runtime `R`; dropping it removes its socket file if it bound
/// it.
pub struct UnixListener<R: Net> {
    listener: R::UnixListener,
    path: PathBuf,
    /// Set if this listener bound the path: its file goes with it.
    _unlink: Option<Unlink>,
}

/// Removes the socket file of a listener when it goes.
#[derive(Debug)]
struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        // Best effort: the file may already be gone.
        let _ = std::fs::remove_file(&self.0);
    }
}

impl<R> Unix<R> {
    /// Unix domain sockets (they have no options).
    pub const fn new() -> Self {
        Self { rt: PhantomData }
    }
}

impl<R: Net> Unix<R> {
    /// Adopts a listener bound elsewhere (inherited from another process); dropping the
    /// adopted listener leaves its socket file alone.
    ///
    /// # Errors
    ///
    /// If the listener cannot be made non-blocking or registered with the runtime.
    pub fn listener_from_std(&self, listener: StdUnixListener) -> io::Result<UnixListener<R>> {
        let path = pathname(&listener.local_addr()?);
        Ok(UnixListener {
            listener: R::unix_listener(listener)?,
            path,
            _unlink: None,
        })
    }
}

impl<R> Clone for Unix<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for Unix<R> {}

impl<R> Default for Unix<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R> fmt::Debug for Unix<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unix")
            .field("runtime", &std::any::type_name::<R>())
            .finish()
    }
}

impl<R: Net> fmt::Debug for UnixListener<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixListener")
            .field("listener", &self.listener)
            .field("path", &self.path)
            .field("unlink", &self._unlink.is_some())
            .finish()
    }
}

/// The path of a socket address: empty if it is unnamed (a peer that did not bind).
fn pathname(addr: &std::os::unix::net::SocketAddr) -> PathBuf {
    addr.as_pathname()
        .map(ToOwned::to_owned)
        .unwrap_or_default()
}

impl<R: Net> Transport for Unix<R> {
    type Addr = PathBuf;
    type Reader = R::UnixReader;
    type Writer = R::UnixWriter;
    type Listener = UnixListener<R>;

    async fn connect(&self, path: &PathBuf) -> io::Result<(R::UnixReader, R::UnixWriter)> {
        Ok(R::unix_split(R::unix_connect(path).await?))
    }

    async fn bind(&self, path: &PathBuf) -> io::Result<UnixListener<R>> {
        let listener = StdUnixListener::bind(path)?;
        // From here on the file is this listener's, whatever happens next.
        let unlink = Unlink(path.clone());
        Ok(UnixListener {
            listener: R::unix_listener(listener)?,
            path: path.clone(),
            _unlink: Some(unlink),
        })
    }
}

impl<R: Net> Listener for UnixListener<R> {
    type Addr = PathBuf;
    type Reader = R::UnixReader;
    type Writer = R::UnixWriter;
    type Connecting = Ready<io::Result<(R::UnixReader, R::UnixWriter)>>;

    async fn accept(&mut self) -> io::Result<(Self::Connecting, PathBuf)> {
        let (stream, peer) = R::unix_accept(&self.listener).await?;
        Ok((ready(Ok(R::unix_split(stream))), pathname(&peer)))
    }

    fn local_addr(&self) -> io::Result<PathBuf> {
        Ok(self.path.clone())
    }
}
