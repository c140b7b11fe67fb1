//! `pipe`: the socket ceiling every other figure is compared with.
//!
//! One task per side and per connection, no per-call tasks, channels or allocations. The client
//! keeps K length-prefixed frames `[len: u32][id: u64][payload]` outstanding and sends a new one
//! the moment each echo arrives; the server echoes every complete frame it has read with one
//! write per read, straight out of its read buffer. Both sides read and write concurrently in one
//! poll loop, so large payloads at high in-flight counts cannot deadlock on full socket buffers.

use std::{
    future::poll_fn,
    io,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll},
    time::Instant,
};

use futures_lite::{AsyncRead, AsyncWrite};

use crate::measure::{Tally, Window};

const HEADER: usize = 12;

/// Frames this process's pipe endpoints wrote, and the writes (syscalls) that carried them,
/// for the frames-per-write column.
pub(crate) static FRAMES_WRITTEN: AtomicU64 = AtomicU64::new(0);
pub(crate) static WRITES: AtomicU64 = AtomicU64::new(0);

/// This process's pipe counters as connection stats.
pub(crate) fn stats() -> flumen::stream::ConnectionStats {
    let mut stats = flumen::stream::ConnectionStats::default();
    stats.frames_written = FRAMES_WRITTEN.load(Ordering::Relaxed);
    stats.writes = WRITES.load(Ordering::Relaxed);
    stats
}

fn count_write(n: usize) {
    if n > 0 {
        WRITES.fetch_add(1, Ordering::Relaxed);
    }
}

fn buffer_len(frame: usize) -> usize {
    (256 * 1024).max(4 * frame)
}

/// Polls a write and a read side by side; `Ok(true)` if either moved.
fn step<T>(poll: Poll<io::Result<T>>, on: impl FnOnce(T)) -> io::Result<bool> {
    match poll {
        Poll::Ready(Ok(v)) => {
            on(v);
            Ok(true)
        }
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Ok(false),
    }
}

/// The echo side of one connection; returns when the client closes.
pub(crate) async fn serve<R, W>(mut reader: R, mut writer: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; buffer_len(HEADER)];
    // Bytes [w_start, w_end) are complete frames to echo; [w_end, filled) is a partial frame.
    let (mut w_start, mut w_end, mut filled) = (0, 0, 0);
    poll_fn(|cx: &mut Context<'_>| loop {
        let mut moved = false;
        if w_start < w_end {
            let poll = Pin::new(&mut writer).poll_write(cx, &buf[w_start..w_end]);
            moved |= step(poll, |n| {
                count_write(n);
                w_start += n;
            })?;
        }
        if w_start == w_end && w_end > 0 {
            buf.copy_within(w_end..filled, 0);
            filled -= w_end;
            (w_start, w_end) = (0, 0);
        }
        // Frames that arrived whole join the next write, as they are.
        while filled - w_end >= 4 {
            let len = u32::from_le_bytes(buf[w_end..w_end + 4].try_into().unwrap()) as usize;
            if len + 4 > buf.len() {
                buf.resize(buf_len_for(len), 0);
            }
            if filled - w_end < 4 + len {
                break;
            }
            w_end += 4 + len;
            FRAMES_WRITTEN.fetch_add(1, Ordering::Relaxed);
            moved = true;
        }
        if filled < buf.len() {
            let poll = Pin::new(&mut reader).poll_read(cx, &mut buf[filled..]);
            let mut eof = false;
            moved |= step(poll, |n| {
                eof = n == 0;
                filled += n;
            })?;
            if eof {
                return Poll::Ready(Ok(()));
            }
        }
        if !moved {
            return Poll::Pending;
        }
    })
    .await
}

fn buf_len_for(len: usize) -> usize {
    buffer_len(len + 4)
}

/// The load side of one connection: keeps `in_flight` frames of `payload` bytes outstanding
/// until the window ends, verifying every echo.
pub(crate) async fn load<R, W>(
    mut reader: R,
    mut writer: W,
    payload: usize,
    in_flight: usize,
    window: Window,
    tally: &mut Tally,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let frame = HEADER + payload;
    let body: Vec<u8> = (0..payload).map(|i| i as u8).collect();
    let mut out = Vec::with_capacity(in_flight * frame);
    let mut out_pos = 0;
    let mut input = vec![0u8; buffer_len(frame)];
    let (mut start, mut filled) = (0, 0);
    let mut sent_at = vec![Instant::now(); in_flight];
    let push = |out: &mut Vec<u8>, id: u64| {
        FRAMES_WRITTEN.fetch_add(1, Ordering::Relaxed);
        out.extend_from_slice(&((8 + payload) as u32).to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&body);
    };
    for id in 0..in_flight {
        push(&mut out, id as u64);
    }
    let mut outstanding = in_flight;
    poll_fn(|cx: &mut Context<'_>| loop {
        let mut moved = false;
        if out_pos < out.len() {
            let poll = Pin::new(&mut writer).poll_write(cx, &out[out_pos..]);
            moved |= step(poll, |n| {
                count_write(n);
                out_pos += n;
            })?;
            if out_pos == out.len() {
                out.clear();
                out_pos = 0;
            } else if out_pos >= 1 << 16 && out_pos * 2 >= out.len() {
                // The socket may never drain the whole queue at high load: drop what was
                // written once it is most of the queue (each byte moves at most once).
                out.drain(..out_pos);
                out_pos = 0;
            }
        }
        if filled == input.len() {
            input.copy_within(start..filled, 0);
            filled -= start;
            start = 0;
        }
        let poll = Pin::new(&mut reader).poll_read(cx, &mut input[filled..]);
        let mut eof = false;
        moved |= step(poll, |n| {
            eof = n == 0;
            filled += n;
        })?;
        if eof {
            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
        }
        while filled - start >= frame {
            let echo = &input[start..start + frame];
            let ok =
                echo[..4] == ((8 + payload) as u32).to_le_bytes() && echo[HEADER..] == body[..];
            let id = u64::from_le_bytes(echo[4..12].try_into().unwrap()) as usize % in_flight;
            start += frame;
            tally.record(&window, sent_at[id], ok);
            if Instant::now() < window.end {
                sent_at[id] = Instant::now();
                push(&mut out, id as u64);
            } else {
                outstanding -= 1;
            }
        }
        if outstanding == 0 {
            return Poll::Ready(Ok(()));
        }
        if !moved {
            return Poll::Pending;
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{atomic::AtomicU64, Arc},
        time::Duration,
    };

    use flumen::{
        stream::{Listener, Transport},
        tcp::SmolTcp,
    };

    use super::*;

    #[test]
    fn echoes_and_counts() {
        for (payload, in_flight) in [(32, 1), (32, 64), (64 * 1024, 64)] {
            let tally = smol::block_on(async {
                let mut listener = SmolTcp::default()
                    .bind(&"127.0.0.1:0".parse().unwrap())
                    .await
                    .unwrap();
                let addr = listener.local_addr().unwrap();
                let server = smol::spawn(async move {
                    let (connecting, _) = listener.accept().await.unwrap();
                    let (r, w) = connecting.await.unwrap();
                    serve(r, w).await
                });
                let (r, w) = SmolTcp::default().connect(&addr).await.unwrap();
                let window = Window::new(Duration::from_millis(100), Duration::from_millis(200));
                let mut tally = Tally::new(Arc::new(AtomicU64::new(0)));
                load(r, w, payload, in_flight, window, &mut tally)
                    .await
                    .unwrap();
                drop(server);
                tally
            });
            assert!(
                tally.calls > 0 && tally.errors == 0,
                "{payload} B x{in_flight}: {} calls",
                tally.calls
            );
        }
    }
}
