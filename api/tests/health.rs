//! The health service (`flumen::health`): statuses the application sets, read by a unary
//! check and followed by a watch stream; a graceful shutdown turns them not serving before
//! the connections close. Every runtime and transport.

mod common;

use std::time::Duration;

use common::{connect, serve, Env};
use flumen::{
    health::{FlumenHealthClient, Health, ServingStatus},
    ClientConfig, Router, ServerConfig, Status,
};
use futures_lite::StreamExt;

fn router(health: &Health) -> Router {
    Router::new()
        .route("Kv.get", |key: String| async move { Ok::<_, Status>(key) })
        .with_health(health)
        .unwrap()
}

async fn checks_and_watches_follow_the_statuses_set<E: Env>(env: E) {
    let health = Health::new();
    let server = serve(&env, router(&health), ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let checker = FlumenHealthClient::new(client);
    assert_eq!(
        checker.check("Kv".into()).await.unwrap(),
        ServingStatus::Unknown
    );
    let mut watch = checker.watch("Kv".into()).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap(), ServingStatus::Unknown);
    health.set("Kv", ServingStatus::Serving);
    assert_eq!(watch.next().await.unwrap().unwrap(), ServingStatus::Serving);
    assert_eq!(
        checker.check("Kv".into()).await.unwrap(),
        ServingStatus::Serving
    );
    // Setting the same status again is not a change; another service's is not this one's.
    health.set("Kv", ServingStatus::Serving);
    health.set("Other", ServingStatus::NotServing);
    health.set("Kv", ServingStatus::NotServing);
    assert_eq!(
        watch.next().await.unwrap().unwrap(),
        ServingStatus::NotServing
    );
    assert_eq!(
        checker.check("Other".into()).await.unwrap(),
        ServingStatus::NotServing
    );
}

async fn a_graceful_shutdown_reports_not_serving_to_watchers<E: Env>(env: E) {
    let health = Health::new();
    health.set("Kv", ServingStatus::Serving);
    health.set("", ServingStatus::Serving);
    let server = serve(&env, router(&health), ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let checker = FlumenHealthClient::new(client);
    let mut watch = checker.watch("Kv".into()).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap(), ServingStatus::Serving);
    // The watch is a call in flight: the shutdown waits for it up to its grace.
    let shutdown = server.shutdown(Duration::from_secs(30));
    let watched = async {
        let next = watch.next().await.unwrap().unwrap();
        drop(watch);
        next
    };
    let (next, ()) = futures_lite::future::zip(watched, shutdown).await;
    assert_eq!(next, ServingStatus::NotServing);
    assert_eq!(health.get("Kv"), ServingStatus::NotServing);
    assert_eq!(health.get(""), ServingStatus::NotServing);
}

e2e!(
    checks_and_watches_follow_the_statuses_set,
    a_graceful_shutdown_reports_not_serving_to_watchers,
);
