//! A hand-out acceptor out of file descriptors (`flumen_tcp::Tcp::hand_out`): its accepts fail
//! (`EMFILE`), it backs off between tries instead of spinning, and once descriptors are free
//! again it hands out every connection that waited. A test binary of its own: it lowers the
//! process's descriptor limit, which would fail any test running beside it.
#![cfg(target_os = "linux")]

use std::{
    io::{self, Write},
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::Arc,
    time::{Duration, Instant},
};

use flumen::{per_core::Cores, stream::Listener, tcp::TokioTcp};
use futures_lite::FutureExt;
use parking_lot::Mutex;
use rustix::{
    net::{AddressFamily, SocketType},
    process::{getrlimit, setrlimit, Resource, Rlimit},
};

/// The log, noting when each line that says an accept failed was written.
#[derive(Clone, Default)]
struct Failures(Arc<Mutex<Vec<Instant>>>);

impl Failures {
    fn count(&self) -> usize {
        self.0.lock().len()
    }

    /// When the `n`th failure (from 0) was logged.
    fn at(&self, n: usize) -> Instant {
        self.0.lock()[n]
    }
}

impl Write for Failures {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let now = Instant::now();
        let text = String::from_utf8_lossy(buf);
        let failed = text.matches("accept failed").count();
        self.0.lock().extend(std::iter::repeat_n(now, failed));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Waits until `done`, at most 10 s.
fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn an_acceptor_out_of_descriptors_backs_off_and_goes_on() {
    const PEERS: usize = 4;
    let failures = Failures::default();
    let log = failures.clone();
    tracing_subscriber::fmt()
        .with_writer(move || log.clone())
        .with_max_level(tracing::Level::WARN)
        .init();
    let cores = Cores::tokio(2).unwrap();
    let listener = flumen::tcp::std_listener(&SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut shares = TokioTcp::default()
        .hand_out(listener, cores.runtimes())
        .unwrap();
    // The peers' sockets first: connecting takes no descriptor of its own.
    let peers: Vec<_> = (0..PEERS)
        .map(|_| rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap())
        .collect();
    // No descriptor left below the limit: the lowest free one is the limit.
    let limit = getrlimit(Resource::Nofile);
    let lowest_free = std::fs::File::open("/dev/null").unwrap().as_raw_fd() as u64;
    let tight = Rlimit {
        current: Some(lowest_free),
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, tight).unwrap();
    for peer in &peers {
        rustix::net::connect(peer, &addr).unwrap();
    }
    // Accepts fail; a spinning acceptor would fail thousands of times a millisecond.
    wait_for("the acceptor stopped trying", || failures.count() >= 5);
    // Timed where they were logged: the poll above may see them late, and several at once.
    let four_more = failures.at(4) - failures.at(0);
    setrlimit(Resource::Nofile, limit).unwrap();
    assert!(
        four_more >= Duration::from_millis(30),
        "4 failed accepts in {four_more:?}: no back-off"
    );
    // Descriptors again: every waiting connection is handed out, each runtime in turn.
    for turn in (0..shares.len()).cycle().take(PEERS) {
        let accepted = async { Some(shares[turn].accept().await.map(drop)) }.or(async {
            smol::Timer::after(Duration::from_secs(10)).await;
            None
        });
        let accepted = futures_lite::future::block_on(accepted);
        assert!(matches!(accepted, Some(Ok(()))), "{accepted:?}");
    }
    drop(peers);
}
