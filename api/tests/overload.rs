//! Load shedding: a flood of calls to a handler that can only serve a few at a time. With the
//! adaptive concurrency limit on, the server refuses the excess early (`OVERLOADED` with a
//! retry-after hint, before the call runs) instead of queueing it, so that every admitted call
//! keeps its deadline, and callers that back off as told all get through.

mod common;

use std::{sync::Arc, time::Duration};

use common::{connect, join_all, serve, Env, Gauge};
use flumen::{
    AdaptiveConcurrency, CallError, ClientConfig, ErrorCode, Router, ServerConfig, Status,
};

e2e!(admitted_calls_keep_their_deadline_under_a_flood);

/// Calls the handler serves at once (a pool of workers, a database's connections).
const WORKERS: usize = 4;
/// What each call takes of a worker.
const SERVICE: Duration = Duration::from_millis(5);
/// Calls at once: 400 x 5 ms / 4 workers = 500 ms of queue for the last, were they all let in.
const FLOOD: usize = 400;
/// Each attempt's deadline: shorter than that queue.
const DEADLINE: Duration = Duration::from_millis(250);

async fn admitted_calls_keep_their_deadline_under_a_flood<E: Env>(env: E) {
    let workers = Arc::new(smol::lock::Semaphore::new(WORKERS));
    let gauge = Arc::new(Gauge::default());
    let sleeper = env.clone();
    let running = gauge.clone();
    let router = Router::new().route("work", move |n: u64| {
        let (workers, sleep, running) = (workers.clone(), sleeper.clone(), running.clone());
        async move {
            running.enter();
            let _worker = workers.acquire().await;
            sleep.sleep(SERVICE).await;
            running.leave();
            Ok::<_, Status>(n)
        }
    });
    let limit = AdaptiveConcurrency {
        initial: 16,
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
                        assert!(refused.is_not_sent(), "a refused call did not run");
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
    let refusals: usize = join_all(calls).await.into_iter().sum();
    let stats = server.stats();
    println!(
        "{FLOOD} calls, {refusals} refusals, limit now {:?}, at most {} handlers at once",
        stats.concurrency_limit,
        gauge.max.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert!(refusals > 0, "the flood was never shed");
    assert_eq!(stats.shed, refusals as u64);
}
