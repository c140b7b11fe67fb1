//! Shared memory's wake-ups under pressure: a side that parks on an empty ring must be woken
//! by the byte the other side sends after publishing. The tests make parking race with
//! publishing often (one call in flight, long spins before parking, so that each side often
//! parks just as the other publishes) and bound every call with a deadline: a lost wake-up
//! is a call that never completes. Server and client run on current-thread runtimes of their
//! own (threads, or processes).
//!
//! The lost wake-up these guard against was found by `flumen-bench` (pipe over shared memory,
//! one call in flight, `FLUMEN_SHM_SPIN=2000`: every run hung), where tokio's `try_write`
//! answered `WouldBlock` from its cached readiness without trying, and the byte was dropped.
//! These tests do not reproduce that timing on this machine (they pass with the old wake-up
//! too); the benchmark does, and `wake_peer` now writes to the socket directly.

mod common;

use std::{sync::mpsc, time::Duration};

use flumen::{
    rt::TokioRuntime,
    shm::{ShmConfig, TokioShm},
    stream::{Listener, Transport},
    Bytes, Client, ClientConfig, MethodId, Router, Server,
};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

/// Calls made, one at a time.
const CALLS: usize = 3_000;
/// Checks of an empty ring before parking: long enough that parking often races with the
/// peer's publishing.
const SPIN: u32 = 2_000;

#[test]
fn one_call_at_a_time_with_long_spins_completes_every_call() {
    // No other process's, not even a crashed one's with this process's id.
    let path = common::socket_path();
    let transport = TokioShm::new(ShmConfig::default().spin_checks(SPIN));
    let (bound, ready) = mpsc::channel();
    let (stop, stopped) = mpsc::channel::<()>();
    let server_transport = transport.clone();
    let server_path = path.clone();
    let server = std::thread::spawn(move || {
        current_thread().block_on(async move {
            let rt = TokioRuntime::current();
            let router =
                Router::new().route_raw("echo", |request| async move { Ok(request.into_body()) });
            let _server = Server::new(router)
                .bind(&rt, &server_transport, &server_path)
                .await
                .unwrap();
            bound.send(()).unwrap();
            let _ = tokio::task::spawn_blocking(move || stopped.recv()).await;
        });
    });
    ready.recv().unwrap();
    let failed = current_thread().block_on(async move {
        let rt = TokioRuntime::current();
        let config = ClientConfig::default().max_in_flight(1);
        let client =
            Client::connect_with(&rt, &transport, &path, config, flumen::MsgPack::default())
                .await
                .unwrap();
        let echo = MethodId::from_name("echo").as_u32();
        for i in 0..CALLS {
            let body = Bytes::from(i.to_le_bytes().to_vec());
            let reply = client
                .raw()
                .call_with_timeout(echo, body.clone(), Some(Duration::from_secs(10)))
                .await;
            match reply {
                Ok(reply) => assert_eq!(reply, body),
                Err(e) => return Some((i, e)),
            }
        }
        None
    });
    let _ = stop.send(());
    server.join().unwrap();
    if let Some((i, e)) = failed {
        panic!("call {i} of {CALLS} failed (a lost wake-up leaves it waiting): {e}");
    }
}

/// Set in the child process: the socket path to serve the raw echo on.
const CHILD: &str = "FLUMEN_SHM_WAKEUPS_CHILD";

/// The child's half of the next test (returns at once unless started as the child): a raw
/// echo of 44-byte frames over one connection's halves, in one task.
#[test]
fn child() {
    let Ok(path) = std::env::var(CHILD) else {
        return;
    };
    let transport = TokioShm::new(ShmConfig::default().spin_checks(SPIN));
    current_thread().block_on(async move {
        let mut listener = transport.bind(&path.into()).await.unwrap();
        common::announce_listening();
        let (connecting, _) = listener.accept().await.unwrap();
        let (mut reader, mut writer) = connecting.await.unwrap();
        let mut frame = [0u8; 44];
        // Until the client hangs up.
        while reader.read_exact(&mut frame).await.is_ok() {
            writer.write_all(&frame).await.unwrap();
        }
    });
}

/// The same at the transport's level, across two processes, as a benchmark's echo uses it:
/// one task per side writes and reads its halves in turn.
#[test]
fn an_echo_across_processes_with_long_spins_completes_every_round() {
    // No other process's, not even a crashed one's with this process's id.
    let path = common::socket_path();
    let mut server = common::spawn_listening(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .env(CHILD, &path),
    );
    let transport = TokioShm::new(ShmConfig::default().spin_checks(SPIN));
    let connect_to = path.clone();
    let failed = current_thread().block_on(async move {
        let (mut reader, mut writer) = transport.connect(&connect_to).await.unwrap();
        for i in 0..CALLS {
            let mut frame = [0u8; 44];
            frame[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let mut echo = [0u8; 44];
            let round = async {
                writer.write_all(&frame).await?;
                reader.read_exact(&mut echo).await
            };
            match tokio::time::timeout(Duration::from_secs(10), round).await {
                Ok(Ok(())) => assert_eq!(echo, frame),
                Ok(Err(e)) => return Some((i, e.to_string())),
                Err(_) => return Some((i, "no echo within 10 s".to_owned())),
            }
        }
        None
    });
    let _ = server.kill();
    let _ = server.wait();
    // The killed child could not remove its socket's file.
    let _ = std::fs::remove_file(&path);
    if let Some((i, e)) = failed {
        panic!("echo {i} of {CALLS} failed (a lost wake-up leaves it waiting): {e}");
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
