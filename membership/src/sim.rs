//! Many members on an in-memory network and a virtual clock: for tests of the protocol's
//! behaviour (joins, crashes, partitions, leaves) that take no real time, and for measuring
//! gossip traffic at cluster sizes one host cannot run (`examples/traffic.rs`).
//!
//! Every member is a real [`Node`] (foca and the phi detectors as deployed); only the sockets
//! and the clock are simulated. Datagrams take a fixed latency and are never lost unless a
//! partition or a crash drops them.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;

use crate::{
    filter::Tags,
    identity::NodeId,
    node::{Config, Error, Node},
    registry::{Registry, State},
};

/// A simulated cluster (see the [module](self)).
#[derive(Debug)]
pub struct Simulation {
    start: Instant,
    now: Instant,
    latency: Duration,
    nodes: Vec<Slot>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Datagrams on their way.
    wire: BinaryHeap<Reverse<InFlight>>,
    /// When each member's timers are next due (stale entries are skipped).
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    seq: u64,
    delivered: u64,
}

/// A datagram on its way: (arrival, order sent, to, from, bytes).
type InFlight = (Instant, u64, usize, SocketAddr, Bytes);

#[derive(Debug)]
struct Slot {
    node: Option<Node>,
    registry: Registry,
    group: u32,
}

impl Simulation {
    /// An empty network whose datagrams take `latency`.
    pub fn new(latency: Duration) -> Self {
        let now = Instant::now();
        Self {
            start: now,
            now,
            latency,
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            wire: BinaryHeap::new(),
            due: BinaryHeap::new(),
            seq: 0,
            delivered: 0,
        }
    }

    /// The gossip address member `index` has.
    pub fn addr(index: usize) -> SocketAddr {
        let [_, _, hi, lo] = u32::try_from(index).unwrap_or(u32::MAX).to_be_bytes();
        SocketAddr::from(([10, 0, hi, lo], 7946))
    }

    /// Adds a member named `name` with `tags` (not yet joined); returns its index.
    pub fn add(&mut self, name: &str, tags: Tags, config: Config) -> Result<usize, Error> {
        let index = self.nodes.len();
        let addr = Self::addr(index);
        let rpc = SocketAddr::new(addr.ip(), 9000);
        let registry = Registry::new();
        let node = Node::new(
            NodeId::new(name, addr, rpc, tags),
            config,
            registry.clone(),
            self.now,
        )?;
        self.by_addr.insert(addr, index);
        self.nodes.push(Slot {
            node: Some(node),
            registry,
            group: 0,
        });
        self.settle(index);
        Ok(index)
    }

    /// Member `index` announces itself to the members `seeds`.
    pub fn join(&mut self, index: usize, seeds: &[usize]) -> Result<(), Error> {
        let seeds: Vec<SocketAddr> = seeds.iter().map(|&s| Self::addr(s)).collect();
        let now = self.now;
        if let Some(node) = self.node_mut(index) {
            node.join(&seeds, now)?;
        }
        self.settle(index);
        Ok(())
    }

    /// Member `index` stops at once, sending nothing more (a crash).
    pub fn crash(&mut self, index: usize) {
        if let Some(slot) = self.nodes.get_mut(index) {
            slot.node = None;
        }
    }

    /// Member `index` leaves gracefully.
    pub fn leave(&mut self, index: usize) -> Result<(), Error> {
        let now = self.now;
        if let Some(node) = self.node_mut(index) {
            node.leave(now)?;
        }
        self.settle(index);
        Ok(())
    }

    /// Member `index` announces `tags`.
    pub fn set_tags(&mut self, index: usize, tags: Tags) -> Result<(), Error> {
        let now = self.now;
        if let Some(node) = self.node_mut(index) {
            node.set_tags(tags, now)?;
        }
        self.settle(index);
        Ok(())
    }

    /// Cuts the network into `groups`: datagrams cross no border (members in no group form one
    /// more group together).
    pub fn partition(&mut self, groups: &[&[usize]]) {
        for slot in &mut self.nodes {
            slot.group = 0;
        }
        for (g, members) in groups.iter().enumerate() {
            for &index in *members {
                if let Some(slot) = self.nodes.get_mut(index) {
                    slot.group = u32::try_from(g + 1).unwrap_or(u32::MAX);
                }
            }
        }
    }

    /// Joins the network whole again.
    pub fn heal(&mut self) {
        self.partition(&[]);
    }

    /// The live member `index`, if it has not crashed.
    pub fn node(&self, index: usize) -> Option<&Node> {
        self.nodes.get(index).and_then(|slot| slot.node.as_ref())
    }

    fn node_mut(&mut self, index: usize) -> Option<&mut Node> {
        self.nodes
            .get_mut(index)
            .and_then(|slot| slot.node.as_mut())
    }

    /// The registry member `index` feeds.
    pub fn registry(&self, index: usize) -> Option<&Registry> {
        self.nodes.get(index).map(|slot| &slot.registry)
    }

    /// What member `observer` thinks of member `subject` (None: unknown to it).
    pub fn state(&self, observer: usize, subject: usize) -> Option<State> {
        let registry = self.registry(observer)?;
        let addr = Self::addr(subject);
        let rpc = SocketAddr::new(addr.ip(), 9000);
        registry
            .members()
            .into_iter()
            .find(|(m, _)| m.addr == rpc)
            .map(|(_, state)| state)
    }

    /// Virtual time since the simulation began.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Datagrams delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Sends what member `index` has queued and notes its next deadline.
    fn settle(&mut self, index: usize) {
        let Some(slot) = self.nodes.get_mut(index) else {
            return;
        };
        let Some(node) = slot.node.as_mut() else {
            return;
        };
        let from = node.identity().gossip_addr();
        while let Some((to, data)) = node.poll_transmit() {
            if let Some(&target) = self.by_addr.get(&to) {
                self.seq += 1;
                self.wire.push(Reverse((
                    self.now + self.latency,
                    self.seq,
                    target,
                    from,
                    data,
                )));
            }
        }
        if let Some(at) = node.poll_timeout() {
            self.due.push(Reverse((at, index)));
        }
    }

    /// Runs the cluster for `span` of virtual time.
    pub fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        self.run_until(end, |_| false);
    }

    /// Runs the cluster until `done` holds, for at most `limit` of virtual time; returns the
    /// virtual time it took, or `None` if `done` never held.
    pub fn run_within(
        &mut self,
        limit: Duration,
        done: impl FnMut(&Self) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        self.run_until(start + limit, done)
            .then(|| self.now - start)
    }

    /// Runs the cluster until `done` holds (checked after every event) or virtual time reaches
    /// `end`; returns whether `done` held.
    fn run_until(&mut self, end: Instant, mut done: impl FnMut(&Self) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let next_datagram = self.wire.peek().map(|Reverse(d)| d.0);
            let next_timer = self.due.peek().map(|Reverse(d)| d.0);
            let next = match (next_datagram, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => end,
            };
            if next > end {
                self.now = end;
                return done(self);
            }
            self.now = next;
            if next_datagram == Some(next) {
                let Some(Reverse((_, _, to, from, data))) = self.wire.pop() else {
                    continue;
                };
                let crosses = self.nodes.get(to).map(|s| s.group)
                    != self
                        .by_addr
                        .get(&from)
                        .and_then(|&i| self.nodes.get(i))
                        .map(|s| s.group);
                let now = self.now;
                if let (false, Some(node)) = (crosses, self.node_mut(to)) {
                    // A refused datagram is counted by the member; the simulation goes on.
                    let _ = node.handle_datagram(from, &data, now);
                    self.delivered += 1;
                    self.settle(to);
                }
            } else if let Some(Reverse((_, index))) = self.due.pop() {
                let now = self.now;
                if let Some(node) = self.node_mut(index) {
                    if node.poll_timeout().is_some_and(|at| at <= now) {
                        node.handle_timeout(now);
                        self.settle(index);
                    }
                }
            }
        }
    }
}
