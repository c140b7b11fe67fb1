//! Per-connection buffer memory: a few hundred idle connections hold no read or write buffers
//! on either side, and connections that carried a call give their buffers back once they go
//! quiet. Read through the connection counters (`buffered_bytes`), not RSS.

mod common;

use std::{
    future::{ready, Ready},
    time::Duration,
};

use common::{connect, eventually, run_smol, run_tokio, serve, Env, SmolEnv, TokioEnv};
use flumen::{
    stream::{Bytes, Dispatch, Reply, Request, Status},
    ClientConfig, ServerConfig,
};

/// Connections opened to one server.
const CONNECTIONS: usize = 300;

/// The most buffer memory an idle connection may hold on either side, in bytes (all of it
/// given back; the per-connection RSS target of 16 KiB covers the tasks, the socket and the
/// connection's state besides).
const IDLE_BUFFERS_MAX: usize = 0;

/// Echoes the request body.
struct Echo;

impl Dispatch for Echo {
    type Future = Ready<Result<Reply, Status>>;

    fn dispatch(&self, request: Request) -> Self::Future {
        ready(Ok(request.into_body().into()))
    }
}

async fn idle_connections_hold_no_buffers<E: Env>(env: E) {
    // A short read timeout makes the watchdog (and so quiet detection) run every 50 ms.
    let config = ServerConfig::default().read_timeout(Duration::from_millis(200));
    let server = serve(&env, Echo, config).await;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(connect(&env, *server.local_addr(), ClientConfig::default()).await);
    }
    eventually(&env, "every connection is open", || {
        server.stats().active == CONNECTIONS
    })
    .await;
    // Never used: nothing allocated.
    assert!(
        server.stats().io.buffered_bytes <= IDLE_BUFFERS_MAX * CONNECTIONS,
        "{:?}",
        server.stats().io
    );
    for client in &clients {
        assert!(client.raw().stats().buffered_bytes <= IDLE_BUFFERS_MAX);
    }

    // One 8 KiB call on each, all at once: both sides allocate buffers...
    let body = Bytes::from(vec![7u8; 8192]);
    let calls = clients.iter().map(|client| {
        let (client, body) = (client.clone(), body.clone());
        async move { client.raw().call(1, body.clone()).await.unwrap() == body }
    });
    assert!(common::join_all(calls).await.into_iter().all(|ok| ok));
    let busy = server.stats().io;
    assert_eq!(busy.frames_read, CONNECTIONS as u64);

    // ...and give them back once the connections go quiet.
    eventually(&env, "the server's buffers are given back", || {
        server.stats().io.buffered_bytes <= IDLE_BUFFERS_MAX * CONNECTIONS
    })
    .await;
    eventually(&env, "the clients' buffers are given back", || {
        clients
            .iter()
            .all(|client| client.raw().stats().buffered_bytes <= IDLE_BUFFERS_MAX)
    })
    .await;

    // Quiet connections still serve: the buffers come back with the traffic.
    let reply = clients[0].raw().call(1, body.clone()).await.unwrap();
    assert_eq!(reply, body);
}

#[test]
fn tokio_idle_connections_hold_no_buffers() {
    run_tokio(idle_connections_hold_no_buffers::<TokioEnv>);
}

#[test]
fn smol_idle_connections_hold_no_buffers() {
    run_smol(idle_connections_hold_no_buffers::<SmolEnv>);
}
