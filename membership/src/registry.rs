//! The live view of a cluster's members ([`Registry`](crate::Registry)).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Weak},
};

use flumen_balance::discovery::{channel, Target, Updater, Watch};
use parking_lot::Mutex;

use crate::filter::{Filter, Tags};

/// One member of the cluster: its name, the address of its RPC server, its tags and the
/// version of what it announced (a member that changes its tags announces a newer one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member's name, unique in the cluster.
    pub name: String,
    /// Where its RPC server listens.
    pub addr: SocketAddr,
    /// Its tags (`zone=eu`, `gpu`); a `weight=N` tag sets its share of calls in a pool.
    pub tags: Tags,
    /// The version of its announcement.
    pub version: u64,
}

/// What the cluster thinks of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Answers probes.
    Alive,
    /// Missed probes: may be down. No new calls go to it.
    Suspect,
    /// Declared down by the failure detector.
    Down,
    /// Left on its own (graceful shutdown).
    Left,
}

/// A change in the cluster, as the [`Registry`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A member appeared (or came back after being down or leaving).
    Joined(Member),
    /// A member was suspected.
    Suspect(Member),
    /// A suspected member answered again.
    Recovered(Member),
    /// A member was declared down.
    Failed(Member),
    /// A member left on its own.
    Left(Member),
    /// A member announced other tags.
    TagsChanged {
        /// The member as it is now.
        member: Member,
        /// Its tags before.
        before: Tags,
    },
}

/// The live view: cheap to clone, shared by the membership layer that feeds it and the
/// clients and applications that read it.
///
/// The live view of a cluster's members, fed by the membership layer (gossip, or an
/// application's own source), with an event stream and filtered worker pools that a balanced
/// client takes as its discovery source.
///
/// A member is alive, suspect, down or left. Pools hold the alive members whose tags pass
/// their filter: a member leaves every pool as soon as it is suspected, before it is declared
/// down, so calls move off it early; it comes back if it answers again.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    members: BTreeMap<String, (Member, State)>,
    subscribers: Vec<async_channel::Sender<Event>>,
    pools: Vec<PoolEntry>,
}

#[derive(Debug)]
struct PoolEntry {
    filter: Filter,
    updater: Weak<Updater<SocketAddr>>,
    /// What the pool holds now, to skip updates that change nothing.
    current: Vec<(SocketAddr, u32)>,
}

/// The events past this many unread are dropped for a subscriber that does not keep up (it
/// can always read the whole view with [`Registry::members`]).
pub const EVENT_BACKLOG: usize = 1024;

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `member` is in `state` (the membership layer's verdict); emits the event
    /// the change means, if any, and updates the pools.
    pub fn update(&self, member: Member, state: State) {
        let mut inner = self.inner.lock();
        let previous = inner.members.get(&member.name).cloned();
        let event = match (previous, state) {
            (None, State::Alive | State::Suspect) => Some(Event::Joined(member.clone())),
            (None, _) => None,
            (Some((old, _)), _) if old.version > member.version => {
                // News of an older version of the member (its previous life, delayed gossip):
                // keep what is known of the newer one.
                return;
            }
            (Some((old, old_state)), state) => match (old_state, state) {
                (State::Down | State::Left, State::Alive | State::Suspect) => {
                    Some(Event::Joined(member.clone()))
                }
                (State::Alive, State::Suspect) => Some(Event::Suspect(member.clone())),
                (State::Suspect, State::Alive) => Some(Event::Recovered(member.clone())),
                (State::Alive | State::Suspect, State::Down) => Some(Event::Failed(member.clone())),
                (State::Alive | State::Suspect, State::Left) => Some(Event::Left(member.clone())),
                _ if old.tags != member.tags => Some(Event::TagsChanged {
                    member: member.clone(),
                    before: old.tags.clone(),
                }),
                _ => None,
            },
        };
        inner.members.insert(member.name.clone(), (member, state));
        if let Some(event) = event {
            inner.subscribers.retain(|s| !s.is_closed());
            for subscriber in &inner.subscribers {
                // A full backlog drops the event for that subscriber only.
                let _ = subscriber.try_send(event.clone());
            }
        }
        inner.refresh_pools();
    }

    /// Forgets a member entirely (after it was down or left long enough).
    pub fn remove(&self, name: &str) {
        let mut inner = self.inner.lock();
        if inner.members.remove(name).is_some() {
            inner.refresh_pools();
        }
    }

    /// Every member known, with its state, by name.
    pub fn members(&self) -> Vec<(Member, State)> {
        self.inner.lock().members.values().cloned().collect()
    }

    /// Every member as a table for the admin page (feature `admin`): name, RPC address,
    /// state, tags and announcement version, by name. Add it with
    /// `Admin::section("membership", move || registry.admin_table())`.
    #[cfg(feature = "admin")]
    pub fn admin_table(&self) -> flumen::admin::Table {
        let columns = ["member", "address", "state", "tags", "version"];
        let rows = self
            .members()
            .into_iter()
            .map(|(member, state)| {
                let tags: Vec<String> = member
                    .tags
                    .iter()
                    .map(|(name, value)| match value {
                        "" => name.to_owned(),
                        value => format!("{name}={value}"),
                    })
                    .collect();
                vec![
                    member.name,
                    member.addr.to_string(),
                    format!("{state:?}"),
                    tags.join(" "),
                    member.version.to_string(),
                ]
            })
            .collect();
        flumen::admin::Table {
            columns: columns.map(String::from).to_vec(),
            rows,
        }
    }

    /// The alive members whose tags pass `filter`.
    pub fn matching(&self, filter: &Filter) -> Vec<Member> {
        self.inner
            .lock()
            .members
            .values()
            .filter(|(m, state)| *state == State::Alive && filter.matches(&m.tags))
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// The changes from now on. Drop the receiver to stop them.
    pub fn subscribe(&self) -> async_channel::Receiver<Event> {
        let (sender, receiver) = async_channel::bounded(EVENT_BACKLOG);
        self.inner.lock().subscribers.push(sender);
        receiver
    }

    /// The alive members passing `filter`, as a discovery source for a balanced client
    /// (`Client::balanced(&rt, transport, registry.pool(filter))`): it yields the set at once
    /// and again on every change. The pool ends when it is dropped.
    pub fn pool(&self, filter: Filter) -> Pool {
        let (updater, watch) = channel(Vec::new());
        let updater = Arc::new(updater);
        let mut inner = self.inner.lock();
        inner.pools.push(PoolEntry {
            filter,
            updater: Arc::downgrade(&updater),
            current: Vec::new(),
        });
        inner.refresh_pools();
        Pool {
            watch,
            _updater: updater,
        }
    }
}

impl Inner {
    fn refresh_pools(&mut self) {
        let members = &self.members;
        self.pools.retain_mut(|pool| {
            let Some(updater) = pool.updater.upgrade() else {
                return false;
            };
            let now: Vec<(SocketAddr, u32)> = members
                .values()
                .filter(|(m, state)| *state == State::Alive && pool.filter.matches(&m.tags))
                .map(|(m, _)| (m.addr, weight(&m.tags)))
                .collect();
            if now != pool.current {
                updater.set(
                    now.iter()
                        .map(|&(addr, w)| Target::new(addr).weight(w))
                        .collect(),
                );
                pool.current = now;
            }
            true
        });
    }
}

/// A member's share of calls: its `weight` tag, else 1 (the balancer's default weight).
fn weight(tags: &Tags) -> u32 {
    tags.get("weight").and_then(|w| w.parse().ok()).unwrap_or(1)
}

/// A filtered pool of members, as a discovery source (see [`Registry::pool`]).
#[derive(Debug)]
pub struct Pool {
    watch: Watch<SocketAddr>,
    /// Keeps the pool registered; the registry drops it once this goes.
    _updater: Arc<Updater<SocketAddr>>,
}

impl flumen_balance::discovery::Discover<SocketAddr> for Pool {
    async fn next(&mut self) -> Option<Vec<Target<SocketAddr>>> {
        self.watch.next().await
    }
}

#[cfg(test)]
mod tests {
    use flumen_balance::discovery::Discover;
    use futures_lite::future::{block_on, poll_once};

    use super::*;

    fn member(name: &str, port: u16, tags: &[(&str, &str)], version: u64) -> Member {
        Member {
            name: name.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            tags: tags.iter().copied().collect(),
            version,
        }
    }

    /// What `pool` yields now: a change must be there already (the registry updates pools as
    /// it changes), so nothing here waits.
    fn now(pool: &mut Pool) -> Vec<Target<SocketAddr>> {
        block_on(poll_once(pool.next()))
            .flatten()
            .expect("the pool changed")
    }

    fn ports(pool: &mut Pool) -> Vec<u16> {
        now(pool).iter().map(|t| t.address.port()).collect()
    }

    #[cfg(feature = "admin")]
    #[test]
    fn the_admin_table_lists_every_member() {
        let registry = Registry::new();
        registry.update(
            member("b", 2, &[("zone", "eu"), ("gpu", "")], 3),
            State::Suspect,
        );
        registry.update(member("a", 1, &[], 1), State::Alive);
        let table = registry.admin_table();
        assert_eq!(
            table.columns,
            ["member", "address", "state", "tags", "version"]
        );
        assert_eq!(
            table.rows,
            [
                ["a", "127.0.0.1:1", "Alive", "", "1"],
                ["b", "127.0.0.1:2", "Suspect", "gpu zone=eu", "3"],
            ]
        );
    }

    #[test]
    fn events_follow_a_members_life() {
        let registry = Registry::new();
        let events = registry.subscribe();
        let a = member("a", 1, &[("zone", "eu")], 1);
        registry.update(a.clone(), State::Alive);
        registry.update(a.clone(), State::Alive);
        registry.update(a.clone(), State::Suspect);
        registry.update(a.clone(), State::Alive);
        let moved = member("a", 1, &[("zone", "us")], 2);
        registry.update(moved.clone(), State::Alive);
        // A stale announcement changes nothing.
        registry.update(a.clone(), State::Alive);
        registry.update(moved.clone(), State::Down);
        registry.update(moved.clone(), State::Alive);
        registry.update(moved.clone(), State::Left);
        let got: Vec<Event> = std::iter::from_fn(|| events.try_recv().ok()).collect();
        assert_eq!(
            got,
            vec![
                Event::Joined(a.clone()),
                Event::Suspect(a.clone()),
                Event::Recovered(a.clone()),
                Event::TagsChanged {
                    member: moved.clone(),
                    before: a.tags.clone()
                },
                Event::Failed(moved.clone()),
                Event::Joined(moved.clone()),
                Event::Left(moved.clone()),
            ]
        );
        assert_eq!(registry.members(), vec![(moved, State::Left)]);
    }

    #[test]
    fn pools_hold_the_alive_members_that_pass_their_filter() {
        let registry = Registry::new();
        registry.update(
            member("a", 1, &[("gpu", ""), ("zone", "eu")], 1),
            State::Alive,
        );
        registry.update(
            member("b", 2, &[("zone", "eu"), ("weight", "3")], 1),
            State::Alive,
        );
        let mut gpus = registry.pool("gpu && zone=eu".parse().unwrap());
        let mut eu = registry.pool("zone=eu".parse().unwrap());
        assert_eq!(ports(&mut gpus), vec![1]);
        let first = now(&mut eu);
        assert_eq!(
            first
                .iter()
                .map(|t| (t.address.port(), t.weight))
                .collect::<Vec<_>>(),
            vec![(1, 1), (2, 3)]
        );

        // Suspected: out of every pool at once, before any verdict.
        registry.update(
            member("a", 1, &[("gpu", ""), ("zone", "eu")], 1),
            State::Suspect,
        );
        assert_eq!(ports(&mut gpus), Vec::<u16>::new());
        assert_eq!(ports(&mut eu), vec![2]);
        // A change that does not touch a pool does not wake it.
        registry.update(member("c", 3, &[("zone", "us")], 1), State::Alive);
        assert!(block_on(poll_once(eu.next())).is_none());
        // New tags move a member into a pool.
        registry.update(
            member("c", 3, &[("zone", "eu"), ("gpu", "")], 2),
            State::Alive,
        );
        assert_eq!(ports(&mut gpus), vec![3]);
        assert_eq!(ports(&mut eu), vec![2, 3]);
        // Recovered: back in.
        registry.update(
            member("a", 1, &[("gpu", ""), ("zone", "eu")], 1),
            State::Alive,
        );
        assert_eq!(ports(&mut gpus), vec![1, 3]);
        registry.remove("c");
        assert_eq!(ports(&mut gpus), vec![1]);

        // A dropped pool is forgotten.
        drop(gpus);
        registry.update(
            member("d", 4, &[("gpu", ""), ("zone", "eu")], 1),
            State::Alive,
        );
        assert_eq!(registry.inner.lock().pools.len(), 1);
        let matching: Vec<_> = registry
            .matching(&"gpu".parse().unwrap())
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(matching, vec!["a", "d"]);
    }
}
