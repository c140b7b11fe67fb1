use std::{
    future::{ready, Ready},
    io,
    os::unix::net::{UnixListener, UnixStream},
    path::PathBuf,
};

use async_io::Async;
use flumen_rt::io::SmolIo;
use flumen_stream::{Listener, Transport};

use crate::{peer_path, Unlink};

/// Unix domain sockets on smol (`async-io`'s reactor). Works with any executor.
#[derive(Clone, Copy, Debug, Default)]
pub struct SmolUnix;

/// The receiving half of a smol Unix socket connection.
pub type SmolUnixReader = SmolIo<UnixStream>;

/// The sending half of a smol Unix socket connection; closing it shuts the write side down.
pub type SmolUnixWriter = SmolIo<UnixStream>;

/// A smol Unix socket listener; dropping it removes its socket file if it bound it.
#[derive(Debug)]
pub struct SmolUnixListener {
    listener: Async<UnixListener>,
    path: PathBuf,
    /// Set if this listener bound the path: its file goes with it.
    _unlink: Option<Unlink>,
}

impl SmolUnix {
    /// Adopts a listener bound elsewhere (inherited from another process); dropping the
    /// adopted listener leaves its socket file alone.
    ///
    /// # Errors
    ///
    /// If the listener cannot be made non-blocking or registered with the reactor.
    pub fn listener_from_std(&self, listener: UnixListener) -> io::Result<SmolUnixListener> {
        let path = crate::bound_path(&listener)?;
        Ok(SmolUnixListener {
            listener: Async::new(listener)?,
            path,
            _unlink: None,
        })
    }
}

fn split(stream: Async<UnixStream>) -> (SmolUnixReader, SmolUnixWriter) {
    SmolIo::split(stream)
}

impl Transport for SmolUnix {
    type Addr = PathBuf;
    type Reader = SmolUnixReader;
    type Writer = SmolUnixWriter;
    type Listener = SmolUnixListener;

    async fn connect(&self, path: &PathBuf) -> io::Result<(SmolUnixReader, SmolUnixWriter)> {
        Ok(split(Async::<UnixStream>::connect(path).await?))
    }

    async fn bind(&self, path: &PathBuf) -> io::Result<SmolUnixListener> {
        Ok(SmolUnixListener {
            listener: Async::new(UnixListener::bind(path)?)?,
            path: path.clone(),
            _unlink: Some(Unlink(path.clone())),
        })
    }
}

impl Listener for SmolUnixListener {
    type Addr = PathBuf;
    type Reader = SmolUnixReader;
    type Writer = SmolUnixWriter;
    type Connecting = Ready<io::Result<(SmolUnixReader, SmolUnixWriter)>>;

    async fn accept(&mut self) -> io::Result<(Self::Connecting, PathBuf)> {
        let (stream, peer) = self.listener.accept().await?;
        Ok((ready(Ok(split(stream))), peer_path(&peer)))
    }

    fn local_addr(&self) -> io::Result<PathBuf> {
        Ok(self.path.clone())
    }
}
