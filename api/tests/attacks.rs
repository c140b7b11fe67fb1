//! Attacks from a hostile peer (`flumen-peer`, speaking raw frames), one per class, each
//! against a server with small named limits. Each asserts that the offender is cut off or
//! throttled, that the process's heap grew by no more than a stated bound while it ran
//! (counted by a global allocator), and that a well-behaved client of the same server got
//! every reply meanwhile. Where the server counts what an attack costs it (bytes queued,
//! frames read, `hold` handlers started and stopped), that is bounded too, from the limit
//! that should bind: each limit is tested where no larger one binds first.
//!
//! The allocator's count is global, so this binary has one test, which runs the attacks one
//! after the other on tokio and on smol.
#![allow(unsafe_code)]

mod common;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{connect, eventually, run_smol, run_tokio, serve, Addr, Env};
use flumen::compress::{Algorithm, Compression};
use flumen::{
    stream::{
        flow::DEFAULT_STREAM_WINDOW,
        frame::{flags, FrameHeader, FrameKind, HEADER_LEN},
        hello::Hello,
    },
    Bytes, ClientConfig, ErrorCode, MethodId, Router, ServerConfig, ServerHandle, Status,
};
use flumen_peer::{frame, header, metadata_block, request, Peer};
use futures_lite::{AsyncWriteExt, FutureExt};

struct Counting;

/// Bytes allocated and not yet freed, and the most there were since the last reset.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() {
            grew(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The server's limits in every attack: small, so that what they bound is easy to tell from
/// what an attack would cost without them.
const MAX_FRAME_LEN: u32 = 64 * 1024;
const MAX_QUEUED_BYTES: usize = 256 * 1024;
/// The server-wide budget: far above what the attackers of any attack can queue under their
/// own limit (at most four of them, 4 x `MAX_QUEUED_BYTES`), and above every heap bound below,
/// so that the per-connection limit is the one that binds, and a server that ignored it shows
/// (`many_peers_never_read` lowers it to [`SHARED_TOTAL`] to test the budget itself).
const MAX_QUEUED_BYTES_TOTAL: usize = 32 * MAX_QUEUED_BYTES;
/// The budget the four peers of `many_peers_never_read` share: two peers' worth, so that it
/// binds from the third peer on.
const SHARED_TOTAL: usize = 2 * MAX_QUEUED_BYTES;
const MAX_IN_FLIGHT: usize = 64;
const READ_TIMEOUT: Duration = Duration::from_millis(300);

/// The body of the pings that flood a server whose peer never reads its pongs.
const PING_BODY: usize = 60_000;
/// What one pong weighs against the queue limits: a header and the ping's body it echoes.
const PONG: usize = HEADER_LEN + PING_BODY;
/// A connection's queue at its own limit: as many pongs as fit in `MAX_QUEUED_BYTES`.
const QUEUE_OF_PONGS: usize = MAX_QUEUED_BYTES / PONG * PONG;
/// What a connection may queue past every limit: its last words, a `GoAway` with its reason
/// and a `Close`, queued whatever the queue holds. The read timeout closes a throttled peer's
/// connection so, with a frame of its half read, at any moment of these attacks.
const LAST_WORDS: usize = 2 * HEADER_LEN + 64;

/// What an attack may add to the heap, server and well-behaved client together, before the
/// attacking connections' own share: the good client's calls and the server's bookkeeping.
const HEAP_BASE: usize = 1 << 20;

/// What one attacking connection may add: what is queued for it and what its writer took and
/// is writing (2 x `MAX_QUEUED_BYTES`), twice over because queued pongs and echoes are slices
/// of the read buffers they arrived in and keep them alive, plus the read buffer being filled.
/// Every attack below would add tens of MiB without its limit.
const HEAP_PER_ATTACKER: usize = 4 * MAX_QUEUED_BYTES + 256 * 1024;

fn limits() -> ServerConfig {
    ServerConfig::default()
        .max_frame_len(MAX_FRAME_LEN)
        .max_queued_bytes(MAX_QUEUED_BYTES)
        .max_queued_bytes_total(MAX_QUEUED_BYTES_TOTAL)
        .read_timeout(READ_TIMEOUT)
        .max_in_flight(MAX_IN_FLIGHT)
        // Compressed bodies accepted (lz4 and zstd advertised): the bombs below need it.
        .compression(Some(Compression::new(Algorithm::Lz4)))
}

const HOLD: &str = "hold";
const STREAM_OUT: &str = "stream_out";

/// The `hold` handlers of a scene, counted on the server: how many started, how many stopped
/// (their futures dropped: cancelled, or their connection gone), and the most held at once.
#[derive(Default)]
struct Held {
    started: AtomicUsize,
    stopped: AtomicUsize,
    now: AtomicUsize,
    most: AtomicUsize,
}

/// One `hold` handler; counts it stopped when its future is dropped.
struct Holding(Arc<Held>);

impl Held {
    fn enter(self: &Arc<Self>) -> Holding {
        self.started.fetch_add(1, Ordering::SeqCst);
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        Holding(self.clone())
    }

    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }

    fn stopped(&self) -> usize {
        self.stopped.load(Ordering::SeqCst)
    }

    fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
        self.0.stopped.fetch_add(1, Ordering::SeqCst);
    }
}

/// `echo` for the good client; `hold` never answers (and counts itself in `held`);
/// `stream_out` streams items of 16 KiB until the client stops reading or cancels.
fn router(held: Arc<Held>) -> Router {
    Router::new()
        .route("echo", |n: u64| async move { Ok::<_, Status>(n) })
        .route_raw(HOLD, move |_request| {
            let held = held.clone();
            async move {
                let _holding = held.enter();
                std::future::pending::<()>().await;
                Ok(Bytes::new())
            }
        })
        .route_raw(STREAM_OUT, |request| async move {
            let sink = request
                .sink()
                .ok_or_else(|| Status::new(ErrorCode::BAD_REQUEST, "expected a stream"))?;
            let item = Bytes::from(vec![5u8; 16 * 1024]);
            while sink.send(item.clone()).await.is_ok() {}
            Ok(Bytes::new())
        })
}

fn method(name: &str) -> u32 {
    MethodId::from_name(name).as_u32()
}

/// A server with [`limits`], a good client of it, and the heap as it was once both ran.
struct Scene<E: Env> {
    env: E,
    server: ServerHandle<Addr<E>>,
    good: flumen::Client,
    baseline: usize,
    /// The server's `hold` handlers.
    held: Arc<Held>,
}

impl<E: Env> Scene<E> {
    async fn new(env: &E) -> Self {
        Self::with(env, limits()).await
    }

    /// A scene whose server has `config` instead of [`limits`].
    async fn with(env: &E, config: ServerConfig) -> Self {
        let held = Arc::new(Held::default());
        let server = serve(env, router(held.clone()), config).await;
        let config = ClientConfig::default().default_timeout(Some(Duration::from_secs(5)));
        let good = connect(env, server.local_addr().clone(), config).await;
        // Warm the good client up so that its buffers are in the baseline.
        good_calls(&good).await;
        let baseline = LIVE.load(Ordering::Relaxed);
        PEAK.store(baseline, Ordering::Relaxed);
        Self {
            env: env.clone(),
            server,
            good,
            baseline,
            held,
        }
    }

    async fn peer(
        &self,
    ) -> Peer<
        <E::Tr as flumen::stream::Transport>::Reader,
        <E::Tr as flumen::stream::Transport>::Writer,
    > {
        let mut peer = flumen_peer::connect(&self.env.transport(), self.server.local_addr())
            .await
            .unwrap();
        peer.send_hello(Hello::new(MAX_FRAME_LEN, 64))
            .await
            .unwrap();
        peer.read_hello().await.unwrap();
        peer
    }

    /// Asserts the heap stayed within [`HEAP_BASE`] plus [`HEAP_PER_ATTACKER`] for each of
    /// `attackers` of the baseline; returns the growth and the bound.
    fn check_heap(&self, attack: &str, attackers: usize) -> (usize, usize) {
        let grown = PEAK.load(Ordering::Relaxed).saturating_sub(self.baseline);
        let bound = HEAP_BASE + attackers * HEAP_PER_ATTACKER;
        assert!(
            grown <= bound,
            "{attack}: the heap grew by {} KiB, bound {} KiB",
            grown >> 10,
            bound >> 10
        );
        (grown, bound)
    }

    /// Never completes: checks the heap as [`check_heap`](Self::check_heap) does every few
    /// milliseconds, so that an attack whose outcome never comes fails on the heap it costs.
    async fn watch_heap<T>(&self, attack: &str, attackers: usize) -> T {
        loop {
            self.check_heap(attack, attackers);
            self.env.sleep(Duration::from_millis(5)).await;
        }
    }

    /// Bytes of frames queued on all the server's connections now.
    fn queued(&self) -> usize {
        self.server.stats().queued_bytes
    }

    /// Connections whose producers waited at a queue limit.
    fn throttled(&self) -> usize {
        self.server
            .connection_stats()
            .iter()
            .filter(|c| c.queue_full_waits > 0)
            .count()
    }

    /// Waits until only the good client is connected, then asserts the attack's memory was
    /// given back.
    async fn check_given_back(&self, attack: &str) {
        eventually(&self.env, "the attacker's connection to close", || {
            self.server.stats().active == 1
        })
        .await;
        // Its handlers end a moment later, and with them the last of its buffers.
        let what = format!("{attack}: the heap back within 256 KiB of the baseline");
        eventually(&self.env, &what, || {
            LIVE.load(Ordering::Relaxed).saturating_sub(self.baseline) <= 256 * 1024
        })
        .await;
    }
}

/// Ten calls from the good client; each must succeed (within its deadline).
async fn good_calls(good: &flumen::Client) -> Duration {
    let mut slowest = Duration::ZERO;
    for n in 0..10u64 {
        let started = Instant::now();
        let got: u64 = good
            .call("echo", &n)
            .await
            .expect("the good client is served");
        assert_eq!(got, n);
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// Tasks playing the attacker's halves; dropping it ends them (and so closes the connection).
struct Attacker {
    _stop: smol::channel::Sender<()>,
    /// Closed once the attacker is dropped.
    stopped: smol::channel::Receiver<()>,
    /// Set once the whole flood was written.
    sent: Arc<AtomicBool>,
}

impl Attacker {
    /// Writes `chunk` `times` times from a task of its own, then keeps the connection open
    /// until the attacker is dropped; what the server sends is read by whoever holds the
    /// reading half.
    fn write<E: Env, W>(env: &E, mut writer: W, chunk: Vec<u8>, times: usize) -> Self
    where
        W: futures_lite::AsyncWrite + Unpin + Send + 'static,
    {
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let sent = Arc::new(AtomicBool::new(false));
        let attacker = Self {
            _stop: stop,
            stopped,
            sent: sent.clone(),
        };
        attacker.spawn(env, async move {
            for _ in 0..times {
                if writer.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = writer.flush().await;
            sent.store(true, Ordering::SeqCst);
            // The connection stays open until the attacker is dropped.
            std::future::pending::<()>().await;
        });
        attacker
    }

    /// Writes `chunk` `times` times from a task of its own; reads (and drops) what the server
    /// sends if `read`, else never reads.
    fn flood<E: Env, R, W>(
        env: &E,
        halves: (R, W),
        chunk: Vec<u8>,
        times: usize,
        read: bool,
    ) -> Self
    where
        R: futures_lite::AsyncRead + Unpin + Send + 'static,
        W: futures_lite::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut reader, writer) = halves;
        let attacker = Self::write(env, writer, chunk, times);
        attacker.spawn(env, async move {
            if read {
                let mut scratch = vec![0u8; 64 * 1024];
                while let Ok(1..) =
                    futures_lite::AsyncReadExt::read(&mut reader, &mut scratch).await
                {
                }
            } else {
                std::future::pending::<()>().await;
            }
        });
        attacker
    }

    /// Runs `task` until it ends or the attacker is dropped.
    fn spawn<E: Env>(&self, env: &E, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let stopped = self.stopped.clone();
        env.spawn(task.or(async move {
            let _ = stopped.recv().await;
        }));
    }

    fn all_sent(&self) -> bool {
        self.sent.load(Ordering::SeqCst)
    }
}

/// What the server answered an attacker, frame by frame.
#[derive(Default)]
struct Replies {
    /// `Error OVERLOADED` replies.
    overloaded: AtomicUsize,
    /// Every other frame.
    other: AtomicUsize,
}

impl Replies {
    /// Reads what the server sends on `reader` until it closes, counting the frames.
    async fn count<R>(self: Arc<Self>, reader: R)
    where
        R: futures_lite::AsyncRead + Unpin + Send + 'static,
    {
        let mut peer = Peer::new(reader, futures_lite::io::sink());
        while let Ok(Some(frame)) = peer.next_frame().await {
            let overloaded = frame.header.kind == FrameKind::Error
                && ErrorCode::from_u32(frame.header.aux) == ErrorCode::OVERLOADED;
            let counter = if overloaded {
                &self.overloaded
            } else {
                &self.other
            };
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn overloaded(&self) -> usize {
        self.overloaded.load(Ordering::SeqCst)
    }

    fn other(&self) -> usize {
        self.other.load(Ordering::SeqCst)
    }
}

/// What one attack reports.
struct Outcome {
    attack: &'static str,
    /// Heap growth and its bound.
    grown: (usize, usize),
    slowest_good_call: Duration,
}

/// One connection sends 60 KB pings and never reads: the server stops reading once its
/// queue of pongs is at `max_queued_bytes` (the flood can never be written in full), holds no
/// more than the bound, and gives it all back when the peer leaves. The server-wide budget is
/// far above that limit: only the connection's own limit can stop the queue.
async fn pings_never_read<E: Env>(env: E) -> Outcome {
    let ping = frame(FrameHeader::new(FrameKind::Ping, 1), &[9u8; PING_BODY]);
    let chunk = ping.repeat(16);
    let scene = Scene::new(&env).await;
    let peer = scene.peer().await.into_parts();
    // 60 MB of pings: far past the queue limit plus what the sockets hold.
    let attacker = Attacker::flood(&env, peer, chunk, 64, false);
    let mut most = 0;
    eventually(
        &env,
        "the pongs throttled (or the whole flood read)",
        || {
            let queued = scene.queued();
            most = most.max(queued);
            (queued >= QUEUE_OF_PONGS && scene.throttled() == 1) || attacker.all_sent()
        },
    )
    .await;
    let slowest_good_call = good_calls(&scene.good).await;
    assert!(
        !attacker.all_sent(),
        "the server read the whole flood though nobody read its pongs"
    );
    most = most.max(scene.queued());
    assert!(
        most <= MAX_QUEUED_BYTES + LAST_WORDS,
        "{most} bytes queued for one peer, limit {MAX_QUEUED_BYTES} (+{LAST_WORDS})"
    );
    let grown = scene.check_heap("pings never read", 1);
    drop(attacker);
    scene.check_given_back("pings never read").await;
    Outcome {
        attack: "pings, never read",
        grown,
        slowest_good_call,
    }
}

/// Many connections that never read share `max_queued_bytes_total`: peers join one at a time,
/// and once each is throttled, what the server queues is within both limits: each peer's
/// queue within its own (which binds for the first two), and all of them within the total plus
/// one frame each (which binds from the third on; a connection with nothing queued may take a
/// frame past it).
async fn many_peers_never_read<E: Env>(env: E) -> Outcome {
    let ping = frame(FrameHeader::new(FrameKind::Ping, 1), &[9u8; PING_BODY]);
    let mut chunks: Vec<_> = (0..4).map(|_| ping.repeat(16)).collect();
    let config = limits().max_queued_bytes_total(SHARED_TOTAL);
    let scene = Scene::with(&env, config).await;
    let mut attackers = Vec::new();
    let mut slowest_good_call = Duration::ZERO;
    while let Some(chunk) = chunks.pop() {
        let peer = scene.peer().await.into_parts();
        attackers.push(Attacker::flood(&env, peer, chunk, 64, false));
        let peers = attackers.len();
        let bound =
            (peers * MAX_QUEUED_BYTES).min(SHARED_TOTAL + peers * PONG) + peers * LAST_WORDS;
        // Reached once the new peer's queue is full, or the total is.
        let full = (peers * QUEUE_OF_PONGS).min(SHARED_TOTAL - PONG);
        let mut most = 0;
        eventually(&env, &format!("{peers} peers throttled"), || {
            let queued = scene.queued();
            most = most.max(queued);
            scene.throttled() == peers && queued >= full
        })
        .await;
        slowest_good_call = slowest_good_call.max(good_calls(&scene.good).await);
        most = most.max(scene.queued());
        assert!(
            most <= bound,
            "{peers} peers that never read: {most} bytes queued, bound {bound} (each peer \
             {MAX_QUEUED_BYTES}, all {SHARED_TOTAL} + a pong each)"
        );
    }
    assert!(attackers.iter().all(|a| !a.all_sent()));
    let grown = scene.check_heap("many peers never read", 4);
    drop(attackers);
    scene.check_given_back("many peers never read").await;
    Outcome {
        attack: "4 peers, never read",
        grown,
        slowest_good_call,
    }
}

/// A million empty frames (unasked-for pongs, which the server ignores) cost the server reads
/// and nothing else.
async fn tiny_frame_flood<E: Env>(env: E) -> Outcome {
    let chunk = header(FrameHeader::new(FrameKind::Pong, 0)).repeat(10_000);
    let scene = Scene::new(&env).await;
    let peer = scene.peer().await.into_parts();
    let before = scene.server.stats().io.frames_read;
    let attacker = Attacker::flood(&env, peer, chunk, 100, true);
    let slowest_good_call = good_calls(&scene.good).await;
    eventually(&env, "the tiny frames read", || {
        attacker.all_sent() && scene.server.stats().io.frames_read >= before + 1_000_000
    })
    .await;
    let grown = scene.check_heap("tiny frames", 1);
    drop(attacker);
    scene.check_given_back("tiny frames").await;
    Outcome {
        attack: "1M empty frames",
        grown,
        slowest_good_call,
    }
}

/// Requests in each chunk of the rapid-reset flood (each followed by its `Cancel`), and chunks.
const RAPID_RESET_CHUNK: usize = 1000;
const RAPID_RESET_CHUNKS: usize = 100;

/// The rapid-reset pattern: requests for a handler that never answers, each cancelled at once,
/// 100,000 times. Cancelled handlers are stopped and forgotten, which frees their places; the
/// admitted-calls limit (`max_in_flight`) answers the excess `OVERLOADED`. Were cancels
/// ignored, the first `max_in_flight` handlers would hold their places for good, and every
/// later request would be refused.
async fn request_cancel_flood<E: Env>(env: E) -> Outcome {
    let mut chunk = Vec::new();
    for seq in 0..RAPID_RESET_CHUNK as u64 {
        chunk.extend_from_slice(&frame(request(method(HOLD), seq), b""));
        chunk.extend_from_slice(&frame(FrameHeader::new(FrameKind::Cancel, seq), b""));
    }
    let requests = RAPID_RESET_CHUNK * RAPID_RESET_CHUNKS;
    let scene = Scene::new(&env).await;
    let (reader, writer) = scene.peer().await.into_parts();
    let before = scene.server.stats().io.frames_read;
    let attacker = Attacker::write(&env, writer, chunk, RAPID_RESET_CHUNKS);
    let replies = Arc::new(Replies::default());
    attacker.spawn(&env, replies.clone().count(reader));
    let slowest_good_call = good_calls(&scene.good).await;
    eventually(&env, "the requests and cancels read", || {
        attacker.all_sent() && scene.server.stats().io.frames_read >= before + 2 * requests as u64
    })
    .await;
    // Every request either ran (and, cancelled, is answered by nobody) or was refused.
    let held = &scene.held;
    eventually(&env, "every request run or answered", || {
        held.started() + replies.overloaded() + replies.other() >= requests
    })
    .await;
    let (started, overloaded) = (held.started(), replies.overloaded());
    println!("request+cancel flood: {started} ran, {overloaded} refused OVERLOADED");
    assert_eq!(replies.other(), 0, "replies other than OVERLOADED");
    assert_eq!(started + overloaded, requests);
    assert!(
        started > MAX_IN_FLIGHT,
        "only {started} of {requests} requests ran: cancelled calls kept their places"
    );
    // The attacker is still connected: only the cancels can have stopped them.
    eventually(&env, "every cancelled handler stopped", || {
        held.stopped() == held.started()
    })
    .await;
    assert!(
        held.most() <= MAX_IN_FLIGHT,
        "{} handlers held at once, limit {MAX_IN_FLIGHT}",
        held.most()
    );
    let grown = scene.check_heap("request+cancel flood", 1);
    drop(attacker);
    scene.check_given_back("request+cancel flood").await;
    Outcome {
        attack: "100k request+cancel",
        grown,
        slowest_good_call,
    }
}

/// Credit grants of `u32::MAX` on a server stream the peer never reads: the credit sum cannot
/// overflow, and the items the handler may now send wait at the queue limit.
async fn credit_overflow<E: Env>(env: E) -> Outcome {
    let scene = Scene::new(&env).await;
    let mut peer = scene.peer().await;
    let open = FrameHeader {
        flags: flags::STREAM_REPLY,
        ..request(method(STREAM_OUT), 1)
    };
    peer.send_frame(open, b"").await.unwrap();
    for _ in 0..1000 {
        let grant = FrameHeader {
            aux: u32::MAX,
            ..FrameHeader::new(FrameKind::Credit, 1)
        };
        peer.send_frame(grant, b"").await.unwrap();
    }
    eventually(&env, "the stream throttled", || {
        scene.server.stats().io.queue_full_waits > 0
    })
    .await;
    let slowest_good_call = good_calls(&scene.good).await;
    let grown = scene.check_heap("credit overflow", 1);
    drop(peer);
    scene.check_given_back("credit overflow").await;
    Outcome {
        attack: "credit u32::MAX x1000",
        grown,
        slowest_good_call,
    }
}

/// A request that reuses the sequence id of a call still running closes the connection with
/// `PROTOCOL_ERROR`.
async fn live_seq_reuse<E: Env>(env: E) -> Outcome {
    let scene = Scene::new(&env).await;
    let mut peer = scene.peer().await;
    peer.send_frame(request(method(HOLD), 7), b"")
        .await
        .unwrap();
    peer.send_frame(request(method(HOLD), 7), b"")
        .await
        .unwrap();
    let (code, reason) = peer.go_away().await.unwrap();
    assert_eq!(code, ErrorCode::PROTOCOL_ERROR, "{reason}");
    let slowest_good_call = good_calls(&scene.good).await;
    let grown = scene.check_heap("live seq reuse", 1);
    drop(peer);
    scene.check_given_back("live seq reuse").await;
    Outcome {
        attack: "live seq reuse",
        grown,
        slowest_good_call,
    }
}

/// Metadata blocks past the limits (more entries than allowed, a value over 16 KiB, a count
/// that lies) are answered `BAD_REQUEST` before anything is allocated for them; the
/// connection stays up.
async fn metadata_bombs<E: Env>(env: E) -> Outcome {
    let scene = Scene::new(&env).await;
    let mut peer = scene.peer().await;
    let big = vec![1u8; 60_000];
    let entries: Vec<(&[u8], &[u8])> = vec![(b"k", b"v"); 1000];
    let bombs = [
        metadata_block(1000, &entries),
        metadata_block(1, &[(b"k", &big)]),
        metadata_block(u16::MAX, &[(b"k", b"v")]),
    ];
    for (seq, block) in bombs.iter().enumerate() {
        let header = FrameHeader {
            flags: flags::METADATA,
            ..request(method("echo"), seq as u64)
        };
        peer.send_frame(header, block).await.unwrap();
        let reply = peer.next_frame().await.unwrap().expect("a reply");
        assert_eq!(reply.header.kind, FrameKind::Error);
        assert_eq!(reply.header.seq, seq as u64);
        assert_eq!(
            ErrorCode::from_u32(reply.header.aux),
            ErrorCode::BAD_REQUEST
        );
    }
    let slowest_good_call = good_calls(&scene.good).await;
    let grown = scene.check_heap("metadata bombs", 1);
    drop(peer);
    scene.check_given_back("metadata bombs").await;
    Outcome {
        attack: "metadata bombs",
        grown,
        slowest_good_call,
    }
}

/// Compressed bodies that claim more than the frame limit once decompressed, that decompress
/// to far more than they claim (megabytes of zeros in a few KiB: zstd and lz4), or that name
/// an algorithm the server never advertised. Each closes its connection before more than the
/// claimed length (at most `max_frame_len`) is allocated for it.
async fn decompression_bombs<E: Env>(env: E) -> Outcome {
    let zeros = vec![0u8; 8 << 20];
    let zstd_bomb = zstd::bulk::compress(&zeros, 19).unwrap();
    let lz4_bomb = lz4_flex::block::compress(&zeros[..4 << 20]);
    drop(zeros);
    assert!(zstd_bomb.len() < 4096 && lz4_bomb.len() < 20_000);
    let body = |algorithm: u8, claimed: u32, data: &[u8]| {
        let mut body = vec![algorithm];
        body.extend(claimed.to_le_bytes());
        body.extend(data);
        body
    };
    let bombs = [
        (
            "zstd, 8 MiB of zeros claiming 32 KiB",
            body(2, 32 << 10, &zstd_bomb),
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "lz4, 4 MiB of zeros claiming 32 KiB",
            body(1, 32 << 10, &lz4_bomb),
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "a claim of 1 GiB",
            body(2, 1 << 30, &zstd_bomb),
            ErrorCode::FRAME_TOO_LARGE,
        ),
        (
            "an algorithm never advertised",
            body(9, 100, b"xyz"),
            ErrorCode::PROTOCOL_ERROR,
        ),
    ];
    let scene = Scene::new(&env).await;
    for (what, body, expected) in &bombs {
        let mut peer = scene.peer().await;
        let header = FrameHeader {
            flags: flags::COMPRESSED,
            ..request(method("echo"), 1)
        };
        peer.send_frame(header, body).await.unwrap();
        let (code, reason) = peer.go_away().await.unwrap();
        assert_eq!(code, *expected, "{what}: {reason}");
    }
    let slowest_good_call = good_calls(&scene.good).await;
    let grown = scene.check_heap("decompression bombs", 1);
    scene.check_given_back("decompression bombs").await;
    Outcome {
        attack: "decompression bombs",
        grown,
        slowest_good_call,
    }
}

/// A header sent one byte at a time, slower than the read timeout allows for a whole frame:
/// `READ_TIMEOUT`.
async fn slowloris<E: Env>(env: E) -> Outcome {
    let scene = Scene::new(&env).await;
    let mut peer = scene.peer().await;
    let bytes = header(request(method("echo"), 1));
    let step = READ_TIMEOUT / 4;
    for byte in bytes {
        if peer.send_bytes(&[byte]).await.is_err() {
            break;
        }
        scene.env.sleep(step).await;
    }
    let (code, reason) = peer.go_away().await.unwrap();
    assert_eq!(code, ErrorCode::READ_TIMEOUT, "{reason}");
    let slowest_good_call = good_calls(&scene.good).await;
    let grown = scene.check_heap("slowloris", 1);
    drop(peer);
    scene.check_given_back("slowloris").await;
    Outcome {
        attack: "1 byte per 75 ms",
        grown,
        slowest_good_call,
    }
}

/// The body of each stream item in `items_past_credit`.
const ITEM_BODY: usize = 60_000;
/// What `items_past_credit` sends past the credit: far more than the heap bound, so that a
/// server that buffered items it never granted credit for would show.
const PAST_CREDIT: usize = 8 << 20;

/// Stream items past the credit the server granted (megabytes of them, to a handler that
/// never takes one): `FLOW_CONTROL`, after at most the stream window (plus the item that
/// crossed it) was buffered.
async fn items_past_credit<E: Env>(env: E) -> Outcome {
    // Built before the baseline: the flood's bytes are the attacker's, not the server's.
    let item = frame(
        FrameHeader::new(FrameKind::StreamItem, 1),
        &[3u8; ITEM_BODY],
    );
    let items = PAST_CREDIT / item.len() + 1;
    assert!(items * ITEM_BODY > 2 * (HEAP_BASE + HEAP_PER_ATTACKER));
    // The server takes items while the window has room left: the one that crosses it, but
    // not the next.
    let within_credit = (DEFAULT_STREAM_WINDOW as usize).div_ceil(ITEM_BODY);
    let scene = Scene::new(&env).await;
    let mut peer = scene.peer().await;
    let before = scene.server.stats();
    let open = FrameHeader {
        flags: flags::STREAM_REQUEST,
        ..request(method(HOLD), 1)
    };
    peer.send_frame(open, b"").await.unwrap();
    let (reader, writer) = peer.into_parts();
    let attacker = Attacker::write(&env, writer, item, items);
    let mut reader = Peer::new(reader, futures_lite::io::sink());
    // A server that buffered past the credit would read the whole flood and never answer:
    // it fails on the heap it took instead.
    // The `GoAway` as it arrives: the server closes with the rest of the flood unread (it
    // drains at most `CLOSE_LINGER_BYTES`), which resets the connection.
    let (code, reason) = reader
        .next_go_away()
        .or(scene.watch_heap("items past credit", 1))
        .await
        .unwrap();
    assert_eq!(code, ErrorCode::FLOW_CONTROL, "{reason}");
    // The request, the items within the credit, and the one past it: nothing more was read.
    let expected = 1 + within_credit + 1;
    let read = || scene.server.stats().io.frames_read - before.io.frames_read;
    eventually(&env, "the offender's connection closed and counted", || {
        scene.server.stats().active == 1 && read() >= expected as u64
    })
    .await;
    assert_eq!(read(), expected as u64, "frames read from the offender");
    assert_eq!(
        scene.server.stats().protocol_errors - before.protocol_errors,
        1
    );
    let slowest_good_call = good_calls(&scene.good).await;
    let grown = scene.check_heap("items past credit", 1);
    drop((attacker, reader));
    scene.check_given_back("items past credit").await;
    Outcome {
        attack: "items past credit",
        grown,
        slowest_good_call,
    }
}

async fn all_attacks<E: Env>(env: E, runtime: &'static str) -> Vec<(&'static str, Outcome)> {
    vec![
        pings_never_read(env.clone()).await,
        many_peers_never_read(env.clone()).await,
        tiny_frame_flood(env.clone()).await,
        request_cancel_flood(env.clone()).await,
        credit_overflow(env.clone()).await,
        live_seq_reuse(env.clone()).await,
        metadata_bombs(env.clone()).await,
        decompression_bombs(env.clone()).await,
        slowloris(env.clone()).await,
        items_past_credit(env).await,
    ]
    .into_iter()
    .map(|outcome| (runtime, outcome))
    .collect()
}

/// The only test in this binary: the allocator's count is global.
#[test]
fn attacks_are_contained() {
    let (report, results) = std::sync::mpsc::channel();
    let tokio_report = report.clone();
    run_tokio(|env: common::TokioEnv| async move {
        tokio_report.send(all_attacks(env, "tokio").await).unwrap()
    });
    run_smol(
        |env: common::SmolEnv| async move { report.send(all_attacks(env, "smol").await).unwrap() },
    );
    for (runtime, outcome) in results.try_iter().flatten() {
        println!(
            "{runtime:>5} {:<24} heap +{:>5} KiB (bound {} KiB), slowest good call {:?}",
            outcome.attack,
            outcome.grown.0 >> 10,
            outcome.grown.1 >> 10,
            outcome.slowest_good_call
        );
    }
}
