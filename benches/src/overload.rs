//! `flumen-bench overload`: goodput under overload. A handler serves `workers` calls at a time,
//! each taking `service` of a worker, so the server can finish `workers / service` calls a
//! second; callers offer twice that, open-loop (a new call on schedule, whatever the others
//! do), each with a deadline. Goodput is the calls answered within their deadline, with the
//! adaptive concurrency limit off and on.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use flumen::{
    rt::{Runtime, TokioRuntime},
    tcp::TokioTcp,
    AdaptiveConcurrency, CallError, Client, ClientConfig, Router, Server, ServerConfig, Status,
};
use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Calls the handler serves at once, and what each takes.
const WORKERS: usize = 4;
const SERVICE: Duration = Duration::from_millis(5);
/// Offered load, as a multiple of what the server can serve.
const OVERLOAD: f64 = 2.0;
/// Each call's deadline.
const DEADLINE: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Outcomes {
    ok: AtomicU64,
    shed: AtomicU64,
    late: AtomicU64,
    other: AtomicU64,
}

/// Runs both rows and prints them.
pub(crate) fn run(duration: Duration) -> Result<(), String> {
    let (runtime, rt) = crate::soak::two_workers()?;
    let _guard = runtime.enter();
    let capacity = WORKERS as f64 / SERVICE.as_secs_f64();
    println!(
        "capacity {capacity:.0} calls/s ({WORKERS} workers x {SERVICE:?}), offered {:.0} calls/s, \
         deadline {DEADLINE:?}, {:.0} s a row",
        capacity * OVERLOAD,
        duration.as_secs_f64()
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "limit", "goodput/s", "shed/s", "late/s", "other/s", "p99 ok (ms)"
    );
    for limit in [None, Some(AdaptiveConcurrency::default())] {
        runtime.block_on(row(rt.clone(), limit, capacity * OVERLOAD, duration))?;
    }
    Ok(())
}

async fn row(
    rt: TokioRuntime,
    limit: Option<AdaptiveConcurrency>,
    rate: f64,
    duration: Duration,
) -> Result<(), String> {
    let workers = Arc::new(smol::lock::Semaphore::new(WORKERS));
    let router = Router::new().route("work", move |n: u64| {
        let workers = workers.clone();
        async move {
            let _worker = workers.acquire().await;
            smol::Timer::after(SERVICE).await;
            Ok::<_, Status>(n)
        }
    });
    let server = Server::new(router)
        .config(ServerConfig::default().adaptive_concurrency(limit))
        .bind(
            &rt,
            &TokioTcp::default(),
            &SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .await
        .map_err(|e| e.to_string())?;
    let config = ClientConfig::default().default_timeout(Some(DEADLINE));
    let client: Client = Client::connect_with(
        &rt,
        &TokioTcp::default(),
        server.local_addr(),
        config,
        flumen::MsgPack::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let outcomes = Arc::new(Outcomes::default());
    let latencies = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
    ));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut next = started;
    let mut n = 0u64;
    let (done, finished) = smol::channel::unbounded::<()>();
    while next < started + duration {
        smol::Timer::at(next).await;
        next += interval;
        n += 1;
        let (client, outcomes, latencies, done) = (
            client.clone(),
            outcomes.clone(),
            latencies.clone(),
            done.clone(),
        );
        rt.spawn(async move {
            let sent = Instant::now();
            let counter = match client.call::<_, u64>("work", &n).await {
                Ok(_) => {
                    let micros = sent.elapsed().as_micros() as u64;
                    let _ = latencies.lock().record(micros.max(1));
                    &outcomes.ok
                }
                Err(flumen::Error::Call(CallError::Overloaded { .. })) => &outcomes.shed,
                Err(e) if e.is_timeout() => &outcomes.late,
                Err(_) => &outcomes.other,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            drop(done);
        });
    }
    drop(done);
    while finished.recv().await.is_ok() {}
    let secs = duration.as_secs_f64();
    let per_sec = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64 / secs;
    let name = match limit {
        None => "off".to_owned(),
        Some(l) => format!("adaptive (from {})", l.initial),
    };
    println!(
        "{name:<22} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>12.1}",
        per_sec(&outcomes.ok),
        per_sec(&outcomes.shed),
        per_sec(&outcomes.late),
        per_sec(&outcomes.other),
        latencies.lock().value_at_quantile(0.99) as f64 / 1000.0
    );
    server.abort();
    Ok(())
}
