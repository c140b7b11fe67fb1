//! A shared-memory transport for Flumen, for processes on one host: `TokioShm` behind the
//! `tokio` feature, `SmolShm` behind the `smol` feature.
//!
//! A connection is a Unix socket plus a region of memory mapped by both processes that holds
//! two bounded rings, one per direction ([`ShmConfig::ring_capacity`] bytes each). Frames go
//! through the rings, copied once in and once out, with no system call while both sides are
//! busy. The socket carries the rest:
//!
//! - the handshake: the server creates the region as anonymous memory (`memfd_create` on
//!   Linux), seals it against shrinking and growing, and passes its descriptor with the ring
//!   size (`SCM_RIGHTS`); the client checks the seals, the size and the ring headers before it
//!   acknowledges. Nothing is left on a file system, and a peer cannot resize the region under
//!   the other's mapping (which would make its next access a bus error);
//! - wake-ups: a side that finds its ring empty (or full) says so in the ring's header and
//!   waits for a byte on the socket, which the other side sends only then;
//! - liveness: when either process ends, crashed or not, the kernel closes its socket, and the
//!   other side reads the end of the connection, which fails every pending call.
//!
//! The peer is another process and may be broken or hostile: every byte read from the region
//! is copied into private memory with volatile loads before it is looked at, and every index
//! the peer publishes is checked against the ring's size on every use; a bad one is an
//! `InvalidData` error that ends that connection alone.
//!
//! The address is the listener's socket path, as with the Unix transport. All `unsafe` code
//! (the mapping and the copies in and out of it) is in the `ring` module.
#![warn(missing_docs)]
#![cfg(unix)]

mod bell;
mod region;
mod ring;

use std::{
    fs::File,
    future::Future,
    io,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
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

    /// Where a listener creates the regions' files on systems without sealed anonymous memory
    /// (each is removed as soon as it is open; Linux uses `memfd_create` and no directory).
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
        self.bell.wake_peer();
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

impl<B: Bell> ShmReader<B> {
    /// Takes bytes from the ring with `pop` (which returns how many it took, at most `max`),
    /// waiting while the ring is empty: spinning a little, then parked until the peer rings.
    /// Zero at the end (the peer closed its ring or is gone, and every byte was taken).
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        mut pop: impl FnMut(&Ring, &Mapping, &mut u64) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let side = &*self.side;
        loop {
            let n = pop(&side.inbound, &side.map, &mut self.head)?;
            if n > 0 || max == 0 {
                if side.inbound.take_parked(&side.map, false) {
                    side.ring();
                }
                return Poll::Ready(Ok(n));
            }
            if side.inbound.is_closed(&side.map) && !side.inbound.has_data(&side.map, self.head) {
                return Poll::Ready(Ok(0));
            }
            // The peer runs on another core: bytes often follow within a moment, sooner than
            // a wake-up through the socket would bring them.
            if spin(side.spin, || side.inbound.has_data(&side.map, self.head)) {
                continue;
            }
            side.inbound.park(&side.map, true);
            if side.inbound.has_data(&side.map, self.head) || side.inbound.is_closed(&side.map) {
                side.inbound.unpark(&side.map, true);
                continue;
            }
            match side.wakers.poll_bell(&side.bell, cx, bell::READER) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(bell::Rang::Bell)) => continue,
                // The peer is gone: what it wrote before is still read, then the end.
                Poll::Ready(Ok(bell::Rang::Gone)) => {
                    side.inbound.unpark(&side.map, true);
                    let n = pop(&side.inbound, &side.map, &mut self.head)?;
                    return Poll::Ready(Ok(n));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<B: Bell> AsyncRead for ShmReader<B> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let max = buf.len();
        self.poll_fill(cx, max, |ring, map, head| ring.pop(map, head, buf))
    }
}

impl<B: Bell> TransportRead for ShmReader<B> {
    // Bytes go from the ring straight into the read buffer's spare capacity: no zero-filling
    // first, and a read of a large frame's rest stops at its end.
    const READS_UNINIT: bool = true;

    fn poll_read_buf(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut bytes::BytesMut,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        self.poll_fill(cx, max, |ring, map, head| {
            ring.pop_into(map, head, buf, max)
        })
    }
}

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

/// The server's announcement: magic, ring capacity, descriptors attached (one, the region).
const ANNOUNCEMENT_LEN: usize = 12;
const ANNOUNCEMENT_MAGIC: &[u8; 4] = b"FSHM";

fn announcement(capacity: usize) -> [u8; ANNOUNCEMENT_LEN] {
    let mut bytes = [0u8; ANNOUNCEMENT_LEN];
    bytes[..4].copy_from_slice(ANNOUNCEMENT_MAGIC);
    bytes[4..8].copy_from_slice(&(capacity as u32).to_le_bytes());
    bytes[8..].copy_from_slice(&1u32.to_le_bytes());
    bytes
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// The ring capacity a server announced, if the announcement is well formed.
fn parse_announcement(bytes: &[u8; ANNOUNCEMENT_LEN]) -> io::Result<usize> {
    let field =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    if &bytes[..4] != ANNOUNCEMENT_MAGIC {
        return Err(invalid("not a Flumen shared-memory listener"));
    }
    let capacity = field(4) as usize;
    if !capacity.is_power_of_two()
        || !(4096..=MAX_RING_CAPACITY).contains(&capacity)
        || field(8) != 1
    {
        return Err(invalid("bad shared-memory announcement"));
    }
    Ok(capacity)
}

/// The server's side of the handshake: create, seal and map the region, and pass it to the
/// client with the announcement; wait for the client's acknowledgement.
async fn accept_handshake<B: Bell>(
    bell: B,
    config: ShmConfig,
) -> io::Result<(ShmReader<B>, ShmWriter<B>)> {
    let capacity = config.ring_capacity;
    let len = mapping_len(capacity);
    let region = region::create(len, &config.dir_or_default())?;
    let map = Mapping::new(&region, len)?;
    let (out, inbound) = rings(capacity, true);
    out.init(&map);
    inbound.init(&map);
    bell::write_all(&bell, &announcement(capacity), Some(region.as_fd())).await?;
    // The mapping keeps the memory; the descriptor is no longer needed on this side.
    drop(region);
    let mut ack = [0u8; 1];
    bell::read_exact(&bell, &mut ack).await?;
    if ack != [1] {
        return Err(invalid("client refused the shared memory"));
    }
    Ok(halves(map, (out, inbound), bell, config.spin_checks))
}

/// The client's side: take the announced region, check its seals, size and ring headers,
/// map it, acknowledge.
async fn connect_handshake<B: Bell>(
    bell: B,
    spin: u32,
) -> io::Result<(ShmReader<B>, ShmWriter<B>)> {
    let mut head = [0u8; ANNOUNCEMENT_LEN];
    let mut fds = Vec::new();
    bell::read_exact_with_fds(&bell, &mut head, &mut fds).await?;
    let capacity = parse_announcement(&head)?;
    let [fd]: [OwnedFd; 1] = fds
        .try_into()
        .map_err(|_| invalid("the announcement must carry exactly one descriptor"))?;
    let region = File::from(fd);
    region::check_sealed(&region)?;
    let map = Mapping::new(&region, mapping_len(capacity))?;
    drop(region);
    let (out, inbound) = rings(capacity, false);
    out.check(&map)?;
    inbound.check(&map)?;
    bell::write_all(&bell, &[1], None).await?;
    Ok(halves(map, (out, inbound), bell, spin))
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
