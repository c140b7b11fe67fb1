//! Discovery feeding a balanced client while calls run: a watched file, DNS from a real
//! server (Debian's `dnsmasq`, started here on a loopback port) with SRV records and with A
//! records, and a key prefix in a real etcd (Debian's `etcd-server`, started here). A test
//! whose server is not installed is reported ignored, and fails with
//! `FLUMEN_REQUIRE_EXTERNAL=1` (common/external.rs); `.ci/run` installs both.

mod common;
#[path = "common/external.rs"]
mod external;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use common::{eventually, IpEnv as Env};
use flumen::{
    balance::discovery::{Dns, DnsName, Etcd, FileWatch, Registry, MIN_LEASE_TTL},
    Client, Router, Server, ServerHandle, Status,
};

/// A server answering `who` with its `index`, on `addr`.
async fn serve<E: Env>(env: &E, index: u32, addr: SocketAddr) -> ServerHandle<SocketAddr> {
    let router = Router::new().route("who", move |()| async move { Ok::<_, Status>(index) });
    Server::new(router)
        .bind(&env.rt(), &env.transport(), &addr)
        .await
        .unwrap()
}

/// Calls until server `index` answers (a bounded number of calls); panics if it never does.
async fn reaches(client: &Client, index: u32) {
    for _ in 0..20_000 {
        if client.call::<_, u32>("who", &()).await.unwrap() == index {
            return;
        }
    }
    panic!("server {index} never answered");
}

/// Makes 200 calls; whether any reached server `index`.
async fn any_reaches(client: &Client, index: u32) -> bool {
    let mut reached = false;
    for _ in 0..200 {
        reached |= client.call::<_, u32>("who", &()).await.unwrap() == index;
    }
    reached
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flumen-discovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Replaces the endpoint file whole, as `FileWatch` asks: a file rewritten in place can be
/// read empty (an empty set) between its truncation and its write.
fn replace(path: &std::path::Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// Endpoints from a file that is rewritten while calls run.
async fn a_watched_file_feeds_the_balancer<E: Env>(env: E, name: &str) {
    let (a, b) = (
        serve(&env, 0, common::loopback()).await,
        serve(&env, 1, common::loopback()).await,
    );
    let path = scratch(name);
    replace(&path, &format!("# the fleet\n{}\n", a.local_addr()));
    let watch = FileWatch::new(&env.rt(), &path).interval(Duration::from_millis(20));
    let client = Client::balanced(&env.rt(), env.transport(), watch);
    assert!(!any_reaches(&client, 1).await);
    replace(
        &path,
        &format!("{}\n{} 3\n", a.local_addr(), b.local_addr()),
    );
    reaches(&client, 1).await;
    replace(&path, &format!("{}\n", b.local_addr()));
    eventually(&env, "server 0 out of the set", || {
        client.balancer().unwrap().stats().endpoints.len() == 1
    })
    .await;
    assert!(!any_reaches(&client, 0).await);
    let _ = std::fs::remove_file(&path);
}

/// A dnsmasq serving the records in its arguments on a loopback port; killed on drop.
struct Dnsmasq {
    child: Child,
    port: u16,
}

impl Dnsmasq {
    /// Starts dnsmasq with `records` (its `--srv-host=`/`--host-record=` options) and
    /// `hosts` as an extra hosts file (re-read on SIGHUP). The harness ran the test only if
    /// dnsmasq is installed.
    fn start(port: u16, records: &[String], hosts: &Path) -> Self {
        let binary = external::dnsmasq_binary().expect("dnsmasq (the harness checked for it)");
        let child = Command::new(binary)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--user=root",
                "--pid-file=",
                "--local-ttl=0",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .args(records)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dnsmasq");
        let dns = Self { child, port };
        dns.wait_until_bound();
        dns
    }

    /// Waits until dnsmasq's socket is bound (Linux's socket table lists it), so that the
    /// resolver's first questions are not refused by a server still starting: what is tested
    /// is the balancer following the records, not a race with the server's start.
    fn wait_until_bound(&self) {
        let local = format!("0100007F:{:04X} ", self.port);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string("/proc/net/udp").is_ok_and(|table| table.contains(&local)) {
            assert!(std::time::Instant::now() < deadline, "dnsmasq did not bind");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Re-reads the hosts file.
    fn reload(&self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free UDP port on loopback for the DNS server.
fn free_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

/// SRV records name the endpoints (with their ports); a restarted DNS server with other
/// records moves the calls.
async fn dns_srv_records_feed_the_balancer<E: Env>(env: E, name: &str) {
    let (a, b) = (
        serve(&env, 0, common::loopback()).await,
        serve(&env, 1, common::loopback()).await,
    );
    let hosts = scratch(&format!("{name}.hosts"));
    std::fs::write(&hosts, "127.0.0.1 node.flumen.test\n").unwrap();
    let srv = |port: u16| format!("--srv-host=_rpc._tcp.flumen.test,node.flumen.test,{port},0,1");
    let port = free_port();
    let both = [srv(a.local_addr().port()), srv(b.local_addr().port())];
    let dns = Dnsmasq::start(port, &both, &hosts);
    let source = Dns::new(DnsName::Srv("_rpc._tcp.flumen.test".into()))
        .server(dns.addr())
        .interval(Duration::from_millis(50));
    let client = Client::balanced(&env.rt(), env.transport(), source);
    reaches(&client, 0).await;
    reaches(&client, 1).await;
    // The service shrinks to one replica: the DNS server now publishes b alone.
    drop(dns);
    let _dns = Dnsmasq::start(port, &[srv(b.local_addr().port())], &hosts);
    eventually(&env, "the SRV change applied", || {
        client.balancer().unwrap().stats().endpoints.len() == 1
    })
    .await;
    assert!(!any_reaches(&client, 0).await);
    let _ = std::fs::remove_file(&hosts);
}

/// A records of one name, one per replica (replicas on 127.0.0.2 and 127.0.0.3, one port):
/// a replica added to the zone gets calls.
async fn dns_a_records_feed_the_balancer<E: Env>(env: E, name: &str) {
    // One port on both addresses: a port free on 127.0.0.2 may be taken on 127.0.0.3, so
    // look for one that is free on both (a bounded search).
    let mut pair = None;
    for _ in 0..50 {
        let a = serve(&env, 0, "127.0.0.2:0".parse().unwrap()).await;
        let port = a.local_addr().port();
        let b = Server::new(Router::new().route("who", |()| async { Ok::<_, Status>(1u32) }))
            .bind(
                &env.rt(),
                &env.transport(),
                &SocketAddr::from(([127, 0, 0, 3], port)),
            )
            .await;
        if let Ok(b) = b {
            pair = Some((a, b, port));
            break;
        }
    }
    let (_a, b, port) = pair.expect("no port free on both 127.0.0.2 and 127.0.0.3 in 50 tries");
    let hosts = scratch(&format!("{name}.hosts"));
    std::fs::write(&hosts, "127.0.0.2 svc.flumen.test\n").unwrap();
    let dns = Dnsmasq::start(free_port(), &[], &hosts);
    let source = Dns::new(DnsName::Host {
        host: "svc.flumen.test".into(),
        port,
    })
    .server(dns.addr())
    .interval(Duration::from_millis(50));
    let client = Client::balanced(&env.rt(), env.transport(), source);
    assert!(!any_reaches(&client, 1).await);
    std::fs::write(
        &hosts,
        "127.0.0.2 svc.flumen.test\n127.0.0.3 svc.flumen.test\n",
    )
    .unwrap();
    dns.reload();
    reaches(&client, 1).await;
    drop(b);
    let _ = std::fs::remove_file(&hosts);
}

/// An etcd server (Debian's `etcd-server`) on loopback ports with its data in a scratch
/// directory; killed and removed on drop.
struct EtcdServer {
    child: Child,
    client: SocketAddr,
    dir: PathBuf,
}

impl EtcdServer {
    /// Starts etcd and waits until it answers (the harness ran the test only if etcd is
    /// installed).
    fn start(name: &str) -> Self {
        let dir = scratch(&format!("{name}.etcd"));
        let _ = std::fs::remove_dir_all(&dir);
        let (client, peer) = (free_tcp_port(), free_tcp_port());
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let child = Command::new("etcd")
            .arg("--name=flumen")
            .arg(format!("--data-dir={}", dir.display()))
            .arg(format!("--listen-client-urls={}", url(client)))
            .arg(format!("--advertise-client-urls={}", url(client)))
            .arg(format!("--listen-peer-urls={}", url(peer)))
            .arg(format!("--initial-advertise-peer-urls={}", url(peer)))
            .arg(format!("--initial-cluster=flumen={}", url(peer)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting etcd");
        let server = Self {
            child,
            client: SocketAddr::from(([127, 0, 0, 1], client)),
            dir,
        };
        let registry = Registry::new(server.client);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while registry.values("/").is_err() {
            assert!(std::time::Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_tcp_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Servers register under a prefix in a real etcd; the client follows the registry while
/// calls run, through etcd's watch: it reads the prefix again only an hour after a failure,
/// so no change could reach it by a second read.
async fn an_etcd_prefix_feeds_the_balancer<E: Env>(env: E, name: &str) {
    let etcd = EtcdServer::start(name);
    let (a, b) = (
        serve(&env, 0, common::loopback()).await,
        serve(&env, 1, common::loopback()).await,
    );
    let registry = Registry::new(etcd.client);
    let key = |server: &ServerHandle<SocketAddr>| format!("/services/who/{}", server.local_addr());
    registry.put(&key(&a), &a.local_addr().to_string()).unwrap();
    // Another service's entry under a neighbouring prefix is not ours.
    registry.put("/services/whom/x", "127.0.0.1:1").unwrap();
    let source = Etcd::new(etcd.client, "/services/who/").interval(Duration::from_secs(3600));
    let client = Client::balanced(&env.rt(), env.transport(), source);
    assert!(!any_reaches(&client, 1).await);
    registry.put(&key(&b), &b.local_addr().to_string()).unwrap();
    reaches(&client, 1).await;
    registry.delete(&key(&a)).unwrap();
    eventually(&env, "server 0 deregistered", || {
        client.balancer().unwrap().stats().endpoints.len() == 1
    })
    .await;
    assert!(!any_reaches(&client, 0).await);
}

/// The prefix the lease test's servers register under.
const LEASED: &str = "/services/leased/";

/// A server registered under a lease by another process: SIGKILL leaves no chance to
/// deregister, so only the lease's expiry removes its entry. The process is killed on drop.
struct RegisteredChild {
    child: Child,
    addr: SocketAddr,
}

impl RegisteredChild {
    /// Starts this test binary as the child ([`registered_child`]), and waits until it has
    /// registered.
    fn spawn(etcd: SocketAddr, ttl: Duration) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD, format!("{etcd} {}", ttl.as_secs()))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the child did not register: {line:?}")
        });
        Self { child, addr }
    }
}

impl Drop for RegisteredChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment variable that makes this binary the registered child: `ETCD_ADDR TTL_SECS`.
const CHILD: &str = "FLUMEN_ETCD_CHILD";

/// The child of [`RegisteredChild`], when [`CHILD`] is set: serves `who` (index 9) on
/// loopback, registers it under [`LEASED`] with a lease, prints its address and waits to be
/// killed.
fn registered_child() -> Option<ExitCode> {
    let spec = std::env::var(CHILD).ok()?;
    let (etcd, ttl) = spec.split_once(' ').expect("ETCD_ADDR TTL_SECS");
    let etcd: SocketAddr = etcd.parse().unwrap();
    let ttl = Duration::from_secs(ttl.parse().unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let rt = flumen::rt::TokioRuntime::current();
        let router = Router::new().route("who", |()| async { Ok::<_, Status>(9u32) });
        let server = Server::new(router)
            .bind(&rt, &flumen::tcp::TokioTcp::default(), &common::loopback())
            .await
            .unwrap();
        let addr = server.local_addr().to_string();
        let _registration = Registry::new(etcd)
            .register(&format!("{LEASED}{addr}"), &addr, ttl)
            .unwrap();
        println!("{addr}");
        std::future::pending::<()>().await;
    });
    Some(ExitCode::SUCCESS)
}

/// A registered server's entry lives while its lease is renewed (past its time to live);
/// killed with SIGKILL, the server cannot deregister, and its entry, then its traffic, go
/// within the lease's time to live. A registration dropped deletes its entry at once.
async fn a_killed_server_leaves_the_registry_within_its_ttl<E: Env>(env: E, name: &str) {
    const TTL: Duration = MIN_LEASE_TTL;
    let etcd = EtcdServer::start(name);
    let registry = Registry::new(etcd.client);
    let a = serve(&env, 0, common::loopback()).await;
    let key = format!("{LEASED}{}", a.local_addr());
    let registration = registry
        .register(&key, &a.local_addr().to_string(), TTL)
        .unwrap();
    let child = RegisteredChild::spawn(etcd.client, TTL);
    let source = Etcd::new(etcd.client, LEASED).interval(Duration::from_secs(3600));
    let client = Client::balanced(&env.rt(), env.transport(), source);
    reaches(&client, 9).await;

    // Four renewals, a third of the time to live apart: the lease has outlived its TTL.
    eventually(&env, "the lease renewed four times", || {
        registration.renewals() >= 4
    })
    .await;
    assert_eq!(registry.values(LEASED).unwrap().len(), 2);
    // A lease lost (revoked here, as an expiry while etcd was away would) is replaced, and
    // the entry put back under the new one.
    let lost = registration.lease();
    registry.revoke(lost).unwrap();
    eventually(&env, "the entry back under a new lease", || {
        registration.lease() != lost && registry.values(LEASED).unwrap().len() == 2
    })
    .await;

    let killed = Instant::now();
    let child_addr = child.addr;
    drop(child);
    eventually(&env, "the killed server's entry gone", || {
        registry.values(LEASED).unwrap() == [a.local_addr().to_string()]
    })
    .await;
    let gone = killed.elapsed();
    assert!(
        gone <= TTL + Duration::from_secs(2),
        "{child_addr}'s entry went {gone:?} after the kill; its lease lives {TTL:?}"
    );
    eventually(&env, "the balancer followed the watch", || {
        client.balancer().unwrap().stats().endpoints.len() == 1
    })
    .await;
    assert!(!any_reaches(&client, 9).await);

    drop(registration);
    assert!(
        registry.values(LEASED).unwrap().is_empty(),
        "a dropped registration revokes its lease"
    );
}

/// Each test once on tokio and once on smol (TCP); its name names its scratch files. Tests
/// run under common/external.rs's harness, each with what it needs.
macro_rules! on_both_runtimes {
    ($($name:ident: $needs:ident),* $(,)?) => {
        mod tokio_tcp {
            $(pub(super) fn $name() {
                let scratch = concat!("tokio-", stringify!($name));
                crate::common::run_tokio(|env: crate::common::TokioEnv| super::$name(env, scratch))
            })*
        }
        mod smol_tcp {
            $(pub(super) fn $name() {
                let scratch = concat!("smol-", stringify!($name));
                crate::common::run_smol(|env: crate::common::SmolEnv| super::$name(env, scratch))
            })*
        }
        fn main() -> std::process::ExitCode {
            if let Some(code) = registered_child() {
                return code;
            }
            let tests: Vec<(&str, external::Needs, fn())> = vec![
                $(
                    (
                        concat!("tokio_tcp::", stringify!($name)),
                        external::Needs::$needs,
                        tokio_tcp::$name,
                    ),
                    (
                        concat!("smol_tcp::", stringify!($name)),
                        external::Needs::$needs,
                        smol_tcp::$name,
                    ),
                )*
            ];
            external::run(tests)
        }
    };
}

on_both_runtimes!(
    a_watched_file_feeds_the_balancer: Nothing,
    dns_srv_records_feed_the_balancer: Dnsmasq,
    dns_a_records_feed_the_balancer: Dnsmasq,
    an_etcd_prefix_feeds_the_balancer: Etcd,
    a_killed_server_leaves_the_registry_within_its_ttl: Etcd,
);
