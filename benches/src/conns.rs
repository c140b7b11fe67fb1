//! `flumen-bench conns`: what an idle connection costs. Starts a Flumen server process, opens
//! N connections to it from this process, and reports the resident memory each one adds on the
//! server and on the client; then makes one call on every connection at once and counts the
//! replies (a server at its default limits must answer them all).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use flumen::{
    tcp::{SmolTcp, TokioTcp},
    Bytes, Client, ClientConfig, MsgPack,
};

use crate::{
    measure::process_rss,
    system::{Spawner, System, ECHO_RAW},
    RunArgs, ServerProcess, Setup, Wire,
};

/// How long connections are left alone before memory is measured: long enough for a server
/// (watchdog period up to 1 s, two quiet periods) and a client (one 10 ms tick) to give back
/// the buffers a call used.
const SETTLE: Duration = Duration::from_millis(3500);

/// Opens `count` connections, measures, calls once on each, and prints the figures.
pub(crate) fn run(setup: Setup, count: usize, call_first: bool) -> Result<(), String> {
    let run = RunArgs {
        transport: Wire::Tcp,
        cert: "flumen-bench-ca.pem".into(),
        connections: count,
        duration: 0.0,
        warmup: 0.0,
        json: false,
        plot: None,
        quiet: true,
    };
    let server = ServerProcess::start(System::Flumen, setup, &run)?;
    let (pid, addr) = (server.child.id(), server.addr.ip()?);
    let own = std::process::id();
    let rss = |pid| process_rss(pid).ok_or("cannot read /proc/PID/status (Linux only)");
    let result = setup.runtime.block_on(setup.threads, move |spawner| {
        Box::pin(async move {
            let (server_before, client_before) = (rss(pid)?, rss(own)?);
            let mut clients = Vec::with_capacity(count);
            let opened = Instant::now();
            for _ in 0..count {
                let (config, codec) = (ClientConfig::default(), MsgPack::default());
                let client = match &spawner {
                    Spawner::Tokio(rt) => {
                        Client::connect_with(rt, &TokioTcp::default(), &addr, config, codec).await
                    }
                    Spawner::Smol(rt) => {
                        Client::connect_with(rt, &SmolTcp::default(), &addr, config, codec).await
                    }
                };
                clients.push(client.map_err(|e| format!("connection {}: {e}", clients.len()))?);
            }
            let open_time = opened.elapsed();
            if call_first {
                call_each(&spawner, &clients).await;
            }
            sleep(&spawner, SETTLE).await;
            let (server_after, client_after) = (rss(pid)?, rss(own)?);
            let per = |after: u64, before: u64| after.saturating_sub(before) as f64 / count as f64;
            println!(
                "{count} idle connections ({}{}), opened in {:.2} s{}",
                setup.runtime.name(),
                match setup.threads {
                    0 => String::new(),
                    n => format!(", {n} threads"),
                },
                open_time.as_secs_f64(),
                if call_first {
                    ", after one call each"
                } else {
                    ""
                },
            );
            println!(
                "server: {:.1} KiB per connection (RSS {:.1} -> {:.1} MiB)",
                per(server_after, server_before) / 1024.0,
                server_before as f64 / 1048576.0,
                server_after as f64 / 1048576.0
            );
            println!(
                "client: {:.1} KiB per connection (RSS {:.1} -> {:.1} MiB)",
                per(client_after, client_before) / 1024.0,
                client_before as f64 / 1048576.0,
                client_after as f64 / 1048576.0
            );
            let started = Instant::now();
            let answered = call_each(&spawner, &clients).await;
            println!(
                "one call on each at once: {answered} of {count} answered in {:.2} s",
                started.elapsed().as_secs_f64()
            );
            if answered == count as u64 {
                Ok(())
            } else {
                Err(format!("{} calls failed", count as u64 - answered))
            }
        })
    });
    drop(server);
    result
}

/// Makes one call on every client at once; returns how many were answered correctly.
async fn call_each(spawner: &Spawner, clients: &[Client]) -> u64 {
    let answered = Arc::new(AtomicU64::new(0));
    let (done, finished) = smol::channel::bounded::<()>(clients.len().max(1));
    for (i, client) in clients.iter().enumerate() {
        let (client, answered, done) = (client.clone(), answered.clone(), done.clone());
        spawner.spawn(async move {
            let body = Bytes::from((i as u64).to_le_bytes().to_vec());
            if client
                .raw()
                .call(ECHO_RAW.as_u32(), body.clone())
                .await
                .is_ok_and(|reply| reply == body)
            {
                answered.fetch_add(1, Ordering::Relaxed);
            }
            let _ = done.send(()).await;
        });
    }
    for _ in clients {
        let _ = finished.recv().await;
    }
    answered.load(Ordering::Relaxed)
}

async fn sleep(spawner: &Spawner, duration: Duration) {
    use flumen::rt::Runtime;
    let until = Instant::now() + duration;
    match spawner {
        Spawner::Tokio(rt) => rt.sleep_until(until).await,
        Spawner::Smol(rt) => rt.sleep_until(until).await,
    }
}
