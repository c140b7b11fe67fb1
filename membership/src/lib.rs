//! Cluster membership for Flumen services, above the single-connection core (which never names
//! it). This crate grows in steps; what is here is complete and tested on its own:
//!
//! - [`phi`]: a phi-accrual failure detector (Hayashibara et al.), fed with the arrival times
//!   of a member's heartbeats (gossip probes, RPC health answers); it turns silence into a
//!   suspicion level that adapts to each member's own rhythm.
//! - [`filter`]: tag filters over members' tags (`zone=eu && gpu`, `!(spot) || tier=gold`), to
//!   pick the workers a call may go to.
//! - [`registry`]: the live view of the members (alive, suspect, down, left), an event stream,
//!   and filtered pools that a balanced client takes as its discovery source; a suspected
//!   member leaves every pool at once.
#![warn(missing_docs)]

pub mod cluster;
pub mod driver;
pub mod filter;
pub mod identity;
pub mod node;
pub mod phi;
pub mod registry;
pub mod sim;

pub use foca;

pub use crate::{
    cluster::{ClusterClient, ClusterError},
    driver::{Builder, Datagrams, Membership, UdpRuntime},
    filter::{Filter, FilterError, Tags},
    identity::NodeId,
    node::{Config, Error, Node, Stats},
    phi::{PhiAccrual, PhiConfig},
    registry::{Event, Member, Pool, Registry, State},
};
