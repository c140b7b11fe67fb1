//! A node's identity in the gossip protocol ([`NodeId`](crate::NodeId)).

use std::{
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{filter::Tags, registry::Member};

/// The most bytes an encoded identity may take: identities travel in every packet, which foca
/// bounds (1400 bytes by default), and several updates share a packet.
pub const MAX_IDENTITY_LEN: usize = 512;

/// A node's identity, as gossiped.
///
/// A node's identity in the gossip protocol: where it gossips, its name, where its RPC server
/// listens, its tags, and the version of that announcement.
///
/// foca tells members apart by their gossip address ([`foca::Identity::addr`]); two
/// identities with one address are versions of one node, and the newer wins. A node starts at
/// a version taken from the wall clock, so a restarted process beats what the cluster still
/// remembers of its previous life, and bumps it for every new announcement (new tags, a
/// rejoin after being declared down, leaving).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeId {
    gossip: SocketAddr,
    name: String,
    rpc: SocketAddr,
    tags: Tags,
    version: u64,
    /// Set on the last announcement of a node that leaves on its own, so that the cluster
    /// tells a graceful leave from a failure.
    leaving: bool,
}

impl NodeId {
    /// The identity of a node gossiping at `gossip`, serving RPC at `rpc`, with a first
    /// version from the wall clock (milliseconds since the Unix epoch).
    pub fn new(name: impl Into<String>, gossip: SocketAddr, rpc: SocketAddr, tags: Tags) -> Self {
        let version = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            gossip,
            name: name.into(),
            rpc,
            tags,
            version,
            leaving: false,
        }
    }

    /// Where the node gossips: the address foca identifies it by.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version of this announcement.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether this is the announcement of a node leaving on its own.
    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    /// The same node, announcing `tags` (a newer version).
    pub fn with_tags(&self, tags: Tags) -> Self {
        Self {
            tags,
            ..self.next()
        }
    }

    /// The same node's last announcement, before it leaves.
    pub fn leaving(&self) -> Self {
        Self {
            leaving: true,
            ..self.next()
        }
    }

    fn next(&self) -> Self {
        Self {
            version: self.version.saturating_add(1),
            leaving: false,
            ..self.clone()
        }
    }

    /// The node as the registry shows it.
    pub fn member(&self) -> Member {
        Member {
            name: self.name.clone(),
            addr: self.rpc,
            tags: self.tags.clone(),
            version: self.version,
        }
    }

    /// The identity's encoded length, to check it against [`MAX_IDENTITY_LEN`].
    pub(crate) fn encoded_len(&self) -> usize {
        postcard::to_stdvec(self).map_or(usize::MAX, |bytes| bytes.len())
    }
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    /// A node declared down (wrongly: it is still running, as after a partition) rejoins
    /// with the next version, which wins over the one the cluster buried.
    fn renew(&self) -> Option<Self> {
        (!self.leaving).then(|| self.next())
    }

    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.version, self.leaving) > (adversary.version, adversary.leaving)
    }
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn newer_announcements_win() {
        let first = NodeId::new("a", addr(1), addr(2), Tags::new());
        let retagged = first.with_tags(Tags::from_iter([("gpu", "")]));
        let leaving = retagged.leaving();
        assert!(retagged.win_addr_conflict(&first));
        assert!(!first.win_addr_conflict(&retagged));
        assert!(leaving.win_addr_conflict(&retagged));
        assert_eq!(leaving.renew(), None);
        let renewed = retagged.renew().unwrap();
        assert!(renewed.win_addr_conflict(&retagged));
        assert_eq!(renewed.member().tags, retagged.member().tags);
        // A restarted process starts from the clock, past its previous life's few bumps.
        let restarted = NodeId::new("a", addr(1), addr(2), Tags::new());
        assert!(restarted.version() >= first.version());
        assert!(first.encoded_len() < MAX_IDENTITY_LEN);
    }
}
