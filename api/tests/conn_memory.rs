//! Per-connection buffer memory: a few hundred idle connections hold no read or write buffers
//! on either side (zero bytes: the idle RSS of about 6-10 KiB a connection is its tasks, socket
//! and state), and connections that carried a call give all their buffers back once they go
//! quiet. Read through the connection counters (`buffered_bytes`), not RSS.

mod common;

use std::time::Duration;

use common::{connect, eventually, run_smol, run_tokio, serve, Echo, Env, SmolEnv, TokioEnv};
use flumen::{stream::Bytes, ClientConfig, ServerConfig};

/// Connections opened to one server.
const CONNECTIONS: usize = 300;

async fn idle_connections_hold_no_buffers<E: Env>(env: E) {
    // A short read timeout makes the watchdog (and so quiet detection) run every 50 ms.
    let config = ServerConfig::default().read_timeout(Duration::from_millis(200));
    let server = serve(&env, Echo, config).await;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(connect(&env, server.local_addr().clone(), ClientConfig::default()).await);
    }
    eventually(&env, "every connection is open", || {
        server.stats().active == CONNECTIONS
    })
    .await;
    // Never used: nothing allocated.
    assert!(
        server.stats().io.buffered_bytes == 0,
        "{:?}",
        server.stats().io
    );
    for client in &clients {
        assert!(client.raw().stats().buffered_bytes == 0);
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
        server.stats().io.buffered_bytes == 0
    })
    .await;
    eventually(&env, "the clients' buffers are given back", || {
        clients
            .iter()
            .all(|client| client.raw().stats().buffered_bytes == 0)
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
