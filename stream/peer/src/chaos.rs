//! A chaos transport: wraps any transport and damages the bytes it carries on purpose
//! (delays, one-byte reads and writes, stalls, a cut connection, a corrupted byte), in
//! process, on any runtime (its timers are `async-io`'s). Tests put it under a client or a
//! server to check that every call still resolves, in time, with its own reply or a typed
//! error.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use async_io::Timer;
use flumen_stream::{Listener, Transport, TransportRead, TransportWrite};
use futures_io::{AsyncRead, AsyncWrite};

/// The damage done to each connection, in each direction separately (byte counts are per
/// direction: what this side read, what it wrote).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Every read and every write waits this long first.
    pub delay: Option<Duration>,
    /// Reads and writes move one byte at a time.
    pub split: bool,
    /// After this many bytes, the direction stalls for this long (once).
    pub stall: Option<(u64, Duration)>,
    /// After this many bytes read, the connection fails: reads and writes return
    /// `ConnectionReset`.
    pub cut_after: Option<u64>,
    /// The byte at this offset of what is read has its bits flipped.
    pub corrupt_at: Option<u64>,
}

/// A transport whose connections (opened and accepted) suffer `faults`.
#[derive(Clone, Debug)]
pub struct Chaos<T> {
    inner: T,
    faults: Faults,
}

impl<T> Chaos<T> {
    /// `inner` with `faults` on every connection.
    pub fn new(inner: T, faults: Faults) -> Self {
        Self { inner, faults }
    }
}

/// Counts a direction's bytes and applies its faults.
#[derive(Debug)]
struct Damage {
    faults: Faults,
    /// Bytes moved so far.
    moved: u64,
    /// The wait now in progress (delay or stall), if any.
    timer: Option<Timer>,
    /// The delay for the current operation was served.
    delayed: bool,
    stalled: bool,
}

impl Damage {
    fn new(faults: Faults) -> Self {
        Self {
            faults,
            moved: 0,
            timer: None,
            delayed: false,
            stalled: false,
        }
    }

    /// Ready once this operation may go ahead (its delay and any stall served); `Err` once
    /// the connection is cut; `Ok(limit)` is the most bytes it may move.
    fn poll_ready(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if let Some(timer) = &mut self.timer {
            ready!(Pin::new(timer).poll(cx));
            self.timer = None;
        }
        if let Some(cut) = self.faults.cut_after {
            if self.moved >= cut {
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
        }
        if let Some((after, stall)) = self.faults.stall {
            if !self.stalled && self.moved >= after {
                self.stalled = true;
                self.timer = Some(Timer::after(stall));
                return self.poll_ready(cx, want);
            }
        }
        if let Some(delay) = self.faults.delay {
            if !self.delayed {
                self.delayed = true;
                self.timer = Some(Timer::after(delay));
                return self.poll_ready(cx, want);
            }
        }
        let mut limit = if self.faults.split { 1 } else { want };
        // Stop at the next fault's offset, so that it applies exactly there.
        for at in [self.faults.cut_after, self.faults.stall.map(|(at, _)| at)]
            .into_iter()
            .flatten()
        {
            if at > self.moved {
                limit = limit.min((at - self.moved) as usize);
            }
        }
        Poll::Ready(Ok(limit.max(1).min(want)))
    }

    /// `n` bytes moved (`buf` holds them, for a read: corrupted here if their turn came).
    fn moved(&mut self, buf: &mut [u8]) {
        if let Some(at) = self.faults.corrupt_at {
            let n = buf.len() as u64;
            if (self.moved..self.moved + n).contains(&at) {
                buf[(at - self.moved) as usize] ^= 0xFF;
            }
        }
        self.moved += buf.len() as u64;
        self.delayed = false;
    }
}

/// The receiving half of a chaos connection.
#[derive(Debug)]
pub struct ChaosReader<R> {
    inner: R,
    damage: Damage,
}

/// The sending half of a chaos connection.
#[derive(Debug)]
pub struct ChaosWriter<W> {
    inner: W,
    damage: Damage,
}

/// A listener whose accepted connections suffer the faults.
#[derive(Debug)]
pub struct ChaosListener<L> {
    inner: L,
    faults: Faults,
}

/// An accepted connection's handshake, whose halves then suffer the faults.
#[derive(Debug)]
pub struct ChaosConnecting<F> {
    inner: Pin<Box<F>>,
    faults: Faults,
}

fn wrap<R, W>((reader, writer): (R, W), faults: Faults) -> (ChaosReader<R>, ChaosWriter<W>) {
    (
        ChaosReader {
            inner: reader,
            damage: Damage::new(faults),
        },
        ChaosWriter {
            inner: writer,
            // Corruption applies to what is read only.
            damage: Damage::new(Faults {
                corrupt_at: None,
                ..faults
            }),
        },
    )
}

impl<T: Transport> Transport for Chaos<T> {
    type Addr = T::Addr;
    type Reader = ChaosReader<T::Reader>;
    type Writer = ChaosWriter<T::Writer>;
    type Listener = ChaosListener<T::Listener>;

    async fn connect(&self, addr: &T::Addr) -> io::Result<(Self::Reader, Self::Writer)> {
        Ok(wrap(self.inner.connect(addr).await?, self.faults))
    }

    async fn bind(&self, addr: &T::Addr) -> io::Result<Self::Listener> {
        Ok(ChaosListener {
            inner: self.inner.bind(addr).await?,
            faults: self.faults,
        })
    }
}

impl<L: Listener> Listener for ChaosListener<L> {
    type Addr = L::Addr;
    type Reader = ChaosReader<L::Reader>;
    type Writer = ChaosWriter<L::Writer>;
    type Connecting = ChaosConnecting<L::Connecting>;

    async fn accept(&mut self) -> io::Result<(Self::Connecting, L::Addr)> {
        let (connecting, addr) = self.inner.accept().await?;
        let connecting = ChaosConnecting {
            inner: Box::pin(connecting),
            faults: self.faults,
        };
        Ok((connecting, addr))
    }

    fn local_addr(&self) -> io::Result<L::Addr> {
        self.inner.local_addr()
    }
}

impl<F, R, W> Future for ChaosConnecting<F>
where
    F: Future<Output = io::Result<(R, W)>>,
{
    type Output = io::Result<(ChaosReader<R>, ChaosWriter<W>)>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let halves = ready!(self.inner.as_mut().poll(cx))?;
        Poll::Ready(Ok(wrap(halves, self.faults)))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ChaosReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        let limit = ready!(this.damage.poll_ready(cx, buf.len()))?;
        let n = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf[..limit]))?;
        this.damage.moved(&mut buf[..n]);
        Poll::Ready(Ok(n))
    }
}

impl<R: TransportRead> TransportRead for ChaosReader<R> {}

/// Writes bytes (so that they can be damaged), whatever the inner writer carries.
impl<W: TransportWrite> TransportWrite for ChaosWriter<W> {}

impl<W: AsyncWrite + Unpin> AsyncWrite for ChaosWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        let limit = ready!(this.damage.poll_ready(cx, buf.len()))?;
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..limit]))?;
        this.damage.moved(&mut []);
        this.damage.moved += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
