//! The thin async layer shared by client and server drivers, one job per module: the outgoing
//! queue ([`outbox`]), the frames gathered for one write ([`batch`]), the read buffer
//! ([`read`]) and the writer task ([`writer`]); here, the queue's message and small helpers.

mod batch;
mod outbox;
mod read;
mod writer;

use std::{
    future::{poll_fn, Future},
    io,
    pin::Pin,
};

use bytes::{Bytes, BytesMut};
use futures_io::AsyncRead;
use futures_lite::FutureExt;

pub(crate) use self::batch::write_all;
pub(crate) use self::outbox::{outbox, Budget, Inbox, IoCounters, Outbox, Send as Sending};
pub use self::outbox::{DEFAULT_MAX_QUEUED_BYTES, DEFAULT_MAX_QUEUED_BYTES_TOTAL};
pub(crate) use self::read::ReadBuffer;
pub(crate) use self::writer::{write_loop, WriteWatch};
use crate::frame::{Frame, FrameHeader, HEADER_LEN};
pub(crate) use crate::signal::{Quiet, Stop, READER, TIMER, WRITER};

/// What a connection's writer task takes from its queue.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A frame; `header.len` equals `body.len()`.
    Frame(FrameHeader, Bytes),
    /// A frame whose body is up to three parts written back to back (metadata, message,
    /// attachment), so that none is copied to join them; `header.len` is their total length.
    /// Boxed, so that the common frame of one body moves as half as many bytes.
    Parts(FrameHeader, Box<[Bytes; 3]>),
    /// Write everything queued before this, close the write half, and stop the connection.
    Close,
}

impl Outgoing {
    /// A frame message for `body`, with the header's length set. The caller has checked the
    /// body against the peer's limit, which is a `u32`.
    pub(crate) fn frame(mut header: FrameHeader, body: Bytes) -> Self {
        header.len = body.len() as u32;
        Self::Frame(header, body)
    }

    /// What the message weighs against a queue's limit: its bytes on the wire.
    pub(crate) fn weight(&self) -> usize {
        HEADER_LEN
            + match self {
                Self::Frame(_, body) => body.len(),
                Self::Parts(header, _) => header.len as usize,
                Self::Close => 0,
            }
    }
}

impl From<Frame> for Outgoing {
    fn from(frame: Frame) -> Self {
        Self::Frame(frame.header, frame.body)
    }
}

/// Reads until `buf` holds at least `n` bytes.
pub(crate) async fn read_at_least<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    n: usize,
) -> io::Result<()> {
    let mut scratch = [0u8; 1024];
    while buf.len() < n {
        let got = poll_fn(|cx| Pin::new(&mut *r).poll_read(cx, &mut scratch)).await?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&scratch[..got]);
    }
    Ok(())
}

/// How long a side that closes a connection after queueing a `GoAway` keeps reading (and
/// discarding) what the peer still sends. Closing a TCP socket with unread input sends a reset,
/// which can destroy the `GoAway` before the peer reads it; draining until the peer closes its
/// side (or this long) lets the `GoAway` arrive. Bounds how long a closed connection keeps its
/// socket.
pub const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// The most bytes read and discarded while lingering after a `GoAway`, so that a peer that
/// keeps sending cannot keep a closed connection busy.
pub const CLOSE_LINGER_BYTES: usize = 1 << 20;

/// Reads and discards until the peer closes its side, the read fails, [`CLOSE_LINGER_BYTES`]
/// were read, or `until` completes (the caller's [`CLOSE_LINGER`] timer).
pub(crate) async fn linger<R: AsyncRead + Unpin>(r: &mut R, until: impl Future<Output = ()>) {
    let drain = async {
        let mut scratch = [0u8; 2048];
        let mut discarded = 0;
        while discarded < CLOSE_LINGER_BYTES {
            match poll_fn(|cx| Pin::new(&mut *r).poll_read(cx, &mut scratch)).await {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    };
    drain.or(until).await;
}
