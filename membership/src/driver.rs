//! Runs a [`Node`] over a UDP socket, as one task on a Flumen [`Runtime`] (tokio or smol):
//! it waits for a datagram, a command or the node's next deadline, hands it in, and sends what
//! the node queued.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use flumen_stream::Runtime;
use futures_lite::future;
use parking_lot::Mutex;

use crate::{
    filter::Tags,
    identity::NodeId,
    node::{Config, Error, Node, Stats},
    registry::Registry,
};

/// A datagram socket the membership task gossips over: `tokio::net::UdpSocket` (feature
/// `tokio`) and `async_io::Async<std::net::UdpSocket>` (feature `smol`) are.
pub trait Datagrams: Send + Sync + 'static {
    /// The address the socket is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Sends `data` to `to`.
    fn send_to<'a>(
        &'a self,
        data: &'a [u8],
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;

    /// Receives a datagram into `buf`: its length and sender. Cancel-safe: a datagram is not
    /// lost if the future is dropped before it completes.
    fn recv_from<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a;
}

#[cfg(feature = "tokio")]
impl Datagrams for tokio::net::UdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::UdpSocket::local_addr(self)
    }

    fn send_to<'a>(
        &'a self,
        data: &'a [u8],
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        tokio::net::UdpSocket::send_to(self, data, to)
    }

    fn recv_from<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a {
        tokio::net::UdpSocket::recv_from(self, buf)
    }
}

#[cfg(feature = "smol")]
impl Datagrams for async_io::Async<std::net::UdpSocket> {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.get_ref().local_addr()
    }

    fn send_to<'a>(
        &'a self,
        data: &'a [u8],
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        async_io::Async::<std::net::UdpSocket>::send_to(self, data, to)
    }

    fn recv_from<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a {
        async_io::Async::<std::net::UdpSocket>::recv_from(self, buf)
    }
}

enum Command {
    SetTags(Tags, async_channel::Sender<Result<(), Error>>),
    Leave(async_channel::Sender<Result<(), Error>>),
    Halt,
}

/// What the task shows the handles.
#[derive(Debug)]
struct Shared {
    identity: NodeId,
    stats: Stats,
    running: bool,
}

/// A member of the cluster, gossiping from its own task (see the [module](self)). Clones share
/// it; once every clone is dropped the member leaves the cluster, as [`leave`](Self::leave)
/// does, and its task ends.
#[derive(Clone, Debug)]
pub struct Membership {
    registry: Registry,
    commands: async_channel::Sender<Command>,
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::SetTags(..) => "SetTags",
            Self::Leave(_) => "Leave",
            Self::Halt => "Halt",
        })
    }
}

impl Membership {
    /// Starts gossiping over `socket` as `identity` (whose gossip address must be where peers
    /// reach `socket`), joining through `seeds` (gossip addresses; none for the first member,
    /// which others join). Returns at once: members appear in [`registry`](Self::registry) as
    /// they are learned.
    ///
    /// # Errors
    ///
    /// [`Error::IdentityTooLarge`] for an identity that does not fit a packet.
    pub fn start<R: Runtime, S: Datagrams>(
        rt: &R,
        socket: S,
        identity: NodeId,
        seeds: &[SocketAddr],
        config: Config,
    ) -> Result<Self, Error> {
        let registry = Registry::new();
        let max_packet = config.swim.max_packet_size.get();
        let mut node = Node::new(identity, config, registry.clone(), Instant::now())?;
        node.join(seeds, Instant::now())?;
        let shared = Arc::new(Mutex::new(Shared {
            identity: node.identity().clone(),
            stats: node.stats(),
            running: true,
        }));
        let (commands, receiver) = async_channel::bounded(16);
        let task = Task {
            rt: rt.clone(),
            socket,
            node,
            commands: receiver,
            shared: shared.clone(),
            buf: vec![0; max_packet + 1],
        };
        rt.spawn(task.run());
        Ok(Self {
            registry,
            commands,
            shared,
        })
    }

    /// The live view of the cluster this member has, itself included.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// This member's identity as it gossips it now.
    pub fn identity(&self) -> NodeId {
        self.shared.lock().identity.clone()
    }

    /// Whether its task still runs (it ends after a leave).
    pub fn is_running(&self) -> bool {
        self.shared.lock().running
    }

    /// This member's gossip traffic so far.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats
    }

    /// Announces new tags; pools across the cluster follow as the news spreads.
    ///
    /// # Errors
    ///
    /// [`Error::Left`] after a leave; [`Error::IdentityTooLarge`] for tags that do not fit.
    pub async fn set_tags(&self, tags: Tags) -> Result<(), Error> {
        self.command(|reply| Command::SetTags(tags, reply)).await
    }

    /// Leaves the cluster gracefully: peers report this member left, not failed, and drop it
    /// from their pools. The task ends once the announcement is sent.
    ///
    /// # Errors
    ///
    /// [`Error::Left`] if it had left already.
    pub async fn leave(&self) -> Result<(), Error> {
        self.command(Command::Leave).await
    }

    /// Stops gossiping at once, announcing nothing: to the cluster this member has crashed
    /// (it is suspected, then declared down). For fault drills and tests; a process that stops
    /// on purpose calls [`leave`](Self::leave).
    pub fn halt(&self) {
        let _ = self.commands.try_send(Command::Halt);
    }

    async fn command(
        &self,
        make: impl FnOnce(async_channel::Sender<Result<(), Error>>) -> Command,
    ) -> Result<(), Error> {
        let (reply, answer) = async_channel::bounded(1);
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| Error::Left)?;
        answer.recv().await.map_err(|_| Error::Left)?
    }
}

struct Task<R, S> {
    rt: R,
    socket: S,
    node: Node,
    commands: async_channel::Receiver<Command>,
    shared: Arc<Mutex<Shared>>,
    buf: Vec<u8>,
}

enum Wake {
    Datagram(io::Result<(usize, SocketAddr)>),
    Command(Option<Command>),
    Timer,
}

/// How long the task waits when the node has no deadline (it always has one while running).
const IDLE: Duration = Duration::from_secs(3600);

impl<R: Runtime, S: Datagrams> Task<R, S> {
    async fn run(mut self) {
        loop {
            self.flush().await;
            if self.node.has_left() {
                break;
            }
            let deadline = self
                .node
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + IDLE);
            let (socket, buf, commands, rt) =
                (&self.socket, &mut self.buf, &self.commands, &self.rt);
            let wake = future::or(
                async { Wake::Datagram(socket.recv_from(buf).await) },
                future::or(async { Wake::Command(commands.recv().await.ok()) }, async {
                    rt.sleep_until(deadline).await;
                    Wake::Timer
                }),
            )
            .await;
            let now = Instant::now();
            match wake {
                Wake::Datagram(Ok((len, from))) => {
                    // A refused datagram is counted in the stats; the member goes on.
                    let _ = self.node.handle_datagram(from, &self.buf[..len], now);
                }
                // An error on an unconnected UDP socket concerns one datagram (an ICMP
                // report, a buffer shortage): the socket stays usable.
                Wake::Datagram(Err(_)) => {}
                Wake::Command(Some(Command::SetTags(tags, reply))) => {
                    let _ = reply.try_send(self.node.set_tags(tags, now));
                }
                Wake::Command(Some(Command::Leave(reply))) => {
                    let result = if self.node.has_left() {
                        Err(Error::Left)
                    } else {
                        self.node.leave(now)
                    };
                    self.flush().await;
                    let _ = reply.try_send(result);
                }
                Wake::Command(Some(Command::Halt)) => break,
                Wake::Command(None) => {
                    // Every handle is gone: leave as a handle would have.
                    let _ = self.node.leave(now);
                }
                Wake::Timer => {}
            }
            self.node.handle_timeout(Instant::now());
        }
        self.shared.lock().running = false;
        // Answer what is queued: a command left in the channel would keep its caller waiting.
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            if let Command::SetTags(_, reply) | Command::Leave(reply) = command {
                let _ = reply.try_send(Err(Error::Left));
            }
        }
    }

    /// Sends every datagram the node queued, and publishes its state.
    async fn flush(&mut self) {
        while let Some((to, data)) = self.node.poll_transmit() {
            // A datagram that cannot be sent is lost, as UDP may lose any: the protocol
            // retries what matters.
            let _ = self.socket.send_to(&data, to).await;
        }
        let mut shared = self.shared.lock();
        shared.identity = self.node.identity().clone();
        shared.stats = self.node.stats();
    }
}
