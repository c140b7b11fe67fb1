//! A shared-memory transport for Flumen, for processes on one host: `TokioShm` behind the
//! `tokio` feature, `SmolShm` behind the `smol` feature.
//!
//! A connection is a Unix socket plus a file mapped by both processes that holds two bounded
//! rings, one per direction ([`ShmConfig::ring_capacity`] bytes each). Frames go through the
//! rings, copied once in and once out, with no system call while both sides are busy. The
//! socket carries the rest:
//!
//! - the handshake: the server creates the file (mode 0600, under `/dev/shm` where it exists),
//!   sends its path and the ring size, and removes it once the client has mapped it, so
//!   nothing is left behind whatever happens next;
//! - wake-ups: a side that finds its ring empty (or full) says so in the ring's header and
//!   waits for a byte on the socket, which the other side sends only then;
//! - liveness: when either process ends, crashed or not, the kernel closes its socket, and the
//!   other side reads the end of the connection, which fails every pending call.
//!
//! The address is the listener's socket path, as with the Unix transport. All `unsafe` code
//! (the mapping and the copies in and out of it) is in the `ring` module.
#![warn(missing_docs)]
#![cfg(unix)]

mod bell;
mod ring;

use std::{
    fs::{File, OpenOptions},
    future::Future,
    io,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use flumen_stream::{Listener, Transport, TransportRead, TransportWrite};
use futures_io::{AsyncRead, AsyncWrite};

pub use crate::bell::Bell;
#[cfg(feature = "smol")]
pub use crate::bell::SmolBell;
#[cfg(feature = "tokio")]
pub use crate::bell::TokioBell;
use crate::ring::{mapping_len, Mapping, Ring};

/// The default of [`ShmConfig::ring_capacity`]: 256 KiB each way.
pub const DEFAULT_RING_CAPACITY: usize = 256 * 1024;

/// The largest ring a client accepts from a server (a server asking for more is refused).
pub const MAX_RING_CAPACITY: usize = 64 * 1024 * 1024;

/// Settings of the shared-memory transport.
#[derive(Clone, Debug)]
pub struct ShmConfig {
    ring_capacity: usize,
    dir: Option<PathBuf>,
    spin_checks: u32,
}

impl Default for ShmConfig {
    fn default() -> Self {
        Self {
            ring_capacity: DEFAULT_RING_CAPACITY,
            dir: None,
            spin_checks: DEFAULT_SPIN_CHECKS,
        }
    }
}

impl ShmConfig {
    /// Bytes each ring holds (a listener's setting; rounded up to a power of two, at least
    /// 4 KiB, at most [`MAX_RING_CAPACITY`]). A writer that fills its ring waits for the
    /// reader. Default [`DEFAULT_RING_CAPACITY`].
    pub fn ring_capacity(mut self, bytes: usize) -> Self {
        self.ring_capacity = bytes.clamp(4096, MAX_RING_CAPACITY).next_power_of_two();
        self
    }

    /// How many times a side looks at a ring it found empty (or full), with a spin hint
    /// between looks, before it says it waits and sleeps until the peer rings the socket. The
    /// peer usually runs on another core: a short spin often sees its bytes without the two
    /// system calls of a wake-up, at the price of CPU spent spinning when it does not. 0 never
    /// spins. Default [`DEFAULT_SPIN_CHECKS`].
    pub fn spin_checks(mut self, checks: u32) -> Self {
        self.spin_checks = checks;
        self
    }

    /// Where a listener creates the mapped files (each is removed once both sides mapped it).
    /// Default `/dev/shm` if it is a directory, else the system's temporary directory.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    fn dir_or_default(&self) -> PathBuf {
        match &self.dir {
            Some(dir) => dir.clone(),
            None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        }
    }
}

/// The shared-memory transport over bell sockets of type `B` ([`TokioBell`], [`SmolBell`]).
#[derive(Debug)]
pub struct Shm<B> {
    config: ShmConfig,
    bell: std::marker::PhantomData<fn() -> B>,
}

impl<B> Clone for Shm<B> {
    fn clone(&self) -> Self {
        Self::new(self.config.clone())
    }
}

impl<B> Default for Shm<B> {
    fn default() -> Self {
        Self::new(ShmConfig::default())
    }
}

impl<B> Shm<B> {
    /// The transport with `config`.
    pub fn new(config: ShmConfig) -> Self {
        Self {
            config,
            bell: std::marker::PhantomData,
        }
    }
}

/// Shared memory on tokio. Must be used from within a tokio runtime.
#[cfg(feature = "tokio")]
pub type TokioShm = Shm<TokioBell>;

/// Shared memory on smol (async-io).
#[cfg(feature = "smol")]
pub type SmolShm = Shm<SmolBell>;

/// What both halves of one side of a connection share.
#[derive(Debug)]
struct Side<B> {
    map: Mapping,
    /// The ring this side writes.
    out: Ring,
    /// The ring this side reads.
    inbound: Ring,
    bell: B,
    wakers: Arc<bell::Wakers>,
    /// Checks of the ring before waiting on the bell.
    spin: u32,
}

impl<B: Bell> Side<B> {
    fn ring(&self) {
        // A full socket buffer means wake-ups are already waiting for the peer.
        let _ = self.bell.try_write(&[1]);
    }
}

/// The receiving half of a shared-memory connection.
#[derive(Debug)]
pub struct ShmReader<B: Bell> {
    side: Arc<Side<B>>,
    head: u64,
}

/// The sending half of a shared-memory connection; closing it tells the peer that no more
/// bytes follow.
#[derive(Debug)]
pub struct ShmWriter<B: Bell> {
    side: Arc<Side<B>>,
    tail: u64,
    closed: bool,
}

/// The two halves of one side of a connection over `map`, writing ring `out` and reading
/// ring `inbound`.
fn halves<B: Bell>(
    map: Mapping,
    (out, inbound): (Ring, Ring),
    bell: B,
    spin: u32,
) -> (ShmReader<B>, ShmWriter<B>) {
    let side = Arc::new(Side {
        map,
        out,
        inbound,
        bell,
        wakers: Arc::default(),
        spin,
    });
    let reader = ShmReader {
        side: side.clone(),
        head: 0,
    };
    let writer = ShmWriter {
        side,
        tail: 0,
        closed: false,
    };
    (reader, writer)
}

impl<B: Bell> AsyncRead for ShmReader<B> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let side = &*this.side;
        loop {
            let n = side.inbound.pop(&side.map, &mut this.head, buf)?;
            if n > 0 || buf.is_empty() {
                if side.inbound.take_parked(&side.map, false) {
                    side.ring();
                }
                return Poll::Ready(Ok(n));
            }
            if side.inbound.is_closed(&side.map) && !side.inbound.has_data(&side.map, this.head) {
                return Poll::Ready(Ok(0));
            }
            // The peer runs on another core: bytes often follow within a moment, sooner than
            // a wake-up through the socket would bring them.
            if spin(side.spin, || side.inbound.has_data(&side.map, this.head)) {
                continue;
            }
            side.inbound.park(&side.map, true);
            if side.inbound.has_data(&side.map, this.head) || side.inbound.is_closed(&side.map) {
                side.inbound.unpark(&side.map, true);
                continue;
            }
            match side.wakers.poll_bell(&side.bell, cx, bell::READER) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(bell::Rang::Bell)) => continue,
                // The peer is gone: what it wrote before is still read, then the end.
                Poll::Ready(Ok(bell::Rang::Gone)) => {
                    side.inbound.unpark(&side.map, true);
                    let n = side.inbound.pop(&side.map, &mut this.head, buf)?;
                    return Poll::Ready(Ok(n));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<B: Bell> TransportRead for ShmReader<B> {}

impl<B: Bell> TransportWrite for ShmWriter<B> {}

impl<B: Bell> ShmWriter<B> {
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let side = &*self.side;
        loop {
            if side.out.has_room(&side.map, self.tail)
                || spin(side.spin, || side.out.has_room(&side.map, self.tail))
            {
                return Poll::Ready(Ok(()));
            }
            side.out.park(&side.map, false);
            if side.out.has_room(&side.map, self.tail) {
                side.out.unpark(&side.map, false);
                return Poll::Ready(Ok(()));
            }
            match side.wakers.poll_bell(&side.bell, cx, bell::WRITER) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(bell::Rang::Bell)) => continue,
                Poll::Ready(Ok(bell::Rang::Gone)) => {
                    return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// After bytes were published: wakes the peer's reader if it waits.
    fn published(&self) {
        let side = &*self.side;
        if side.out.take_parked(&side.map, true) {
            side.ring();
        }
    }
}

impl<B: Bell> AsyncWrite for ShmWriter<B> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        std::task::ready!(self.poll_room(cx))?;
        let this = &mut *self;
        let n = this.side.out.push(&this.side.map, &mut this.tail, buf)?;
        this.published();
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        std::task::ready!(self.poll_room(cx))?;
        let this = &mut *self;
        let mut written = 0;
        for buf in bufs {
            let n = this.side.out.push(&this.side.map, &mut this.tail, buf)?;
            written += n;
            if n < buf.len() {
                break;
            }
        }
        this.published();
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closed {
            self.closed = true;
            self.side.out.close(&self.side.map);
            self.side.ring();
        }
        Poll::Ready(Ok(()))
    }
}

/// The default of [`ShmConfig::spin_checks`].
pub const DEFAULT_SPIN_CHECKS: u32 = 64;

/// Whether `ready` turned true within `checks` checks.
fn spin(checks: u32, mut ready: impl FnMut() -> bool) -> bool {
    for _ in 0..checks {
        std::hint::spin_loop();
        if ready() {
            return true;
        }
    }
    false
}

/// Ring 0 carries what the client sends, ring 1 what the server sends.
fn rings(capacity: usize, server: bool) -> (Ring, Ring) {
    let (client_out, server_out) = (Ring::new(0, capacity), Ring::new(1, capacity));
    if server {
        (server_out, client_out)
    } else {
        (client_out, server_out)
    }
}

/// Files created by this process, numbered so that names never repeat.
static CREATED: AtomicU64 = AtomicU64::new(0);

/// The server's side of the handshake: create, map and announce the file; remove it once the
/// client mapped it.
async fn accept_handshake<B: Bell>(
    bell: B,
    config: ShmConfig,
) -> io::Result<(ShmReader<B>, ShmWriter<B>)> {
    let capacity = config.ring_capacity;
    let path = config.dir_or_default().join(format!(
        "flumen-shm-{}-{}-{:016x}",
        std::process::id(),
        CREATED.fetch_add(1, Ordering::Relaxed),
        fastrand::u64(..)
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    // Removed on every path out of here: once mapped by both, it needs no name.
    let _unlink = Unlink(&path);
    file.set_len(mapping_len(capacity) as u64)?;
    let map = Mapping::new(&file, mapping_len(capacity))?;
    let (out, inbound) = rings(capacity, true);
    out.init(&map);
    inbound.init(&map);
    let name = path.as_os_str().as_encoded_bytes();
    let mut hello = Vec::with_capacity(12 + name.len());
    hello.extend_from_slice(b"FSHM");
    hello.extend_from_slice(&(capacity as u32).to_le_bytes());
    hello.extend_from_slice(&(name.len() as u32).to_le_bytes());
    hello.extend_from_slice(name);
    bell::write_all(&bell, &hello).await?;
    let mut ack = [0u8; 1];
    bell::read_exact(&bell, &mut ack).await?;
    if ack != [1] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "client refused the shared memory",
        ));
    }
    Ok(halves(map, (out, inbound), bell, config.spin_checks))
}

/// The client's side: map the announced file, check it, acknowledge.
async fn connect_handshake<B: Bell>(
    bell: B,
    spin: u32,
) -> io::Result<(ShmReader<B>, ShmWriter<B>)> {
    let mut head = [0u8; 12];
    bell::read_exact(&bell, &mut head).await?;
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    if &head[..4] != b"FSHM" {
        return Err(invalid("not a Flumen shared-memory listener"));
    }
    let capacity = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    let name_len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if !capacity.is_power_of_two()
        || !(4096..=MAX_RING_CAPACITY).contains(&capacity)
        || name_len > 4096
    {
        return Err(invalid("bad shared-memory announcement"));
    }
    let mut name = vec![0u8; name_len];
    bell::read_exact(&bell, &mut name).await?;
    let path = PathBuf::from(std::ffi::OsString::from_vec(name));
    let file: File = OpenOptions::new().read(true).write(true).open(&path)?;
    let map = Mapping::new(&file, mapping_len(capacity))?;
    let (out, inbound) = rings(capacity, false);
    out.check(&map)?;
    inbound.check(&map)?;
    bell::write_all(&bell, &[1]).await?;
    Ok(halves(map, (out, inbound), bell, spin))
}

use std::os::unix::ffi::OsStringExt;

/// Removes a path when dropped.
struct Unlink<'a>(&'a Path);

impl Drop for Unlink<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// Removes a listener's socket file when it goes.
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A shared-memory listener: a Unix socket listener whose connections finish a shared-memory
/// handshake. Dropping it removes its socket file.
#[derive(Debug)]
pub struct ShmListener<B: Bell> {
    listener: B::Listener,
    path: SocketFile,
    config: ShmConfig,
}

impl<B: Bell> Transport for Shm<B> {
    type Addr = PathBuf;
    type Reader = ShmReader<B>;
    type Writer = ShmWriter<B>;
    type Listener = ShmListener<B>;

    async fn connect(&self, path: &PathBuf) -> io::Result<(ShmReader<B>, ShmWriter<B>)> {
        connect_handshake(B::connect(path).await?, self.config.spin_checks).await
    }

    async fn bind(&self, path: &PathBuf) -> io::Result<ShmListener<B>> {
        Ok(ShmListener {
            listener: B::bind(path)?,
            path: SocketFile(path.clone()),
            config: self.config.clone(),
        })
    }
}

/// The handshake of an accepted connection.
pub type ShmConnecting<B> =
    Pin<Box<dyn Future<Output = io::Result<(ShmReader<B>, ShmWriter<B>)>> + Send>>;

impl<B: Bell> Listener for ShmListener<B> {
    type Addr = PathBuf;
    type Reader = ShmReader<B>;
    type Writer = ShmWriter<B>;
    type Connecting = ShmConnecting<B>;

    async fn accept(&mut self) -> io::Result<(ShmConnecting<B>, PathBuf)> {
        let bell = B::accept(&self.listener).await?;
        let connecting: ShmConnecting<B> = Box::pin(accept_handshake(bell, self.config.clone()));
        Ok((connecting, PathBuf::new()))
    }

    fn local_addr(&self) -> io::Result<PathBuf> {
        Ok(self.path.0.clone())
    }
}
