//! QUIC's own liveness settings: keep-alives hold an idle connection open past the idle
//! timeout; without them the connection dies at the idle timeout and calls fail with a
//! connection error. Both runtimes.

mod common;

use std::time::Duration;

use common::{loopback, run_smol, run_tokio, Env};
use flumen::{quic::QuicTransport, tls::DevCa, Client, Router, Server, Status};

/// QUIC's idle timeout on both sides: long against a stall of the loaded machine, which a
/// keep-alive must outlast.
const IDLE: Duration = Duration::from_secs(1);
/// The keep-alive's period, when there is one.
const KEEP_ALIVE: Duration = Duration::from_millis(200);

fn transports(base: QuicTransport, keep_alive: Option<Duration>) -> (QuicTransport, QuicTransport) {
    let ca = DevCa::new().unwrap();
    let idle = IDLE;
    let server = base
        .clone()
        .idle_timeout(idle)
        .keep_alive(keep_alive)
        .server(ca.server_tls(&["localhost"]).unwrap())
        .unwrap();
    let client = base
        .idle_timeout(idle)
        .keep_alive(keep_alive)
        .client(ca.client_tls("localhost").unwrap())
        .unwrap();
    (server, client)
}

async fn idle_for_three_seconds<E: Env>(
    env: &E,
    base: QuicTransport,
    keep_alive: Option<Duration>,
) -> Result<String, flumen::Error> {
    let (server_side, client_side) = transports(base, keep_alive);
    let router = Router::new().route(
        "ping",
        |()| async move { Ok::<_, Status>("pong".to_owned()) },
    );
    let server = Server::new(router)
        .bind(&env.rt(), &server_side, &loopback())
        .await
        .unwrap();
    let client = Client::connect(&env.rt(), &client_side, server.local_addr())
        .await
        .unwrap();
    let first: String = client.call("ping", &()).await?;
    assert_eq!(first, "pong");
    env.sleep(3 * IDLE).await;
    client.call("ping", &()).await
}

#[test]
fn keep_alive_outlives_the_idle_timeout_tokio() {
    run_tokio(|env: common::TokioQuicEnv| async move {
        let reply = idle_for_three_seconds(&env, QuicTransport::tokio(), Some(KEEP_ALIVE)).await;
        assert_eq!(reply.unwrap(), "pong");
    });
}

#[test]
fn without_keep_alive_the_idle_connection_dies_tokio() {
    run_tokio(|env: common::TokioQuicEnv| async move {
        let err = idle_for_three_seconds(&env, QuicTransport::tokio(), None)
            .await
            .unwrap_err();
        assert!(err.is_connection(), "{err}");
    });
}

#[test]
fn keep_alive_outlives_the_idle_timeout_smol() {
    run_smol(|env: common::SmolQuicEnv| async move {
        let base = QuicTransport::smol_on(env.rt());
        let reply = idle_for_three_seconds(&env, base, Some(KEEP_ALIVE)).await;
        assert_eq!(reply.unwrap(), "pong");
    });
}

#[test]
fn without_keep_alive_the_idle_connection_dies_smol() {
    run_smol(|env: common::SmolQuicEnv| async move {
        let base = QuicTransport::smol_on(env.rt());
        let err = idle_for_three_seconds(&env, base, None).await.unwrap_err();
        assert!(err.is_connection(), "{err}");
    });
}
