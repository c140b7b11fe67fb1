//! DNS discovery (feature `dns`): A/AAAA records of a host name, or SRV records of a service,
//! as Kubernetes headless services publish them, refreshed on an interval.
//!
//! hickory's resolver runs on tokio; so that a client on any runtime can use it, each [`Dns`]
//! source resolves on a thread of its own with a small current-thread tokio runtime, and hands
//! each changed set over through a [`channel`](super::channel).

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use hickory_resolver::{
    config::{NameServerConfig, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
    proto::rr::RData,
    Resolver,
};

use super::{channel, Discover, Target, Updater, Watch};

/// Default [`Dns::interval`]: how often the records are resolved again.
pub const DEFAULT_DNS_INTERVAL: Duration = Duration::from_secs(5);

/// What to resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsName {
    /// The A and AAAA records of `host`, each address with `port`.
    Host {
        /// The name (`api.default.svc.cluster.local`).
        host: String,
        /// The port the endpoints listen on.
        port: u16,
    },
    /// The SRV records of a service name (`_grpc._tcp.api.default.svc.cluster.local`): each
    /// target resolved to its addresses, with the record's port and weight. Only the records
    /// of the best (lowest) priority are used.
    Srv(String),
}

/// Endpoints from DNS, re-resolved every [`interval`](Self::interval). A failed resolution
/// keeps the last set; a name with no records gives an empty set.
#[derive(Debug)]
pub struct Dns {
    name: DnsName,
    server: Option<SocketAddr>,
    interval: Duration,
    watch: Option<(Watch<SocketAddr>, Arc<AtomicBool>)>,
}

impl Dns {
    /// Resolves `name` with the system's resolver configuration (`/etc/resolv.conf`).
    pub fn new(name: DnsName) -> Self {
        Self {
            name,
            server: None,
            interval: DEFAULT_DNS_INTERVAL,
            watch: None,
        }
    }

    /// Asks the DNS server at `server` (UDP, then TCP) instead of the system's.
    pub fn server(mut self, server: SocketAddr) -> Self {
        self.server = Some(server);
        self
    }

    /// Resolves again every `interval`. Default [`DEFAULT_DNS_INTERVAL`] (5 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    fn start(&mut self) -> &mut Watch<SocketAddr> {
        let (updater, mut watch) = channel(Vec::new());
        // Nothing to report before the first resolution: callers wait for it.
        watch.seen = 1;
        let stop = Arc::new(AtomicBool::new(false));
        let resolving = Resolving {
            name: self.name.clone(),
            server: self.server,
            interval: self.interval,
            updater,
            stop: stop.clone(),
        };
        // Without a thread the source ends at once (its updater dropped): the balancer keeps
        // its (empty) set and calls fail as not sent, which is the best that can be done.
        let _ = std::thread::Builder::new()
            .name("flumen-dns".into())
            .spawn(move || resolving.run());
        &mut self.watch.insert((watch, stop)).0
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        if let Some((_, stop)) = &self.watch {
            stop.store(true, Ordering::Release);
        }
    }
}

impl Discover<SocketAddr> for Dns {
    async fn next(&mut self) -> Option<Vec<Target<SocketAddr>>> {
        let watch = match &mut self.watch {
            Some((watch, _)) => watch,
            None => self.start(),
        };
        watch.next().await
    }
}

/// The resolving thread's state.
struct Resolving {
    name: DnsName,
    server: Option<SocketAddr>,
    interval: Duration,
    updater: Updater<SocketAddr>,
    stop: Arc<AtomicBool>,
}

impl Resolving {
    fn run(self) {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            let Some(resolver) = self.resolver() else {
                return;
            };
            let mut last = None;
            while !self.stop.load(Ordering::Acquire) {
                if let Some(mut set) = self.resolve(&resolver).await {
                    set.sort_by_key(|t| t.address);
                    if last.as_ref() != Some(&set) {
                        self.updater.set(set.clone());
                        last = Some(set);
                    }
                }
                tokio::time::sleep(self.interval).await;
            }
        });
    }

    fn resolver(&self) -> Option<Resolver<TokioRuntimeProvider>> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match self.server {
            Some(server) => {
                let mut config = NameServerConfig::udp_and_tcp(server.ip());
                for connection in &mut config.connections {
                    connection.port = server.port();
                }
                Resolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![config]),
                    provider,
                )
            }
            None => Resolver::builder(provider).ok()?,
        };
        // Every refresh asks the server: the interval is the cache.
        builder.options_mut().cache_size = 0;
        builder.build().ok()
    }

    /// The current set; `None` if resolution failed (the last set stays).
    async fn resolve(
        &self,
        resolver: &Resolver<TokioRuntimeProvider>,
    ) -> Option<Vec<Target<SocketAddr>>> {
        match &self.name {
            DnsName::Host { host, port } => {
                let ips = lookup_ips(resolver, host).await?;
                Some(
                    ips.into_iter()
                        .map(|ip| Target::new(SocketAddr::new(ip, *port)))
                        .collect(),
                )
            }
            DnsName::Srv(service) => {
                let lookup = match resolver.srv_lookup(service.as_str()).await {
                    Ok(lookup) => lookup,
                    Err(error) if error.is_no_records_found() => return Some(Vec::new()),
                    Err(_) => return None,
                };
                let records: Vec<_> = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::SRV(srv) => Some(srv.clone()),
                        _ => None,
                    })
                    .collect();
                let best = records.iter().map(|srv| srv.priority).min();
                let mut targets = Vec::new();
                for srv in records.iter().filter(|srv| Some(srv.priority) == best) {
                    let host = srv.target.to_utf8();
                    for ip in lookup_ips(resolver, &host).await? {
                        let target = Target::new(SocketAddr::new(ip, srv.port));
                        targets.push(target.weight(u32::from(srv.weight)));
                    }
                }
                Some(targets)
            }
        }
    }
}

/// The A and AAAA addresses of `host`: empty if it has none, `None` if the lookup failed.
async fn lookup_ips(resolver: &Resolver<TokioRuntimeProvider>, host: &str) -> Option<Vec<IpAddr>> {
    if let Ok(ip) = host.trim_end_matches('.').parse::<IpAddr>() {
        return Some(vec![ip]);
    }
    match resolver.lookup_ip(host).await {
        Ok(lookup) => Some(lookup.iter().collect()),
        Err(error) if error.is_no_records_found() => Some(Vec::new()),
        Err(_) => None,
    }
}
