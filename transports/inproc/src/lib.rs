//! An in-process transport for Flumen: client and server in one process, connected by
//! in-memory pipes instead of sockets, on any runtime (it needs no reactor).
//!
//! Each direction of a connection is a bounded pipe ([`PIPE_CAPACITY`]), so a reader that
//! stops reading stops its writer, as a socket would. After the handshake the core hands
//! frames over whole ([`TransportWrite::CARRIES_FRAMES`](flumen_stream::TransportWrite)):
//! nothing is encoded, decoded or copied, and the peer's handler gets the very bytes the
//! caller sent. Read as bytes (a wrapper that damages them, a test peer), the pipe is a byte
//! stream like any other.
//!
//! Servers bind a name ([`InProcAddr`]); binding `InProcAddr::any()` picks a fresh one.
#![warn(missing_docs)]

mod pipe;

use std::{
    collections::HashMap,
    fmt,
    future::{ready, Ready},
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
};

use flumen_stream::{Listener, Transport};
use parking_lot::Mutex;

pub use crate::pipe::{InProcReader, InProcWriter, PIPE_CAPACITY};

/// Connections a listener holds before the server accepts them; further connects wait.
pub const ACCEPT_BACKLOG: usize = 1024;

/// The in-process transport. Cheap to copy; every copy reaches the same listeners (they are
/// registered process-wide by name).
#[derive(Clone, Copy, Debug, Default)]
pub struct InProc;

/// The name a server binds and clients connect to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InProcAddr(String);

impl InProcAddr {
    /// The address `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// Binding it picks a fresh, unused name (like port 0).
    pub fn any() -> Self {
        Self(String::new())
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InProcAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inproc:{}", self.0)
    }
}

impl flumen_stream::AddressText for InProcAddr {
    fn to_text(&self) -> String {
        self.to_string()
    }
}

impl std::str::FromStr for InProcAddr {
    type Err = io::Error;

    /// `inproc:NAME`, or `NAME`.
    fn from_str(s: &str) -> io::Result<Self> {
        Ok(Self::new(s.strip_prefix("inproc:").unwrap_or(s)))
    }
}

type Incoming = (InProcReader, InProcWriter);

/// The listeners of this process, by name.
fn registry() -> &'static Mutex<HashMap<String, async_channel::Sender<Incoming>>> {
    static LISTENERS: OnceLock<Mutex<HashMap<String, async_channel::Sender<Incoming>>>> =
        OnceLock::new();
    LISTENERS.get_or_init(Default::default)
}

/// A bound in-process listener; dropping it frees its name, and connections not yet
/// accepted are refused (their clients read the end of the stream).
#[derive(Debug)]
pub struct InProcListener {
    addr: InProcAddr,
    incoming: async_channel::Receiver<Incoming>,
}

impl Drop for InProcListener {
    fn drop(&mut self) {
        registry().lock().remove(&self.addr.0);
    }
}

impl Transport for InProc {
    type Addr = InProcAddr;
    type Reader = InProcReader;
    type Writer = InProcWriter;
    type Listener = InProcListener;

    async fn connect(&self, addr: &InProcAddr) -> io::Result<(InProcReader, InProcWriter)> {
        let listener = registry().lock().get(&addr.0).cloned();
        let Some(listener) = listener else {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("no in-process listener named {addr}"),
            ));
        };
        let (to_server, from_client) = pipe::pipe();
        let (to_client, from_server) = pipe::pipe();
        listener
            .send((from_client, to_client))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::ConnectionRefused, "listener closed"))?;
        Ok((from_server, to_server))
    }

    async fn bind(&self, addr: &InProcAddr) -> io::Result<InProcListener> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mut listeners = registry().lock();
        let name = match addr.0.as_str() {
            "" => loop {
                let name = format!("any-{}", NEXT.fetch_add(1, Ordering::Relaxed));
                if !listeners.contains_key(&name) {
                    break name;
                }
            },
            name if listeners.contains_key(name) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{addr} is bound already"),
                ))
            }
            name => name.to_owned(),
        };
        let (sender, incoming) = async_channel::bounded(ACCEPT_BACKLOG);
        listeners.insert(name.clone(), sender);
        Ok(InProcListener {
            addr: InProcAddr(name),
            incoming,
        })
    }
}

impl Listener for InProcListener {
    type Addr = InProcAddr;
    type Reader = InProcReader;
    type Writer = InProcWriter;
    type Connecting = Ready<io::Result<(InProcReader, InProcWriter)>>;

    async fn accept(&mut self) -> io::Result<(Self::Connecting, InProcAddr)> {
        let halves = self
            .incoming
            .recv()
            .await
            .map_err(|_| io::Error::other("in-process listener closed"))?;
        Ok((ready(Ok(halves)), InProcAddr::new("client")))
    }

    fn local_addr(&self) -> io::Result<InProcAddr> {
        Ok(self.addr.clone())
    }
}
