//! Discovery: where a balanced client learns its endpoints, with live updates.
//!
//! A [`Discover`] source reports whole endpoint sets; the balancer diffs each against what it
//! has, starting new endpoints and draining removed ones while calls run. Sources here:
//! [`Static`] (a fixed list), [`channel`] (a set the application updates), [`FileWatch`] (a
//! file of addresses, re-read when it changes), with the `dns` feature `Dns` (A/AAAA or SRV
//! records, refreshed), and with the `etcd` feature `Etcd` (the values under a key prefix).

use std::{
    fmt,
    future::Future,
    path::PathBuf,
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use event_listener::Event;
use flumen_stream::Runtime;
use parking_lot::Mutex;

#[cfg(feature = "dns")]
mod dns;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "dns")]
pub use dns::{Dns, DnsName, DEFAULT_DNS_INTERVAL};
#[cfg(feature = "etcd")]
pub use etcd::{
    Etcd, LeaseId, Registration, Registry, DEFAULT_ETCD_INTERVAL, ETCD_REQUEST_TIMEOUT,
    ETCD_WATCH_CHECK, ETCD_WATCH_TICK, MAX_ETCD_RESPONSE, MIN_LEASE_TTL,
};

/// The weight of an endpoint whose source gives none.
pub const DEFAULT_WEIGHT: u32 = 1;

/// One endpoint a source found.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target<A> {
    /// Where to connect.
    pub address: A,
    /// Its share of the calls under [`Strategy::Weighted`](crate::Strategy::Weighted).
    pub weight: u32,
}

impl<A> Target<A> {
    /// An endpoint at `address` with the default weight.
    pub fn new(address: A) -> Self {
        Self {
            address,
            weight: DEFAULT_WEIGHT,
        }
    }

    /// The same endpoint with `weight` (at least 1).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight.max(1);
        self
    }
}

/// A source of endpoints.
pub trait Discover<A>: Send + 'static {
    /// Waits for the next endpoint set (the first one at once) and returns all of it; `None`
    /// when the source has nothing more to say (the balancer keeps the last set).
    fn next(&mut self) -> impl Future<Output = Option<Vec<Target<A>>>> + Send;
}

/// A fixed list of endpoints.
#[derive(Clone, Debug)]
pub struct Static<A>(Option<Vec<Target<A>>>);

impl<A> Static<A> {
    /// The endpoints at `addresses`, each with the default weight.
    pub fn new(addresses: impl IntoIterator<Item = A>) -> Self {
        Self::targets(addresses.into_iter().map(Target::new))
    }

    /// The endpoints `targets` (addresses with weights).
    pub fn targets(targets: impl IntoIterator<Item = Target<A>>) -> Self {
        Self(Some(targets.into_iter().collect()))
    }
}

impl<A: Send + 'static> Discover<A> for Static<A> {
    async fn next(&mut self) -> Option<Vec<Target<A>>> {
        self.0.take()
    }
}

/// A set of endpoints the application changes with an [`Updater`]: the source for a registry
/// of one's own, and for tests.
pub fn channel<A: Clone + Send + 'static>(initial: Vec<Target<A>>) -> (Updater<A>, Watch<A>) {
    let state = Arc::new(Slot {
        value: Mutex::new((1, initial, false)),
        changed: Event::new(),
    });
    (
        Updater {
            state: state.clone(),
        },
        Watch { state, seen: 0 },
    )
}

struct Slot<A> {
    /// Version, endpoints, whether the updater is gone.
    value: Mutex<(u64, Vec<Target<A>>, bool)>,
    changed: Event,
}

/// Changes the set a [`Watch`] reports.
pub struct Updater<A> {
    state: Arc<Slot<A>>,
}

impl<A> Updater<A> {
    /// Replaces the endpoint set.
    pub fn set(&self, targets: Vec<Target<A>>) {
        {
            let mut value = self.state.value.lock();
            value.0 += 1;
            value.1 = targets;
        }
        self.state.changed.notify(usize::MAX);
    }

    /// Changes the set in place (add one, remove one).
    pub fn update(&self, change: impl FnOnce(&mut Vec<Target<A>>)) {
        {
            let mut value = self.state.value.lock();
            value.0 += 1;
            change(&mut value.1);
        }
        self.state.changed.notify(usize::MAX);
    }
}

impl<A> Drop for Updater<A> {
    fn drop(&mut self) {
        self.state.value.lock().2 = true;
        self.state.changed.notify(usize::MAX);
    }
}

impl<A> fmt::Debug for Updater<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Updater")
    }
}

/// The receiving side of [`channel`].
pub struct Watch<A> {
    state: Arc<Slot<A>>,
    seen: u64,
}

impl<A> fmt::Debug for Watch<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch").field("seen", &self.seen).finish()
    }
}

impl<A: Clone + Send + 'static> Discover<A> for Watch<A> {
    async fn next(&mut self) -> Option<Vec<Target<A>>> {
        loop {
            let listener = self.state.changed.listen();
            {
                let value = self.state.value.lock();
                if value.0 != self.seen {
                    self.seen = value.0;
                    return Some(value.1.clone());
                }
                if value.2 {
                    return None;
                }
            }
            listener.await;
        }
    }
}

/// Endpoints from a file, one per line (`address` or `address weight`; `#` starts a comment),
/// re-read when it changes. The file a deployment tool rewrites, or a mounted config map.
///
/// Replace the file whole (write another, then rename it over this one): a file rewritten in
/// place can be read half-written, and an empty file is an empty set.
#[derive(Debug)]
pub struct FileWatch<R> {
    rt: R,
    path: PathBuf,
    interval: Duration,
    last: Option<Seen>,
}

/// What a [`FileWatch`] last read.
#[derive(Debug)]
struct Seen {
    key: FileKey,
    bytes: Vec<u8>,
    /// Whether the file was older than [`MTIME_GRAIN`] when read: only then does an unchanged
    /// key mean unchanged contents. A file rewritten within its modification time's tick, to
    /// the same length, keeps its key.
    settled: bool,
}

/// What tells one version of a file from another without reading it.
#[derive(Debug, PartialEq, Eq)]
struct FileKey {
    modified: Option<SystemTime>,
    len: u64,
    /// The inode where there is one: a file renamed over the path is another file.
    #[cfg(unix)]
    ino: u64,
}

impl FileKey {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            #[cfg(unix)]
            ino: std::os::unix::fs::MetadataExt::ino(meta),
        }
    }
}

/// The coarsest modification-time granularity of a common file system (FAT's 2 s; ext4 and
/// tmpfs tick with the kernel's coarse clock, HFS+ by the second): a file modified less than
/// this before it is read may change again without its key changing, so it is read again.
const MTIME_GRAIN: Duration = Duration::from_secs(2);

/// Default [`FileWatch`] polling interval.
pub const DEFAULT_FILE_INTERVAL: Duration = Duration::from_secs(1);

/// The largest endpoint file read (a bigger one is an error, reported and skipped).
pub const MAX_FILE_LEN: u64 = 1 << 20;

impl<R: Runtime> FileWatch<R> {
    /// Watches `path`, looking for changes every [`DEFAULT_FILE_INTERVAL`] on `rt`.
    pub fn new(rt: &R, path: impl Into<PathBuf>) -> Self {
        Self {
            rt: rt.clone(),
            path: path.into(),
            interval: DEFAULT_FILE_INTERVAL,
            last: None,
        }
    }

    /// Looks for changes every `interval` instead.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }
}

impl<R> FileWatch<R> {
    /// The file's contents if they changed since the last read (a missing or unreadable file
    /// keeps the last set). The file is read only when its key changed, or when it was
    /// modified so recently at the last read that its key may hide a change.
    fn read_changed(&mut self) -> Option<Vec<u8>> {
        let meta = std::fs::metadata(&self.path).ok()?;
        if meta.len() > MAX_FILE_LEN {
            return None;
        }
        let key = FileKey::of(&meta);
        if self
            .last
            .as_ref()
            .is_some_and(|seen| seen.settled && seen.key == key)
        {
            return None;
        }
        // Taken before the read: a change after it leaves the file younger than this says.
        let settled = key.modified.is_some_and(|modified| {
            SystemTime::now()
                .duration_since(modified)
                .is_ok_and(|age| age >= MTIME_GRAIN)
        });
        let bytes = std::fs::read(&self.path).ok()?;
        let changed = self.last.as_ref().is_none_or(|seen| seen.bytes != bytes);
        let seen = Seen {
            key,
            bytes,
            settled,
        };
        let changed = changed.then(|| seen.bytes.clone());
        self.last = Some(seen);
        changed
    }
}

impl<R: Runtime, A: FromStr + Send + 'static> Discover<A> for FileWatch<R> {
    async fn next(&mut self) -> Option<Vec<Target<A>>> {
        loop {
            if let Some(bytes) = self.read_changed() {
                return Some(parse_targets(&String::from_utf8_lossy(&bytes)));
            }
            self.rt.sleep_until(Instant::now() + self.interval).await;
        }
    }
}

/// Parses an endpoint file: `address [weight]` per line, `#` comments; lines that do not
/// parse are skipped.
pub fn parse_targets<A: FromStr>(text: &str) -> Vec<Target<A>> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or_default();
            let mut words = line.split_whitespace();
            let address = words.next()?.parse().ok()?;
            let weight = match words.next() {
                Some(weight) => weight.parse().ok()?,
                None => DEFAULT_WEIGHT,
            };
            Some(Target::new(address).weight(weight))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[test]
    fn endpoint_files_parse_addresses_weights_and_comments() {
        let text = "# fleet\n10.0.0.1:7000\n10.0.0.2:7000 3 # big one\nnot-an-address\n\n[::1]:7001 0\n10.0.0.3:7000 x\n";
        let targets: Vec<Target<SocketAddr>> = parse_targets(text);
        let got: Vec<(String, u32)> = targets
            .iter()
            .map(|t| (t.address.to_string(), t.weight))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1:7000".to_owned(), 1),
                ("10.0.0.2:7000".to_owned(), 3),
                ("[::1]:7001".to_owned(), 1),
            ]
        );
    }

    #[test]
    fn a_watch_reports_each_new_set_and_ends_with_its_updater() {
        let (updater, mut watch) = channel(vec![Target::new(1u32)]);
        futures_lite::future::block_on(async {
            assert_eq!(watch.next().await, Some(vec![Target::new(1)]));
            updater.update(|set| set.push(Target::new(2)));
            assert_eq!(
                watch.next().await,
                Some(vec![Target::new(1), Target::new(2)])
            );
            drop(updater);
            assert_eq!(watch.next().await, None);
        });
    }

    /// A file watched at `path` (its runtime unused: `read_changed` alone is driven).
    fn watch(path: &std::path::Path) -> FileWatch<()> {
        FileWatch {
            rt: (),
            path: path.to_owned(),
            interval: DEFAULT_FILE_INTERVAL,
            last: None,
        }
    }

    /// Rewrites `path` in place with `text`, its modification time set to `at`.
    fn rewrite(path: &std::path::Path, text: &str, at: SystemTime) {
        std::fs::write(path, text).unwrap();
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(at).unwrap();
    }

    #[test]
    fn a_file_rewritten_within_one_mtime_tick_to_the_same_length_is_read_again() {
        let path = std::env::temp_dir().join(format!("flumen-watch-{}", std::process::id()));
        let mut watch = watch(&path);
        // Modified just now: the same key may still hide a change.
        let now = SystemTime::now();
        rewrite(&path, "10.0.0.1:7000\n", now);
        assert_eq!(watch.read_changed().unwrap(), b"10.0.0.1:7000\n");
        assert_eq!(watch.read_changed(), None, "unchanged contents reported");
        rewrite(&path, "10.0.0.2:7000\n", now);
        assert_eq!(watch.read_changed().unwrap(), b"10.0.0.2:7000\n");
        // Modified long ago: an unchanged key means unchanged contents, and the file is not
        // read (so a same-length rewrite dated back is not seen; nothing does that).
        let then = now - Duration::from_secs(60);
        rewrite(&path, "10.0.0.3:7000\n", then);
        assert_eq!(watch.read_changed().unwrap(), b"10.0.0.3:7000\n");
        rewrite(&path, "10.0.0.4:7000\n", then);
        assert_eq!(watch.read_changed(), None, "a settled file was read again");
        // Any change of key is read: a longer file dated back still.
        rewrite(&path, "10.0.0.5:70000\n", then);
        assert_eq!(watch.read_changed().unwrap(), b"10.0.0.5:70000\n");
        let _ = std::fs::remove_file(&path);
    }
}
