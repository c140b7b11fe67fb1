//! A whole client connection fed a hostile server's bytes in arbitrary chunks, through an
//! in-memory transport (no sockets): replies, `Error` bodies (`OVERLOADED` hints, `REDIRECT`
//! addresses, application errors), `GoAway`s, pings, compressed bodies and stream frames.
//! The client never panics; the handshake ends as the server's hello says (accepted, refused
//! with the `GoAway` that follows, or a typed handshake error); once the input ends, every
//! pending call resolves, the connection reports itself closed, a new call fails as not sent,
//! and every task of the connection ends. What the calls got is what the server sent them: a
//! reply, error or stream item reaches only the call its sequence id names, with its body as
//! sent. What the client wrote is whole frames a client may send, its `Pong`s answer the
//! server's `Ping`s in order, and a protocol violation is answered with a `GoAway` naming it.
//!
//! Input: the first byte picks whether a valid hello is sent first (bit 0; most inputs want
//! one, to reach the frames), the features it advertises (bits 1-2: the compression algorithms
//! the server decompresses) and seeds the chunk sizes (1 to 64 bytes each); the rest is what
//! the server sends. The client makes its calls once it has the hello; the bytes after it are
//! held back until then, so that replies find them.
#![no_main]

#[path = "chunks.rs"]
mod chunks;

use std::{
    collections::{HashSet, VecDeque},
    future::Future,
    io, mem,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use flumen::{Codec, MethodId, MsgPack};
use flumen_rt::SmolRuntime;
use flumen_stream::{
    compress::{decompress, Algorithm, Compression},
    frame::{flags, Frame, FrameDecoder, FrameKind},
    hello::{Hello, HelloError, HELLO_LEN},
    CallError, CallOptions, Client, ClientConfig, ConnectError, ConnectionError, ErrorCode,
    Listener, ReplyStream, StreamMode, Transport, TransportRead, TransportWrite,
};
use futures_io::{AsyncRead, AsyncWrite};
use futures_lite::{
    future::{poll_once, yield_now},
    FutureExt, StreamExt,
};
use chunks::chunks;
use libfuzzer_sys::fuzz_target;

/// The client's `max_frame_len` (and the server's, in the hello this target sends).
const MAX_FRAME_LEN: u32 = 4096;

/// The client's window, and `max_in_flight` in the hello this target sends.
const WINDOW: u32 = 16;

/// The compression algorithms the client decompresses (both compiled in): hello bits 0 and 1.
const ACCEPTED: u16 = 0b11;

/// Turns of the executor within which what must end has ended (every task runs without
/// waiting on anything outside this process).
const TURNS: usize = 100_000;

const RAW: u32 = 1;
const ECHO: MethodId = MethodId::from_name("echo");
const DEADLINE: u32 = 2;
const SERVER_STREAM: u32 = 3;
const CLIENT_STREAM: u32 = 4;
const BIDI: u32 = 5;

/// Calls that take a slot of the window, in the order they start. With a window of at least
/// this many, and room in the server's frame limit for every request, call `i` takes slot `i`
/// in its first use: its sequence id is `1 << 32 | i`.
const CALLS: usize = 6;
/// Each call's method, stream flags and timeout (`aux`) on the wire.
const METHODS: [u32; CALLS] = [
    RAW,
    ECHO.as_u32(),
    DEADLINE,
    SERVER_STREAM,
    CLIENT_STREAM,
    BIDI,
];
const STREAM_FLAGS: [u8; CALLS] = [
    0,
    0,
    0,
    flags::STREAM_REPLY,
    flags::STREAM_REQUEST,
    flags::STREAM_REQUEST | flags::STREAM_REPLY,
];
const TIMEOUTS_MS: [u32; CALLS] = [0, 0, 60_000, 0, 0, 0];
/// The smallest server `max_frame_len` that takes every call's request.
const LARGEST_REQUEST: u32 = 64;

/// The `seq` of the client's first `Client::ping`: the top bit marks a health ping.
const PING_SEQ: u64 = 1 << 63 | 1;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = Vec::with_capacity(rest.len() + HELLO_LEN);
    if seed & 1 == 1 {
        let features = u16::from(seed >> 1) & 0b11;
        bytes.extend_from_slice(&Hello::with_features(MAX_FRAME_LEN, WINDOW, features).encode());
    }
    bytes.extend_from_slice(rest);
    let script = Script::new(&bytes);
    let output = Output::default();

    let executor = Arc::new(smol::Executor::new());
    let rt = SmolRuntime::new(executor.clone());
    let seen = futures_lite::future::block_on(executor.run(session(
        &rt,
        seed,
        &bytes,
        &script,
        output.clone(),
    )));
    // Every task ends once the connection has (the tasks hold the runtime, which holds the
    // executor: one left behind would keep all of it alive).
    drop(rt);
    let mut turns = 0;
    while !executor.is_empty() {
        turns += 1;
        assert!(turns < TURNS, "a task outlived its connection");
        executor.try_tick();
    }

    let written = output.0.lock().unwrap().clone();
    match seen {
        Some((seen, predictable)) => check_written(&written, &script, &seen, predictable),
        // A client that did not connect wrote its hello and nothing else.
        None => assert_eq!(
            written,
            client_hello().encode(),
            "a failed handshake wrote more"
        ),
    }
});

/// What one call saw.
#[derive(Debug)]
enum Seen {
    /// A unary raw call's outcome.
    Unary(Result<Bytes, CallError>),
    /// The typed call's outcome.
    Typed(Result<u64, flumen::Error>),
    /// A stream's items, then how it ended (its error, after the last item).
    Items {
        items: Vec<Bytes>,
        end: Result<(), CallError>,
    },
    /// A client stream's final reply.
    Reply(Result<Bytes, CallError>),
    /// The health ping.
    Ping(Result<Duration, ConnectionError>),
}

impl Seen {
    /// The connection's error this call ended with, if it was a violation by the server.
    fn violation(&self) -> Option<&ConnectionError> {
        let error = match self {
            Self::Unary(Err(CallError::Connection(e)))
            | Self::Typed(Err(flumen::Error::Call(CallError::Connection(e))))
            | Self::Items {
                end: Err(CallError::Connection(e)),
                ..
            }
            | Self::Reply(Err(CallError::Connection(e)))
            | Self::Ping(Err(e)) => e,
            _ => return None,
        };
        error.is_violation().then_some(error)
    }
}

/// The client's side of one connection. `None` if it did not connect; otherwise what each
/// call saw (in the order of `METHODS`, then the ping) and whether their sequence ids are known.
async fn session(
    rt: &SmolRuntime,
    seed: u8,
    bytes: &[u8],
    script: &Script,
    output: Output,
) -> Option<(Vec<Seen>, bool)> {
    // A server that refuses (no calls) says why at once; any other hears from the client
    // first.
    let gated = bytes
        .get(12..16)
        .is_some_and(|limit| limit.iter().any(|&b| b != 0));
    let gate = Arc::new(Gate::default());
    let input = if gated {
        Input {
            now: chunks(seed, &bytes[..HELLO_LEN]),
            later: chunks(seed.rotate_left(3), &bytes[HELLO_LEN..]),
            gate: Some(gate.clone()),
        }
    } else {
        Input {
            now: chunks(seed, bytes),
            later: VecDeque::new(),
            gate: None,
        }
    };
    let transport = Hostile(Mutex::new(Some((input, output))));
    let connected = Client::connect(rt, &transport, &(), config()).await;
    let raw = check_connect(bytes, connected)?;
    let hello = Hello::decode(bytes.first_chunk().expect("connected")).expect("connected");
    let predictable =
        hello.max_in_flight as usize >= CALLS && hello.max_frame_len >= LARGEST_REQUEST;
    let typed = flumen::Client::from_raw(raw.clone(), MsgPack::default());

    let mut calls: Vec<Call<'_>> = vec![
        async {
            let body = Bytes::from_static(b"raw");
            Seen::Unary(raw.call_with(RAW, body, &CallOptions::new()).await)
        }
        .boxed_local(),
        async {
            let reply: Result<u64, flumen::Error> = typed.call(ECHO, &7u64).await;
            Seen::Typed(reply)
        }
        .boxed_local(),
        async {
            let options = CallOptions::new()
                .timeout(Some(Duration::from_secs(60)))
                .with_entry("k", "v")
                .expect("one small entry");
            let body = Bytes::from_static(b"deadline");
            Seen::Unary(raw.call_with(DEADLINE, body, &options).await)
        }
        .boxed_local(),
        async {
            let mode = StreamMode::ServerStreaming;
            let body = Bytes::from_static(b"items");
            let mut items = Vec::new();
            let end = match raw
                .open_stream(SERVER_STREAM, body, mode, &CallOptions::new())
                .await
            {
                Ok((_, reply)) => drain(reply, &mut items).await,
                Err(e) => Err(e),
            };
            Seen::Items { items, end }
        }
        .boxed_local(),
        async {
            let mode = StreamMode::ClientStreaming;
            let body = Bytes::from_static(b"up");
            let (sender, reply) = match raw
                .open_stream(CLIENT_STREAM, body, mode, &CallOptions::new())
                .await
            {
                Ok(halves) => halves,
                Err(e) => return Seen::Reply(Err(e)),
            };
            let mut sender = sender.expect("a client stream sends");
            for item in [&b"a"[..], b"b"] {
                if sender.send(Bytes::from_static(item)).await.is_err() {
                    break;
                }
            }
            sender.finish().await;
            Seen::Reply(reply.response().await)
        }
        .boxed_local(),
        async {
            let mode = StreamMode::Bidirectional;
            let body = Bytes::from_static(b"both");
            let (sender, reply) = match raw.open_stream(BIDI, body, mode, &CallOptions::new()).await
            {
                Ok(halves) => halves,
                Err(e) => {
                    let items = Vec::new();
                    return Seen::Items { items, end: Err(e) };
                }
            };
            let mut sender = sender.expect("a bidirectional stream sends");
            // Dropped unfinished if the item does not go: the server hears it was cancelled.
            if sender.send(Bytes::from_static(b"x")).await.is_ok() {
                sender.finish().await;
            }
            let mut items = Vec::new();
            let end = drain(reply, &mut items).await;
            Seen::Items { items, end }
        }
        .boxed_local(),
        async { Seen::Ping(raw.ping().await) }.boxed_local(),
    ];

    // Every call starts (takes its slot and queues its request, or fails at once), then the
    // server's frames flow.
    let woken: Vec<Arc<Woken>> = calls
        .iter()
        .map(|_| Arc::new(Woken(AtomicBool::new(true))))
        .collect();
    let mut seen: Vec<Option<Seen>> = calls.iter().map(|_| None).collect();
    poll_woken(&mut calls, &mut seen, &woken);
    gate.open();
    // The input ends, so every call must resolve: within this many turns of the executor.
    let mut turns = 0;
    while seen.iter().any(Option::is_none) {
        turns += 1;
        if turns == TURNS {
            let pending: Vec<usize> = (0..seen.len()).filter(|&i| seen[i].is_none()).collect();
            panic!("calls {pending:?} never resolved (or were never woken)");
        }
        yield_now().await;
        poll_woken(&mut calls, &mut seen, &woken);
    }
    drop(calls);
    let seen: Vec<Seen> = seen.into_iter().map(|s| s.expect("resolved")).collect();

    // The connection ended with its input, and says so; a new call fails at once, unsent.
    let mut turns = 0;
    while !raw.is_closed() {
        turns += 1;
        assert!(
            turns < TURNS,
            "the connection did not close at the end of its input"
        );
        yield_now().await;
    }
    let late = poll_once(raw.call_with(RAW, Bytes::new(), &CallOptions::new())).await;
    assert!(
        matches!(late, Some(Err(CallError::NotSent(_)))),
        "a call on a closed connection: {late:?}"
    );

    for (i, seen) in seen.iter().enumerate() {
        let seq = predictable.then_some(1 << 32 | i as u64);
        check_seen(script, seq, seen);
    }
    Some((seen, predictable))
}

type Call<'a> = Pin<Box<dyn Future<Output = Seen> + 'a>>;

/// A call's waker: it only records that it was woken. A call is polled again only then, so
/// that a wake-up the client loses is a call that never resolves, not one that resolves
/// because it was polled anyway. Set at first, for the first poll.
struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Polls each call that has not resolved and was woken since it was last polled (or never
/// was polled), each with its own waker.
fn poll_woken(calls: &mut [Call<'_>], seen: &mut [Option<Seen>], woken: &[Arc<Woken>]) {
    for ((call, slot), flag) in calls.iter_mut().zip(seen.iter_mut()).zip(woken) {
        if slot.is_some() || !flag.0.swap(false, Ordering::SeqCst) {
            continue;
        }
        let waker = Waker::from(flag.clone());
        if let Poll::Ready(outcome) = call.as_mut().poll(&mut Context::from_waker(&waker)) {
            *slot = Some(outcome);
        }
    }
}

/// The client's settings: small frames (so that limits are reached), no deadlines unless a
/// call sets one, no keep-alive (nothing waits on time), both compression algorithms taken,
/// the smallest stream window (so that flow control is reached).
fn config() -> ClientConfig {
    ClientConfig::default()
        .max_frame_len(MAX_FRAME_LEN)
        .max_in_flight(WINDOW as usize)
        .default_timeout(None)
        .keepalive(None, Duration::from_secs(1))
        .stream_window(0)
        .compression(Some(Compression::new(Algorithm::Lz4)))
}

/// The hello the client sends with `config()`.
fn client_hello() -> Hello {
    Hello::with_features(MAX_FRAME_LEN, WINDOW, ACCEPTED)
}

/// Takes a reply stream's items until it ends; its error, if it ends with one.
async fn drain(mut reply: ReplyStream, items: &mut Vec<Bytes>) -> Result<(), CallError> {
    while let Some(item) = reply.next().await {
        match item {
            Ok(item) => items.push(item),
            Err(e) => {
                assert!(
                    reply.next().await.is_none(),
                    "a reply stream went on after its error"
                );
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The handshake ended as the server's hello says; the client, if it connected.
fn check_connect(bytes: &[u8], connected: Result<Client, ConnectError>) -> Option<Client> {
    let Some(head) = bytes.first_chunk::<HELLO_LEN>() else {
        assert!(
            matches!(connected, Err(ConnectError::Io(_))),
            "a stream that ends inside the hello: {connected:?}"
        );
        return None;
    };
    // `Err(None)`: a refusal.
    let expected = match Hello::decode(head) {
        Err(e) => Err(Some(e)),
        Ok(hello) if hello.max_frame_len == 0 => Err(Some(HelloError::ZeroLimit)),
        Ok(hello) if hello.max_in_flight == 0 => Err(None),
        Ok(hello) => Ok(hello),
    };
    match (expected, connected) {
        (Ok(_), Ok(client)) => return Some(client),
        (Err(Some(expected)), Err(ConnectError::Handshake(e))) => assert_eq!(e, expected),
        (Err(None), Err(ConnectError::Refused { code, reason })) => {
            // The refusal's reason is the GoAway that follows the hello, if that is what
            // follows.
            let mut rest = BytesMut::from(&bytes[HELLO_LEN..]);
            let (want_code, want_reason) = match FrameDecoder::new(MAX_FRAME_LEN).decode(&mut rest)
            {
                Ok(Some(frame)) if frame.header.kind == FrameKind::GoAway => (
                    ErrorCode::from_u32(frame.header.aux),
                    String::from_utf8_lossy(&frame.body).into_owned(),
                ),
                _ => (
                    ErrorCode::PROTOCOL_ERROR,
                    "refused without a reason".to_owned(),
                ),
            };
            assert_eq!((code, &*reason), (want_code, &*want_reason), "the refusal");
        }
        (expected, connected) => {
            panic!("hello {head:02x?}: expected {expected:?}, connecting gave {connected:?}")
        }
    }
    None
}

/// What the server's bytes say, decoded as the client's reader decodes them: its frames after
/// the hello, bodies decompressed, up to the first that breaks the framing.
struct Script {
    frames: Vec<Frame>,
}

impl Script {
    fn new(stream: &[u8]) -> Self {
        let mut buf = BytesMut::from(stream.get(HELLO_LEN..).unwrap_or_default());
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        let mut frames = Vec::new();
        while let Ok(Some(frame)) = decoder.decode(&mut buf) {
            if frame.header.flags & flags::COMPRESSED == 0 {
                frames.push(frame);
                continue;
            }
            match decompress(&frame.header, &frame.body, ACCEPTED, MAX_FRAME_LEN) {
                Ok((header, body)) => frames.push(Frame::new(header, body)),
                Err(_) => break,
            }
        }
        Self { frames }
    }

    /// The server's first reply (`Response` or `Error`) to call `seq`.
    fn reply(&self, seq: u64) -> Option<&Frame> {
        self.frames.iter().find(|frame| {
            frame.header.seq == seq
                && matches!(frame.header.kind, FrameKind::Response | FrameKind::Error)
        })
    }

    /// The items of stream `seq` a client may hand out, in order: up to the one flagged
    /// `END`, a `StreamEnd`, or the call's reply.
    fn items(&self, seq: u64) -> Vec<Bytes> {
        let mut items = Vec::new();
        for frame in self.frames.iter().filter(|frame| frame.header.seq == seq) {
            match frame.header.kind {
                FrameKind::StreamItem => {
                    items.push(frame.body.clone());
                    if frame.header.flags & flags::END != 0 {
                        break;
                    }
                }
                FrameKind::StreamEnd | FrameKind::Response | FrameKind::Error => break,
                _ => {}
            }
        }
        items
    }

    /// Whether the server sent `kind` with `seq`.
    fn has(&self, kind: FrameKind, seq: u64) -> bool {
        self.frames
            .iter()
            .any(|frame| frame.header.kind == kind && frame.header.seq == seq)
    }

    /// Whether the server sent a `GoAway` with `code` and `reason`.
    fn said_go_away(&self, code: ErrorCode, reason: &str) -> bool {
        self.frames.iter().any(|frame| {
            frame.header.kind == FrameKind::GoAway
                && frame.header.aux == code.as_u32()
                && String::from_utf8_lossy(&frame.body) == reason
        })
    }
}

/// What a call saw is what the server sent it. `seq` is the call's sequence id, when known.
fn check_seen(script: &Script, seq: Option<u64>, seen: &Seen) {
    // A connection that ended with the server's GoAway ended with what the GoAway said.
    let connection = match seen {
        Seen::Unary(Err(CallError::Connection(e) | CallError::NotSent(e)))
        | Seen::Typed(Err(flumen::Error::Call(CallError::Connection(e) | CallError::NotSent(e))))
        | Seen::Items {
            end: Err(CallError::Connection(e) | CallError::NotSent(e)),
            ..
        }
        | Seen::Reply(Err(CallError::Connection(e) | CallError::NotSent(e)))
        | Seen::Ping(Err(e)) => Some(e),
        _ => None,
    };
    if let Some(ConnectionError::GoAway { code, reason }) = connection {
        assert!(
            script.said_go_away(*code, reason),
            "{seen:?}: the server sent no such GoAway"
        );
    }
    if let Seen::Ping(Ok(_)) = seen {
        assert!(
            script.has(FrameKind::Pong, PING_SEQ),
            "a ping answered without its Pong"
        );
    }
    let Some(seq) = seq else {
        return;
    };
    match seen {
        Seen::Unary(outcome) | Seen::Reply(outcome) => {
            check_reply(script, seq, outcome.as_ref().map(|b| Some(&b[..])), seen);
        }
        Seen::Typed(outcome) => match outcome {
            Ok(value) => {
                check_reply(script, seq, Ok(None), seen);
                let body = &script.reply(seq).expect("checked").body;
                assert_eq!(
                    MsgPack::default().decode::<u64>(body).ok(),
                    Some(*value),
                    "the typed reply is not the server's"
                );
            }
            Err(flumen::Error::Decode(_)) => {
                check_reply(script, seq, Ok(None), seen);
                let body = &script.reply(seq).expect("checked").body;
                assert!(
                    MsgPack::default().decode::<u64>(body).is_err(),
                    "a reply that decodes failed to decode"
                );
            }
            Err(flumen::Error::Call(e)) => check_reply(script, seq, Err(e), seen),
            Err(e) => panic!("the typed call failed with {e:?}"),
        },
        Seen::Items { items, end } => {
            let sent = script.items(seq);
            assert!(
                sent.starts_with(items),
                "stream {seq:#x} gave {items:?}, the server sent {sent:?}"
            );
            check_reply(script, seq, end.as_ref().map(|_| None), seen);
        }
        Seen::Ping(_) => {}
    }
}

/// A call's outcome, if the server's reply made it, is what the server's first reply to its
/// `seq` says: the body of a `Response` (`Some` where the caller sees it), or the code and body
/// of an `Error` (an application error, an overload with its retry-after hint, a redirect to
/// the address it names, or any other code with its message).
fn check_reply(script: &Script, seq: u64, outcome: Result<Option<&[u8]>, &CallError>, seen: &Seen) {
    let error = match outcome {
        Ok(_) => None,
        Err(e)
            if matches!(
                e,
                CallError::Application(_) | CallError::Overloaded { .. } | CallError::Remote { .. }
            ) =>
        {
            Some(e)
        }
        // The connection's end, a timeout, or the client's own refusal.
        Err(_) => return,
    };
    let Some(reply) = script.reply(seq) else {
        panic!("{seen:?}, but the server sent no reply to {seq:#x}");
    };
    let body = &reply.body[..];
    let code = ErrorCode::from_u32(reply.header.aux);
    let Some(error) = error else {
        assert_eq!(reply.header.kind, FrameKind::Response, "{seen:?}");
        if let Ok(Some(got)) = outcome {
            assert_eq!(got, body, "the reply to {seq:#x}");
        }
        return;
    };
    assert_eq!(reply.header.kind, FrameKind::Error, "{seen:?}");
    let message = String::from_utf8_lossy(body);
    match error {
        CallError::Application(got) => {
            assert_eq!(code, ErrorCode::APPLICATION, "{seen:?}");
            assert_eq!(&got[..], body, "the application error of {seq:#x}");
        }
        CallError::Overloaded {
            retry_after,
            message: got,
        } => {
            assert_eq!(code, ErrorCode::OVERLOADED, "{seen:?}");
            // A `u32` retry-after hint in milliseconds (0: none), then the reason.
            let (millis, reason) = match body.split_first_chunk::<4>() {
                Some((millis, reason)) => (u32::from_le_bytes(*millis), reason),
                None => (0, body),
            };
            let hint = (millis > 0).then(|| Duration::from_millis(millis.into()));
            assert_eq!(*retry_after, hint, "the retry-after hint of {seq:#x}");
            assert_eq!(&**got, &*String::from_utf8_lossy(reason), "{seen:?}");
        }
        CallError::Remote {
            code: got,
            message: text,
        } => {
            assert_eq!(*got, code, "{seen:?}");
            assert!(
                code != ErrorCode::APPLICATION && code != ErrorCode::OVERLOADED,
                "{seen:?}: {code} has a body of its own"
            );
            assert_eq!(&**text, &*message, "the error message of {seq:#x}");
            if code == ErrorCode::REDIRECT {
                assert_eq!(
                    error.redirect(),
                    Some(&*message),
                    "the redirect of {seq:#x}"
                );
                assert!(error.is_not_sent(), "a redirected call may have run");
            } else {
                assert_eq!(error.redirect(), None, "{seen:?}");
            }
        }
        _ => unreachable!("matched above"),
    }
}

/// What the client wrote: its hello, then whole frames a client sends; the `Pong`s answer the
/// server's `Ping`s in order; a violation by the server is answered with a `GoAway` naming it;
/// with known sequence ids, one request per call, with the call's method, flags and timeout.
fn check_written(written: &[u8], script: &Script, seen: &[Seen], predictable: bool) {
    let (hello, rest) = written
        .split_first_chunk::<HELLO_LEN>()
        .expect("the client's hello");
    assert_eq!(Hello::decode(hello), Ok(client_hello()));
    let mut buf = BytesMut::from(rest);
    let mut decoder = FrameDecoder::new(u32::MAX);
    let mut frames = Vec::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => break,
            Err(e) => panic!("the client wrote a broken frame: {e}"),
        }
    }
    assert!(buf.is_empty(), "the client's bytes end inside a frame");
    for frame in &frames {
        assert!(
            !matches!(frame.header.kind, FrameKind::Response | FrameKind::Error),
            "the client sent a {:?}",
            frame.header.kind
        );
    }

    let pongs: Vec<(u64, &Bytes)> = frames
        .iter()
        .filter(|frame| frame.header.kind == FrameKind::Pong)
        .map(|frame| (frame.header.seq, &frame.body))
        .collect();
    let pings: Vec<(u64, &Bytes)> = script
        .frames
        .iter()
        .filter(|frame| frame.header.kind == FrameKind::Ping)
        .map(|frame| (frame.header.seq, &frame.body))
        .collect();
    assert!(
        pings.starts_with(&pongs),
        "pongs {pongs:?} do not answer pings {pings:?}"
    );

    if let Some(error) = seen.iter().find_map(Seen::violation) {
        let code = error.code().as_u32();
        assert!(
            frames
                .iter()
                .any(|frame| frame.header.kind == FrameKind::GoAway && frame.header.aux == code),
            "the server broke the protocol ({error}), and the client did not say so"
        );
    }

    if predictable {
        let mut requested = HashSet::new();
        for frame in frames
            .iter()
            .filter(|f| f.header.kind == FrameKind::Request)
        {
            let seq = frame.header.seq;
            let slot = (seq ^ 1 << 32) as usize;
            assert!(slot < CALLS, "a request for {seq:#x}, which no call has");
            assert!(requested.insert(seq), "two requests for {seq:#x}");
            let stream_flags = frame.header.flags & (flags::STREAM_REQUEST | flags::STREAM_REPLY);
            assert_eq!(
                (frame.header.method, stream_flags, frame.header.aux),
                (METHODS[slot], STREAM_FLAGS[slot], TIMEOUTS_MS[slot]),
                "the request of call {slot}"
            );
        }
    }
}

/// Holds the server's bytes after its hello (and the end of its stream) until the client's
/// calls have started.
#[derive(Default)]
struct Gate {
    open: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        if let Some(waker) = self.waker.lock().unwrap().take() {
            waker.wake();
        }
    }

    fn poll_open(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.open.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        *self.waker.lock().unwrap() = Some(cx.waker().clone());
        if self.open.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// The server's bytes, handed out one chunk per read: those of `now`, then, once the gate is
/// open, those of `later`; then the end of the stream.
struct Input {
    now: VecDeque<Vec<u8>>,
    later: VecDeque<Vec<u8>>,
    gate: Option<Arc<Gate>>,
}

impl AsyncRead for Input {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.now.is_empty() {
            if let Some(gate) = &this.gate {
                std::task::ready!(gate.poll_open(cx));
                this.gate = None;
                this.now = mem::take(&mut this.later);
            }
        }
        let Some(chunk) = this.now.front_mut() else {
            return Poll::Ready(Ok(0));
        };
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        chunk.drain(..n);
        if chunk.is_empty() {
            this.now.pop_front();
        }
        Poll::Ready(Ok(n))
    }
}

impl TransportRead for Input {}

/// Keeps whatever the client writes.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl AsyncWrite for Output {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl TransportWrite for Output {}

/// Connects once, to the hostile server.
struct Hostile(Mutex<Option<(Input, Output)>>);

impl Transport for Hostile {
    type Addr = ();
    type Reader = Input;
    type Writer = Output;
    type Listener = NoListener;

    async fn connect(&self, _: &()) -> io::Result<(Input, Output)> {
        let halves = self.0.lock().unwrap().take();
        halves.ok_or_else(|| io::ErrorKind::NotConnected.into())
    }

    async fn bind(&self, _: &()) -> io::Result<NoListener> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// The listener a client-only transport never binds.
struct NoListener;

impl Listener for NoListener {
    type Addr = ();
    type Reader = Input;
    type Writer = Output;
    type Connecting = std::future::Pending<io::Result<(Input, Output)>>;

    async fn accept(&mut self) -> io::Result<(Self::Connecting, ())> {
        std::future::pending().await
    }

    fn local_addr(&self) -> io::Result<()> {
        Ok(())
    }
}
