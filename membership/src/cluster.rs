//! Calls to "any worker with tag X" ([`ClusterClient`](crate::ClusterClient)).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use flumen::{
    balance::BalanceConfig,
    stream::{Runtime, Transport},
    Client, Codec, MethodId, MsgPack,
};
use parking_lot::Mutex;
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    driver::{Membership, Reporter},
    filter::{Filter, FilterError},
    registry::Registry,
};

/// How often a cluster client reports its workers' answers to its member.
pub const REPORT_EVERY: Duration = Duration::from_millis(50);

type Pools<C> = Mutex<HashMap<String, Client<C>>>;

/// Why a call to a worker failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The filter does not parse.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// The call failed (no worker matched in time, the worker failed, the codec did).
    #[error(transparent)]
    Call(#[from] flumen::Error),
}

type Open<C> = dyn Fn(crate::registry::Pool) -> Client<C> + Send + Sync;

/// Balanced clients over the cluster's workers, one per tag filter. Cheap to clone; clones
/// share the clients.
///
/// Calls to "any worker with tag X": a balanced client per tag filter, over the registry's
/// pool of the alive members passing it.
///
/// A member leaves its pools as soon as it is suspected, so new calls move off it before it is
/// declared down. What happens to the calls it already had is the balanced client's rule: a
/// call that provably never ran is retried elsewhere; a call whose connection broke mid-call is
/// retried only if its method is `#[idempotent]`, and otherwise fails with
/// [`flumen::CallError::Connection`] (it may or may not have run: the caller decides).
#[derive(Clone)]
pub struct ClusterClient<C: Codec = MsgPack> {
    registry: Registry,
    open: Arc<Open<C>>,
    /// The client of each filter used so far, by the filter's canonical text.
    pools: Arc<Pools<C>>,
}

impl<C: Codec> std::fmt::Debug for ClusterClient<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClient")
            .field("filters", &self.pools.lock().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ClusterClient<MsgPack> {
    /// Calls over `transport` on `rt` to the members `membership` knows, with the default
    /// balancing and MessagePack, and reports the workers' answers to it (see
    /// [`report_answers`](ClusterClient::report_answers)).
    pub fn for_member<R, T>(rt: &R, transport: T, membership: &Membership) -> Self
    where
        R: Runtime,
        T: Transport<Addr = SocketAddr> + Clone,
    {
        Self::new(rt, transport, membership.registry().clone()).report_answers(rt, membership)
    }

    /// Calls over `transport` on `rt` to the members of `registry`, with the default balancing
    /// and MessagePack.
    pub fn new<R, T>(rt: &R, transport: T, registry: Registry) -> Self
    where
        R: Runtime,
        T: Transport<Addr = SocketAddr> + Clone,
    {
        Self::with_config(
            rt,
            transport,
            registry,
            BalanceConfig::default(),
            MsgPack::default(),
        )
    }
}

impl<C: Codec + Clone + Send + Sync + 'static> ClusterClient<C> {
    /// As [`new`](ClusterClient::new), with `config` for every pool's balancer and `codec`.
    pub fn with_config<R, T>(
        rt: &R,
        transport: T,
        registry: Registry,
        config: BalanceConfig,
        codec: C,
    ) -> Self
    where
        R: Runtime,
        T: Transport<Addr = SocketAddr> + Clone,
    {
        let rt = rt.clone();
        let open = move |pool| {
            Client::balanced_with(&rt, transport.clone(), pool, config.clone(), codec.clone())
        };
        Self {
            registry,
            open: Arc::new(open),
            pools: Arc::default(),
        }
    }

    /// The balanced client over the workers passing `filter`, made on first use and kept: wrap
    /// it in a generated client (`FooClient::new(cluster.workers("gpu")?)`) for typed calls.
    ///
    /// # Errors
    ///
    /// [`FilterError`] if `filter` does not parse.
    pub fn workers(&self, filter: &str) -> Result<Client<C>, FilterError> {
        let filter: Filter = filter.parse()?;
        let key = filter.to_string();
        let mut pools = self.pools.lock();
        if let Some(client) = pools.get(&key) {
            return Ok(client.clone());
        }
        let client = (self.open)(self.registry.pool(filter));
        pools.insert(key, client.clone());
        Ok(client)
    }

    /// Calls `method` with `request` on a worker passing `filter`.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Filter`] for a filter that does not parse; [`ClusterError::Call`] if
    /// the call fails.
    pub async fn call_worker<Req, Resp>(
        &self,
        filter: &str,
        method: impl Into<MethodId>,
        request: &Req,
    ) -> Result<Resp, ClusterError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let client = self.workers(filter)?;
        Ok(client.call(method, request).await?)
    }

    /// Reports every answer a worker gives this client's calls (replies, the answers to the
    /// balancer's health pings) to `membership`, every [`REPORT_EVERY`]: each is a sign of
    /// life for the phi detector ([`Membership::heard_from`]), so a worker busy answering
    /// calls is not suspected for a heartbeat that came late. foca's probes still decide
    /// whether it is down. The reporting ends with the client or the member.
    pub fn report_answers<R: Runtime>(self, rt: &R, membership: &Membership) -> Self {
        let pools = Arc::downgrade(&self.pools);
        rt.spawn(report(rt.clone(), pools, membership.reporter()));
        self
    }

    /// The registry the pools come from.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// Reports the endpoints that read bytes since the last look (see
/// [`ClusterClient::report_answers`]).
async fn report<R: Runtime, C: Codec>(rt: R, pools: Weak<Pools<C>>, member: Reporter) {
    let mut read: HashMap<Arc<str>, u64> = HashMap::new();
    loop {
        rt.sleep_until(Instant::now() + REPORT_EVERY).await;
        let Some(pools) = pools.upgrade() else {
            return;
        };
        let clients: Vec<Client<C>> = pools.lock().values().cloned().collect();
        drop(pools);
        for balancer in clients.iter().filter_map(Client::balancer) {
            for endpoint in balancer.stats().endpoints {
                let bytes = endpoint.io.bytes_read;
                let before = read.insert(endpoint.address.clone(), bytes).unwrap_or(0);
                if bytes > before {
                    let Ok(rpc) = endpoint.address.parse() else {
                        continue;
                    };
                    if !member.heard_from(rpc) {
                        return;
                    }
                }
            }
        }
    }
}
