//! The machinery behind a [`Server`](super::Server): the accept loop, transport handshakes
//! under their limit and timeout, and the watchdog that enforces timeouts and keep-alive.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use futures_lite::FutureExt;

use super::{conn, Dispatch, Shared};
use crate::{
    io::{READER, TIMER},
    runtime::Runtime,
    trace::Peer,
    transport::Listener,
};

pub(super) async fn accept_loop<R: Runtime, L: Listener, D: Dispatch>(
    rt: R,
    shared: Arc<Shared>,
    mut listener: L,
    dispatch: Arc<D>,
) {
    loop {
        let accepted = match shared.accepting.guard(READER, listener.accept()).await {
            None => return,
            Some(accepted) => accepted,
        };
        let (connecting, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                let later = Instant::now() + Duration::from_millis(10);
                if shared
                    .accepting
                    .guard(READER, rt.sleep_until(later))
                    .await
                    .is_none()
                {
                    return;
                }
                continue;
            }
        };
        Shared::count(&shared.counters.accepted);
        tracing::debug!(?peer, "accepted connection");
        // The handshake slot is taken before any handshake work (even its first step).
        if shared.handshakes.fetch_add(1, Ordering::SeqCst) >= shared.config.max_handshakes {
            shared.handshakes.fetch_sub(1, Ordering::SeqCst);
            Shared::count(&shared.counters.refused);
            tracing::debug!(?peer, "dropped at the handshake limit");
            continue;
        }
        let mut connecting = Box::pin(connecting);
        // Transports without a handshake (TCP) are ready now: no task, no timer.
        let ready = futures_lite::future::poll_once(connecting.as_mut()).await;
        match ready {
            Some(Ok((reader, writer))) => {
                conn::start(&rt, &shared, &dispatch, Peer::of(&peer), reader, writer);
                // Only now: see `ServerHandle::is_closed`.
                shared.handshakes.fetch_sub(1, Ordering::SeqCst);
            }
            Some(Err(e)) => {
                shared.handshakes.fetch_sub(1, Ordering::SeqCst);
                shared.handshake_failed(&e);
            }
            None => {
                crate::runtime::spawn_task(
                    &rt,
                    handshake(
                        rt.clone(),
                        shared.clone(),
                        dispatch.clone(),
                        Peer::of(&peer),
                        connecting,
                    ),
                );
            }
        }
    }
}

/// Finishes one transport handshake within the handshake timeout, then serves the connection.
/// A graceful shutdown lets it finish (the connection is then told `GoAway`); an abort ends it.
async fn handshake<R, D, Rd, Wr>(
    rt: R,
    shared: Arc<Shared>,
    dispatch: Arc<D>,
    peer: Peer,
    connecting: Pin<Box<impl Future<Output = io::Result<(Rd, Wr)>>>>,
) where
    R: Runtime,
    D: Dispatch,
    Rd: crate::transport::TransportRead,
    Wr: crate::TransportWrite,
{
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let timeout = async {
        rt.sleep_until(deadline).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "transport handshake timed out",
        ))
    };
    let aborted = async {
        shared.halted.ended().await;
        Err(io::Error::other("server stopped"))
    };
    match connecting.or(timeout).or(aborted).await {
        Ok((reader, writer)) => conn::start(&rt, &shared, &dispatch, peer, reader, writer),
        Err(e) => shared.handshake_failed(&e),
    }
    // Only once the connection is in the table: see `ServerHandle::is_closed`.
    shared.handshakes.fetch_sub(1, Ordering::SeqCst);
}

pub(super) async fn watchdog<R: Runtime>(rt: R, shared: Arc<Shared>) {
    let config = &shared.config;
    let period = config.watchdog_period();
    let periods = |d: Duration| (d.as_nanos().div_ceil(period.as_nanos()) as u64).max(1);
    let limits = conn::Limits {
        idle: periods(config.idle_timeout),
        read: periods(config.read_timeout),
        write: periods(config.write_timeout),
        keepalive: config.keepalive.is_some(),
        drain_linger: periods(crate::io::CLOSE_LINGER),
    };
    let mut next = Instant::now();
    loop {
        next += period;
        if shared
            .halted
            .guard(TIMER, rt.sleep_until(next))
            .await
            .is_none()
        {
            return;
        }
        let now = shared.clock.fetch_add(1, Ordering::Relaxed) + 1;
        for (_, conn) in shared.conns.lock().iter() {
            if let Some(code) = conn.overdue(now, &limits) {
                tracing::debug!(%code, "closing connection");
                Shared::count(&shared.counters.timeouts);
            }
        }
    }
}
