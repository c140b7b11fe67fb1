//! One member's side of the gossip protocol, sans-IO ([`Node`](crate::Node)).

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    net::SocketAddr,
    num::NonZeroU32,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use foca::{
    AccumulatingRuntime, Codec, Foca, Identity, NoCustomBroadcast, OwnedNotification, Timer,
};
use rand::{rngs::SmallRng, SeedableRng};

use crate::{
    filter::Tags,
    identity::{NodeId, MAX_IDENTITY_LEN},
    phi::{PhiAccrual, PhiConfig},
    registry::{Registry, State},
};

/// How a member gossips and judges its peers.
#[derive(Clone, Debug)]
pub struct Config {
    /// foca's SWIM settings: probe period and round-trip time, indirect probes, how long a
    /// suspect has before it is declared down, dissemination, packet size. Default: foca's LAN
    /// profile for 32 members (see [`Config::lan`]).
    pub swim: foca::Config,
    /// The phi-accrual detector's settings, its threshold among them.
    pub phi: PhiConfig,
    /// How many intervals a peer's detector must have seen before phi may suspect it (a
    /// rhythm needs a few beats). Default 4.
    pub phi_min_heartbeats: usize,
    /// How often a member sends a heartbeat (an 8-byte datagram beside foca's packets) to the
    /// next [`heartbeat_fanout`](Self::heartbeat_fanout) peers in a fixed rotation, so each peer
    /// hears from it at a steady rhythm for phi to judge: every `ceil((n - 1) / fanout)`
    /// intervals in a cluster of n. Only heartbeats feed phi (foca's traffic has no rhythm),
    /// so `None` leaves failure detection to foca alone. Default 250 ms.
    pub heartbeat_interval: Option<Duration>,
    /// Peers a heartbeat goes to each interval. Default 3.
    pub heartbeat_fanout: usize,
    /// How often a member pushes its whole view (every member it knows, alive or down, in as
    /// many datagrams as it takes) to one peer at random, which applies it. Gossip retransmits
    /// an update a bounded number of times, so in a large cluster a few members miss a few
    /// updates; this anti-entropy catches them. The peer answers with its own view, so both
    /// end with the union. The first push comes at a random point of the first 0.5-1.5
    /// intervals, so members started together do not push together. `None`: never. Default
    /// 30 s.
    pub sync_interval: Option<Duration>,
    /// The most members (alive or down) this member keeps track of. A datagram that would add
    /// members past it is refused whole, so a sender announcing made-up members cannot grow
    /// the view (and its memory) without bound. Default 10,000.
    pub max_members: usize,
    /// How often phi is evaluated for every peer, and foca's suspicions read. Default 100 ms.
    pub check_interval: Duration,
    /// While a member knows no peer, how often it announces itself to its seeds again (seeds
    /// that start later, a member cut off from all). Default 1 s.
    pub rejoin_interval: Duration,
}

impl Default for Config {
    /// [`Config::lan`] for 32 members.
    fn default() -> Self {
        Self::lan(32)
    }
}

impl Config {
    /// Settings for a LAN cluster of about `members` members: foca's LAN profile for that size
    /// (updates retransmitted about `4 log10(members + 1)` times, suspicion lasting longer in a
    /// larger cluster), with members known down announced to every 10 s (foca: 65 s), so the
    /// two sides of a healed partition find each other soon.
    pub fn lan(members: u32) -> Self {
        let mut swim = foca::Config::new_lan(NonZeroU32::new(members).unwrap_or(NonZeroU32::MIN));
        if let Some(params) = swim.periodic_announce_to_down_members.as_mut() {
            params.frequency = Duration::from_secs(10);
        }
        Self {
            swim,
            phi: PhiConfig::default(),
            phi_min_heartbeats: 4,
            heartbeat_interval: Some(Duration::from_millis(250)),
            heartbeat_fanout: 3,
            sync_interval: Some(Duration::from_secs(30)),
            max_members: 10_000,
            check_interval: Duration::from_millis(100),
            rejoin_interval: Duration::from_secs(1),
        }
    }

    /// Settings for tests and demos on one host or a LAN that want answers in about a second:
    /// probes every 200 ms (round trip 100 ms), down 600 ms after a suspicion, heartbeats every
    /// 100 ms, announcements to down members every second.
    pub fn fast() -> Self {
        let mut config = Self::default();
        config.swim.probe_period = Duration::from_millis(200);
        config.swim.probe_rtt = Duration::from_millis(100);
        config.swim.suspect_to_down_after = Duration::from_millis(600);
        if let Some(params) = config.swim.periodic_announce_to_down_members.as_mut() {
            params.frequency = Duration::from_secs(1);
        }
        if let Some(params) = config.swim.periodic_gossip.as_mut() {
            params.frequency = Duration::from_millis(100);
        }
        config.heartbeat_interval = Some(Duration::from_millis(100));
        config.sync_interval = Some(Duration::from_secs(2));
        config.phi.first_interval = Duration::from_millis(200);
        config.phi.acceptable_pause = Duration::from_millis(100);
        config.phi.min_std_dev = Duration::from_millis(50);
        config.check_interval = Duration::from_millis(50);
        config.rejoin_interval = Duration::from_millis(500);
        config
    }
}

/// Why the membership layer refused something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An identity too large to gossip (too many or too long tags).
    #[error("identity takes {len} bytes encoded; at most {MAX_IDENTITY_LEN} fit")]
    IdentityTooLarge {
        /// Its encoded length.
        len: usize,
    },
    /// foca refused a packet or an operation (a malformed or oversized packet, a packet from
    /// ourselves, a member that has left).
    #[error("gossip: {0}")]
    Swim(#[from] foca::Error),
    /// The member has left the cluster.
    #[error("the member has left the cluster")]
    Left,
    /// A datagram that would take the view past [`Config::max_members`].
    #[error("the view is full ({max} members)")]
    ViewFull {
        /// The limit.
        max: usize,
    },
    /// A view-sync datagram that does not decode.
    #[error("malformed view-sync datagram: {0}")]
    Malformed(String),
    /// A socket error.
    #[error("gossip socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Counters of a member's gossip traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams sent.
    pub packets_sent: u64,
    /// Bytes sent (UDP payloads).
    pub bytes_sent: u64,
    /// Datagrams received.
    pub packets_received: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Datagrams refused (malformed, oversized, from a stranger to this identity).
    pub packets_refused: u64,
    /// Of the datagrams sent, the heartbeats.
    pub heartbeats_sent: u64,
    /// Of the bytes sent, those of view syncs.
    pub sync_bytes_sent: u64,
}

/// The start of a heartbeat datagram, followed by the sender's heartbeat period to the
/// receiver in milliseconds (u32, big-endian). foca's packets begin with the sender's address
/// (a postcard enum tag, 0 or 1), so the first byte tells ours apart.
const HEARTBEAT: &[u8; 4] = b"\xffFHB";
const HEARTBEAT_LEN: usize = HEARTBEAT.len() + 4;
/// The start of a view-sync datagram, then a kind (`PUSH`: the first datagram of a view that
/// wants the receiver's view back; `MORE`: the rest of it; `REPLY`: a view answering one),
/// then members as foca's codec encodes them.
const SYNC: &[u8; 3] = b"\xffFS";
const PUSH: u8 = b'P';
const MORE: u8 = b'M';
const REPLY: u8 = b'R';
/// A member answers at most one view push per this long, so that pushes (small) cannot make
/// it send views (large) at any rate.
const REPLY_EVERY: Duration = Duration::from_secs(1);

/// What a timer is for.
#[derive(Debug)]
enum Tick {
    Swim(Timer<NodeId>),
    Check,
    Heartbeat,
    Sync,
}

#[derive(Debug)]
struct Due {
    at: Instant,
    seq: u64,
    tick: Tick,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// What this member knows of a peer beyond foca's view.
#[derive(Debug)]
struct Peer {
    name: String,
    /// Where its RPC server listens.
    rpc: SocketAddr,
    version: u64,
    phi: PhiAccrual,
    beats: usize,
    /// The period its heartbeats come at, as it says.
    period: u32,
    reported: Option<State>,
    /// The sweep that last saw it in foca's view.
    seen: u64,
}

/// One member of the cluster.
///
/// One member's side of the gossip protocol, sans-IO: foca's SWIM state machine, a phi-accrual
/// detector per peer, and the registry they feed, driven by datagrams and timeouts that the
/// caller hands in with the time, and giving back datagrams to send and the next deadline.
///
/// [`Membership`](crate::Membership) runs one over a UDP socket on a Flumen runtime; the traffic
/// simulation runs hundreds over an in-memory network on a virtual clock.
///
/// A peer's state in the registry combines both detectors. foca's verdict comes first (down,
/// or suspected after a missed probe); on top of it, a peer foca still holds alive is suspected
/// as soon as its silence is unlikely for its own rhythm (phi at or above the threshold), which
/// is sooner than a probe reaches it in most cases. Suspected peers leave every pool at once.
pub struct Node {
    foca: Foca<NodeId, foca::PostcardCodec, SmallRng, NoCustomBroadcast>,
    out: AccumulatingRuntime<NodeId>,
    config: Config,
    registry: Registry,
    timers: BinaryHeap<Reverse<Due>>,
    seq: u64,
    epoch: Instant,
    seeds: Vec<SocketAddr>,
    last_announce: Option<Instant>,
    last_reply: Option<Instant>,
    peers: HashMap<SocketAddr, Peer>,
    /// The active peers in the heartbeats' rotation, and where it stands.
    rotation: Vec<SocketAddr>,
    cursor: usize,
    /// Our own datagrams (heartbeats, view syncs), sent before foca's.
    own: std::collections::VecDeque<(SocketAddr, Bytes)>,
    sweep: u64,
    stats: Stats,
    left: bool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("identity", self.foca.identity())
            .field("peers", &self.peers.len())
            .field("stats", &self.stats)
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

fn checked(identity: NodeId) -> Result<NodeId, Error> {
    match identity.encoded_len() {
        len if len > MAX_IDENTITY_LEN => Err(Error::IdentityTooLarge { len }),
        _ => Ok(identity),
    }
}

impl Node {
    /// A member with `identity`, reporting to `registry` (where it shows itself alive).
    pub fn new(
        identity: NodeId,
        config: Config,
        registry: Registry,
        now: Instant,
    ) -> Result<Self, Error> {
        let identity = checked(identity)?;
        registry.update(identity.member(), State::Alive);
        let foca = Foca::new(
            identity,
            config.swim.clone(),
            SmallRng::seed_from_u64(fastrand::u64(..)),
            foca::PostcardCodec,
        );
        let mut node = Self {
            foca,
            out: AccumulatingRuntime::new(),
            registry,
            timers: BinaryHeap::new(),
            seq: 0,
            epoch: now,
            seeds: Vec::new(),
            last_announce: None,
            last_reply: None,
            peers: HashMap::new(),
            rotation: Vec::new(),
            cursor: fastrand::usize(..),
            own: std::collections::VecDeque::new(),
            sweep: 0,
            stats: Stats::default(),
            left: false,
            config,
        };
        node.schedule(now + node.config.check_interval, Tick::Check);
        if let Some(every) = node.config.heartbeat_interval {
            node.schedule(now + every, Tick::Heartbeat);
        }
        if let Some(every) = node.config.sync_interval {
            // Members started together must not all push at once.
            node.schedule(now + every.mul_f64(0.5 + fastrand::f64()), Tick::Sync);
        }
        Ok(node)
    }

    /// This member's identity as it gossips it now.
    pub fn identity(&self) -> &NodeId {
        self.foca.identity()
    }

    /// The registry this member feeds.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The traffic counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Whether this member has left.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Announces this member to `seeds` (gossip addresses; its own is skipped), and again
    /// every [`Config::rejoin_interval`] while it knows no peer.
    pub fn join(&mut self, seeds: &[SocketAddr], now: Instant) -> Result<(), Error> {
        let own = self.foca.identity().gossip_addr();
        self.seeds = seeds.iter().copied().filter(|&s| s != own).collect();
        self.announce(now)
    }

    fn announce(&mut self, now: Instant) -> Result<(), Error> {
        self.last_announce = Some(now);
        for &seed in &self.seeds {
            // foca sends an announcement to an address; the seed's true identity comes back
            // in its answer, so a stand-in that only carries the address does.
            let stand_in = NodeId::new("", seed, seed, Tags::new());
            self.foca.announce(stand_in, &mut self.out)?;
        }
        self.drain(now);
        Ok(())
    }

    /// Takes a datagram from `from`. A refused one (malformed, oversized, meant for another
    /// identity) is counted and its error returned; the member goes on.
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> Result<(), Error> {
        self.stats.packets_received += 1;
        self.stats.bytes_received += data.len() as u64;
        if let Some(period) = data.strip_prefix(HEARTBEAT) {
            let Ok(period) = <[u8; 4]>::try_from(period) else {
                self.stats.packets_refused += 1;
                return Err(Error::Malformed("a heartbeat of the wrong length".into()));
            };
            // From a peer not known yet (joining), it means nothing.
            if self.heard(from, u32::from_be_bytes(period), now) {
                self.sync(now);
            }
            return Ok(());
        }
        if let Some([kind, view @ ..]) = data.strip_prefix(SYNC) {
            return self.apply_view(from, *kind, view, now);
        }
        if let Err(full) = self.check_room(data) {
            self.stats.packets_refused += 1;
            return Err(full);
        }
        let result = self.foca.handle_data(data, &mut self.out);
        if result.is_err() {
            self.stats.packets_refused += 1;
        }
        if self.drain(now) {
            self.sync(now);
        }
        result.map_err(Error::from)
    }

    /// Feeds the peer at gossip address `from` a heartbeat sent at `period` ms; says whether
    /// it was suspected (and must be judged again at once).
    ///
    /// Only heartbeats feed phi: foca's traffic comes at no rhythm. A peer's period changes
    /// with the size of its rotation (members joining, leaving); the intervals learned at the
    /// old period would mislead phi, so its history starts over.
    fn heard(&mut self, from: SocketAddr, period: u32, now: Instant) -> bool {
        let at = now.saturating_duration_since(self.epoch);
        let config = self.config.phi;
        self.peers.get_mut(&from).is_some_and(|peer| {
            if peer.period != period {
                peer.period = period;
                peer.phi = PhiAccrual::new(config);
                peer.beats = 0;
            }
            peer.phi.heartbeat(at);
            peer.beats += 1;
            peer.reported == Some(State::Suspect)
        })
    }

    /// Records that the member whose RPC server is `rpc` answered at `now` (a reply, a health
    /// ping's answer): a sign of life that restarts phi's silence without teaching it an
    /// interval. foca's own verdicts do not change.
    pub fn heard_from_rpc(&mut self, rpc: SocketAddr, now: Instant) {
        let at = now.saturating_duration_since(self.epoch);
        let mut suspected = false;
        for peer in self.peers.values_mut().filter(|p| p.rpc == rpc) {
            peer.phi.touch(at);
            suspected |= peer.reported == Some(State::Suspect);
        }
        if suspected {
            self.sync(now);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse(due)| due.at)
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse(due)) = self.timers.peek() {
            if due.at > now {
                break;
            }
            let Some(Reverse(due)) = self.timers.pop() else {
                break;
            };
            match due.tick {
                Tick::Swim(timer) => {
                    // An error here is foca refusing a stale timer; nothing to do.
                    let _ = self.foca.handle_timer(timer, &mut self.out);
                }
                Tick::Check => {
                    self.sync(now);
                    let lonely = self.foca.num_members() == 0 && !self.seeds.is_empty();
                    let waited = self
                        .last_announce
                        .is_none_or(|at| now >= at + self.config.rejoin_interval);
                    if lonely && waited && !self.left {
                        let _ = self.announce(now);
                    }
                    self.schedule(now + self.config.check_interval, Tick::Check);
                }
                Tick::Heartbeat => {
                    if let (false, Some(every)) = (
                        self.left || self.rotation.is_empty(),
                        self.config.heartbeat_interval,
                    ) {
                        let fanout = self.config.heartbeat_fanout.clamp(1, self.rotation.len());
                        // Each peer's turn comes every ceil(peers / fanout) intervals.
                        let turns = self.rotation.len().div_ceil(fanout);
                        let period = every.saturating_mul(u32::try_from(turns).unwrap_or(u32::MAX));
                        let period = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
                        let mut beat = BytesMut::with_capacity(HEARTBEAT_LEN);
                        beat.extend_from_slice(HEARTBEAT);
                        beat.extend_from_slice(&period.to_be_bytes());
                        let beat = beat.freeze();
                        for _ in 0..fanout {
                            self.cursor = (self.cursor + 1) % self.rotation.len();
                            let to = self.rotation[self.cursor];
                            self.own.push_back((to, beat.clone()));
                        }
                    }
                    if let Some(every) = self.config.heartbeat_interval {
                        self.schedule(now + every, Tick::Heartbeat);
                    }
                }
                Tick::Sync => {
                    if !self.left && !self.rotation.is_empty() {
                        let to = self.rotation[fastrand::usize(..self.rotation.len())];
                        self.push_view(to, PUSH);
                    }
                    if let Some(every) = self.config.sync_interval {
                        self.schedule(now + every, Tick::Sync);
                    }
                }
            }
            if self.drain(now) {
                self.sync(now);
            }
        }
    }

    /// The next datagram to send, and where.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Bytes)> {
        if let Some((to, data)) = self.own.pop_front() {
            self.stats.packets_sent += 1;
            self.stats.bytes_sent += data.len() as u64;
            if data.starts_with(HEARTBEAT) {
                self.stats.heartbeats_sent += 1;
            } else {
                self.stats.sync_bytes_sent += data.len() as u64;
            }
            return Some((to, data));
        }
        let (to, data) = self.out.to_send()?;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += data.len() as u64;
        Some((to.addr(), data))
    }

    /// Announces new tags (a newer version of this member's identity).
    pub fn set_tags(&mut self, tags: Tags, now: Instant) -> Result<(), Error> {
        if self.left {
            return Err(Error::Left);
        }
        let identity = checked(self.foca.identity().with_tags(tags))?;
        self.registry.update(identity.member(), State::Alive);
        self.foca.change_identity(identity, &mut self.out)?;
        self.drain(now);
        Ok(())
    }

    /// Leaves the cluster: announces a last version of this member marked as leaving, then
    /// declares it down, so peers report it left rather than failed. The member sends nothing
    /// after the datagrams this queues.
    pub fn leave(&mut self, now: Instant) -> Result<(), Error> {
        if self.left {
            return Ok(());
        }
        let last = self.foca.identity().leaving();
        self.foca.change_identity(last.clone(), &mut self.out)?;
        self.foca.leave_cluster(&mut self.out)?;
        self.left = true;
        self.registry.update(last.member(), State::Left);
        self.drain(now);
        Ok(())
    }

    /// Refuses a foca packet whose sender and updates would take the view past
    /// [`Config::max_members`]. A packet that does not decode is left for foca to refuse.
    fn check_room(&self, mut data: &[u8]) -> Result<(), Error> {
        // An encoded member takes well over 16 bytes: far from the limit, no packet can reach
        // it, and nothing needs decoding.
        if self.peers.len() + data.len() / 16 < self.config.max_members {
            return Ok(());
        }
        let mut codec = foca::PostcardCodec;
        let Ok(header) = codec.decode_header(&mut data) else {
            return Ok(());
        };
        let mut updates = Vec::new();
        if data.len() >= 2 && header.message != foca::Message::Broadcast {
            let count = u16::from_be_bytes([data[0], data[1]]);
            data = &data[2..];
            for _ in 0..count {
                match codec.decode_member(&mut data) {
                    Ok(member) => updates.push(member),
                    Err(_) => return Ok(()),
                }
            }
        }
        self.room_for(std::iter::once(&header.src).chain(updates.iter().map(|m| m.id())))
    }

    /// Whether the view has room for whichever of `ids` it does not know.
    fn room_for<'a>(&self, ids: impl Iterator<Item = &'a NodeId>) -> Result<(), Error> {
        let own = self.foca.identity().gossip_addr();
        let mut new: Vec<SocketAddr> = ids
            .map(NodeId::gossip_addr)
            .filter(|addr| *addr != own && !self.peers.contains_key(addr))
            .collect();
        new.sort_unstable();
        new.dedup();
        let max = self.config.max_members;
        if self.peers.len() + new.len() > max {
            return Err(Error::ViewFull { max });
        }
        Ok(())
    }

    /// Queues this member's whole view for `to`, in datagrams of at most foca's packet size,
    /// the first of kind `first`.
    fn push_view(&mut self, to: SocketAddr, first: u8) {
        let max = self.config.swim.max_packet_size.get();
        let rest = if first == PUSH { MORE } else { first };
        let start = |kind: u8| {
            let mut packet = BytesMut::from(&SYNC[..]);
            packet.extend_from_slice(&[kind]);
            packet
        };
        let mut codec = foca::PostcardCodec;
        let mut packet = start(first);
        let mut one = BytesMut::new();
        for member in self.foca.iter_membership_state() {
            one.clear();
            if codec.encode_member(member, &mut one).is_err() {
                continue;
            }
            if packet.len() + one.len() > max && packet.len() > SYNC.len() + 1 {
                let full = std::mem::replace(&mut packet, start(rest));
                self.own.push_back((to, full.freeze()));
            }
            packet.extend_from_slice(&one);
        }
        if packet.len() > SYNC.len() + 1 {
            self.own.push_back((to, packet.freeze()));
        }
    }

    /// Applies a peer's view, as foca applies the updates a packet carries, and answers the
    /// first datagram of a push with this member's view.
    fn apply_view(
        &mut self,
        from: SocketAddr,
        kind: u8,
        mut view: &[u8],
        now: Instant,
    ) -> Result<(), Error> {
        if !self.peers.contains_key(&from) {
            // Only known peers push views; a stranger joins by announcing itself.
            self.stats.packets_refused += 1;
            return Ok(());
        }
        let mut codec = foca::PostcardCodec;
        let mut members = Vec::new();
        while !view.is_empty() {
            match codec.decode_member(&mut view) {
                Ok(member) => members.push(member),
                Err(e) => {
                    self.stats.packets_refused += 1;
                    return Err(Error::Malformed(e.to_string()));
                }
            }
        }
        self.room_for(members.iter().map(|m| m.id()))
            .inspect_err(|_| self.stats.packets_refused += 1)?;
        let result = self
            .foca
            .apply_many(members.into_iter(), true, &mut self.out);
        if self.drain(now) {
            self.sync(now);
        }
        let due = self.last_reply.is_none_or(|at| now >= at + REPLY_EVERY);
        if kind == PUSH && due && !self.left {
            self.last_reply = Some(now);
            self.push_view(from, REPLY);
        }
        result.map_err(Error::from)
    }

    fn schedule(&mut self, at: Instant, tick: Tick) {
        self.seq += 1;
        self.timers.push(Reverse(Due {
            at,
            seq: self.seq,
            tick,
        }));
    }

    /// Takes foca's timers and notifications; says whether the membership changed.
    fn drain(&mut self, now: Instant) -> bool {
        while let Some((after, timer)) = self.out.to_schedule() {
            self.schedule(now + after, Tick::Swim(timer));
        }
        let mut changed = false;
        while let Some(notification) = self.out.to_notify() {
            match notification {
                OwnedNotification::Rejoin(identity) => {
                    // Declared down while alive (a partition): back with a newer version.
                    self.registry.update(identity.member(), State::Alive);
                }
                OwnedNotification::MemberUp(_)
                | OwnedNotification::MemberDown(_)
                | OwnedNotification::Rename(..) => changed = true,
                _ => {}
            }
        }
        changed
    }

    /// Brings the registry in line with foca's view and the phi detectors.
    fn sync(&mut self, now: Instant) {
        let at = now.saturating_duration_since(self.epoch);
        self.sweep += 1;
        let own = self.foca.identity().gossip_addr();
        for member in self.foca.iter_membership_state() {
            let id = member.id();
            if id.gossip_addr() == own {
                // A previous life of this member, which foca keeps as down once the cluster
                // told it so: this member itself is in the registry already.
                continue;
            }
            let peer = self.peers.entry(id.gossip_addr()).or_insert_with(|| Peer {
                name: id.name().to_owned(),
                rpc: id.member().addr,
                version: 0,
                phi: PhiAccrual::new(self.config.phi),
                beats: 0,
                period: 0,
                reported: None,
                seen: 0,
            });
            if peer.version != id.version() {
                // Another life of the node at this address (new tags, a restart, a
                // rejoin): its rhythm starts over.
                peer.version = id.version();
                peer.name = id.name().to_owned();
                peer.rpc = id.member().addr;
                peer.phi = PhiAccrual::new(self.config.phi);
                peer.phi.heartbeat(at);
                peer.beats = 0;
                peer.reported = None;
            }
            peer.seen = self.sweep;
            let silent = peer.beats >= self.config.phi_min_heartbeats && peer.phi.is_failed(at);
            let state = match member.state() {
                foca::State::Down if id.is_leaving() => State::Left,
                foca::State::Down => State::Down,
                _ if id.is_leaving() => State::Left,
                foca::State::Suspect => State::Suspect,
                foca::State::Alive if silent => State::Suspect,
                foca::State::Alive => State::Alive,
            };
            if peer.reported != Some(state) {
                peer.reported = Some(state);
                self.registry.update(id.member(), state);
            }
        }
        // A fixed order (by address) keeps each peer's rhythm steady between changes.
        let mut rotation: Vec<SocketAddr> = self
            .foca
            .iter_members()
            .map(|m| m.id().gossip_addr())
            .collect();
        rotation.sort_unstable();
        if rotation != self.rotation {
            self.rotation = rotation;
        }
        let sweep = self.sweep;
        let registry = &self.registry;
        self.peers.retain(|_, peer| {
            let known = peer.seen == sweep;
            if !known {
                // foca forgot it (down long enough): so does the registry.
                registry.remove(&peer.name);
            }
            known
        });
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn node() -> Node {
        let identity = NodeId::new("a", addr(1), addr(2), Tags::new());
        Node::new(identity, Config::fast(), Registry::new(), Instant::now()).unwrap()
    }

    #[test]
    fn bad_datagrams_get_typed_errors_and_change_nothing() {
        let mut node = node();
        let now = Instant::now();
        let garbage = node.handle_datagram(addr(9), b"\x07garbage", now);
        assert!(matches!(garbage, Err(Error::Swim(_))), "{garbage:?}");
        let short_beat = node.handle_datagram(addr(9), b"\xffFHB\x00", now);
        assert!(
            matches!(short_beat, Err(Error::Malformed(_))),
            "{short_beat:?}"
        );
        let huge = vec![0; 4096];
        assert!(matches!(
            node.handle_datagram(addr(9), &huge, now),
            Err(Error::Swim(foca::Error::DataTooBig))
        ));
        // A view pushed by a stranger is ignored, not applied.
        assert!(node
            .handle_datagram(addr(9), b"\xffFSP\x00\x01", now)
            .is_ok());
        assert_eq!(node.stats().packets_refused, 4);
        assert_eq!(node.registry().members().len(), 1, "only itself");
        assert!(node.poll_transmit().is_none(), "nothing answered");
    }

    proptest! {
        #[test]
        fn any_datagram_is_taken_without_a_panic(data in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let mut node = node();
            let _ = node.handle_datagram(addr(9), &data, Instant::now());
            let mut tagged = b"\xffFS".to_vec();
            tagged.extend_from_slice(&data);
            let _ = node.handle_datagram(addr(9), &tagged, Instant::now());
        }
    }

    #[test]
    fn oversized_identities_are_refused() {
        let tags = Tags::from_iter((0..64).map(|i| (format!("tag{i}"), "x".repeat(8))));
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let identity = NodeId::new("a", addr, addr, tags);
        let err = Node::new(identity, Config::default(), Registry::new(), Instant::now());
        assert!(matches!(err, Err(Error::IdentityTooLarge { len }) if len > MAX_IDENTITY_LEN));
    }
}
