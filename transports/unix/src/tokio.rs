use std::{
    future::{ready, Ready},
    io,
    path::PathBuf,
};

use flumen_rt::io::TokioIo;
use flumen_stream::{Listener, Transport};
use tokio::net::{
    unix::{OwnedReadHalf, OwnedWriteHalf},
    UnixListener, UnixStream,
};

use crate::Unlink;

/// Unix domain sockets on tokio. Must be used from within a tokio runtime.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioUnix;

/// The receiving half of a tokio Unix socket connection.
pub type TokioUnixReader = TokioIo<OwnedReadHalf>;

/// The sending half of a tokio Unix socket connection; closing it shuts the write side down.
pub type TokioUnixWriter = TokioIo<OwnedWriteHalf>;

/// A tokio Unix socket listener; dropping it removes its socket file if it bound it.
#[derive(Debug)]
pub struct TokioUnixListener {
    listener: UnixListener,
    path: PathBuf,
    /// Set if this listener bound the path: its file goes with it.
    _unlink: Option<Unlink>,
}

impl TokioUnix {
    /// Adopts a listener bound elsewhere (inherited from another process); dropping the
    /// adopted listener leaves its socket file alone.
    ///
    /// # Errors
    ///
    /// If the listener cannot be made non-blocking or registered with tokio.
    pub fn listener_from_std(
        &self,
        listener: std::os::unix::net::UnixListener,
    ) -> io::Result<TokioUnixListener> {
        listener.set_nonblocking(true)?;
        let path = crate::bound_path(&listener)?;
        Ok(TokioUnixListener {
            listener: UnixListener::from_std(listener)?,
            path,
            _unlink: None,
        })
    }
}

fn split(stream: UnixStream) -> (TokioUnixReader, TokioUnixWriter) {
    let (reader, writer) = stream.into_split();
    (TokioIo(reader), TokioIo(writer))
}

impl Transport for TokioUnix {
    type Addr = PathBuf;
    type Reader = TokioUnixReader;
    type Writer = TokioUnixWriter;
    type Listener = TokioUnixListener;

    async fn connect(&self, path: &PathBuf) -> io::Result<(TokioUnixReader, TokioUnixWriter)> {
        Ok(split(UnixStream::connect(path).await?))
    }

    async fn bind(&self, path: &PathBuf) -> io::Result<TokioUnixListener> {
        Ok(TokioUnixListener {
            listener: UnixListener::bind(path)?,
            path: path.clone(),
            _unlink: Some(Unlink(path.clone())),
        })
    }
}

impl Listener for TokioUnixListener {
    type Addr = PathBuf;
    type Reader = TokioUnixReader;
    type Writer = TokioUnixWriter;
    type Connecting = Ready<io::Result<(TokioUnixReader, TokioUnixWriter)>>;

    async fn accept(&mut self) -> io::Result<(Self::Connecting, PathBuf)> {
        let (stream, peer) = self.listener.accept().await?;
        let peer = peer
            .as_pathname()
            .map(ToOwned::to_owned)
            .unwrap_or_default();
        Ok((ready(Ok(split(stream))), peer))
    }

    fn local_addr(&self) -> io::Result<PathBuf> {
        Ok(self.path.clone())
    }
}
