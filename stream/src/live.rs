//! Every server and client connection alive in this process, each under a name, so that an
//! exporter can publish their counters without being handed each handle (the `flumen` crate's
//! `metrics` feature does, once a recorder is installed).
//!
//! Registering costs one lock when a server starts or a connection opens; nothing is added to
//! a call. The list holds weak references: an entry goes with its server or connection, and
//! the list is swept when it has doubled since the last sweep, so it stays within twice the
//! number alive.

use std::{
    fmt::Debug,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Weak,
    },
};

use parking_lot::Mutex;

use crate::{
    server::{ServerConnection, ServerLimits, ServerStats},
    stats::ConnectionStats,
};

/// The counters of one live server or client connection, read when [`live`] was called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Snapshot {
    /// A server (all its connections): what [`ServerHandle::stats`](crate::ServerHandle::stats)
    /// returns.
    Server(ServerStats),
    /// A client connection: what [`Client::stats`](crate::Client::stats) returns.
    Connection(ConnectionStats),
}

/// A live server or client connection and its counters.
#[derive(Clone)]
#[non_exhaustive]
pub struct Live {
    /// A server's name is its local address (`127.0.0.1:7000`); a client connection's is its
    /// peer's address and the connection's number in this process (`127.0.0.1:7000#3`), since
    /// a pool holds several connections to one peer. Addresses are written as the transport's
    /// address type prints them (`Debug`).
    pub name: Arc<str>,
    /// Its counters now.
    pub snapshot: Snapshot,
    source: Arc<dyn Source>,
}

impl Live {
    /// A server's open connections now (what
    /// [`ServerHandle::connections`](crate::ServerHandle::connections) returns); none for a
    /// client connection.
    pub fn connections(&self) -> Vec<ServerConnection> {
        self.source.connections()
    }

    /// A server's limits; `None` for a client connection.
    pub fn limits(&self) -> Option<ServerLimits> {
        self.source.limits()
    }
}

impl Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("name", &self.name)
            .field("snapshot", &self.snapshot)
            .finish_non_exhaustive()
    }
}

/// Whatever can tell its counters: a server's or a connection's shared state.
pub(crate) trait Source: Send + Sync {
    fn snapshot(&self) -> Snapshot;

    /// A server's connections; none for a client connection.
    fn connections(&self) -> Vec<ServerConnection> {
        Vec::new()
    }

    /// A server's limits.
    fn limits(&self) -> Option<ServerLimits> {
        None
    }
}

struct Entry {
    name: Arc<str>,
    source: Weak<dyn Source>,
}

struct Registry {
    entries: Vec<Entry>,
    /// The length at which the next registration sweeps out entries that died.
    sweep_at: usize,
}

/// The smallest list length that is swept.
const MIN_SWEEP: usize = 64;

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    entries: Vec::new(),
    sweep_at: MIN_SWEEP,
});

static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

fn register(name: String, source: Weak<dyn Source>) {
    let mut registry = REGISTRY.lock();
    if registry.entries.len() >= registry.sweep_at {
        registry
            .entries
            .retain(|entry| entry.source.strong_count() > 0);
        registry.sweep_at = (registry.entries.len() * 2).max(MIN_SWEEP);
    }
    registry.entries.push(Entry {
        name: name.into(),
        source,
    });
}

/// Registers a server listening on `addr`.
pub(crate) fn register_server<S: Source + 'static>(addr: &impl Debug, source: &Arc<S>) {
    let source: Weak<dyn Source> = Arc::downgrade(source) as Weak<dyn Source>;
    register(format!("{addr:?}"), source);
}

/// Registers a client connection to `addr`.
pub(crate) fn register_connection<S: Source + 'static>(addr: &impl Debug, source: &Arc<S>) {
    let number = CONNECTIONS.fetch_add(1, Ordering::Relaxed) + 1;
    let source: Weak<dyn Source> = Arc::downgrade(source) as Weak<dyn Source>;
    register(format!("{addr:?}#{number}"), source);
}

/// Every server and client connection of this process alive now, with its counters, in the
/// order they started.
pub fn live() -> Vec<Live> {
    let sources: Vec<(Arc<str>, Arc<dyn Source>)> = {
        let mut registry = REGISTRY.lock();
        registry
            .entries
            .retain(|entry| entry.source.strong_count() > 0);
        registry.sweep_at = (registry.entries.len() * 2).max(MIN_SWEEP);
        registry
            .entries
            .iter()
            .filter_map(|entry| Some((entry.name.clone(), entry.source.upgrade()?)))
            .collect()
    };
    // Read outside the registry's lock: a snapshot takes the server's own locks.
    sources
        .into_iter()
        .map(|(name, source)| Live {
            name,
            snapshot: source.snapshot(),
            source,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Quiet;

    impl Source for Quiet {
        fn snapshot(&self) -> Snapshot {
            Snapshot::Connection(ConnectionStats::default())
        }
    }

    #[test]
    fn entries_go_with_their_sources_and_the_list_stays_bounded() {
        // Entries of this test alone (others of this binary may register their own).
        let ours = |prefix: &str| {
            let registry = REGISTRY.lock();
            registry
                .entries
                .iter()
                .filter(|entry| entry.name.starts_with(prefix))
                .count()
        };
        // A hundred alive, a thousand gone: the list keeps at most twice the number alive.
        let kept: Vec<_> = (0..100).map(|_| Arc::new(Quiet)).collect();
        for source in &kept {
            register_connection(&"kept", source);
        }
        for _ in 0..1_000 {
            register_connection(&"gone", &Arc::new(Quiet));
        }
        let held = ours("\"kept\"#") + ours("\"gone\"#");
        assert!(
            held <= 2 * kept.len(),
            "{held} entries held for 100 live sources"
        );
        let names: Vec<_> = live().into_iter().map(|live| live.name).collect();
        // Listing sweeps out every entry that went.
        assert_eq!(ours("\"gone\"#"), 0);
        let alive: std::collections::HashSet<_> = names
            .iter()
            .filter(|name| name.starts_with("\"kept\"#"))
            .collect();
        assert_eq!(alive.len(), kept.len(), "one name each: {names:?}");
        assert!(!names.iter().any(|name| name.starts_with("\"gone\"#")));
        drop(kept);
        assert!(!live().iter().any(|live| live.name.starts_with("\"kept\"#")));
        assert_eq!(ours("\"kept\"#"), 0);
    }
}
