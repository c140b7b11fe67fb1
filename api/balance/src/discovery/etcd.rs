//! etcd discovery (feature `etcd`): the endpoints are the values under a key prefix, as a
//! fleet's shared registry keeps them (`/services/api/10.0.0.7:7000` → `10.0.0.7:7000`).
//!
//! It speaks etcd's v3 JSON gateway over HTTP/1.0 from a thread of its own, so it works on any
//! runtime without a gRPC stack: one read of the prefix (`POST /v3/kv/range`), then etcd's
//! watch from that revision (`POST /v3/watch`, one JSON message a line), so that a change
//! arrives as etcd makes it instead of at the next poll; each changed set is handed over
//! through a [`channel`](super::channel). [`Registry`] writes entries: a server
//! [`register`](Registry::register)s under a lease it keeps alive, so that the entry of a
//! server that crashed goes when its lease expires.

use std::{
    collections::BTreeMap,
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    str::FromStr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex,
    },
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD, Engine};
use serde::Deserialize;

use super::{channel, parse_targets, Discover, Target, Watch};

/// Default [`Etcd::interval`]: how long to wait before reading the prefix again after etcd
/// failed or the watch broke.
pub const DEFAULT_ETCD_INTERVAL: Duration = Duration::from_secs(1);
/// How often a watching thread looks at whether its [`Etcd`] was dropped while no change
/// arrives (a read of the watch times out this often).
pub const ETCD_WATCH_TICK: Duration = Duration::from_millis(250);
/// How long a watch may stay silent before the prefix is read again: a check that etcd still
/// answers (a watch on a host that vanished would wait for ever) and a resync of the set.
pub const ETCD_WATCH_CHECK: Duration = Duration::from_secs(10);
/// The shortest lease [`Registry::register`] takes: etcd refuses shorter ones (its minimum
/// follows its election timeout).
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
/// How long one request to etcd may take.
pub const ETCD_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read from etcd (a bigger one is an error: the last set stays).
pub const MAX_ETCD_RESPONSE: usize = 4 << 20;

/// Endpoints from the values under a key prefix in etcd, read once and then followed by
/// etcd's watch. Each value is an address, optionally followed by a weight (`10.0.0.7:7000 2`).
/// When etcd cannot be reached or the watch breaks, the last set stays, and the prefix is
/// read again after [`interval`](Self::interval).
#[derive(Debug)]
pub struct Etcd<A> {
    server: SocketAddr,
    prefix: String,
    interval: Duration,
    watch: Option<(Watch<A>, Arc<AtomicBool>)>,
}

impl<A: FromStr + Clone + Eq + Send + 'static> Etcd<A> {
    /// Reads the keys under `prefix` from the etcd client URL at `server` (its
    /// `--listen-client-urls`, plain HTTP).
    pub fn new(server: SocketAddr, prefix: impl Into<String>) -> Self {
        Self {
            server,
            prefix: prefix.into(),
            interval: DEFAULT_ETCD_INTERVAL,
            watch: None,
        }
    }

    /// How long to wait before reading the prefix again after etcd failed or the watch
    /// broke. Default [`DEFAULT_ETCD_INTERVAL`] (1 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    fn start(&mut self) -> &mut Watch<A> {
        let (updater, mut watch) = channel(Vec::new());
        // Nothing to report before the first read: callers wait for it.
        watch.seen = 1;
        let stop = Arc::new(AtomicBool::new(false));
        let (client, prefix, interval, stopped) = (
            Registry::new(self.server),
            self.prefix.clone(),
            self.interval,
            stop.clone(),
        );
        let _ = std::thread::Builder::new()
            .name("flumen-etcd".into())
            .spawn(move || {
                let mut last: Option<Vec<Target<A>>> = None;
                let mut publish = |entries: &Entries| {
                    let values: Vec<&str> = entries.values().map(String::as_str).collect();
                    let set: Vec<Target<A>> = parse_targets(&values.join("\n"));
                    if last.as_ref() != Some(&set) {
                        updater.set(set.clone());
                        last = Some(set);
                    }
                };
                while !stopped.load(Ordering::Acquire) {
                    // Until the watch breaks: then the last set stays, and after a pause
                    // the prefix is read afresh.
                    let _ = client.follow(&prefix, &stopped, &mut publish);
                    let retry = std::time::Instant::now() + interval;
                    while !stopped.load(Ordering::Acquire) && std::time::Instant::now() < retry {
                        std::thread::sleep(ETCD_WATCH_TICK);
                    }
                }
            });
        &mut self.watch.insert((watch, stop)).0
    }
}

impl<A> Drop for Etcd<A> {
    fn drop(&mut self) {
        if let Some((_, stop)) = &self.watch {
            stop.store(true, Ordering::Release);
        }
    }
}

impl<A: FromStr + Clone + Eq + Send + 'static> Discover<A> for Etcd<A> {
    async fn next(&mut self) -> Option<Vec<Target<A>>> {
        let watch = match &mut self.watch {
            Some((watch, _)) => watch,
            None => self.start(),
        };
        watch.next().await
    }
}

/// Writes and reads registry entries in etcd: a server puts its address under the service's
/// prefix when it starts and deletes it when it stops. Blocking calls.
#[derive(Clone, Debug)]
pub struct Registry {
    server: SocketAddr,
}

#[derive(Deserialize)]
struct RangeResponse {
    header: Header,
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Deserialize)]
struct Header {
    /// etcd's 64-bit integers travel as JSON strings.
    #[serde(default)]
    revision: Number,
}

#[derive(Deserialize, Default)]
struct KeyValue {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

/// Entries under a prefix: each key and its value as text, in key order.
type Entries = BTreeMap<Vec<u8>, String>;

/// One message of a watch stream.
#[derive(Deserialize)]
struct WatchMessage {
    result: Option<WatchResult>,
}

#[derive(Deserialize)]
struct WatchResult {
    #[serde(default)]
    events: Vec<WatchEvent>,
    #[serde(default)]
    canceled: bool,
}

#[derive(Deserialize)]
struct WatchEvent {
    /// `"DELETE"`, or absent for a put.
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    kv: KeyValue,
}

#[derive(Deserialize)]
struct GrantResponse {
    #[serde(rename = "ID")]
    id: Number,
}

#[derive(Deserialize)]
struct KeepAliveResponse {
    result: Option<KeepAliveResult>,
}

#[derive(Deserialize)]
struct KeepAliveResult {
    /// Absent (zero) once the lease is gone.
    #[serde(default, rename = "TTL")]
    ttl: Number,
}

/// An integer etcd sends as a JSON string (64-bit values) or a number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Number(i64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Text(String),
            Int(i64),
        }
        match Either::deserialize(deserializer)? {
            Either::Int(n) => Ok(Self(n)),
            Either::Text(text) => text.parse().map(Self).map_err(serde::de::Error::custom),
        }
    }
}

/// An etcd lease: entries put under it go when it expires or is revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

impl Registry {
    /// The etcd client URL at `server` (plain HTTP).
    pub fn new(server: SocketAddr) -> Self {
        Self { server }
    }

    /// Puts `value` under `key`.
    ///
    /// # Errors
    ///
    /// If etcd cannot be reached or refuses the request.
    pub fn put(&self, key: &str, value: &str) -> io::Result<()> {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            STANDARD.encode(key),
            STANDARD.encode(value)
        );
        self.post("/v3/kv/put", &body).map(drop)
    }

    /// Deletes `key`.
    ///
    /// # Errors
    ///
    /// If etcd cannot be reached or refuses the request.
    pub fn delete(&self, key: &str) -> io::Result<()> {
        let body = format!(r#"{{"key":"{}"}}"#, STANDARD.encode(key));
        self.post("/v3/kv/deleterange", &body).map(drop)
    }

    /// Puts `value` under `key`, attached to `lease`: the entry goes when the lease does.
    ///
    /// # Errors
    ///
    /// If etcd cannot be reached or refuses the request (an expired lease included).
    pub fn put_leased(&self, key: &str, value: &str, lease: LeaseId) -> io::Result<()> {
        let body = format!(
            r#"{{"key":"{}","value":"{}","lease":"{}"}}"#,
            STANDARD.encode(key),
            STANDARD.encode(value),
            lease.0
        );
        self.post("/v3/kv/put", &body).map(drop)
    }

    /// Grants a lease of `ttl` (whole seconds, at least [`MIN_LEASE_TTL`]).
    ///
    /// # Errors
    ///
    /// If etcd cannot be reached, refuses the request, or answers what does not parse.
    pub fn grant(&self, ttl: Duration) -> io::Result<LeaseId> {
        let seconds = ttl.max(MIN_LEASE_TTL).as_secs();
        let answer = self.post("/v3/lease/grant", &format!(r#"{{"TTL":"{seconds}"}}"#))?;
        let grant: GrantResponse = serde_json::from_slice(&answer).map_err(io::Error::other)?;
        Ok(LeaseId(grant.id.0))
    }

    /// Renews `lease` for its whole time to live; `None` if etcd no longer has it (it
    /// expired: its entries are gone).
    ///
    /// # Errors
    ///
    /// If etcd cannot be reached, refuses the request, or answers what does not parse.
    pub fn keep_alive(&self, lease: LeaseId) -> io::Result<Option<Duration>> {
        let answer = self.post("/v3/lease/keepalive", &format!(r#"{{"ID":"{}"}}"#, lease.0))?;
        let alive: KeepAliveResponse = serde_json::from_slice(&answer).map_err(io::Error::other)?;
        let ttl = alive.result.map_or(0, |result| result.ttl.0);
        Ok((ttl > 0).then(|| Duration::from_secs(ttl.unsigned_abs())))
    }

    /// Revokes `lease`: its entries go at once.
    ///
    /// # Errors
    ///
    /// If etcd cannot be reached or refuses the request.
    pub fn revoke(&self, lease: LeaseId) -> io::Result<()> {
        self.post("/v3/lease/revoke", &format!(r#"{{"ID":"{}"}}"#, lease.0))
            .map(drop)
    }

    /// Registers `value` under `key` for as long as the returned [`Registration`] lives: the
    /// entry is put under a lease of `ttl` (at least [`MIN_LEASE_TTL`]) that a thread renews
    /// every third of it. Dropping the registration revokes the lease, so the entry goes at
    /// once; if the process dies instead, etcd lets the lease expire and the entry goes within
    /// `ttl`. If the lease is lost anyway (etcd unreachable for longer than `ttl`), the thread
    /// registers again under a new one as soon as etcd answers.
    ///
    /// # Errors
    ///
    /// If the first grant or put fails.
    pub fn register(&self, key: &str, value: &str, ttl: Duration) -> io::Result<Registration> {
        let ttl = ttl.max(MIN_LEASE_TTL);
        let lease = self.grant(ttl)?;
        self.put_leased(key, value, lease)?;
        let shared = Arc::new(Lease {
            registry: self.clone(),
            key: key.to_owned(),
            value: value.to_owned(),
            ttl,
            state: Mutex::new(LeaseState {
                lease,
                renewals: 0,
                stopped: false,
            }),
            stop: Condvar::new(),
        });
        let renewing = shared.clone();
        let thread = std::thread::Builder::new()
            .name("flumen-etcd-lease".into())
            .spawn(move || renewing.keep())?;
        Ok(Registration {
            shared,
            thread: Some(thread),
        })
    }

    /// The values under `prefix`, in key order.
    ///
    /// # Errors
    ///
    /// If etcd cannot be reached, refuses the request, or answers what does not parse.
    pub fn values(&self, prefix: &str) -> io::Result<Vec<String>> {
        let (entries, _) = self.range(prefix)?;
        Ok(entries.into_values().collect())
    }

    /// The entries under `prefix` by key, and the revision they were read at.
    fn range(&self, prefix: &str) -> io::Result<(Entries, i64)> {
        let body = format!(
            r#"{{"key":"{}","range_end":"{}"}}"#,
            STANDARD.encode(prefix),
            STANDARD.encode(prefix_end(prefix.as_bytes()))
        );
        let answer = self.post("/v3/kv/range", &body)?;
        let range: RangeResponse = serde_json::from_slice(&answer).map_err(io::Error::other)?;
        let entries = range
            .kvs
            .into_iter()
            .map(decode_entry)
            .collect::<io::Result<_>>()?;
        Ok((entries, range.header.revision.0))
    }

    /// Reads the entries under `prefix`, then follows etcd's watch from that revision, calling
    /// `publish` with the whole set after the read and after each change, until the watch
    /// breaks (an error) or `stop` is set (`Ok`).
    fn follow(
        &self,
        prefix: &str,
        stop: &AtomicBool,
        publish: &mut dyn FnMut(&Entries),
    ) -> io::Result<()> {
        let (mut entries, revision) = self.range(prefix)?;
        publish(&entries);
        let body = format!(
            r#"{{"create_request":{{"key":"{}","range_end":"{}","start_revision":"{}"}}}}"#,
            STANDARD.encode(prefix),
            STANDARD.encode(prefix_end(prefix.as_bytes())),
            revision + 1
        );
        let mut stream = self.open("/v3/watch", &body, ETCD_WATCH_TICK)?;
        let mut buffer = Vec::new();
        let mut head_read = false;
        let mut chunk = [0u8; 8192];
        let mut heard = std::time::Instant::now();
        while !stop.load(Ordering::Acquire) {
            let n = match stream.read(&mut chunk) {
                Ok(0) => return Err(io::Error::other("etcd ended the watch")),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if heard.elapsed() >= ETCD_WATCH_CHECK {
                        // Silent a while: is etcd still there? The set is resynced too.
                        let (fresh, _) = self.range(prefix)?;
                        if fresh != entries {
                            entries = fresh;
                            publish(&entries);
                        }
                        heard = std::time::Instant::now();
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            heard = std::time::Instant::now();
            buffer.extend_from_slice(&chunk[..n]);
            if buffer.len() > MAX_ETCD_RESPONSE {
                return Err(io::Error::other("etcd watch message too large"));
            }
            if !head_read {
                let Some(body) = body_start(&buffer)? else {
                    continue;
                };
                buffer.drain(..body);
                head_read = true;
            }
            // One JSON message a line.
            while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let message: WatchMessage =
                    serde_json::from_slice(&line).map_err(io::Error::other)?;
                let Some(result) = message.result else {
                    return Err(io::Error::other("etcd watch error"));
                };
                if result.canceled {
                    return Err(io::Error::other("etcd canceled the watch"));
                }
                if result.events.is_empty() {
                    continue;
                }
                for event in result.events {
                    let key = STANDARD.decode(&event.kv.key).map_err(io::Error::other)?;
                    if event.kind.as_deref() == Some("DELETE") {
                        entries.remove(&key);
                    } else {
                        let (key, value) = decode_entry(event.kv)?;
                        entries.insert(key, value);
                    }
                }
                publish(&entries);
            }
        }
        Ok(())
    }

    /// Sends one request; the stream to read its answer from, with `read_timeout`.
    fn open(&self, path: &str, body: &str, read_timeout: Duration) -> io::Result<TcpStream> {
        let mut stream = TcpStream::connect_timeout(&self.server, ETCD_REQUEST_TIMEOUT)?;
        stream.set_read_timeout(Some(read_timeout))?;
        stream.set_write_timeout(Some(ETCD_REQUEST_TIMEOUT))?;
        // HTTP/1.0: the answer has a length or ends with the connection, never chunked.
        let request = format!(
            "POST {path} HTTP/1.0\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.server,
            body.len()
        );
        stream.write_all(request.as_bytes())?;
        Ok(stream)
    }

    /// One request; the answer's body if the status is 200.
    fn post(&self, path: &str, body: &str) -> io::Result<Vec<u8>> {
        let stream = self.open(path, body, ETCD_REQUEST_TIMEOUT)?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ETCD_RESPONSE as u64 + 1)
            .read_to_end(&mut answer)?;
        if answer.len() > MAX_ETCD_RESPONSE {
            return Err(io::Error::other("etcd answer too large"));
        }
        let body =
            body_start(&answer)?.ok_or_else(|| io::Error::other("etcd answer without a body"))?;
        Ok(answer.split_off(body))
    }
}

/// Where the body of the HTTP answer in `answer` starts, once its head is complete (`None`
/// before); an error if the status is not 200.
fn body_start(answer: &[u8]) -> io::Result<Option<usize>> {
    let Some(split) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let status = answer.split(|b| *b == b' ').nth(1).unwrap_or_default();
    if status != b"200" {
        let head = String::from_utf8_lossy(&answer[..split]).into_owned();
        return Err(io::Error::other(format!("etcd refused: {head}")));
    }
    Ok(Some(split + 4))
}

/// An entry's key and its value as text.
fn decode_entry(kv: KeyValue) -> io::Result<(Vec<u8>, String)> {
    let key = STANDARD.decode(kv.key).map_err(io::Error::other)?;
    let value = STANDARD.decode(kv.value).map_err(io::Error::other)?;
    let value = String::from_utf8(value).map_err(io::Error::other)?;
    Ok((key, value))
}

/// An entry kept in etcd under a lease while it lives ([`Registry::register`]); dropping it
/// revokes the lease, which deletes the entry. Dropping it blocks while the renewing thread
/// finishes a request of its own and the revoke is sent (each within
/// [`ETCD_REQUEST_TIMEOUT`]): drop it off the runtime's threads, or call
/// [`deregister`](Self::deregister) from a blocking task.
#[derive(Debug)]
#[must_use = "dropping the registration deletes the entry"]
pub struct Registration {
    shared: Arc<Lease>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct Lease {
    registry: Registry,
    key: String,
    value: String,
    ttl: Duration,
    state: Mutex<LeaseState>,
    /// Wakes the renewing thread early: the registration was dropped.
    stop: Condvar,
}

#[derive(Debug)]
struct LeaseState {
    lease: LeaseId,
    /// Renewals etcd accepted.
    renewals: u64,
    stopped: bool,
}

impl Registration {
    /// The lease the entry is under now (a new one after a lost lease was replaced).
    pub fn lease(&self) -> LeaseId {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lease
    }

    /// How many times etcd accepted a renewal of the lease.
    pub fn renewals(&self) -> u64 {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .renewals
    }

    /// Deletes the entry now (revokes its lease), reporting whether etcd did.
    ///
    /// # Errors
    ///
    /// If etcd cannot be reached or refuses: the entry then goes when its lease expires.
    pub fn deregister(mut self) -> io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stopped = true;
        self.shared.stop.notify_all();
        let _ = thread.join();
        self.shared.registry.revoke(self.lease())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

impl Lease {
    /// Renews the lease every third of its time to live until stopped; registers again
    /// under a new lease if etcd lost it.
    fn keep(&self) {
        let every = self.ttl / 3;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let (next, _) = self
                .stop
                .wait_timeout_while(state, every, |state| !state.stopped)
                .unwrap_or_else(|e| e.into_inner());
            state = next;
            if state.stopped {
                return;
            }
            let lease = state.lease;
            drop(state);
            let renewed = match self.registry.keep_alive(lease) {
                Ok(Some(_)) => Ok(lease),
                // Expired (etcd was away longer than the lease): the entry went with it.
                Ok(None) => self.registry.grant(self.ttl).and_then(|lease| {
                    self.registry
                        .put_leased(&self.key, &self.value, lease)
                        .map(|()| lease)
                }),
                Err(e) => Err(e),
            };
            state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(lease) = renewed {
                state.lease = lease;
                state.renewals += 1;
            }
        }
    }
}

/// The end of the key range of `prefix`: the prefix with its last byte below 0xff incremented
/// (etcd's `range_end` for a prefix); `\0` (every key) for an empty prefix.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_end_of_a_prefix() {
        assert_eq!(prefix_end(b"/services/api/"), b"/services/api0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
