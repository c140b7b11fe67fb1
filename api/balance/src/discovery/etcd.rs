//! etcd discovery (feature `etcd`): the endpoints are the values under a key prefix, as a
//! fleet's shared registry keeps them (`/services/api/10.0.0.7:7000` → `10.0.0.7:7000`).
//!
//! It speaks etcd's v3 JSON gateway (`POST /v3/kv/range`, HTTP/1.0, one request a poll) from a
//! thread of its own, so it works on any runtime without a gRPC stack; each changed set is
//! handed over through a [`channel`](super::channel). [`Registry`] puts and deletes entries
//! (what a server does when it starts and stops).

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    str::FromStr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD, Engine};
use serde::Deserialize;

use super::{channel, parse_targets, Discover, Target, Watch};

/// Default [`Etcd::interval`]: how often the prefix is read again.
pub const DEFAULT_ETCD_INTERVAL: Duration = Duration::from_secs(1);
/// How long one request to etcd may take.
pub const ETCD_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read from etcd (a bigger one is an error: the last set stays).
pub const MAX_ETCD_RESPONSE: usize = 4 << 20;

/// Endpoints from the values under a key prefix in etcd, read every
/// [`interval`](Self::interval). Each value is an address, optionally followed by a weight
/// (`10.0.0.7:7000 2`). A failed read keeps the last set.
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

    /// Reads again every `interval`. Default [`DEFAULT_ETCD_INTERVAL`] (1 s).
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
                while !stopped.load(Ordering::Acquire) {
                    if let Ok(values) = client.values(&prefix) {
                        let set: Vec<Target<A>> = parse_targets(&values.join("\n"));
                        if last.as_ref() != Some(&set) {
                            updater.set(set.clone());
                            last = Some(set);
                        }
                    }
                    std::thread::sleep(interval);
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
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Deserialize)]
struct KeyValue {
    #[serde(default)]
    value: String,
}

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

    /// The values under `prefix`, in key order.
    ///
    /// # Errors
    ///
    /// If etcd cannot be reached, refuses the request, or answers what does not parse.
    pub fn values(&self, prefix: &str) -> io::Result<Vec<String>> {
        let body = format!(
            r#"{{"key":"{}","range_end":"{}"}}"#,
            STANDARD.encode(prefix),
            STANDARD.encode(prefix_end(prefix.as_bytes()))
        );
        let answer = self.post("/v3/kv/range", &body)?;
        let range: RangeResponse = serde_json::from_slice(&answer).map_err(io::Error::other)?;
        range
            .kvs
            .into_iter()
            .map(|kv| {
                let bytes = STANDARD.decode(kv.value).map_err(io::Error::other)?;
                String::from_utf8(bytes).map_err(io::Error::other)
            })
            .collect()
    }

    /// One request; the answer's body if the status is 200.
    fn post(&self, path: &str, body: &str) -> io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect_timeout(&self.server, ETCD_REQUEST_TIMEOUT)?;
        stream.set_read_timeout(Some(ETCD_REQUEST_TIMEOUT))?;
        stream.set_write_timeout(Some(ETCD_REQUEST_TIMEOUT))?;
        // HTTP/1.0: the answer has a length or ends with the connection, never chunked.
        let request = format!(
            "POST {path} HTTP/1.0\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.server,
            body.len()
        );
        stream.write_all(request.as_bytes())?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ETCD_RESPONSE as u64 + 1)
            .read_to_end(&mut answer)?;
        if answer.len() > MAX_ETCD_RESPONSE {
            return Err(io::Error::other("etcd answer too large"));
        }
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| io::Error::other("etcd answer without a body"))?;
        let status = answer.split(|b| *b == b' ').nth(1).unwrap_or_default();
        if status != b"200" {
            let head = String::from_utf8_lossy(&answer[..split]).into_owned();
            return Err(io::Error::other(format!("etcd refused: {head}")));
        }
        Ok(answer.split_off(split + 4))
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
