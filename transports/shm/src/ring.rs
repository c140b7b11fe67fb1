//! The shared memory itself: a file mapped into both processes, holding two rings (one per
//! direction). This is the crate's only `unsafe` code.
//!
//! A ring is a header, then `capacity` data bytes (a power of two):
//!
//! | Offset | Field | Written by |
//! |-------:|-------|------------|
//! | 0   | magic `FLMNRING` (u64) | creator |
//! | 8   | capacity (u64) | creator |
//! | 64  | `tail`: bytes ever written (u64) | producer |
//! | 128 | `head`: bytes ever read (u64) | consumer |
//! | 192 | `reader_parked` (u32): the consumer waits for a wake-up | consumer sets, producer clears |
//! | 196 | `writer_parked` (u32): the producer waits for room | producer sets, consumer clears |
//! | 200 | `closed` (u32): the producer wrote its last byte | producer |
//!
//! Each side keeps its own copy of the index it writes and only reads the other's: the peer
//! is another process and may be broken or hostile, so an index that says more than the
//! ring holds is an error, never trusted for a copy. Bytes cross the mapping only through
//! volatile loads and stores (16 bytes at a time on x86-64), never plain copies: the peer may
//! write while this side reads, and what this side checks is its private copy.
#![allow(unsafe_code)]

use std::{
    fs::File,
    io,
    mem::MaybeUninit,
    os::fd::AsRawFd,
    ptr::NonNull,
    sync::atomic::{fence, AtomicU32, AtomicU64, Ordering},
};

use bytes::BytesMut;

/// Bytes of a ring's header.
pub(crate) const HEADER: usize = 256;
const MAGIC: u64 = u64::from_le_bytes(*b"FLMNRING");
const TAIL: usize = 64;
const HEAD: usize = 128;
const READER_PARKED: usize = 192;
const WRITER_PARKED: usize = 196;
const CLOSED: usize = 200;

/// The size of a mapping holding two rings of `capacity` bytes each.
pub(crate) fn mapping_len(capacity: usize) -> usize {
    2 * (HEADER + capacity)
}

/// A file mapped shared, read and write, for as long as this lives.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory shared with another process; every access goes through
// atomics or through copies of ranges the ring protocol gives to one side at a time, so it may
// be used from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above; no method hands out references into the mapping.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps all of `file`, which must be `len` bytes long.
    pub(crate) fn new(file: &File, len: usize) -> io::Result<Self> {
        if file.metadata()?.len() != len as u64 || len < mapping_len(1) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared memory file has the wrong size",
            ));
        }
        // SAFETY: a fresh shared mapping of a file descriptor we own, length checked against
        // the file; nothing else in this process aliases it, and it is unmapped only in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, len })
    }

    /// The atomic at `offset`, which is in bounds and aligned for it.
    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        assert!(offset % 8 == 0 && offset + 8 <= self.len);
        // SAFETY: in bounds and 8-aligned (the mapping is page-aligned), and the memory is
        // only ever accessed atomically at this offset, from both processes.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        assert!(offset % 4 == 0 && offset + 4 <= self.len);
        // SAFETY: as in `u64_at`, for a 4-byte atomic.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    /// Copies `src` into the mapping at `offset` with volatile stores: the peer may touch the
    /// same bytes at the same time (it must not, but it may be hostile), and volatile accesses
    /// are never merged, split differently or elided by the compiler, whatever the peer does.
    /// [`Chunk`] by [`Chunk`] where the mapping is aligned for it (16 bytes a store on x86-64).
    fn write(&self, offset: usize, src: &[u8]) {
        assert!(offset
            .checked_add(src.len())
            .is_some_and(|end| end <= self.len));
        let (head, chunks, tail) = split_aligned(offset, src.len());
        let from = src.as_ptr();
        // SAFETY: `offset..offset + src.len()` is in the mapping (checked above), so every
        // address below is; chunks are at addresses aligned for them (the mapping is
        // page-aligned and `head` brings `offset` to a multiple of `CHUNK`); `src` is private
        // memory, read plainly (unaligned).
        unsafe {
            let to = self.ptr.as_ptr().add(offset);
            for i in 0..head {
                to.add(i).write_volatile(*from.add(i));
            }
            let (chunks_from, chunks_to) = (from.add(head), to.add(head).cast::<Chunk>());
            for i in 0..chunks {
                let chunk = chunks_from.add(CHUNK * i).cast::<Chunk>().read_unaligned();
                chunks_to.add(i).write_volatile(chunk);
            }
            let done = head + CHUNK * chunks;
            for i in 0..tail {
                to.add(done + i).write_volatile(*from.add(done + i));
            }
        }
    }

    /// Copies from the mapping at `offset` into `dst`, with volatile loads (see `write`): what
    /// the caller then checks and uses is its own copy, which the peer cannot change.
    fn read(&self, offset: usize, dst: &mut [u8]) {
        // SAFETY: `read_uninit` writes initialised bytes only, so `dst` stays initialised.
        let dst = unsafe { &mut *(std::ptr::from_mut(dst) as *mut [MaybeUninit<u8>]) };
        self.read_uninit(offset, dst);
    }

    /// [`read`](Self::read) into memory that may be uninitialised; all of `dst` is
    /// initialised afterwards.
    fn read_uninit(&self, offset: usize, dst: &mut [MaybeUninit<u8>]) {
        assert!(offset
            .checked_add(dst.len())
            .is_some_and(|end| end <= self.len));
        let (head, chunks, tail) = split_aligned(offset, dst.len());
        let to = dst.as_mut_ptr().cast::<u8>();
        // SAFETY: as in `write`, with the roles swapped: the mapping's range is in bounds and
        // its chunks aligned, read only with volatile loads; `dst` is private memory written
        // plainly (unaligned), `dst.len()` bytes of it.
        unsafe {
            let from = self.ptr.as_ptr().add(offset);
            for i in 0..head {
                *to.add(i) = from.add(i).read_volatile();
            }
            let (chunks_from, chunks_to) = (from.add(head).cast::<Chunk>(), to.add(head));
            for i in 0..chunks {
                let chunk = chunks_from.add(i).read_volatile();
                chunks_to
                    .add(CHUNK * i)
                    .cast::<Chunk>()
                    .write_unaligned(chunk);
            }
            let done = head + CHUNK * chunks;
            for i in 0..tail {
                *to.add(done + i) = from.add(done + i).read_volatile();
            }
        }
    }
}

/// What a copy in or out of the mapping moves a volatile access at a time: a vector register
/// on x86-64 (SSE2 is part of its baseline), a word elsewhere.
#[cfg(target_arch = "x86_64")]
type Chunk = std::arch::x86_64::__m128i;
#[cfg(not(target_arch = "x86_64"))]
type Chunk = u64;

const CHUNK: usize = std::mem::size_of::<Chunk>();

/// Splits `len` bytes from `offset` into bytes before the first offset aligned for a
/// [`Chunk`], whole aligned chunks, and bytes after them.
fn split_aligned(offset: usize, len: usize) -> (usize, usize, usize) {
    let head = ((CHUNK - offset % CHUNK) % CHUNK).min(len);
    let chunks = (len - head) / CHUNK;
    (head, chunks, len - head - CHUNK * chunks)
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are those mmap returned, unmapped exactly once; no reference
        // into the mapping outlives `self` (the accessors borrow it).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// One ring of a mapping: `index` 0 is the client's sending ring, 1 the server's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ring {
    base: usize,
    capacity: usize,
}

/// The other side broke the ring's rules.
fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("shared memory ring corrupt: {what}"),
    )
}

impl Ring {
    /// Ring `index` of `mapping`, whose rings hold `capacity` bytes each.
    pub(crate) fn new(index: usize, capacity: usize) -> Self {
        Self {
            base: index * (HEADER + capacity),
            capacity,
        }
    }

    /// Writes a fresh header (the creator, before the peer maps it).
    pub(crate) fn init(&self, map: &Mapping) {
        map.u64_at(self.base).store(MAGIC, Ordering::Relaxed);
        map.u64_at(self.base + 8)
            .store(self.capacity as u64, Ordering::Relaxed);
        for offset in [TAIL, HEAD] {
            map.u64_at(self.base + offset).store(0, Ordering::Relaxed);
        }
        for offset in [READER_PARKED, WRITER_PARKED, CLOSED] {
            map.u32_at(self.base + offset).store(0, Ordering::Relaxed);
        }
    }

    /// Checks the header the creator wrote.
    pub(crate) fn check(&self, map: &Mapping) -> io::Result<()> {
        let magic = map.u64_at(self.base).load(Ordering::Acquire);
        let capacity = map.u64_at(self.base + 8).load(Ordering::Acquire);
        if magic != MAGIC || capacity != self.capacity as u64 {
            return Err(corrupt("bad header"));
        }
        Ok(())
    }

    /// Producer: appends as much of `src` as fits after `tail` (this side's count of bytes
    /// written); returns how much, 0 if the ring is full.
    pub(crate) fn push(&self, map: &Mapping, tail: &mut u64, src: &[u8]) -> io::Result<usize> {
        let head = map.u64_at(self.base + HEAD).load(Ordering::Acquire);
        let used = tail.wrapping_sub(head);
        if used > self.capacity as u64 {
            return Err(corrupt("consumer index ahead of the producer"));
        }
        let n = src.len().min(self.capacity - used as usize);
        let start = (*tail % self.capacity as u64) as usize;
        let first = n.min(self.capacity - start);
        let data = self.base + HEADER;
        map.write(data + start, &src[..first]);
        map.write(data, &src[first..n]);
        *tail = tail.wrapping_add(n as u64);
        map.u64_at(self.base + TAIL).store(*tail, Ordering::Release);
        Ok(n)
    }

    /// Consumer: takes up to `dst.len()` bytes after `head` (this side's count of bytes read);
    /// returns how many, 0 if the ring is empty.
    pub(crate) fn pop(&self, map: &Mapping, head: &mut u64, dst: &mut [u8]) -> io::Result<usize> {
        let n = dst.len().min(self.available(map, *head)?);
        let start = (*head % self.capacity as u64) as usize;
        let first = n.min(self.capacity - start);
        let data = self.base + HEADER;
        map.read(data + start, &mut dst[..first]);
        map.read(data, &mut dst[first..n]);
        self.consumed(map, head, n);
        Ok(n)
    }

    /// Consumer: [`pop`](Self::pop) into `buf`'s spare capacity (no zero-filling first), at
    /// most `max` bytes and at most the spare capacity there is.
    pub(crate) fn pop_into(
        &self,
        map: &Mapping,
        head: &mut u64,
        buf: &mut BytesMut,
        max: usize,
    ) -> io::Result<usize> {
        let available = self.available(map, *head)?;
        let filled = buf.len();
        let spare = buf.spare_capacity_mut();
        let n = max.min(spare.len()).min(available);
        let start = (*head % self.capacity as u64) as usize;
        let first = n.min(self.capacity - start);
        let data = self.base + HEADER;
        map.read_uninit(data + start, &mut spare[..first]);
        map.read_uninit(data, &mut spare[first..n]);
        // SAFETY: the first `n` bytes of the spare capacity were just written.
        unsafe { buf.set_len(filled + n) };
        self.consumed(map, head, n);
        Ok(n)
    }

    /// Consumer: the bytes published after `head`, checked against the ring's size.
    fn available(&self, map: &Mapping, head: u64) -> io::Result<usize> {
        let tail = map.u64_at(self.base + TAIL).load(Ordering::Acquire);
        let available = tail.wrapping_sub(head);
        if available > self.capacity as u64 {
            return Err(corrupt("producer index past the ring"));
        }
        Ok(available as usize)
    }

    /// Consumer: `n` more bytes were taken; publishes the new `head`.
    fn consumed(&self, map: &Mapping, head: &mut u64, n: usize) {
        *head = head.wrapping_add(n as u64);
        map.u64_at(self.base + HEAD).store(*head, Ordering::Release);
    }

    /// Producer: whether the ring has room after `tail`.
    pub(crate) fn has_room(&self, map: &Mapping, tail: u64) -> bool {
        let head = map.u64_at(self.base + HEAD).load(Ordering::Acquire);
        tail.wrapping_sub(head) < self.capacity as u64
    }

    /// Consumer: whether bytes wait after `head`.
    pub(crate) fn has_data(&self, map: &Mapping, head: u64) -> bool {
        map.u64_at(self.base + TAIL).load(Ordering::Acquire) != head
    }

    /// Sets this side's parked flag (`reader`: the consumer's, else the producer's), then
    /// orders it before the check of the ring that follows (the peer publishes, then reads the
    /// flag: one of the two sees the other).
    pub(crate) fn park(&self, map: &Mapping, reader: bool) {
        map.u32_at(self.base + flag(reader))
            .store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Clears this side's parked flag.
    pub(crate) fn unpark(&self, map: &Mapping, reader: bool) {
        map.u32_at(self.base + flag(reader))
            .store(0, Ordering::Relaxed);
    }

    /// After publishing: whether the other side (`reader`: the consumer) was parked, clearing
    /// its flag; the caller then rings its bell.
    pub(crate) fn take_parked(&self, map: &Mapping, reader: bool) -> bool {
        fence(Ordering::SeqCst);
        let parked = map.u32_at(self.base + flag(reader));
        parked.load(Ordering::SeqCst) != 0 && parked.swap(0, Ordering::SeqCst) != 0
    }

    /// Producer: marks the ring finished (no byte follows).
    pub(crate) fn close(&self, map: &Mapping) {
        map.u32_at(self.base + CLOSED).store(1, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// Consumer: whether the producer finished.
    pub(crate) fn is_closed(&self, map: &Mapping) -> bool {
        map.u32_at(self.base + CLOSED).load(Ordering::Acquire) != 0
    }
}

fn flag(reader: bool) -> usize {
    if reader {
        READER_PARKED
    } else {
        WRITER_PARKED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(capacity: usize) -> (Mapping, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("flumen-ring-test-{}", fastrand::u64(..)));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        file.set_len(mapping_len(capacity) as u64).unwrap();
        let map = Mapping::new(&file, mapping_len(capacity)).unwrap();
        (map, path)
    }

    #[test]
    fn bytes_wrap_around_the_ring_in_order() {
        let (map, path) = mapping(64);
        let ring = Ring::new(1, 64);
        ring.init(&map);
        ring.check(&map).unwrap();
        let (mut tail, mut head) = (0u64, 0u64);
        let mut out = Vec::new();
        for round in 0..40u8 {
            let chunk: Vec<u8> = (0..23)
                .map(|i| round.wrapping_mul(31).wrapping_add(i))
                .collect();
            assert_eq!(ring.push(&map, &mut tail, &chunk).unwrap(), 23);
            let mut buf = [0u8; 23];
            assert_eq!(ring.pop(&map, &mut head, &mut buf).unwrap(), 23);
            assert_eq!(&buf[..], &chunk[..]);
            out.push(buf[0]);
        }
        // Full: only what fits is taken; empty: nothing is read.
        assert_eq!(ring.push(&map, &mut tail, &[1; 100]).unwrap(), 64);
        assert!(!ring.has_room(&map, tail));
        let mut buf = [0u8; 100];
        assert_eq!(ring.pop(&map, &mut head, &mut buf).unwrap(), 64);
        assert_eq!(ring.pop(&map, &mut head, &mut buf).unwrap(), 0);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn indices_a_broken_peer_writes_are_refused() {
        let (map, path) = mapping(64);
        let ring = Ring::new(0, 64);
        ring.init(&map);
        // The peer claims 1000 bytes in a 64-byte ring.
        map.u64_at(TAIL).store(1000, Ordering::Relaxed);
        let mut head = 0;
        assert!(ring.pop(&map, &mut head, &mut [0u8; 8]).is_err());
        // The peer claims to have read what was never written.
        map.u64_at(HEAD).store(500, Ordering::Relaxed);
        let mut tail = 0;
        assert!(ring.push(&map, &mut tail, &[0u8; 8]).is_err());
        // A header that is not ours.
        map.u64_at(0).store(7, Ordering::Relaxed);
        assert!(ring.check(&map).is_err());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_mapping_of_the_wrong_size_is_refused() {
        let (_, path) = mapping(64);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert!(Mapping::new(&file, mapping_len(128)).is_err());
        std::fs::remove_file(path).unwrap();
    }
}
