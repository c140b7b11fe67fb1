//! Counters a test or a benchmark can read to see how a connection batches its I/O and how
//! much buffer memory it holds, without timing anything.

use std::sync::atomic::Ordering;

use crate::io::IoCounters;

/// What one connection (or, in [`ServerStats`](crate::ServerStats), all of a server's) has
/// done: frames and syscalls each way, and the buffer memory held now.
///
/// The writer counts a batch (its frames, writes and bytes) once the batch's write returns.
/// Over a fast transport (shared memory, in process) the peer can answer before that, so a
/// caller can hold a reply whose request is not counted yet: a test that compares counters
/// after calls waits for them to settle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Frames written to the transport (or handed to it whole, in process).
    pub frames_written: u64,
    /// Write calls (one vectored write syscall each on TCP; one hand-over of frames in
    /// process) that moved bytes.
    pub writes: u64,
    /// Frames read and decoded.
    pub frames_read: u64,
    /// Read calls that returned bytes (or frames, in process).
    pub reads: u64,
    /// Bytes written to the transport (frame headers included; in process, the bytes the
    /// frames handed over stand for).
    pub bytes_written: u64,
    /// Bytes read from the transport.
    pub bytes_read: u64,
    /// Times the writer yielded to the scheduler before writing a small batch, because callers
    /// it had just woken were expected to queue more (zero with one call in flight: nothing
    /// is expected then, so nothing waits).
    pub coalesce_yields: u64,
    /// Writes made by the task that queued the frames, while the connection's writer task
    /// was parked with nothing to write: a lone call's caller writing its request, the
    /// server's reader or the only handler running writing replies. Each one spared a
    /// wake-up of the writer task, one task hop per call when calls come one at a time.
    /// Included in `writes`.
    pub direct_writes: u64,
    /// Times a task producing frames (a caller, a handler, the server's reader) waited
    /// because the connection's queue (or the server's total) was at its `max_queued_bytes`
    /// limit: the peer reads slower than this side writes.
    pub queue_full_waits: u64,
    /// Times the client's deadline timer woke from a sleep (a tick's, or one until the
    /// earliest deadline, cut short by a sooner one); zero on a server, whose timers are
    /// not per connection.
    pub timer_wakeups: u64,
    /// Frames written with a compressed body: nonzero once compression was negotiated (both
    /// sides configured it, with an algorithm in common) and a body above its threshold went
    /// out.
    pub frames_compressed: u64,
    /// Frames read with a compressed body.
    pub frames_decompressed: u64,
    /// Bytes of read and write buffer memory held now (capacity, not contents).
    pub buffered_bytes: usize,
}

impl ConnectionStats {
    /// Frames per write: how well writes were batched (0 before the first write).
    pub fn frames_per_write(&self) -> f64 {
        ratio(self.frames_written, self.writes)
    }

    /// Frames per read (0 before the first read).
    pub fn frames_per_read(&self) -> f64 {
        ratio(self.frames_read, self.reads)
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Self) {
        self.frames_written += other.frames_written;
        self.writes += other.writes;
        self.frames_read += other.frames_read;
        self.reads += other.reads;
        self.bytes_written += other.bytes_written;
        self.bytes_read += other.bytes_read;
        self.coalesce_yields += other.coalesce_yields;
        self.direct_writes += other.direct_writes;
        self.queue_full_waits += other.queue_full_waits;
        self.timer_wakeups += other.timer_wakeups;
        self.frames_compressed += other.frames_compressed;
        self.frames_decompressed += other.frames_decompressed;
        self.buffered_bytes += other.buffered_bytes;
    }

    /// The change from `earlier` to these counts (buffer memory is taken as it is now).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            frames_written: self.frames_written.saturating_sub(earlier.frames_written),
            writes: self.writes.saturating_sub(earlier.writes),
            frames_read: self.frames_read.saturating_sub(earlier.frames_read),
            reads: self.reads.saturating_sub(earlier.reads),
            bytes_written: self.bytes_written.saturating_sub(earlier.bytes_written),
            bytes_read: self.bytes_read.saturating_sub(earlier.bytes_read),
            coalesce_yields: self.coalesce_yields.saturating_sub(earlier.coalesce_yields),
            direct_writes: self.direct_writes.saturating_sub(earlier.direct_writes),
            queue_full_waits: self
                .queue_full_waits
                .saturating_sub(earlier.queue_full_waits),
            timer_wakeups: self.timer_wakeups.saturating_sub(earlier.timer_wakeups),
            frames_compressed: self
                .frames_compressed
                .saturating_sub(earlier.frames_compressed),
            frames_decompressed: self
                .frames_decompressed
                .saturating_sub(earlier.frames_decompressed),
            buffered_bytes: self.buffered_bytes,
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl From<&IoCounters> for ConnectionStats {
    fn from(c: &IoCounters) -> Self {
        Self {
            frames_written: c.frames_written.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            frames_read: c.frames_read.load(Ordering::Relaxed),
            reads: c.reads.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            bytes_read: c.bytes_read.load(Ordering::Relaxed),
            coalesce_yields: c.coalesce_yields.load(Ordering::Relaxed),
            direct_writes: c.direct_writes.load(Ordering::Relaxed),
            queue_full_waits: c.queue_full_waits.load(Ordering::Relaxed),
            timer_wakeups: c.timer_wakeups.load(Ordering::Relaxed),
            frames_compressed: c.frames_compressed.load(Ordering::Relaxed),
            frames_decompressed: c.frames_decompressed.load(Ordering::Relaxed),
            buffered_bytes: c.write_buffered.load(Ordering::Relaxed)
                + c.read_buffered.load(Ordering::Relaxed),
        }
    }
}
