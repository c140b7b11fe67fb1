//! Load shedding: a flood of calls to a handler that can only serve a few at a time. With the
//! adaptive concurrency limit on, the server refuses the excess early (`OVERLOADED` with a
//! retry-after hint, before the call runs) instead of queueing it, so that every admitted call
//! keeps its deadline, and callers that back off as told all get through.
//!
//! The handler counts its runs and how many run at once, on the server: a refused call must
//! not have run, and the handlers running at once never pass the limit's ceiling.

mod common;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{connect, join_all, serve, Env, Gauge};
use flumen::{
    AdaptiveConcurrency, CallError, ClientConfig, ErrorCode, Router, ServerConfig, Status,
};

e2e!(admitted_calls_keep_their_deadline_under_a_flood);

/// Calls the handler serves at once (a pool of workers, a database's connections).
const WORKERS: usize = 4;
/// What each call takes of a worker.
const SERVICE: Duration = Duration::from_millis(20);
/// Calls at once: 400 x 20 ms / 4 workers = 2 s of queue for the last, were they all let in.
const FLOOD: usize = 400;
/// Each attempt's deadline: half that queue, and long enough that a stall of a loaded
/// machine does not pass it for a call the limit admitted.
const DEADLINE: Duration = Duration::from_secs(1);
/// The adaptive limit starts here...
const INITIAL_LIMIT: usize = 16;
/// ...and never goes above this: the most handlers that may ever run at once. Far below the
/// flood, so that a limit that let calls in unchecked shows.
const MAX_LIMIT: usize = 32;

/// A handler in the gauge from its first poll until it ends or is dropped.
struct Running(Arc<Gauge>);

impl Running {
    fn enter(gauge: Arc<Gauge>) -> Self {
        gauge.enter();
        Self(gauge)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.leave();
    }
}

async fn admitted_calls_keep_their_deadline_under_a_flood<E: Env>(env: E) {
    let workers = Arc::new(smol::lock::Semaphore::new(WORKERS));
    // Handlers running at once, and handler runs in all: counted on the server.
    let gauge = Arc::new(Gauge::default());
    let ran = Arc::new(AtomicUsize::new(0));
    let sleeper = env.clone();
    let (running, runs) = (gauge.clone(), ran.clone());
    let router = Router::new().route("work", move |n: u64| {
        let (workers, sleep) = (workers.clone(), sleeper.clone());
        let (running, runs) = (running.clone(), runs.clone());
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let _running = Running::enter(running);
            let _worker = workers.acquire().await;
            sleep.sleep(SERVICE).await;
            Ok::<_, Status>(n)
        }
    });
    let limit = AdaptiveConcurrency {
        initial: INITIAL_LIMIT,
        max: MAX_LIMIT,
        ..Default::default()
    };
    let config = ServerConfig::default().adaptive_concurrency(Some(limit));
    let server = serve(&env, router, config).await;
    let client = connect(
        &env,
        server.local_addr().clone(),
        ClientConfig::default().default_timeout(Some(DEADLINE)),
    )
    .await;
    // Each call retries until it succeeds (any error but `OVERLOADED` fails the test), and
    // returns how often it was refused.
    let calls = (0..FLOOD as u64).map(|n| {
        let (client, env) = (client.clone(), env.clone());
        async move {
            let mut refusals = 0;
            loop {
                match client.call::<_, u64>("work", &n).await {
                    Ok(got) => {
                        assert_eq!(got, n);
                        return refusals;
                    }
                    Err(flumen::Error::Call(refused @ CallError::Overloaded { .. })) => {
                        assert_eq!(refused.remote_code(), Some(ErrorCode::OVERLOADED));
                        let retry_after = refused.retry_after();
                        refusals += 1;
                        assert!(refusals < 1_000, "call {n} never got in");
                        let wait = retry_after.expect("the limit gives a retry-after hint");
                        env.sleep(wait).await;
                    }
                    Err(e) => panic!("call {n}: {e} (code {:?})", e.code()),
                }
            }
        }
    });
    let per_call = join_all(calls).await;
    let succeeded = per_call.len();
    let refusals: usize = per_call.iter().sum();
    let stats = server.stats();
    let ran = ran.load(Ordering::SeqCst);
    let most = gauge.max.load(Ordering::SeqCst);
    println!(
        "{FLOOD} calls, {refusals} refusals, {ran} handler runs, limit now {:?}, at most \
         {most} handlers at once",
        stats.concurrency_limit,
    );
    // Not vacuous: the flood was shed, and every call got through in the end.
    assert!(refusals > 0, "the flood was never shed");
    assert_eq!(succeeded, FLOOD);
    assert_eq!(stats.shed, refusals as u64);
    // Each success ran its handler once; no refusal ran it at all.
    assert_eq!(
        ran, succeeded,
        "{ran} handler runs for {succeeded} calls that succeeded ({refusals} refusals): a \
         refused call ran its handler"
    );
    assert!(
        most <= MAX_LIMIT,
        "{most} handlers ran at once, past the limit's ceiling of {MAX_LIMIT}"
    );
    assert_eq!(
        gauge.now.load(Ordering::SeqCst),
        0,
        "a handler is still running"
    );
}
