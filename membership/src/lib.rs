//! Cluster membership for Flumen services, above the single-connection core (which never names
//! it): members find each other by gossip, failures are detected, and calls go to "any worker
//! with tag X".
//!
//! - Gossip is [foca]'s SWIM ([`Node`]): join through seed addresses, probes and indirect
//!   probes, suspicion and its refutation, incarnations, dissemination piggybacked on probes.
//!   Each member's identity carries its name, its RPC address, its tags and a version seeded
//!   from the clock ([`NodeId`]); a graceful leave is told from a failure. Anti-entropy view
//!   syncs repair what gossip missed.
//! - Failure detection is foca's verdicts plus a phi-accrual detector ([`PhiAccrual`]) per peer, fed
//!   by heartbeats each member sends its peers in a steady rotation: a peer foca still holds
//!   alive is suspected as soon as its silence is unlikely for its own rhythm; RPC answers
//!   (reported by [`ClusterClient::for_member`]) count as signs of life.
//! - The [`Registry`] is the live view (alive, suspect, down, left) with an event stream and
//!   filtered pools; a suspected member leaves every pool at once, before it is declared down.
//! - [`Membership`] runs a member over UDP on tokio or smol (any runtime with [`Net`]); [`ClusterClient`]
//!   calls the workers passing a tag [`Filter`], and hands out balanced clients for the
//!   generated typed clients.
//! - [`sim`] runs many members on an in-memory network and a virtual clock, for tests and for
//!   traffic figures at sizes one host cannot run.
//!
//! ```no_run
//! # async fn demo(rt: flumen_rt::TokioRuntime) -> Result<(), Box<dyn std::error::Error>> {
//! use flumen_membership::{ClusterClient, Config, Membership, Tags};
//!
//! let rpc = "10.0.0.7:7000".parse()?;
//! let member = Membership::builder("worker-7", rpc)
//!     .tags(Tags::from_iter([("zone", "eu"), ("gpu", "")]))
//!     .seeds(&["10.0.0.1:7946".parse()?])
//!     .config(Config::default())
//!     .bind(&rt, "10.0.0.7:7946".parse()?)?;
//! let cluster = ClusterClient::for_member(&rt, flumen::tcp::TokioTcp::default(), &member);
//! let answer: String = cluster.call_worker("zone=eu && gpu", "Jobs.run", &42u64).await?;
//! # let _ = answer;
//! member.leave().await?;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod cluster;
mod driver;
mod filter;
mod identity;
mod node;
mod phi;
mod registry;
pub mod sim;

pub use flumen_rt::{Datagrams, Net};
pub use foca;

pub use crate::{
    cluster::{ClusterClient, ClusterError, REPORT_EVERY},
    driver::{Builder, Membership},
    filter::{Filter, FilterError, Tags, MAX_FILTER_DEPTH, MAX_FILTER_LEN},
    identity::{NodeId, MAX_IDENTITY_LEN},
    node::{Config, Error, Node, Stats},
    phi::{PhiAccrual, PhiConfig},
    registry::{Event, Member, Pool, Registry, State, EVENT_BACKLOG},
};
