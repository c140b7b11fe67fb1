//! One listener shared out among several runtimes: a task on the first accepts, and hands each
//! connection to the next runtime in turn, which adopts the socket into its own reactor.
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
};

use async_channel::{Receiver, Sender, TrySendError};
use flumen_rt::Net;
use flumen_stream::Listener;
use futures_lite::FutureExt;

use crate::{transport::split, Tcp, TcpOptions};

/// Accepted connections waiting for one runtime to adopt them. When a runtime's queue is full
/// (it is not accepting: stopped, or stuck), its turn passes to the next runtime; when every
/// queue is full, the acceptor waits, and the kernel's backlog ([`LISTEN_BACKLOG`]) holds
/// further connections.
///
/// [`LISTEN_BACKLOG`]: crate::LISTEN_BACKLOG
pub const HAND_OUT_QUEUE: usize = 128;

/// What the acceptor hands a runtime: a connection taken out of the accepting runtime, or the
/// error an accept failed with (the receiving server backs off, as for its own listener).
type Accepted = io::Result<(std::net::TcpStream, SocketAddr)>;

/// One runtime's share of a listener whose connections are handed out
/// ([`Tcp::hand_out`]): a [`Listener`] whose `accept` adopts the next connection handed to
/// this runtime. Dropping every share stops the acceptor and closes the listening socket.
pub struct HandedOut<R: Net> {
    queue: Receiver<Accepted>,
    local_addr: SocketAddr,
    options: TcpOptions,
    /// Held, never used: the acceptor stops once every share's sender is gone.
    _open: Sender<()>,
    rt: std::marker::PhantomData<fn() -> R>,
}

impl<R: Net> Tcp<R> {
    /// Shares `listener` out among `runtimes`: a task on the first accepts, and hands each
    /// connection to the next runtime in turn (skipping one whose queue of
    /// [`HAND_OUT_QUEUE`] connections is full). Returns one listener per runtime, in the order
    /// of `runtimes`, each to accept from a task of its own runtime (a server on it): there
    /// the socket is registered with that runtime, so that its connection is served there
    /// alone. Accepted connections get this transport's options.
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
        let (queues, shares): (Vec<_>, Vec<_>) = runtimes
            .iter()
            .map(|_| {
                let (tx, rx) = async_channel::bounded(HAND_OUT_QUEUE);
                let share = HandedOut {
                    queue: rx,
                    local_addr,
                    options: self.options,
                    _open: open.clone(),
                    rt: std::marker::PhantomData,
                };
                (tx, share)
            })
            .unzip();
        first.spawn(accept_and_hand_out::<R>(listener, queues, closed));
        Ok(shares)
    }
}

/// The acceptor: accepts until every share is dropped (or its runtime ends), handing each
/// connection to the next runtime whose queue has room.
async fn accept_and_hand_out<R: Net>(
    listener: R::TcpListener,
    queues: Vec<Sender<Accepted>>,
    closed: Receiver<()>,
) {
    let n = queues.len();
    let mut next = 0;
    loop {
        let accept = async { Some(R::tcp_accept(&listener).await) };
        let Some(accepted) = accept.or(all_dropped(&closed)).await else {
            return;
        };
        let item = accepted.and_then(|(stream, peer)| Ok((R::tcp_into_std(stream)?, peer)));
        let Some(item) = offer(&queues, &mut next, item) else {
            continue;
        };
        // Every queue full or closed: wait for room in the next open one.
        let Some(turn) = (0..n)
            .map(|k| (next + k) % n)
            .find(|&i| !queues[i].is_closed())
        else {
            return;
        };
        next = (turn + 1) % n;
        let send = async { Some(queues[turn].send(item).await) };
        if send.or(all_dropped(&closed)).await.is_none() {
            return;
        }
    }
}

/// Completes (with `None`) when every share is gone: `()` is never sent, so `recv` fails once
/// the last sender is dropped.
async fn all_dropped<T>(closed: &Receiver<()>) -> Option<T> {
    let _ = closed.recv().await;
    None
}

/// Hands `item` to the runtime whose turn it is, or to the next one with room; gives it back
/// when every queue is full or closed.
fn offer(queues: &[Sender<Accepted>], next: &mut usize, mut item: Accepted) -> Option<Accepted> {
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

impl<R: Net> Listener for HandedOut<R> {
    type Addr = SocketAddr;
    type Reader = R::TcpReader;
    type Writer = R::TcpWriter;
    type Connecting = Ready<io::Result<(R::TcpReader, R::TcpWriter)>>;

    /// The next connection handed to this runtime, registered with it (this runs on one of its
    /// tasks). A socket the runtime cannot adopt fails its `Connecting`, not the listener.
    async fn accept(&mut self) -> io::Result<(Self::Connecting, SocketAddr)> {
        match self.queue.recv().await {
            Ok(Ok((stream, peer))) => {
                let adopted = R::tcp_from_std(stream).and_then(|s| split::<R>(s, &self.options));
                Ok((ready(adopted), peer))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the hand-out acceptor stopped: its runtime ended",
            )),
        }
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

    /// An item to hand out, told apart by its message.
    fn item(name: &str) -> Accepted {
        Err(io::Error::other(name.to_owned()))
    }

    fn name(received: Accepted) -> String {
        received.err().map(|e| e.to_string()).unwrap_or_default()
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
        let [r0, r1, r2]: [Receiver<Accepted>; 3] = receivers.try_into().unwrap();
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
        // The first queue full at its turn: on to the next with room.
        assert!(offer(&queues, &mut next, item("f")).is_none());
        assert_eq!(next, 1);
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
