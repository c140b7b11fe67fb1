//! The machinery behind a [`Server`](super::Server): the accept loop, transport handshakes
//! under their limit and timeout, and the watchdog that enforces timeouts and keep-alive.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll, Waker},
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

/// Accepts until the server stops, then ends (dropping `live`, which `shutdown` waits for).
pub(super) async fn accept_loop<R: Runtime, L: Listener, D: Dispatch>(
    rt: R,
    live: AcceptLoop,
    mut listener: L,
    dispatch: Arc<D>,
) {
    let shared = &live.0;
    let admit = |accepted| admit::<R, L, D>(&rt, shared, &dispatch, accepted);
    // Looked at before each accept: the guard below polls `accept` before the stop, and a
    // listener that always has a peer ready (one shared with a restart's new process, under
    // a storm of connects) would otherwise keep it accepting.
    while !shared.accepting.is_stopped() {
        match shared.accepting.guard(READER, listener.accept()).await {
            None => break,
            Some(Ok(accepted)) => admit(accepted),
            Some(Err(e)) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                let later = Instant::now() + Duration::from_millis(10);
                let sleep = rt.sleep_until(later);
                if shared.accepting.guard(READER, sleep).await.is_none() {
                    break;
                }
            }
        }
    }
    if shared.halted.is_stopped() {
        return;
    }
    // A graceful stop: peers the transport has already accepted (queued for this runtime by a
    // hand-out acceptor, say) would be closed unanswered with the listener. They are served
    // and drained (`conn::start`), as many as are ready now, within `max_handshakes`.
    for _ in 0..shared.config.max_handshakes {
        match futures_lite::future::poll_once(listener.accept()).await {
            Some(Ok(accepted)) => admit(accepted),
            Some(Err(_)) | None => break,
        }
    }
}

/// Counts a peer `accept` returned and starts it: at once if its transport has no handshake,
/// in a task of its own under the handshake timeout otherwise.
fn admit<R: Runtime, L: Listener, D: Dispatch>(
    rt: &R,
    shared: &Arc<Shared>,
    dispatch: &Arc<D>,
    (connecting, peer): (L::Connecting, L::Addr),
) {
    Shared::count(&shared.counters.accepted);
    tracing::debug!(?peer, "accepted connection");
    // The handshake slot is taken before any handshake work (even its first step).
    let Some(slot) = HandshakeSlot::take(shared) else {
        Shared::count(&shared.counters.refused);
        tracing::debug!(?peer, "dropped at the handshake limit");
        return;
    };
    let mut connecting = Box::pin(connecting);
    // Transports without a handshake (TCP) are ready now: no task, no timer.
    let mut cx = Context::from_waker(Waker::noop());
    match connecting.as_mut().poll(&mut cx) {
        Poll::Ready(Ok((reader, writer))) => {
            conn::start(rt, shared, dispatch, Peer::of(&peer), reader, writer);
        }
        Poll::Ready(Err(e)) => shared.handshake_failed(&e),
        Poll::Pending => {
            let task = handshake(
                rt.clone(),
                slot,
                dispatch.clone(),
                Peer::of(&peer),
                connecting,
            );
            crate::runtime::spawn_task(rt, task);
        }
    }
}

/// The accept loop's hold on its server: while it lives, the loop may have a peer in hand
/// that is in no count yet, so a graceful shutdown is not over. Dropped when the loop ends, or
/// with its task if the runtime drops it (even unpolled). A runtime that keeps its tasks but
/// no longer runs them (a smol executor nobody runs) keeps it: the shutdown then waits out
/// its grace, as it does for connections on that runtime.
pub(super) struct AcceptLoop(pub(super) Arc<Shared>);

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.0.accept_loop_live.store(false, Ordering::SeqCst);
    }
}

/// One unit of [`Shared::handshakes`], from the accept until the connection is in the table
/// (or failed): given back when dropped, so that a handshake task dropped with its runtime,
/// or one that panics, gives it back too.
struct HandshakeSlot(Arc<Shared>);

impl HandshakeSlot {
    /// A slot, or `None` at [`ServerConfig::max_handshakes`](super::ServerConfig).
    fn take(shared: &Arc<Shared>) -> Option<Self> {
        let taken = shared.handshakes.fetch_add(1, Ordering::SeqCst);
        let slot = Self(shared.clone());
        (taken < shared.config.max_handshakes).then_some(slot)
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.handshakes.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Finishes one transport handshake within the handshake timeout, then serves the connection.
/// A graceful shutdown lets it finish (the connection is then told `GoAway`); an abort ends it.
async fn handshake<R, D, Rd, Wr>(
    rt: R,
    slot: HandshakeSlot,
    dispatch: Arc<D>,
    peer: Peer,
    connecting: Pin<Box<impl Future<Output = io::Result<(Rd, Wr)>>>>,
) where
    R: Runtime,
    D: Dispatch,
    Rd: crate::transport::TransportRead,
    Wr: crate::TransportWrite,
{
    let shared = &slot.0;
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
        Ok((reader, writer)) => conn::start(&rt, shared, &dispatch, peer, reader, writer),
        Err(e) => shared.handshake_failed(&e),
    }
    // The slot goes back only now, the connection in the table: see `ServerHandle::is_closed`.
    drop(slot);
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
