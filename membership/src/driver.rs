//! Runs a [`Node`] over a UDP socket ([`Membership`](crate::Membership)).

use std::{
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use flumen_rt::{Datagrams, Net};
use flumen_stream::Runtime;
use futures_lite::future;
use parking_lot::Mutex;

use crate::{
    filter::Tags,
    identity::NodeId,
    node::{Config, Error, Node, Stats},
    registry::Registry,
};

/// How a member presents itself and joins: see [`Membership::builder`].
#[derive(Clone, Debug)]
pub struct Builder {
    name: String,
    rpc: SocketAddr,
    tags: Tags,
    seeds: Vec<SocketAddr>,
    advertise: Option<SocketAddr>,
    config: Config,
}

impl Builder {
    /// The member's tags (`zone=eu`, `gpu`; `weight=N` for its share of calls). Default none.
    pub fn tags(mut self, tags: Tags) -> Self {
        self.tags = tags;
        self
    }

    /// Gossip addresses of members to join through (any one that answers is enough). Default
    /// none: the first member of a cluster, which others join.
    pub fn seeds(mut self, seeds: &[SocketAddr]) -> Self {
        self.seeds = seeds.to_vec();
        self
    }

    /// The gossip address peers reach this member at, when it is not the socket's own (a
    /// socket bound to `0.0.0.0`, a NAT). Default the socket's address.
    pub fn advertise(mut self, addr: SocketAddr) -> Self {
        self.advertise = Some(addr);
        self
    }

    /// How the member gossips and judges its peers. Default [`Config::default`].
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Binds a UDP socket to `gossip` on `rt` (any runtime with sockets, [`Net`]: tokio's,
    /// smol's) and starts gossiping from it.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start), and [`Error::Io`] if the socket cannot be bound.
    pub fn bind<R: Net>(self, rt: &R, gossip: SocketAddr) -> Result<Membership, Error> {
        let socket = rt.enter(|| R::udp(std::net::UdpSocket::bind(gossip)?))?;
        self.start(rt, socket)
    }

    /// Starts gossiping from `socket`, as a task on `rt`. Returns at once: members appear in
    /// the [`registry`](Membership::registry) as they are learned.
    ///
    /// # Errors
    ///
    /// [`Error::IdentityTooLarge`] for tags that do not fit a packet; [`Error::Io`] if the
    /// socket has no address, or an unspecified one (`0.0.0.0`) and none was advertised.
    pub fn start<R: Runtime, S: Datagrams>(self, rt: &R, socket: S) -> Result<Membership, Error> {
        let gossip = match self.advertise {
            Some(addr) => addr,
            None => socket.local_addr()?,
        };
        if gossip.ip().is_unspecified() {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the gossip socket is bound to an unspecified address: advertise a reachable one",
            )));
        }
        let identity = NodeId::new(self.name, gossip, self.rpc, self.tags);
        Membership::start(rt, socket, identity, &self.seeds, self.config)
    }
}

enum Command {
    SetTags(Tags, async_channel::Sender<Result<(), Error>>),
    Leave(async_channel::Sender<Result<(), Error>>),
    HeardFrom(SocketAddr),
    Halt,
}

/// What the task shows the handles.
#[derive(Debug)]
struct Shared {
    identity: NodeId,
    stats: Stats,
    running: bool,
}

/// A member of the cluster, gossiping from its own task. Clones share it; once every clone is
/// dropped the member leaves the cluster, as [`leave`](Self::leave) does, and its task ends.
///
/// Runs a [`Node`] over a UDP socket, as one task on a Flumen [`Runtime`] (tokio or smol):
/// it waits for a datagram, a command or the node's next deadline, hands it in, and sends what
/// the node queued.
#[derive(Clone, Debug)]
#[must_use = "once every clone is dropped the member leaves the cluster"]
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
            Self::HeardFrom(_) => "HeardFrom",
            Self::Halt => "Halt",
        })
    }
}

impl Membership {
    /// A member named `name` (unique in the cluster) whose RPC server listens on `rpc`; set its
    /// tags and seeds, then [`bind`](Builder::bind) or [`start`](Builder::start) it.
    pub fn builder(name: impl Into<String>, rpc: SocketAddr) -> Builder {
        Builder {
            name: name.into(),
            rpc,
            tags: Tags::new(),
            seeds: Vec::new(),
            advertise: None,
            config: Config::default(),
        }
    }

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

    /// Records that the member whose RPC server is `rpc` answered (see
    /// [`Node::heard_from_rpc`]); [`ClusterClient::for_member`](crate::ClusterClient::for_member)
    /// reports its workers' answers here. Dropped if the task is busy.
    pub fn heard_from(&self, rpc: SocketAddr) {
        let _ = self.commands.try_send(Command::HeardFrom(rpc));
    }

    /// A handle that does not keep the member in the cluster (see [`Membership`]'s drop).
    pub(crate) fn reporter(&self) -> Reporter {
        Reporter(self.commands.downgrade())
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

/// Reports answers to a member without keeping it in the cluster.
#[derive(Debug)]
pub(crate) struct Reporter(async_channel::WeakSender<Command>);

impl Reporter {
    /// As [`Membership::heard_from`]; false once the member is gone.
    pub(crate) fn heard_from(&self, rpc: SocketAddr) -> bool {
        match self.0.upgrade() {
            Some(commands) if !commands.is_closed() => {
                let _ = commands.try_send(Command::HeardFrom(rpc));
                true
            }
            _ => false,
        }
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

/// Datagrams taken without waiting after each wake-up, at most.
const DRAIN_MAX: usize = 256;

/// How long the task pauses after a failed receive.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(10);

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
            // `race` polls in a random order, so a flood of datagrams cannot starve the
            // commands (timers run after every wake-up anyway).
            let wake = future::race(
                async { Wake::Datagram(socket.recv_from(buf).await) },
                future::race(async { Wake::Command(commands.recv().await.ok()) }, async {
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
                // report, a buffer shortage): the socket stays usable. A short pause keeps
                // an error that repeats from spinning the task.
                Wake::Datagram(Err(_)) => {
                    self.rt.sleep_until(now + RECV_ERROR_PAUSE).await;
                }
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
                Wake::Command(Some(Command::HeardFrom(rpc))) => {
                    self.node.heard_from_rpc(rpc, now);
                }
                Wake::Command(Some(Command::Halt)) => break,
                Wake::Command(None) => {
                    // Every handle is gone: leave as a handle would have.
                    let _ = self.node.leave(now);
                }
                Wake::Timer => {}
            }
            // Take what else has arrived before any timer judges a peer: after a stall (a busy
            // executor), heartbeats waiting in the socket must count before phi reads the
            // silence.
            for _ in 0..DRAIN_MAX {
                let Ok((len, from)) = self.socket.try_recv_from(&mut self.buf) else {
                    break;
                };
                let _ = self
                    .node
                    .handle_datagram(from, &self.buf[..len], Instant::now());
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
