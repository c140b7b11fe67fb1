//! The shared-memory transport's client side against a hostile server: its handshake over the
//! socket (the announcement of the ring size, with the region's descriptor attached), and its
//! rings, whose peer indices, flags and bytes the server scribbles at will between the
//! client's reads and writes. The socket is an in-memory `Bell` that carries descriptors; the
//! region is real anonymous memory (a memfd, sealed against resizing unless the input says
//! otherwise) mapped by the client, which this target (the server) writes and reads with plain
//! file I/O through its own descriptor.
//!
//! The client never panics and never touches memory outside its rings. The handshake succeeds
//! exactly when the announcement is well formed, carries exactly one descriptor, of a region
//! sealed against shrinking and growing, of the announced size, with both ring headers intact,
//! and then acknowledges; otherwise it fails with a typed error (`InvalidData`) and
//! acknowledges nothing. Each read and write does what a model of the ring says, byte for byte
//! over the whole mapping: a read takes exactly `min(asked, published)` bytes from the ring's
//! next positions (so never more than the ring holds), or fails with `InvalidData` when the
//! server's index claims more than the ring holds, or ends when the server closed the ring or
//! hung up, or waits (parked) for a wake-up; a write takes what fits after the server's index,
//! or waits parked while the ring is full, and fails once closed or once the server hung up;
//! only the client's own indices and flags change, and the socket carries one wake-up for each
//! parked peer it found.
//!
//! Input: a setup byte (bit 0: rings of 8 KiB, else 4 KiB; bit 1: the announcement's magic is
//! the next 4 bytes; bit 2: the announced ring size is the next `u32`; bit 3: the announced
//! descriptor count is the next `u32` (else 1); bit 4: the region is not sealed; bits 5 and 6:
//! the header of ring 0 (the client's) or ring 1 (the server's) is scribbled by the next byte;
//! bit 7: a second descriptor comes with the first), its fields, then operations of one byte
//! each with their arguments (see `run`).
#![no_main]

use std::{
    collections::VecDeque,
    fs::File,
    future::Future,
    io::{self, IoSlice},
    os::{
        fd::{BorrowedFd, OwnedFd},
        unix::fs::FileExt,
    },
    path::{Path, PathBuf},
    pin::{pin, Pin},
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
};

use flumen_shm::{Bell, Shm, ShmConfig, ShmReader, ShmWriter, MAX_RING_CAPACITY};
use flumen_stream::Transport;
use futures_io::{AsyncRead, AsyncWrite};
use libfuzzer_sys::fuzz_target;

// A ring's layout, as `transports/shm/src/ring.rs` documents it: a header, then `capacity`
// data bytes. Ring 0 carries what the client sends, ring 1 what the server sends.
const HEADER: usize = 256;
const MAGIC: u64 = u64::from_le_bytes(*b"FLMNRING");
const CAPACITY: usize = 8;
const TAIL: usize = 64;
const HEAD: usize = 128;
const READER_PARKED: usize = 192;
const WRITER_PARKED: usize = 196;
const CLOSED: usize = 200;
/// The client's sending ring, and its receiving ring.
const OUT: usize = 0;
const IN: usize = 1;

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    let setup = input.u8();
    let capacity = if setup & 1 == 0 { 4096 } else { 8192 };
    let magic = if setup & 2 == 0 {
        *b"FSHM"
    } else {
        input.u32().to_le_bytes()
    };
    let announced = if setup & 4 == 0 {
        capacity as u32
    } else {
        input.u32()
    };
    let declared_fds = if setup & 8 == 0 { 1 } else { input.u32() };
    let unsealed = setup & 16 != 0;
    let extra_fd = setup & 128 != 0;
    let mut model = Model::new(capacity);
    let mut scribbled = false;
    for (bit, ring) in [(32, OUT), (64, IN)] {
        if setup & bit != 0 {
            model.scribble_header(ring, input.u8());
            scribbled = true;
        }
    }

    // The server's region, then its announcement on the socket, the descriptor attached.
    let file = RingFile::create(&model.mirror, !unsealed);
    let line = Arc::new(Mutex::new(Line::default()));
    {
        let mut line = line.lock().unwrap();
        line.incoming.extend(magic);
        line.incoming.extend(announced.to_le_bytes());
        line.incoming.extend(declared_fds.to_le_bytes());
        line.fds.push(file.file.try_clone().expect("a second descriptor").into());
        if extra_fd {
            line.fds.push(file.file.try_clone().expect("a third descriptor").into());
        }
    }
    let expected = if magic != *b"FSHM"
        || !(announced as usize).is_power_of_two()
        || !(4096..=MAX_RING_CAPACITY).contains(&(announced as usize))
        || declared_fds != 1
        || extra_fd
        || unsealed
        // A region of another size, or a ring header that is not the creator's.
        || announced as usize != capacity
        || scribbled
    {
        Err(io::ErrorKind::InvalidData)
    } else {
        Ok(())
    };

    *NEXT_BELL.lock().unwrap() = Some(line.clone());
    let transport = Shm::<FakeBell>::new(ShmConfig::default().spin_checks(0));
    let addr = PathBuf::from("listener");
    let mut cx = Context::from_waker(Waker::noop());
    let mut connect = pin!(transport.connect(&addr));
    let connected = match connect.as_mut().poll(&mut cx) {
        Poll::Ready(result) => result,
        Poll::Pending => {
            // It waits for more of the announcement: the server hangs up.
            line.lock().unwrap().hung_up = true;
            match connect.as_mut().poll(&mut cx) {
                Poll::Ready(result) => result,
                Poll::Pending => panic!("the handshake waits on a server that hung up"),
            }
        }
    };
    let (reader, writer) = match (expected, connected) {
        (Ok(()), Ok(halves)) => halves,
        (Err(kind), Err(e)) => {
            assert_eq!(e.kind(), kind, "the handshake failed with {e}");
            assert!(
                line.lock().unwrap().written.is_empty(),
                "a refused handshake was acknowledged"
            );
            return;
        }
        (expected, connected) => panic!(
            "the handshake should end {expected:?}, it ended {:?}",
            connected.map(drop)
        ),
    };
    assert_eq!(line.lock().unwrap().written, [1u8], "the acknowledgement");
    // Checking the rings changed nothing in them.
    model.check(&file, &line);
    run(&mut input, &mut model, &file, &line, reader, writer);
});

/// Applies the operations left in `input`, each followed by a check of the whole mapping and
/// of the socket against the model.
fn run(
    input: &mut Cursor<'_>,
    model: &mut Model,
    file: &RingFile,
    line: &Mutex<Line>,
    mut reader: ShmReader<FakeBell>,
    mut writer: ShmWriter<FakeBell>,
) {
    let mut cx = Context::from_waker(Waker::noop());
    let cap = model.capacity;
    let mut pattern = 0u8;
    while let Some(op) = input.op() {
        match op % 12 {
            // The server writes bytes into its ring, from a position on, wrapping.
            0 => {
                let start = usize::from(input.u16());
                let len = usize::from(input.u8());
                let bytes = input.take(len);
                let data = model.data(IN);
                for (i, &byte) in bytes.iter().enumerate() {
                    model.mirror[data + (start + i) % cap] = byte;
                }
                file.write(data, &model.mirror[data..data + cap]);
            }
            // The server publishes bytes: a count past the client's position (past the ring's
            // size, a lie), or any index at all.
            1 => {
                let tail = model.head.wrapping_add(u64::from(input.u16()));
                model.poke_u64(file, IN, TAIL, tail);
            }
            2 => {
                let tail = input.u64();
                model.poke_u64(file, IN, TAIL, tail);
            }
            // The client reads.
            3 => {
                let asked = usize::from(input.u16());
                read(model, &mut reader, &mut cx, asked);
            }
            // The server closes its ring (or reopens it).
            4 => {
                let closed = u32::from(input.u8());
                model.poke_u32(file, IN, CLOSED, closed);
            }
            // The server reads the client's ring: up to a count behind the client's position
            // (past the ring's size, a lie), or any index at all.
            5 => {
                let head = model.tail.wrapping_sub(u64::from(input.u16()));
                model.poke_u64(file, OUT, HEAD, head);
            }
            6 => {
                let head = input.u64();
                model.poke_u64(file, OUT, HEAD, head);
            }
            // The client writes, in one slice or two.
            7 => {
                let len = usize::from(input.u16());
                let split = input.u16();
                let bytes: Vec<u8> = (0..len)
                    .map(|i| pattern.wrapping_add(i as u8).wrapping_mul(31))
                    .collect();
                pattern = pattern.wrapping_add(1);
                let at = usize::from(split >> 1) % (len + 1);
                let slices: Vec<&[u8]> = if split & 1 == 0 {
                    vec![&bytes[..]]
                } else {
                    vec![&bytes[..at], &bytes[at..]]
                };
                write(model, &mut writer, &mut cx, &slices);
            }
            // The server rings the socket, or hangs up.
            8 => {
                let what = input.u8();
                let mut line = line.lock().unwrap();
                let rings = usize::from(what & 7);
                line.incoming.extend(std::iter::repeat_n(1, rings));
                model.queued += rings;
                if what & 0x80 != 0 {
                    line.hung_up = true;
                    model.hung_up = true;
                }
            }
            // The client closes its sending half.
            9 => {
                let polled = Pin::new(&mut writer).poll_close(&mut cx);
                assert!(matches!(polled, Poll::Ready(Ok(()))), "close: {polled:?}");
                if !model.closed {
                    model.closed = true;
                    model.set_u32(OUT, CLOSED, 1);
                    model.rung += 1;
                }
            }
            // The server says it waits: for room in its ring, for bytes in the client's.
            10 => {
                let (writer_parked, reader_parked) = (input.u8(), input.u8());
                model.poke_u32(file, IN, WRITER_PARKED, u32::from(writer_parked));
                model.poke_u32(file, OUT, READER_PARKED, u32::from(reader_parked));
            }
            // The server scribbles over what only the client writes: it keeps its own counts,
            // and writes its fields again when it next uses them.
            _ => {
                let which = input.u8();
                let value = input.u64();
                match which % 5 {
                    0 => model.poke_u64(file, IN, HEAD, value),
                    1 => model.poke_u64(file, OUT, TAIL, value),
                    2 => model.poke_u32(file, IN, READER_PARKED, value as u32),
                    3 => model.poke_u32(file, OUT, WRITER_PARKED, value as u32),
                    _ => model.poke_u32(file, OUT, CLOSED, value as u32),
                }
            }
        }
        model.check(file, line);
    }
}

/// One read of `asked` bytes, checked against the model.
fn read(model: &mut Model, reader: &mut ShmReader<FakeBell>, cx: &mut Context<'_>, asked: usize) {
    let cap = model.capacity;
    let mut buf = vec![0u8; asked];
    let polled = Pin::new(&mut *reader).poll_read(cx, &mut buf);
    let available = model.get_u64(IN, TAIL).wrapping_sub(model.head);
    if available > cap as u64 {
        // An index past what the ring holds: refused, nothing read, nothing written.
        assert!(
            matches!(&polled, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::InvalidData),
            "{available} bytes published in a ring of {cap}: {polled:?}"
        );
        return;
    }
    if available > 0 || asked == 0 {
        let n = asked.min(available as usize);
        assert!(
            matches!(polled, Poll::Ready(Ok(got)) if got == n),
            "{asked} bytes asked, {available} published: {polled:?}"
        );
        assert!(n <= cap);
        let data = model.data(IN);
        for (i, &byte) in buf[..n].iter().enumerate() {
            let at = (model.head.wrapping_add(i as u64) % cap as u64) as usize;
            assert_eq!(
                byte,
                model.mirror[data + at],
                "byte {i} of a read at {}",
                model.head
            );
        }
        model.head = model.head.wrapping_add(n as u64);
        model.set_u64(IN, HEAD, model.head);
        // The server waited for room: the read made some, and says so.
        if model.get_u32(IN, WRITER_PARKED) != 0 {
            model.set_u32(IN, WRITER_PARKED, 0);
            model.rung += 1;
        }
        return;
    }
    // Nothing to read.
    model.set_u64(IN, HEAD, model.head);
    if model.get_u32(IN, CLOSED) != 0 {
        assert!(
            matches!(polled, Poll::Ready(Ok(0))),
            "a closed, empty ring: {polled:?}"
        );
        return;
    }
    // The client says it waits, takes the wake-ups (none brought bytes), and waits on.
    model.queued = 0;
    if model.hung_up {
        assert!(
            matches!(polled, Poll::Ready(Ok(0))),
            "an empty ring of a server that hung up: {polled:?}"
        );
        model.set_u32(IN, READER_PARKED, 0);
    } else {
        assert!(polled.is_pending(), "an empty ring: {polled:?}");
        model.set_u32(IN, READER_PARKED, 1);
    }
}

/// One write of `slices` (vectored if more than one), checked against the model.
fn write(
    model: &mut Model,
    writer: &mut ShmWriter<FakeBell>,
    cx: &mut Context<'_>,
    slices: &[&[u8]],
) {
    let cap = model.capacity;
    let polled = match slices {
        [one] => Pin::new(&mut *writer).poll_write(cx, one),
        _ => {
            let bufs: Vec<IoSlice<'_>> = slices.iter().map(|s| IoSlice::new(s)).collect();
            Pin::new(&mut *writer).poll_write_vectored(cx, &bufs)
        }
    };
    if model.closed {
        assert!(
            matches!(&polled, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe),
            "a write after close: {polled:?}"
        );
        return;
    }
    if slices.iter().all(|s| s.is_empty()) {
        assert!(
            matches!(polled, Poll::Ready(Ok(0))),
            "an empty write: {polled:?}"
        );
        return;
    }
    let head = model.get_u64(OUT, HEAD);
    if model.tail.wrapping_sub(head) < cap as u64 {
        // Room: each slice takes what fits, in order, until one does not fit whole.
        let data = model.data(OUT);
        let mut written = 0;
        for slice in slices {
            let used = model.tail.wrapping_sub(head) as usize;
            let n = slice.len().min(cap - used);
            for (i, &byte) in slice[..n].iter().enumerate() {
                let at = (model.tail.wrapping_add(i as u64) % cap as u64) as usize;
                model.mirror[data + at] = byte;
            }
            model.tail = model.tail.wrapping_add(n as u64);
            model.set_u64(OUT, TAIL, model.tail);
            written += n;
            if n < slice.len() {
                break;
            }
        }
        assert!(
            matches!(polled, Poll::Ready(Ok(n)) if n == written),
            "{written} bytes fit: {polled:?}"
        );
        // The server waited for bytes: it is told.
        if model.get_u32(OUT, READER_PARKED) != 0 {
            model.set_u32(OUT, READER_PARKED, 0);
            model.rung += 1;
        }
        return;
    }
    // Full (or the server's index is ahead of the client's, a lie that leaves no room): the
    // client says it waits, takes the wake-ups (none made room), and waits on.
    model.set_u32(OUT, WRITER_PARKED, 1);
    model.queued = 0;
    if model.hung_up {
        assert!(
            matches!(&polled, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe),
            "a full ring of a server that hung up: {polled:?}"
        );
    } else {
        assert!(polled.is_pending(), "a full ring: {polled:?}");
    }
}

/// What the mapping should hold and what the client should have done on the socket.
struct Model {
    capacity: usize,
    /// The whole mapping, byte for byte.
    mirror: Vec<u8>,
    /// The client's counts: bytes read from ring 1, written to ring 0; whether it closed.
    head: u64,
    tail: u64,
    closed: bool,
    /// Wake-ups the client sent (besides its acknowledgement); those waiting for it.
    rung: usize,
    queued: usize,
    /// Whether the server hung up its socket.
    hung_up: bool,
}

impl Model {
    /// A fresh mapping as the server creates it (ring 1's data filled with a pattern).
    fn new(capacity: usize) -> Self {
        let mut model = Self {
            capacity,
            mirror: vec![0; 2 * (HEADER + capacity)],
            head: 0,
            tail: 0,
            closed: false,
            rung: 0,
            queued: 0,
            hung_up: false,
        };
        for ring in [OUT, IN] {
            model.set_u64(ring, 0, MAGIC);
            model.set_u64(ring, CAPACITY, capacity as u64);
        }
        let data = model.data(IN);
        for (i, byte) in model.mirror[data..data + capacity].iter_mut().enumerate() {
            *byte = (i as u8).wrapping_mul(7).wrapping_add(3);
        }
        model
    }

    /// Spoils ring `ring`'s magic or its capacity, as `how` says.
    fn scribble_header(&mut self, ring: usize, how: u8) {
        if how & 1 == 0 {
            let magic = MAGIC ^ u64::from(how | 1);
            self.set_u64(ring, 0, magic);
        } else {
            let capacity = self.capacity as u64 ^ (u64::from(how) << 8 | 1);
            self.set_u64(ring, CAPACITY, capacity);
        }
    }

    fn base(&self, ring: usize) -> usize {
        ring * (HEADER + self.capacity)
    }

    fn data(&self, ring: usize) -> usize {
        self.base(ring) + HEADER
    }

    // The fields are atomics in the mapping: native byte order.
    fn get_u64(&self, ring: usize, field: usize) -> u64 {
        let at = self.base(ring) + field;
        u64::from_ne_bytes(self.mirror[at..at + 8].try_into().unwrap())
    }

    fn set_u64(&mut self, ring: usize, field: usize, value: u64) {
        let at = self.base(ring) + field;
        self.mirror[at..at + 8].copy_from_slice(&value.to_ne_bytes());
    }

    fn get_u32(&self, ring: usize, field: usize) -> u32 {
        let at = self.base(ring) + field;
        u32::from_ne_bytes(self.mirror[at..at + 4].try_into().unwrap())
    }

    fn set_u32(&mut self, ring: usize, field: usize, value: u32) {
        let at = self.base(ring) + field;
        self.mirror[at..at + 4].copy_from_slice(&value.to_ne_bytes());
    }

    /// The server writes a field, in the file and in the model.
    fn poke_u64(&mut self, file: &RingFile, ring: usize, field: usize, value: u64) {
        self.set_u64(ring, field, value);
        file.write(self.base(ring) + field, &value.to_ne_bytes());
    }

    fn poke_u32(&mut self, file: &RingFile, ring: usize, field: usize, value: u32) {
        self.set_u32(ring, field, value);
        file.write(self.base(ring) + field, &value.to_ne_bytes());
    }

    /// The mapping and the socket are as the model says.
    fn check(&self, file: &RingFile, line: &Mutex<Line>) {
        let mut actual = vec![0; self.mirror.len()];
        file.file
            .read_exact_at(&mut actual, 0)
            .expect("read the mapping back");
        if let Some(at) = (0..actual.len()).find(|&i| actual[i] != self.mirror[i]) {
            let ring = at / (HEADER + self.capacity);
            let offset = at % (HEADER + self.capacity);
            let place = if offset < HEADER {
                format!("header byte {offset}")
            } else {
                format!("data byte {}", offset - HEADER)
            };
            panic!(
                "ring {ring} {place}: the client left {:#04x}, the model {:#04x}",
                actual[at], self.mirror[at]
            );
        }
        let line = line.lock().unwrap();
        assert_eq!(line.written.len(), 1 + self.rung, "wake-ups sent");
        assert!(line.written.iter().all(|&b| b == 1));
        assert_eq!(line.incoming.len(), self.queued, "wake-ups taken");
    }
}

/// The server's file, named only until the client has mapped it (or failed to).
struct RingFile {
    file: File,
}

impl RingFile {
    /// Anonymous memory holding `contents`, sealed against resizing if `sealed`.
    fn create(contents: &[u8], sealed: bool) -> Self {
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd = rustix::fs::memfd_create(
            "flumen-fuzz-shm",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .expect("create the region");
        let file = File::from(fd);
        file.write_all_at(contents, 0).expect("fill the region");
        if sealed {
            rustix::fs::fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::GROW)
                .expect("seal the region");
        }
        Self { file }
    }

    fn write(&self, offset: usize, bytes: &[u8]) {
        self.file
            .write_all_at(bytes, offset as u64)
            .expect("write the region");
    }
}

/// The socket as the client sees it.
#[derive(Debug, Default)]
struct Line {
    /// What the server sent and the client has not read.
    incoming: VecDeque<u8>,
    /// Descriptors the server sent with its first bytes, until the client reads them.
    fds: Vec<OwnedFd>,
    /// The server closed its end.
    hung_up: bool,
    /// What the client wrote.
    written: Vec<u8>,
}

/// The line the next `FakeBell::connect` gets (the trait's `connect` takes only a path).
static NEXT_BELL: Mutex<Option<Arc<Mutex<Line>>>> = Mutex::new(None);

/// An in-memory socket: readable while the server sent something or hung up, always writable.
#[derive(Debug)]
struct FakeBell(Arc<Mutex<Line>>);

impl Bell for FakeBell {
    type Listener = ();

    async fn connect(_: &Path) -> io::Result<Self> {
        let line = NEXT_BELL.lock().unwrap().take();
        line.map(FakeBell)
            .ok_or_else(|| io::ErrorKind::ConnectionRefused.into())
    }

    fn bind(_: &Path) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    async fn accept(_: &()) -> io::Result<Self> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn poll_readable(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let line = self.0.lock().unwrap();
        if line.incoming.is_empty() && !line.hung_up {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn poll_writable(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut line = self.0.lock().unwrap();
        if line.incoming.is_empty() {
            return if line.hung_up {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(line.incoming.len());
        for (slot, byte) in buf.iter_mut().zip(line.incoming.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().written.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn try_write_with_fd(&self, _: &[u8], _: BorrowedFd<'_>) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn try_read_with_fds(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        let n = self.try_read(buf)?;
        if n > 0 {
            fds.append(&mut self.0.lock().unwrap().fds);
        }
        Ok(n)
    }
}

/// The fuzzer's bytes, taken from the front; zeros once they run out.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    /// The next operation, if any bytes are left.
    fn op(&mut self) -> Option<u8> {
        let (&byte, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(byte)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let taken = self.take(N);
        out[..taken.len()].copy_from_slice(taken);
        out
    }

    fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}
