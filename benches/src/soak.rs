//! `flumen-bench soak`: a long mixed workload that accounts for every call. Workers make unary
//! calls (some past their deadline, some cancelled) and streams of every shape, while the
//! soak closes client connections and restarts the server under them. Every call started
//! must end, with its own reply (every stream item in its place) or a typed failure; failures
//! happen only around the closes and restarts, so their number is bounded by them, and nearly
//! every call meant to succeed does. The server's handlers are counted apart from the callers:
//! no call succeeds that no handler answered, no call reaches a handler twice, and no handler
//! outlives its connection. The process's resident memory must stay flat once warmed up.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use flumen::{
    rt::TokioRuntime,
    stream::{CallOptions, StreamMode},
    tcp::TokioTcp,
    Bytes, CallError, Client, ClientConfig, ErrorCode, MethodId, Request, Router, Server,
    ServerConfig, ServerHandle, Status,
};
use futures_lite::{FutureExt, StreamExt};
use parking_lot::Mutex;

use crate::measure::process_rss;

/// Concurrent workers, each making one call or stream at a time.
const WORKERS: usize = 64;
/// Each unary call's deadline.
const DEADLINE: Duration = Duration::from_millis(500);
/// A call or stream that has not ended this long after its deadline is counted lost.
const LOST_AFTER: Duration = Duration::from_secs(5);
/// How often a client connection is closed under its callers, and the server restarted.
const CLIENT_CLOSE_EVERY: Duration = Duration::from_millis(700);
const SERVER_RESTART_EVERY: Duration = Duration::from_millis(2_900);
/// Allowed growth of resident memory from the end of the warm-up to the end.
const RSS_TOLERANCE: f64 = 0.10;
/// The share of the calls meant to succeed (echoes, streams read to their end) that must. A
/// close or a restart fails only the calls in flight at that moment, and a worker spends
/// nearly all its time in `slow` calls (half a second each, against a millisecond or so for
/// the others): a disruption costs the calls meant to succeed a few each, not a tenth of them.
const MIN_SUCCESS_SHARE: f64 = 0.9;
/// How soon every handler must have ended once the last client is closed and the server
/// stopped: a handler ends with its connection, not at its call's deadline or never.
const HANDLERS_END_WITHIN: Duration = DEADLINE;
/// Items each bidirectional and client stream sends.
const ITEMS_SENT: u64 = 8;
/// Items a server stream asks for, and the length of each.
const TICKS_ASKED: u8 = 20;
const TICK_LEN: usize = 64;

/// The server's methods, in the order of the per-method counters.
const METHOD_COUNT: usize = 5;
const METHODS: [&str; METHOD_COUNT] = ["echo", "slow", "items", "count", "ticks"];
const ECHO: usize = 0;
const SLOW: usize = 1;
const ITEMS: usize = 2;
const COUNT: usize = 3;
const TICKS: usize = 4;

/// What a worker does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// A unary call, echoed.
    Echo,
    /// A unary call answered after its deadline.
    Slow,
    /// A unary call dropped before its reply could come.
    Cancel,
    /// A bidirectional stream of tagged items, each echoed back in order.
    Bidi,
    /// A client stream, summed.
    ClientStream,
    /// A server stream, read to its end or dropped halfway.
    ServerStream { drop_halfway: bool },
}

impl Op {
    /// The operation for a random `roll`; unary calls are most of the mix.
    fn pick(roll: u64, tag: u64) -> Self {
        match roll % 8 {
            0..=2 => Self::Echo,
            3 => Self::Slow,
            4 => Self::Cancel,
            5 => Self::Bidi,
            6 => Self::ClientStream,
            _ => Self::ServerStream {
                drop_halfway: tag % 2 == 0,
            },
        }
    }

    /// The index of the method it calls.
    fn method(self) -> usize {
        match self {
            Self::Echo => ECHO,
            Self::Slow | Self::Cancel => SLOW,
            Self::Bidi => ITEMS,
            Self::ClientStream => COUNT,
            Self::ServerStream { .. } => TICKS,
        }
    }

    /// Whether it ends with its own reply when nothing closes or restarts under it.
    fn meant_to_succeed(self) -> bool {
        matches!(
            self,
            Self::Echo
                | Self::Bidi
                | Self::ClientStream
                | Self::ServerStream {
                    drop_halfway: false
                }
        )
    }
}

/// How one operation ended, as its caller saw it.
#[derive(Debug)]
enum Outcome {
    /// With its own reply: the echo of its body, every item in its place, the right count.
    Succeeded,
    /// Given up by the caller, as the operation meant to.
    Cancelled,
    /// A reply, an item or a count that is not this call's own (another call's, out of
    /// order, missing, extra), or a reply where none could come in time.
    Misrouted,
    /// A typed failure.
    Failed(CallError),
}

/// What the calls came to, counted by the callers.
#[derive(Debug, Default)]
struct Accounts {
    /// Per method: calls and streams started, counted before each is made.
    started: [AtomicU64; METHOD_COUNT],
    /// Of those started, the ones meant to succeed ([`Op::meant_to_succeed`]).
    meant_to_succeed: AtomicU64,
    /// Per method: ended with their own reply.
    succeeded: [AtomicU64; METHOD_COUNT],
    /// `slow` calls that ended at their deadline, as they should.
    timed_out: AtomicU64,
    /// Calls and streams the caller gave up on, as meant.
    cancelled: AtomicU64,
    /// Failures, each the toll of a close or a restart: calls meant to be answered in time
    /// that timed out, ...
    late: AtomicU64,
    /// ... that lost their connection, ...
    connection: AtomicU64,
    /// ... that were refused before they ran, ...
    refused: AtomicU64,
    /// ... and that failed in any other typed way.
    other: AtomicU64,
    /// Never ended (the watchdog gave up on them).
    lost: AtomicU64,
    misrouted: AtomicU64,
}

impl Accounts {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn sum(counters: &[AtomicU64]) -> u64 {
        counters.iter().map(Self::get).sum()
    }

    /// Counts how `op` ended.
    fn record(&self, op: Op, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Succeeded => &self.succeeded[op.method()],
            Outcome::Cancelled => &self.cancelled,
            Outcome::Misrouted => &self.misrouted,
            Outcome::Failed(e) if e.is_timeout() && op == Op::Slow => &self.timed_out,
            Outcome::Failed(e) if e.is_timeout() => &self.late,
            Outcome::Failed(e) if e.is_not_sent() => &self.refused,
            Outcome::Failed(e) if e.is_connection() => &self.connection,
            Outcome::Failed(_) => &self.other,
        };
        Self::count(counter);
    }

    /// Failures that only a close or a restart explains.
    fn disrupted(&self) -> u64 {
        [&self.late, &self.connection, &self.refused, &self.other]
            .into_iter()
            .map(Self::get)
            .sum()
    }
}

/// What the server's handlers did, over every server the soak started: counted where the
/// calls ran, apart from what the callers saw.
#[derive(Debug, Default)]
struct Served {
    /// Per method: handlers started.
    entered: [AtomicU64; METHOD_COUNT],
    /// Per method: handlers that returned their reply.
    answered: [AtomicU64; METHOD_COUNT],
    /// Handlers started and not yet ended (returned, or dropped when their call ended).
    running: AtomicU64,
}

impl Served {
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }

    /// Waits until no handler runs, for at most `limit`; returns how many still do.
    async fn ended_within(&self, limit: Duration) -> u64 {
        let give_up = Instant::now() + limit;
        while Self::get(&self.running) > 0 && Instant::now() < give_up {
            smol::Timer::after(Duration::from_millis(10)).await;
        }
        Self::get(&self.running)
    }
}

/// One handler's run: counted in when it starts, out when it ends or is dropped.
struct Run {
    served: Arc<Served>,
    method: usize,
}

impl Run {
    fn start(served: &Arc<Served>, method: usize) -> Self {
        served.entered[method].fetch_add(1, Ordering::SeqCst);
        served.running.fetch_add(1, Ordering::SeqCst);
        Self {
            served: served.clone(),
            method,
        }
    }

    fn answered(&self) {
        self.served.answered[self.method].fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.served.running.fetch_sub(1, Ordering::SeqCst);
    }
}

type Handling = Pin<Box<dyn Future<Output = Result<Bytes, Status>> + Send>>;

/// `handler` for method `method`, its runs counted in `served`.
fn counted<F, Fut>(
    served: &Arc<Served>,
    method: usize,
    handler: F,
) -> impl Fn(Request) -> Handling + Send + Sync + 'static
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, Status>> + Send + 'static,
{
    let served = served.clone();
    move |request: Request| -> Handling {
        let run = Run::start(&served, method);
        let reply = handler(request);
        Box::pin(async move {
            let reply = reply.await;
            if reply.is_ok() {
                run.answered();
            }
            reply
        })
    }
}

fn method(index: usize) -> u32 {
    MethodId::from_name(METHODS[index]).as_u32()
}

/// `echo` echoes, `slow` answers after 2 s (past every deadline), `items` echoes a stream's
/// items, `count` sums a client stream, `ticks` sends the number of items asked for; every
/// run counted in `served`.
fn router(served: &Arc<Served>) -> Router {
    let missing = || Status::new(ErrorCode::BAD_REQUEST, "expected a stream");
    Router::new()
        .route_raw(
            METHODS[ECHO],
            counted(served, ECHO, |request: Request| async move {
                Ok(request.into_body())
            }),
        )
        .route_raw(
            METHODS[SLOW],
            counted(served, SLOW, |request: Request| async move {
                smol::Timer::after(Duration::from_secs(2)).await;
                Ok(request.into_body())
            }),
        )
        .route_raw(
            METHODS[ITEMS],
            counted(served, ITEMS, move |request: Request| async move {
                let mut items = request.items().ok_or_else(missing)?;
                let sink = request.sink().ok_or_else(missing)?;
                while let Some(item) = items.next().await {
                    sink.send(item?).await?;
                }
                Ok(Bytes::new())
            }),
        )
        .route_raw(
            METHODS[COUNT],
            counted(served, COUNT, move |request: Request| async move {
                let mut items = request.items().ok_or_else(missing)?;
                let mut total = 0u64;
                while let Some(item) = items.next().await {
                    total += item?.len() as u64;
                }
                Ok(Bytes::from(total.to_le_bytes().to_vec()))
            }),
        )
        .route_raw(
            METHODS[TICKS],
            counted(served, TICKS, move |request: Request| async move {
                let sink = request.sink().ok_or_else(missing)?;
                let n = request.body().first().copied().unwrap_or(0);
                for i in 0..n {
                    sink.send(Bytes::from(vec![i; TICK_LEN])).await?;
                }
                Ok(Bytes::new())
            }),
        )
}

/// The server, restarted now and then on the same address.
struct Servers {
    rt: TokioRuntime,
    addr: SocketAddr,
    served: Arc<Served>,
    current: Mutex<Option<ServerHandle<SocketAddr>>>,
}

impl Servers {
    async fn start(rt: TokioRuntime, addr: SocketAddr) -> Result<Self, String> {
        let served = Arc::new(Served::default());
        let server = bind(&rt, addr, &served).await?;
        let addr = *server.local_addr();
        Ok(Self {
            rt,
            addr,
            served,
            current: Mutex::new(Some(server)),
        })
    }

    /// Stops the server at once (its calls fail) and starts a new one on the same address.
    async fn restart(&self) -> Result<(), String> {
        self.stop();
        // The address is free again as soon as the listener is closed.
        let mut tries = 0;
        loop {
            match bind(&self.rt, self.addr, &self.served).await {
                Ok(server) => {
                    *self.current.lock() = Some(server);
                    return Ok(());
                }
                Err(_) if tries < 50 => {
                    tries += 1;
                    smol::Timer::after(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stops the server at once: its connections end, and with them their handlers.
    fn stop(&self) {
        if let Some(old) = self.current.lock().take() {
            old.abort();
        }
    }
}

async fn bind(
    rt: &TokioRuntime,
    addr: SocketAddr,
    served: &Arc<Served>,
) -> Result<ServerHandle<SocketAddr>, String> {
    Server::new(router(served))
        .config(ServerConfig::default())
        .bind(rt, &TokioTcp::default(), &addr)
        .await
        .map_err(|e| format!("bind {addr}: {e}"))
}

/// A client connection shared by workers, replaced when it is closed or fails.
struct Clients {
    rt: TokioRuntime,
    addr: SocketAddr,
    current: Mutex<Option<Client>>,
}

impl Clients {
    async fn get(&self) -> Option<Client> {
        if let Some(client) = self
            .current
            .lock()
            .as_ref()
            .filter(|c| !c.raw().is_closed())
        {
            return Some(client.clone());
        }
        let config = ClientConfig::default().default_timeout(Some(DEADLINE));
        let client = Client::connect_with(
            &self.rt,
            &TokioTcp::default(),
            &self.addr,
            config,
            flumen::MsgPack::default(),
        )
        .await
        .ok()?;
        *self.current.lock() = Some(client.clone());
        Some(client)
    }

    fn close(&self) {
        if let Some(client) = self.current.lock().take() {
            client.raw().close();
        }
    }
}

/// One worker: calls until `stop`, accounting for each call before it is made and for how
/// it ended.
async fn worker(id: u64, clients: Arc<Clients>, accounts: Arc<Accounts>, stop: Arc<AtomicBool>) {
    let mut state = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(client) = clients.get().await else {
            smol::Timer::after(Duration::from_millis(10)).await;
            continue;
        };
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        n += 1;
        let tag = id << 40 | n;
        let op = Op::pick(state, tag);
        Accounts::count(&accounts.started[op.method()]);
        if op.meant_to_succeed() {
            Accounts::count(&accounts.meant_to_succeed);
        }
        let run = async { Some(one_op(&client, op, tag).await) };
        let watchdog = async {
            smol::Timer::after(DEADLINE + LOST_AFTER).await;
            None
        };
        match run.or(watchdog).await {
            Some(outcome) => accounts.record(op, &outcome),
            None => Accounts::count(&accounts.lost),
        }
    }
}

/// Runs `op` and says how it ended.
async fn one_op(client: &Client, op: Op, tag: u64) -> Outcome {
    let raw = client.raw();
    let body = Bytes::from(tag.to_le_bytes().to_vec());
    let result = match op {
        Op::Echo => raw.call(method(ECHO), body.clone()).await.map(|reply| {
            if reply == body {
                Outcome::Succeeded
            } else {
                Outcome::Misrouted
            }
        }),
        // No reply can come before the deadline: one that does is not this call's.
        Op::Slow => raw
            .call(method(SLOW), body)
            .await
            .map(|_| Outcome::Misrouted),
        Op::Cancel => {
            let call = async { Some(raw.call(method(SLOW), body).await) };
            let give_up = async {
                smol::Timer::after(Duration::from_millis(5)).await;
                None
            };
            match call.or(give_up).await {
                None => Ok(Outcome::Cancelled),
                Some(result) => result.map(|_| Outcome::Misrouted),
            }
        }
        Op::Bidi => bidi(raw, tag).await,
        Op::ClientStream => client_stream(raw).await,
        Op::ServerStream { drop_halfway } => server_stream(raw, drop_halfway).await,
    };
    result.unwrap_or_else(Outcome::Failed)
}

fn stream_options() -> CallOptions {
    CallOptions::new().timeout(Some(DEADLINE * 2))
}

/// `Succeeded`: every item came back, in order, and no other; `Misrouted`: one came back wrong.
async fn bidi(raw: &flumen::stream::Client, tag: u64) -> Result<Outcome, CallError> {
    let (sender, mut replies) = raw
        .open_stream(
            method(ITEMS),
            Bytes::new(),
            StreamMode::Bidirectional,
            &stream_options(),
        )
        .await?;
    let Some(mut sender) = sender else {
        return Ok(Outcome::Misrouted);
    };
    for k in 0..ITEMS_SENT {
        sender
            .send(Bytes::from((tag ^ k).to_le_bytes().to_vec()))
            .await?;
    }
    sender.finish().await;
    let mut k = 0u64;
    while let Some(item) = replies.next().await {
        let item = item?;
        if k >= ITEMS_SENT || item[..] != (tag ^ k).to_le_bytes() {
            return Ok(Outcome::Misrouted);
        }
        k += 1;
    }
    // The items ended (`None`): the server's final reply was a success.
    Ok(match k == ITEMS_SENT {
        true => Outcome::Succeeded,
        false => Outcome::Misrouted,
    })
}

/// `Succeeded`: the server counted every byte sent.
async fn client_stream(raw: &flumen::stream::Client) -> Result<Outcome, CallError> {
    let (sender, replies) = raw
        .open_stream(
            method(COUNT),
            Bytes::new(),
            StreamMode::ClientStreaming,
            &stream_options(),
        )
        .await?;
    let Some(mut sender) = sender else {
        return Ok(Outcome::Misrouted);
    };
    for _ in 0..ITEMS_SENT {
        sender.send(Bytes::from(vec![1u8; 100])).await?;
    }
    sender.finish().await;
    let total = replies.response().await?;
    Ok(match total[..] == (ITEMS_SENT * 100).to_le_bytes() {
        true => Outcome::Succeeded,
        false => Outcome::Misrouted,
    })
}

/// `Succeeded`: read to the end, every item whole and in its place; `Cancelled`: dropped
/// halfway, as meant; `Misrouted`: an item out of order, wrong, missing or extra.
async fn server_stream(
    raw: &flumen::stream::Client,
    drop_halfway: bool,
) -> Result<Outcome, CallError> {
    let (_, mut replies) = raw
        .open_stream(
            method(TICKS),
            Bytes::from(vec![TICKS_ASKED]),
            StreamMode::ServerStreaming,
            &stream_options(),
        )
        .await?;
    let mut i = 0u8;
    while let Some(item) = replies.next().await {
        let item = item?;
        if i >= TICKS_ASKED || item.len() != TICK_LEN || item.iter().any(|&b| b != i) {
            return Ok(Outcome::Misrouted);
        }
        i += 1;
        if drop_halfway && i == TICKS_ASKED / 2 {
            return Ok(Outcome::Cancelled);
        }
    }
    // The items ended (`None`): the server's final reply was a success.
    Ok(match i == TICKS_ASKED {
        true => Outcome::Succeeded,
        false => Outcome::Misrouted,
    })
}

/// Runs the soak for `duration` (the first quarter is warm-up) and prints the accounts.
pub(crate) fn run(duration: Duration) -> Result<(), String> {
    let (runtime, rt) = two_workers()?;
    let _guard = runtime.enter();
    runtime.block_on(soak(rt, duration))
}

/// A multi-thread tokio runtime with two workers (the users' default flavor, sized for this
/// machine), and Flumen's handle to it.
pub(crate) fn two_workers() -> Result<(tokio::runtime::Runtime, TokioRuntime), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let rt = TokioRuntime::new(runtime.handle().clone());
    Ok((runtime, rt))
}

async fn soak(rt: TokioRuntime, duration: Duration) -> Result<(), String> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let servers = Servers::start(rt.clone(), loopback).await?;
    let clients = Arc::new(Clients {
        rt: rt.clone(),
        addr: servers.addr,
        current: Mutex::new(None),
    });
    let accounts = Arc::new(Accounts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (done, finished) = smol::channel::unbounded::<()>();
    for id in 0..WORKERS as u64 {
        let (clients, accounts, stop, done) = (
            clients.clone(),
            accounts.clone(),
            stop.clone(),
            done.clone(),
        );
        flumen::rt::Runtime::spawn(&rt, async move {
            worker(id, clients, accounts, stop).await;
            drop(done);
        });
    }
    drop(done);
    let pid = std::process::id();
    let started = Instant::now();
    let warm = started + duration / 4;
    let (mut next_close, mut next_restart) =
        (started + CLIENT_CLOSE_EVERY, started + SERVER_RESTART_EVERY);
    let (mut rss_warm, mut rss_end, mut restarts, mut closes) = (None, 0, 0u64, 0u64);
    while started.elapsed() < duration {
        smol::Timer::after(Duration::from_millis(50)).await;
        let now = Instant::now();
        if now >= next_close {
            clients.close();
            closes += 1;
            next_close = now + CLIENT_CLOSE_EVERY;
        }
        if now >= next_restart {
            servers.restart().await?;
            restarts += 1;
            next_restart = now + SERVER_RESTART_EVERY;
        }
        let rss = process_rss(pid).unwrap_or(0);
        if now >= warm && rss_warm.is_none() {
            rss_warm = Some(rss);
        }
        rss_end = rss;
    }
    stop.store(true, Ordering::Relaxed);
    // Every worker finishes its last call (each is bounded by the lost watchdog).
    while finished.recv().await.is_ok() {}
    let elapsed = started.elapsed();
    // Whatever handlers still run end with their connections.
    clients.close();
    servers.stop();
    let handlers_left = servers.served.ended_within(HANDLERS_END_WITHIN).await;

    let (a, s) = (&*accounts, &*servers.served);
    let get = Accounts::get;
    let started_calls = Accounts::sum(&a.started);
    let succeeded = Accounts::sum(&a.succeeded);
    let meant = get(&a.meant_to_succeed);
    let disrupted = a.disrupted();
    let disruptions = closes + restarts;
    // A close or a restart fails at most the calls in flight then: one per worker.
    let disrupted_max = disruptions * WORKERS as u64;
    let rss_warm = rss_warm.unwrap_or(rss_end);
    let growth = rss_end as f64 / rss_warm.max(1) as f64 - 1.0;
    let per_method = METHODS
        .iter()
        .enumerate()
        .map(|(m, name)| {
            format!(
                "{name} {}/{}/{}/{}",
                get(&a.started[m]),
                Served::get(&s.entered[m]),
                Served::get(&s.answered[m]),
                get(&a.succeeded[m]),
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "soak: {:.0} s, {closes} client closes, {restarts} server restarts; started \
         {started_calls} = succeeded {succeeded} (of {meant} meant to) + slow calls timed out \
         {} + cancelled {} + failures {disrupted} (late {}, connection {}, not sent {}, other \
         {}; at most {disrupted_max} allowed) + lost {} + misrouted {}; started/reached a \
         handler/answered there/succeeded by method: {per_method}; handlers still running at \
         the end {handlers_left}; RSS {:.1} MiB after warm-up, {:.1} MiB at the end ({:+.1}%)",
        elapsed.as_secs_f64(),
        get(&a.timed_out),
        get(&a.cancelled),
        get(&a.late),
        get(&a.connection),
        get(&a.refused),
        get(&a.other),
        get(&a.lost),
        get(&a.misrouted),
        rss_warm as f64 / 1024.0 / 1024.0,
        rss_end as f64 / 1024.0 / 1024.0,
        growth * 100.0,
    );

    let mut broken = Vec::new();
    if get(&a.lost) > 0 {
        broken.push(format!("{} calls never ended", get(&a.lost)));
    }
    if get(&a.misrouted) > 0 {
        broken.push(format!(
            "{} calls got a reply or items not their own",
            get(&a.misrouted)
        ));
    }
    if disrupted > disrupted_max {
        broken.push(format!(
            "{disrupted} calls failed, more than the {disruptions} closes and restarts explain \
             (each fails at most the {WORKERS} calls in flight: {disrupted_max})"
        ));
    }
    if meant == 0 || (succeeded as f64) < MIN_SUCCESS_SHARE * meant as f64 {
        broken.push(format!(
            "{succeeded} of {meant} calls meant to succeed did (at least {:.0}% must)",
            MIN_SUCCESS_SHARE * 100.0
        ));
    }
    // Counted on the server: every call reaches a handler at most once, and every success
    // is a reply a handler gave.
    for (m, name) in METHODS.iter().enumerate() {
        let (calls, entered) = (get(&a.started[m]), Served::get(&s.entered[m]));
        let (answered, ok) = (Served::get(&s.answered[m]), get(&a.succeeded[m]));
        if entered > calls {
            broken.push(format!(
                "{name}: handlers ran {entered} times for {calls} calls (a call ran twice)"
            ));
        }
        if ok > answered {
            broken.push(format!(
                "{name}: {ok} calls succeeded, but handlers answered only {answered}"
            ));
        }
    }
    if handlers_left > 0 {
        broken.push(format!(
            "{handlers_left} handlers still ran {HANDLERS_END_WITHIN:?} after their connections \
             ended"
        ));
    }
    if growth > RSS_TOLERANCE {
        broken.push(format!(
            "resident memory grew {:.1}% after warm-up (limit {:.0}%)",
            growth * 100.0,
            RSS_TOLERANCE * 100.0
        ));
    }
    match broken.is_empty() {
        true => Ok(()),
        false => Err(format!("soak failed: {}", broken.join("; "))),
    }
}
