//! The client connection's tasks: handshake, reader, writer and deadline timer.

use std::{
    future::poll_fn,
    sync::{atomic::Ordering, Arc},
    task::Waker,
    time::Instant,
};

use bytes::Bytes;
use futures_lite::FutureExt;

use super::{Client, ClientConfig, Conn, Handle};
use crate::{
    body::{self, go_away_parts},
    call::CallTable,
    compress,
    error::{ConnectError, ConnectionError, ErrorCode},
    frame::{FrameDecoder, FrameHeader, FrameKind},
    hello::{Hello, HelloError, HELLO_LEN},
    io::{
        linger, outbox, read_at_least, write_all, write_loop, Outgoing, ReadBuffer, CLOSE_LINGER,
        READER, TIMER,
    },
    keepalive::{Action, KeepAlive},
    proto::{self, client::Effects},
    runtime::Runtime,
    signal::Parked,
    trace::Peer,
    transport::Transport,
    transport::TransportRead,
};

/// The longest the timer task sleeps while calls have deadlines, in ticks: it wakes at the
/// earliest deadline or after this many ticks (1 s at the default tick), whichever is first,
/// so that a connection with pending calls costs one timer wake-up a second at most instead
/// of one a tick, and still notices within a second that it went quiet.
const MAX_TIMER_SLEEP_TICKS: u64 = 100;

pub(super) async fn connect<R: Runtime, T: Transport>(
    rt: &R,
    transport: &T,
    addr: &T::Addr,
    config: ClientConfig,
) -> Result<Client, ConnectError> {
    let deadline = Instant::now() + config.connect_timeout;
    // The compression algorithms this side decompresses.
    let accepted = compress::advertised(config.compression.as_ref());
    let handshake = async {
        let (mut reader, mut writer) = transport.connect(addr).await?;
        let hello =
            Hello::with_features(config.max_frame_len, config.max_in_flight as u32, accepted);
        // The server may answer and close before our hello is written (a refusal, or a peer
        // that is not a Flumen server): on a Unix socket the write then fails at once. Its
        // answer, still in our receive buffer, says more than the failed write.
        let wrote = write_all(&mut writer, &hello.encode()).await;
        let mut read = ReadBuffer::new();
        if let Err(e) = read_at_least(&mut reader, &mut read.buf, HELLO_LEN).await {
            wrote?;
            return Err(e.into());
        }
        let head = read.buf.split_to(HELLO_LEN);
        let hello = Hello::decode(head.first_chunk().ok_or(HelloError::ZeroLimit)?)?;
        if hello.max_frame_len == 0 {
            return Err(HelloError::ZeroLimit.into());
        }
        if hello.max_in_flight == 0 {
            return Err(refusal(&mut reader, &mut read, config.max_frame_len).await);
        }
        wrote?;
        Ok((reader, writer, read, hello))
    };
    let timeout = async {
        rt.sleep_until(deadline).await;
        Err(ConnectError::Timeout(config.connect_timeout))
    };
    let (reader, writer, read, hello) = handshake.or(timeout).await?;

    let window = config
        .max_in_flight
        .min(hello.max_in_flight as usize)
        .max(1);
    // Requests wait for room only once `max_queued_bytes` are queued (the writer is stuck):
    // callers then wait (backpressure).
    let (out, out_rx) = outbox(config.max_queued_bytes, None);
    let conn = Arc::new(Conn::new(
        window,
        out,
        &config,
        hello.max_frame_len,
        Peer::of(addr),
    ));

    let limits = Inflate {
        accepted,
        max_len: config.max_frame_len,
    };
    crate::runtime::spawn_task(
        rt,
        read_task(rt.clone(), conn.clone(), reader, read, limits),
    );
    let writer_conn = conn.clone();
    if let Some(compression) = compress::negotiate(config.compression.as_ref(), hello.features) {
        conn.out.compress_with(compression);
    }
    crate::runtime::spawn_task(rt, async move {
        let (stop, quiet) = (&writer_conn.stop, &writer_conn.quiet);
        if let Err(e) = write_loop(out_rx, writer, stop, quiet, None).await {
            writer_conn.close(e.into());
        }
    });
    crate::runtime::spawn_task(rt, timer_task(rt.clone(), conn.clone()));
    crate::live::register_connection(addr, &conn);
    // Lets the tasks start before the first call. On a runtime with one thread, that is
    // this thread, which they then mark: a blocking call made next on it fails at once
    // (`check_blocking`) instead of waiting for a writer that cannot run.
    futures_lite::future::yield_now().await;
    Ok(Client {
        handle: Arc::new(Handle { conn }),
    })
}

/// Reads the `GoAway` a refusing server sends after its hello.
async fn refusal<R: TransportRead>(
    reader: &mut R,
    read: &mut ReadBuffer,
    max_frame_len: u32,
) -> ConnectError {
    let mut decoder = FrameDecoder::new(max_frame_len);
    loop {
        match read.next_frame(&mut decoder) {
            Ok(Some(frame)) if frame.header.kind == FrameKind::GoAway => {
                let (code, reason) = go_away_parts(&frame);
                return ConnectError::Refused { code, reason };
            }
            Ok(Some(_)) | Err(_) => break,
            Ok(None) => match read.read_from(reader, &decoder).await {
                Ok(n) if n > 0 => {}
                _ => break,
            },
        }
    }
    ConnectError::Refused {
        code: ErrorCode::PROTOCOL_ERROR,
        reason: "refused without a reason".into(),
    }
}

/// What the reader lets a compressed body be: the algorithms this side advertised, and its
/// `max_frame_len` once decompressed.
struct Inflate {
    accepted: u16,
    max_len: u32,
}

async fn read_task<R: Runtime, Rd: TransportRead>(
    rt: R,
    conn: Arc<Conn>,
    mut reader: Rd,
    mut read: ReadBuffer,
    limits: Inflate,
) {
    let mut decoder = FrameDecoder::new(limits.max_len);
    let mut frames = Vec::with_capacity(64);
    let mut fx = Effects::default();
    // A GoAway with an error names the reason the stream will end.
    let mut going_away = None;
    let counters = conn.out.counters();
    let error = 'conn: loop {
        loop {
            match read.next_frame(&mut decoder) {
                Ok(Some(frame)) => {
                    match compress::inflate(frame, limits.accepted, limits.max_len, counters) {
                        Ok(frame) => frames.push(frame),
                        Err(e) => break 'conn ConnectionError::Protocol(e),
                    }
                }
                Ok(None) => break,
                Err(e) => break 'conn ConnectionError::Protocol(e),
            }
        }
        if !frames.is_empty() {
            counters
                .frames_read
                .fetch_add(frames.len() as u64, Ordering::Relaxed);
            let streams = conn.open_streams.load(Ordering::Relaxed) > 0;
            // One lock of the call table for the whole batch; everything else after it.
            let applied = {
                let mut table = conn.table.lock();
                let applied =
                    proto::client::on_frames(&mut table, frames.drain(..), streams, &mut fx);
                // Each caller woken with its reply is likely to queue its next request at once:
                // the writer waits for them before writing a small batch. Announced while the
                // table is locked, so that a caller that finds its outcome early (a spurious
                // poll) takes itself off a count that includes it; announced later, a caller
                // that had already resumed would be counted again, and the writer would wait
                // for a request already queued.
                conn.out.callers_woken(fx.wakers.len());
                applied
            };
            if let Err(e) = conn.apply(&mut fx) {
                break e;
            }
            if let Some(error) = fx.going_away.take() {
                going_away = Some(error);
            }
            if let Err(e) = applied {
                break e;
            }
            // The server drains and this side has no call left on the connection: leave, so
            // that the server can close at once (it waits for that, answering requests that
            // crossed its GoAway instead of losing them).
            if let Some(error) = fx.drained.take() {
                break error;
            }
            // Every ping is answered; while the writer's queue is full, the reader waits
            // (and so reads no more pings) instead of queueing pongs without bound.
            for pong in fx.frames.drain(..) {
                if conn.stop.guard(READER, conn.out.send(pong)).await != Some(true) {
                    break 'conn ConnectionError::Closed;
                }
            }
        }
        let read_more = read.read_or_release(&mut reader, &decoder, &conn.quiet, counters);
        match conn.stop.guard(READER, read_more).await {
            None => break ConnectionError::Closed,
            // Quiet: the buffers went back; wait for the next bytes.
            Some(None) | Some(Some(Ok(1..))) => {}
            Some(Some(Ok(0))) => break going_away.take().unwrap_or(ConnectionError::Eof),
            Some(Some(Err(e))) => break going_away.take().unwrap_or_else(|| e.into()),
        }
    };
    if !error.is_violation() {
        conn.close(error);
        return;
    }
    // The server broke the protocol: tell it why, fail every call, and read (and drop) what
    // it still sends until the GoAway is out and it closes, so no reset destroys the GoAway.
    let goaway = body::go_away(error.code(), error.to_string());
    let _ = conn.out.force_send(goaway.into()) && conn.out.force_send(Outgoing::Close);
    conn.fail(&error);
    linger(&mut reader, rt.sleep_until(Instant::now() + CLOSE_LINGER)).await;
    conn.close(error);
}

async fn timer_task<R: Runtime>(rt: R, conn: Arc<Conn>) {
    let mut wakers = Vec::new();
    let mut expired = Vec::new();
    let gate = &conn.timer;
    let reads = || conn.out.counters().reads.load(Ordering::Relaxed);
    let mut keepalive = conn
        .keepalive
        .map(|(interval, timeout)| KeepAlive::new(interval, timeout));
    // Whether the timer has work: deadlines to expire, or calls to keep alive.
    let keeps_alive = keepalive.is_some();
    let has_work = |table: &CallTable| table.has_deadlines() || (keeps_alive && table.in_use() > 0);
    loop {
        gate.sleeping_until(u64::MAX);
        let work = poll_fn(|cx| gate.park(cx, || has_work(&conn.table.lock())));
        match conn.stop.guard(TIMER, work).await {
            None => return,
            Some(Parked::Work) => {}
            Some(Parked::Missed) => {
                // Calls came and went before this task ran: the connection went quiet, and
                // nobody else will say so.
                conn.quiet.signal();
                continue;
            }
        }
        // Silence before these calls began needed nobody's attention.
        if let Some(keepalive) = &mut keepalive {
            keepalive.reset(conn.clock.now_tick(), reads());
        }
        let mut next_expiry = None;
        loop {
            // Sleep until the earliest deadline (at least a tick, at most the cap); a call
            // with a sooner deadline cuts the sleep short.
            let now = conn.clock.now_tick();
            let target = next_expiry
                .unwrap_or(now + 1)
                .clamp(now + 1, now + MAX_TIMER_SLEEP_TICKS);
            gate.sleeping_until(target);
            let sleep = rt.sleep_until(conn.clock.instant_of(target));
            if conn
                .stop
                .guard(TIMER, sleep.or(gate.sooner()))
                .await
                .is_none()
            {
                return;
            }
            conn.out
                .counters()
                .timer_wakeups
                .fetch_add(1, Ordering::Relaxed);
            let now = conn.clock.now_tick();
            // While the next target is worked out, any new deadline wakes the timer again.
            gate.sleeping_until(0);
            let (deadlines, busy) = {
                let mut table = conn.table.lock();
                table.expire(now, &mut wakers, &mut expired);
                next_expiry = table.next_expiry();
                let deadlines = table.has_deadlines();
                if !deadlines {
                    table.shrink_if_idle();
                }
                (deadlines, table.in_use() > 0)
            };
            wakers.drain(..).for_each(Waker::wake);
            for seq in expired.drain(..) {
                conn.end_stream(seq, ErrorCode::DEADLINE_EXCEEDED);
                let cancel = proto::cancel(seq, ErrorCode::DEADLINE_EXCEEDED);
                conn.out.try_send(cancel);
            }
            if let Some(keepalive) = keepalive.as_mut().filter(|_| busy) {
                let next = match keepalive.poll(now, reads()) {
                    Action::Wait(at) => at,
                    Action::Ping(at) => {
                        let ping = FrameHeader::new(FrameKind::Ping, now);
                        conn.out.try_send(Outgoing::frame(ping, Bytes::new()));
                        at
                    }
                    Action::Dead => {
                        let timeout = conn.keepalive.map_or(0, |(_, timeout)| timeout);
                        let waited = conn.clock.tick * timeout as u32;
                        conn.close(ConnectionError::KeepaliveTimeout(waited));
                        return;
                    }
                };
                next_expiry = Some(next_expiry.map_or(next, |at: u64| at.min(next)));
                continue;
            }
            if !deadlines {
                // No call has a deadline any more: the connection went quiet for now.
                conn.quiet.signal();
                break;
            }
        }
    }
}

/// Loom models of the client's call path against its reader (`--cfg flumen_loom`, see
/// `src/sync.rs`): the window's permits passed from a finished call to a waiting one, the call
/// table's slot handed from a cancelled call to the next, and a late reply to the cancelled
/// call. The caller threads run the real `Client::call_with_options`; the model's server takes their
/// frames from the outbox and answers through the client's engine, as the reader does. A lost wake-up is a
/// deadlock, which loom reports.
#[cfg(all(test, flumen_loom))]
mod loom_models {
    use std::{pin::pin, task::Poll, time::Duration};

    use loom::{future::block_on, thread};

    use super::*;
    use crate::{
        client::CallOptions,
        error::CallError,
        frame::Frame,
        io::{Inbox, DEFAULT_MAX_QUEUED_BYTES},
    };

    /// A client over no socket, with `window` slots, no deadlines and no keep-alive; its
    /// frames come out of the returned inbox.
    fn model_client(window: usize) -> (Client, Inbox) {
        let config = ClientConfig::default()
            .default_timeout(None)
            .keepalive(None, Duration::from_secs(1));
        let (out, rx) = outbox(DEFAULT_MAX_QUEUED_BYTES, None);
        let conn = Arc::new(Conn::new(window, out, &config, u32::MAX, Peer::default()));
        (
            Client {
                handle: Arc::new(Handle { conn }),
            },
            rx,
        )
    }

    /// The server: answers each of the next `requests` requests with its own body, through
    /// the client's engine, as the reader feeds it. Cancels are read and ignored.
    fn serve(conn: &Conn, rx: &mut Inbox, requests: usize) {
        let mut answered = 0;
        while answered < requests {
            block_on(rx.ready());
            while let Some(message) = rx.try_recv() {
                let (header, body) = match message {
                    Outgoing::Frame(header, body) => (header, body),
                    Outgoing::Parts(header, parts) => (header, parts.concat().into()),
                    Outgoing::Close => continue,
                };
                if header.kind != FrameKind::Request {
                    continue;
                }
                let mut reply = FrameHeader::new(FrameKind::Response, header.seq);
                reply.len = body.len() as u32;
                let frames = [Frame {
                    header: reply,
                    body,
                }];
                let mut fx = Effects::default();
                let applied =
                    proto::client::on_frames(&mut conn.table.lock(), frames, false, &mut fx);
                assert!(applied.is_ok());
                conn.apply(&mut fx).unwrap();
                answered += 1;
            }
        }
    }

    fn call(client: &Client, body: &'static [u8]) -> Result<Bytes, CallError> {
        block_on(client.call_with_options(1, Bytes::from_static(body), &CallOptions::new()))
    }

    #[test]
    fn loom_the_window_passes_to_a_waiting_caller() {
        loom::model(|| {
            let (client, mut rx) = model_client(1);
            let conn = client.handle.conn.clone();
            let other = client.clone();
            let a = thread::spawn(move || call(&client, b"a"));
            let b = thread::spawn(move || call(&other, b"b"));
            serve(&conn, &mut rx, 2);
            assert_eq!(a.join().unwrap().unwrap(), &b"a"[..]);
            assert_eq!(b.join().unwrap().unwrap(), &b"b"[..]);
        });
    }

    #[test]
    fn loom_a_late_reply_never_reaches_the_next_call_on_its_slot() {
        loom::model(|| {
            let (client, mut rx) = model_client(1);
            let conn = client.handle.conn.clone();
            let caller = thread::spawn(move || {
                let options = CallOptions::new();
                {
                    // Polled once: the request is out (the window and the queue have room)
                    // and the call waits, or its reply came at once; then it is dropped,
                    // which cancels it if it still waits, and frees its slot.
                    let mut first =
                        pin!(client.call_with_options(1, Bytes::from_static(b"first"), &options));
                    block_on(std::future::poll_fn(|cx| {
                        let _ = first.as_mut().poll(cx);
                        Poll::Ready(())
                    }));
                }
                call(&client, b"second")
            });
            // The first reply may arrive before the cancel, between the cancel and the next
            // call, or while the next call waits on the same slot.
            serve(&conn, &mut rx, 2);
            assert_eq!(caller.join().unwrap().unwrap(), &b"second"[..]);
        });
    }
}
