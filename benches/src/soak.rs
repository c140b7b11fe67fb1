//! `flumen-bench soak`: a long mixed workload that accounts for every call. Workers make unary
//! calls (some past their deadline, some cancelled) and streams of every shape, while the
//! soak closes client connections and restarts the server under them. Every call started
//! must end exactly once, as a success or a typed failure, with its own reply; the process's
//! resident memory must stay flat once warmed up.

use std::{
    net::SocketAddr,
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
    Bytes, CallError, Client, ClientConfig, ErrorCode, MethodId, Router, Server, ServerConfig,
    ServerHandle, Status,
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

/// What the calls came to.
#[derive(Debug, Default)]
struct Accounts {
    started: AtomicU64,
    succeeded: AtomicU64,
    timed_out: AtomicU64,
    connection: AtomicU64,
    refused: AtomicU64,
    other: AtomicU64,
    cancelled: AtomicU64,
    lost: AtomicU64,
    misrouted: AtomicU64,
}

impl Accounts {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn failed(&self, error: &CallError) {
        let counter = match error {
            e if e.is_timeout() => &self.timed_out,
            e if e.is_not_sent() => &self.refused,
            e if e.is_connection() => &self.connection,
            _ => &self.other,
        };
        Self::count(counter);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

fn method(name: &str) -> u32 {
    MethodId::from_name(name).as_u32()
}

/// `echo` echoes, `slow` answers after 2 s (past every deadline), `items` echoes a stream's
/// items, `count` sums a client stream, `ticks` sends the number of items asked for.
fn router() -> Router {
    Router::new()
        .route_raw("echo", |request| async move { Ok(request.into_body()) })
        .route_raw("slow", |request| async move {
            smol::Timer::after(Duration::from_secs(2)).await;
            Ok(request.into_body())
        })
        .route_raw("items", |request| async move {
            let missing = || Status::new(ErrorCode::BAD_REQUEST, "expected a stream");
            let mut items = request.items().ok_or_else(missing)?;
            let sink = request.sink().ok_or_else(missing)?;
            while let Some(item) = items.next().await {
                sink.send(item?).await?;
            }
            Ok(Bytes::new())
        })
        .route_raw("count", |request| async move {
            let missing = || Status::new(ErrorCode::BAD_REQUEST, "expected a stream");
            let mut items = request.items().ok_or_else(missing)?;
            let mut total = 0u64;
            while let Some(item) = items.next().await {
                total += item?.len() as u64;
            }
            Ok(Bytes::from(total.to_le_bytes().to_vec()))
        })
        .route_raw("ticks", |request| async move {
            let missing = || Status::new(ErrorCode::BAD_REQUEST, "expected a stream");
            let sink = request.sink().ok_or_else(missing)?;
            let n = request.body().first().copied().unwrap_or(0);
            for i in 0..n {
                sink.send(Bytes::from(vec![i; 64])).await?;
            }
            Ok(Bytes::new())
        })
}

/// The server, restarted now and then on the same address.
struct Servers {
    rt: TokioRuntime,
    addr: SocketAddr,
    current: Mutex<Option<ServerHandle<SocketAddr>>>,
}

impl Servers {
    async fn start(rt: TokioRuntime, addr: SocketAddr) -> Result<Self, String> {
        let server = bind(&rt, addr).await?;
        let addr = *server.local_addr();
        Ok(Self {
            rt,
            addr,
            current: Mutex::new(Some(server)),
        })
    }

    /// Stops the server at once (its calls fail) and starts a new one on the same address.
    async fn restart(&self) -> Result<(), String> {
        if let Some(old) = self.current.lock().take() {
            old.abort();
        }
        // The address is free again as soon as the listener is closed.
        let mut tries = 0;
        loop {
            match bind(&self.rt, self.addr).await {
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
}

async fn bind(rt: &TokioRuntime, addr: SocketAddr) -> Result<ServerHandle<SocketAddr>, String> {
    Server::new(router())
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

/// One worker: calls until `stop`, accounting for each.
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
        Accounts::count(&accounts.started);
        let op = one_op(&client, state % 8, tag, &accounts);
        let watchdog = async {
            smol::Timer::after(DEADLINE + LOST_AFTER).await;
            Accounts::count(&accounts.lost);
        };
        op.or(watchdog).await;
    }
}

/// Runs operation `kind` and accounts for how it ended.
async fn one_op(client: &Client, kind: u64, tag: u64, accounts: &Accounts) {
    let raw = client.raw();
    let body = Bytes::from(tag.to_le_bytes().to_vec());
    match kind {
        // Unary calls, most of the mix.
        0..=2 => match raw.call(method("echo"), body.clone()).await {
            Ok(reply) if reply == body => Accounts::count(&accounts.succeeded),
            Ok(_) => Accounts::count(&accounts.misrouted),
            Err(e) => accounts.failed(&e),
        },
        // Past its deadline.
        3 => match raw.call(method("slow"), body).await {
            Ok(_) => Accounts::count(&accounts.misrouted),
            Err(e) => accounts.failed(&e),
        },
        // Cancelled: dropped before its reply could come.
        4 => {
            let call = async { Some(raw.call(method("slow"), body).await) };
            let give_up = async {
                smol::Timer::after(Duration::from_millis(5)).await;
                None
            };
            match call.or(give_up).await {
                None => Accounts::count(&accounts.cancelled),
                Some(Ok(_)) => Accounts::count(&accounts.misrouted),
                Some(Err(e)) => accounts.failed(&e),
            }
        }
        // A bidirectional stream of tagged items, each echoed back in order.
        5 => match bidi(raw, tag).await {
            Ok(true) => Accounts::count(&accounts.succeeded),
            Ok(false) => Accounts::count(&accounts.misrouted),
            Err(e) => accounts.failed(&e),
        },
        // A client stream, summed.
        6 => match client_stream(raw).await {
            Ok(true) => Accounts::count(&accounts.succeeded),
            Ok(false) => Accounts::count(&accounts.misrouted),
            Err(e) => accounts.failed(&e),
        },
        // A server stream, dropped halfway or read to its end.
        _ => match server_stream(raw, tag % 2 == 0).await {
            Ok(true) => Accounts::count(&accounts.succeeded),
            Ok(false) => Accounts::count(&accounts.cancelled),
            Err(e) => accounts.failed(&e),
        },
    }
}

fn stream_options() -> CallOptions {
    CallOptions::new().timeout(Some(DEADLINE * 2))
}

/// `Ok(true)`: every item came back, in order; `Ok(false)`: one came back wrong.
async fn bidi(raw: &flumen::stream::Client, tag: u64) -> Result<bool, CallError> {
    let (sender, mut replies) = raw
        .open_stream(
            method("items"),
            Bytes::new(),
            StreamMode::Bidirectional,
            &stream_options(),
        )
        .await?;
    let Some(mut sender) = sender else {
        return Ok(false);
    };
    for k in 0..8u64 {
        sender
            .send(Bytes::from((tag ^ k).to_le_bytes().to_vec()))
            .await?;
    }
    sender.finish().await;
    let mut k = 0;
    while let Some(item) = replies.next().await {
        if item?[..] != (tag ^ k).to_le_bytes() {
            return Ok(false);
        }
        k += 1;
    }
    replies.response().await?;
    Ok(k == 8)
}

async fn client_stream(raw: &flumen::stream::Client) -> Result<bool, CallError> {
    let (sender, replies) = raw
        .open_stream(
            method("count"),
            Bytes::new(),
            StreamMode::ClientStreaming,
            &stream_options(),
        )
        .await?;
    let Some(mut sender) = sender else {
        return Ok(false);
    };
    for _ in 0..8 {
        sender.send(Bytes::from(vec![1u8; 100])).await?;
    }
    sender.finish().await;
    let total = replies.response().await?;
    Ok(total[..] == 800u64.to_le_bytes())
}

/// `Ok(true)`: read to the end; `Ok(false)`: dropped halfway (a cancellation).
async fn server_stream(
    raw: &flumen::stream::Client,
    drop_halfway: bool,
) -> Result<bool, CallError> {
    let (_, mut replies) = raw
        .open_stream(
            method("ticks"),
            Bytes::from_static(&[20]),
            StreamMode::ServerStreaming,
            &stream_options(),
        )
        .await?;
    let mut i = 0u8;
    while let Some(item) = replies.next().await {
        if item?[0] != i {
            return Err(CallError::Remote {
                code: ErrorCode::INTERNAL,
                message: "item out of order".into(),
            });
        }
        i += 1;
        if drop_halfway && i == 10 {
            return Ok(false);
        }
    }
    replies.response().await?;
    Ok(i == 20)
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
    let (mut rss_warm, mut rss_end, mut restarts, mut closes) = (None, 0, 0, 0);
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
    let a = &*accounts;
    let get = Accounts::get;
    let ended = get(&a.succeeded)
        + get(&a.timed_out)
        + get(&a.connection)
        + get(&a.refused)
        + get(&a.other)
        + get(&a.cancelled)
        + get(&a.misrouted)
        + get(&a.lost);
    let rss_warm = rss_warm.unwrap_or(rss_end);
    let growth = rss_end as f64 / rss_warm.max(1) as f64 - 1.0;
    println!(
        "soak: {:.0} s, {closes} client closes, {restarts} server restarts; started {} = \
         succeeded {} + typed failures {} (timeout {}, connection {}, not sent {}, other {}) + \
         cancelled {}; lost {}, misrouted {}, unaccounted {}; RSS {:.1} MiB after warm-up, \
         {:.1} MiB at the end ({:+.1}%)",
        started.elapsed().as_secs_f64(),
        get(&a.started),
        get(&a.succeeded),
        get(&a.timed_out) + get(&a.connection) + get(&a.refused) + get(&a.other),
        get(&a.timed_out),
        get(&a.connection),
        get(&a.refused),
        get(&a.other),
        get(&a.cancelled),
        get(&a.lost),
        get(&a.misrouted),
        get(&a.started).saturating_sub(ended),
        rss_warm as f64 / 1024.0 / 1024.0,
        rss_end as f64 / 1024.0 / 1024.0,
        growth * 100.0,
    );
    if get(&a.lost) > 0 || get(&a.misrouted) > 0 || ended != get(&a.started) {
        return Err("calls were lost, misrouted or unaccounted for".into());
    }
    if growth > RSS_TOLERANCE {
        return Err(format!(
            "resident memory grew {:.1}% after warm-up (limit {:.0}%)",
            growth * 100.0,
            RSS_TOLERANCE * 100.0
        ));
    }
    Ok(())
}
