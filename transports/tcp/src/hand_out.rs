//! One listener shared out among several runtimes: a task on the first accepts, and hands each
//! connection to the next runtime in turn, which adopts the socket (into its own reactor, on
//! tokio; smol's runtimes share one).
//!
//! This is how a server per core spreads its connections where the kernel does not
//! (`SO_REUSEPORT` without load balancing, as on macOS, or none at all), and where an even,
//! deterministic share is wanted: the kernel hashes addresses, so a few connections can all land
//! on one runtime. The hand-over costs one queue hop per connection, none per call.

use std::{
    fmt,
    future::{ready, Ready},
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use async_channel::{Receiver, Sender, TrySendError};
use event_listener::Event;
use flumen_rt::Net;
use flumen_stream::Listener;
use futures_lite::FutureExt;

use crate::{transport::split, Tcp, TcpOptions};

/// Accepted connections waiting for one runtime to adopt them. When a runtime's queue is full
/// (it is not accepting: stopped, or stuck), its turn passes to the next runtime; when every
/// queue is full, the acceptor waits until one has room, and the kernel's backlog
/// ([`LISTEN_BACKLOG`]) holds further connections.
///
/// [`LISTEN_BACKLOG`]: crate::LISTEN_BACKLOG
pub const HAND_OUT_QUEUE: usize = 128;

/// How long the acceptor waits after a failed accept (out of file descriptors, say) before it
/// accepts again, instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// A connection taken out of the accepting runtime, and its peer's address.
type Accepted = (std::net::TcpStream, SocketAddr);

/// One runtime's share of a listener whose connections are handed out
/// ([`Tcp::hand_out`]): a [`Listener`] whose `accept` adopts the next connection handed to
/// this runtime. Dropping every share stops the acceptor and closes the listening socket.
pub struct HandedOut<R: Net> {
    queue: Receiver<Accepted>,
    /// The runtime this share's connections are registered with.
    rt: R,
    /// Told when this share takes a connection: its queue has room again.
    room: Arc<Event>,
    local_addr: SocketAddr,
    options: TcpOptions,
    /// Whether the end of the acceptor was reported (once; then `accept` waits forever).
    ended: bool,
    /// Held, never used: the acceptor stops once every share's sender is gone.
    _open: Sender<()>,
}

impl<R: Net> Tcp<R> {
    /// Shares `listener` out among `runtimes`: a task on the first accepts, and hands each
    /// connection to the next runtime in turn (skipping one whose queue of
    /// [`HAND_OUT_QUEUE`] connections is full). Returns one listener per runtime, in the order
    /// of `runtimes`, each to accept from a server on its runtime; each connection is
    /// registered with the runtime it is handed to (tokio's runtimes have a reactor each), so
    /// that it is served there alone. Accepted connections get this transport's options.
    ///
    /// The acceptor runs on the first runtime: while a handler blocks that runtime's thread, no
    /// connection is accepted for any runtime (the kernel's backlog holds them).
    ///
    /// # Errors
    ///
    /// If the listener cannot be registered with the first runtime, and `InvalidInput` when
    /// `runtimes` is empty.
    pub fn hand_out(
        &self,
        listener: std::net::TcpListener,
        runtimes: &[R],
    ) -> io::Result<Vec<HandedOut<R>>> {
        let Some(first) = runtimes.first() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no runtime to hand connections to",
            ));
        };
        let local_addr = listener.local_addr()?;
        let listener = first.enter(|| R::tcp_listener(listener))?;
        let (open, closed) = async_channel::bounded(1);
        let room = Arc::new(Event::new());
        let (queues, shares): (Vec<_>, Vec<_>) = runtimes
            .iter()
            .map(|rt| {
                let (tx, rx) = async_channel::bounded(HAND_OUT_QUEUE);
                let share = HandedOut {
                    queue: rx,
                    rt: rt.clone(),
                    room: room.clone(),
                    local_addr,
                    options: self.options,
                    ended: false,
                    _open: open.clone(),
                };
                (tx, share)
            })
            .unzip();
        let acceptor = Acceptor {
            rt: first.clone(),
            queues,
            room,
            closed,
        };
        first.spawn(acceptor.run(listener));
        Ok(shares)
    }
}

/// The task that accepts and hands out.
struct Acceptor<R> {
    /// The runtime it runs on (for its back-off timer).
    rt: R,
    queues: Vec<Sender<Accepted>>,
    room: Arc<Event>,
    /// Never receives: fails once every share is gone.
    closed: Receiver<()>,
}

impl<R: Net> Acceptor<R> {
    /// Accepts until every share is dropped (or its runtime ends), handing each connection to
    /// the next runtime whose queue has room.
    async fn run(self, listener: R::TcpListener) {
        let mut next = 0;
        loop {
            let accept = async { Some(R::tcp_accept(&listener).await) };
            let Some(accepted) = accept.or(self.all_dropped()).await else {
                return;
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    let later = self.rt.sleep_until(Instant::now() + ACCEPT_BACKOFF);
                    let later = async {
                        later.await;
                        Some(())
                    };
                    if later.or(self.all_dropped()).await.is_none() {
                        return;
                    }
                    continue;
                }
            };
            let stream = match R::tcp_into_std(stream) {
                Ok(stream) => stream,
                Err(e) => {
                    // This connection only: it is dropped (closed).
                    tracing::debug!(error = %e, ?peer, "accepted connection not handed out");
                    continue;
                }
            };
            let mut item = (stream, peer);
            // Every queue full or closed: wait until a share takes a connection, then offer
            // again (the listener is made first, so that no notification is missed).
            loop {
                let room = self.room.listen();
                item = match offer(&self.queues, &mut next, item) {
                    None => break,
                    Some(item) => item,
                };
                if self.queues.iter().all(Sender::is_closed) {
                    return;
                }
                let room = async {
                    room.await;
                    Some(())
                };
                if room.or(self.all_dropped()).await.is_none() {
                    return;
                }
            }
        }
    }

    /// Completes (with `None`) when every share is gone: `()` is never sent, so `recv` fails
    /// once the last sender is dropped.
    async fn all_dropped<T>(&self) -> Option<T> {
        let _ = self.closed.recv().await;
        None
    }
}

/// Hands `item` to the runtime whose turn it is, or to the next one with room; gives it back
/// when every queue is full or closed.
fn offer<T>(queues: &[Sender<T>], next: &mut usize, mut item: T) -> Option<T> {
    for _ in 0..queues.len() {
        let queue = &queues[*next];
        *next = (*next + 1) % queues.len();
        match queue.try_send(item) {
            Ok(()) => return None,
            Err(TrySendError::Full(back) | TrySendError::Closed(back)) => item = back,
        }
    }
    Some(item)
}

impl<R: Net> HandedOut<R> {
    /// Connections handed to this runtime and not accepted yet (at most [`HAND_OUT_QUEUE`]).
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }
}

impl<R: Net> Listener for HandedOut<R> {
    type Addr = SocketAddr;
    type Reader = R::TcpReader;
    type Writer = R::TcpWriter;
    type Connecting = Ready<io::Result<(R::TcpReader, R::TcpWriter)>>;

    /// The next connection handed to this runtime, registered with it. A socket the runtime
    /// cannot adopt fails its `Connecting`, not the listener. Once the acceptor has stopped
    /// (its runtime ended), the first call reports it and later ones wait forever: nothing will
    /// be handed out again.
    async fn accept(&mut self) -> io::Result<(Self::Connecting, SocketAddr)> {
        let Ok((stream, peer)) = self.queue.recv().await else {
            if std::mem::replace(&mut self.ended, true) {
                std::future::pending::<()>().await;
            }
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the hand-out acceptor stopped: its runtime ended",
            ));
        };
        self.room.notify(1);
        let adopted = self
            .rt
            .enter(|| R::tcp_from_std(stream))
            .and_then(|stream| split::<R>(stream, &self.options));
        Ok((ready(adopted), peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

impl<R: Net> fmt::Debug for HandedOut<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandedOut")
            .field("local_addr", &self.local_addr)
            .field("waiting", &self.queue.len())
            .field("options", &self.options)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str) -> String {
        name.to_owned()
    }

    fn name(received: String) -> String {
        received
    }

    #[test]
    fn turns_pass_over_full_and_closed_queues() {
        let (queues, receivers): (Vec<_>, Vec<_>) =
            (0..3).map(|_| async_channel::bounded(1)).unzip();
        let mut next = 0;
        // In turn while every queue has room.
        assert!(offer(&queues, &mut next, item("a")).is_none());
        assert!(offer(&queues, &mut next, item("b")).is_none());
        assert_eq!(next, 2);
        // The second runtime stops accepting: its turn passes on.
        let [r0, r1, r2]: [Receiver<String>; 3] = receivers.try_into().unwrap();
        drop(r1);
        assert!(offer(&queues, &mut next, item("c")).is_none());
        assert_eq!(name(r2.try_recv().unwrap()), "c");
        assert_eq!(name(r0.try_recv().unwrap()), "a");
        // The first queue is empty again, the third too: "d" to the first (its turn), "e"
        // skips the closed second and goes to the third.
        assert!(offer(&queues, &mut next, item("d")).is_none());
        assert!(offer(&queues, &mut next, item("e")).is_none());
        assert_eq!(name(r0.try_recv().unwrap()), "d");
        assert_eq!(name(r2.try_recv().unwrap()), "e");
        assert!(offer(&queues, &mut next, item("f")).is_none());
        assert_eq!(next, 1);
        // The first queue full (with "f") at its turn: on past the closed second to the third.
        next = 0;
        assert!(offer(&queues, &mut next, item("g")).is_none());
        assert_eq!(name(r2.try_recv().unwrap()), "g");
        // Every open queue full: the item comes back.
        assert!(offer(&queues, &mut next, item("h")).is_none());
        let back = offer(&queues, &mut next, item("i")).expect("no room anywhere");
        assert_eq!(name(back), "i");
        assert_eq!(name(r0.try_recv().unwrap()), "f");
    }
}
