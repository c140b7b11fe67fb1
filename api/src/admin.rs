//! An admin page (feature `admin`): an opt-in HTTP endpoint that shows what this process's
//! servers and connections are doing, as HTML for a person (`/`) and JSON for tools
//! (`/json`): every server with its counters and its limits beside their current use (calls
//! in flight, bytes queued, the adaptive concurrency limit), each of its connections (peer,
//! age, calls and streams running, bytes each way, frames per write, compression), every
//! client connection, and per routed method its calls, errors, calls running and latency
//! percentiles (p50, p99, p99.9, max). [`Admin::section`] adds tables of the application's
//! own (a cluster member's view of its cluster: `flumen_membership` with its `admin` feature);
//! [`Admin::metrics_text`] serves the Prometheus text at `/metrics` beside them.
//!
//! It serves counters only, never a call's payload or metadata. [`Admin::serve`] binds
//! [`DEFAULT_ADMIN_ADDR`], on loopback, unless told another address; the page says which,
//! and warns when it is reachable from other hosts. Methods are timed once an admin endpoint
//! has served in the process (until then a call pays one relaxed load for it).
//!
//! ```
//! use flumen::{admin::Admin, rt::TokioRuntime, tcp::TokioTcp, Router, Server, Status};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = TokioRuntime::current();
//! let router = Router::new().route("Kv.get", |key: String| async move { Ok::<_, Status>(key) });
//! let server = Server::new(router).bind(&rt, &TokioTcp::default(), &"127.0.0.1:0".parse()?).await?;
//! // Port 0 here for the example; `serve_default()` binds 127.0.0.1:9901.
//! let admin = Admin::new().serve("127.0.0.1:0".parse()?)?;
//! println!("admin page on http://{}/", admin.local_addr());
//! # Ok(()) }
//! ```
//!
//! The endpoint runs on a thread of its own, one request at a time: a request's head must
//! arrive within [`ADMIN_READ_TIMEOUT`] and fit in [`MAX_REQUEST_HEAD`], or the connection is
//! closed, so a slow or hostile client holds the page up for a few times that at most (the
//! head, the answer's writing, and what the client still sends after it).

mod methods;
mod page;

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

pub(crate) use self::methods::{MethodStats, Timed};

/// Where [`Admin::serve_default`] listens: loopback, port 9901.
pub const DEFAULT_ADMIN_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9901);
/// How long a client may take to send its request's head (and to take the answer).
pub const ADMIN_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest request head read; a longer one is answered `431` and closed.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// A table an application adds to the page ([`Admin::section`]): rows of values under named
/// columns. Shown as a table in HTML, as an array of objects in JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// The column names.
    pub columns: Vec<String>,
    /// Each row's values, one per column.
    pub rows: Vec<Vec<String>>,
}

type Section = Box<dyn Fn() -> Table + Send + Sync>;
type Text = Box<dyn Fn() -> String + Send + Sync>;

/// The admin endpoint's settings: what it shows beside the process's servers, connections and
/// methods. [`serve`](Self::serve) starts it.
#[derive(Default)]
pub struct Admin {
    sections: Vec<(String, Section)>,
    metrics: Option<Text>,
}

/// A serving admin endpoint; dropping it stops the endpoint.
#[derive(Debug)]
#[must_use = "dropping the handle stops the admin endpoint"]
pub struct AdminHandle {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sections: Vec<&str> = self
            .sections
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        f.debug_struct("Admin")
            .field("sections", &sections)
            .field("metrics", &self.metrics.is_some())
            .finish()
    }
}

impl Admin {
    /// The page of the process's servers, connections and methods, with nothing added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a table under `title`, made by `table` at each request.
    pub fn section(
        mut self,
        title: impl Into<String>,
        table: impl Fn() -> Table + Send + Sync + 'static,
    ) -> Self {
        self.sections.push((title.into(), Box::new(table)));
        self
    }

    /// Serves `text` (the Prometheus exposition a recorder renders, say) at `/metrics`.
    pub fn metrics_text(mut self, text: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.metrics = Some(Box::new(text));
        self
    }

    /// Serves on [`DEFAULT_ADMIN_ADDR`] (loopback, port 9901).
    ///
    /// # Errors
    ///
    /// If the address cannot be bound.
    pub fn serve_default(self) -> io::Result<AdminHandle> {
        self.serve(DEFAULT_ADMIN_ADDR)
    }

    /// Serves on `addr`, from a thread of its own, and starts timing every router's methods.
    /// Bind a loopback address unless the page must be reached from elsewhere: it shows the
    /// process's peers and traffic to whoever can connect.
    ///
    /// # Errors
    ///
    /// If the address cannot be bound.
    pub fn serve(self, addr: SocketAddr) -> io::Result<AdminHandle> {
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        methods::record();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let page = page::Page {
            admin: local_addr,
            started: Instant::now(),
            sections: self.sections,
        };
        let metrics = self.metrics;
        let thread = std::thread::Builder::new()
            .name("flumen-admin".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stopped.load(Ordering::Acquire) {
                        return;
                    }
                    if let Ok(stream) = stream {
                        // A client that fails or lies is its own problem: the next is served.
                        let _ = answer(stream, &page, metrics.as_ref());
                    }
                }
            })?;
        Ok(AdminHandle {
            local_addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl AdminHandle {
    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept: a connection of our own, to loopback if bound to every address.
        let mut wake = self.local_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        if TcpStream::connect_timeout(&wake, ADMIN_READ_TIMEOUT).is_ok() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// Reads one request from `stream` and answers it, all within [`ADMIN_READ_TIMEOUT`] of
/// the connection's arrival (twice that with the answer's writing).
fn answer(mut stream: TcpStream, page: &page::Page, metrics: Option<&Text>) -> io::Result<()> {
    let deadline = Instant::now() + ADMIN_READ_TIMEOUT;
    stream.set_write_timeout(Some(ADMIN_READ_TIMEOUT))?;
    let Some(head) = read_head(&mut stream, deadline)? else {
        return respond(
            &mut stream,
            "431 Request Header Fields Too Large",
            "text/plain",
            b"request head too large\n",
        );
    };
    let mut request_line = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (request_line.next(), request_line.next());
    if method != Some("GET") {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"only GET\n",
        );
    }
    let path = target.unwrap_or("/").split('?').next().unwrap_or("/");
    match (path, metrics) {
        ("/", _) => {
            let html = page.html();
            respond(
                &mut stream,
                "200 OK",
                "text/html; charset=utf-8",
                html.as_bytes(),
            )
        }
        ("/json", _) => {
            let json = page.json().to_string();
            respond(&mut stream, "200 OK", "application/json", json.as_bytes())
        }
        ("/metrics", Some(metrics)) => {
            let text = metrics();
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4",
                text.as_bytes(),
            )
        }
        _ => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            b"not found: try / or /json\n",
        ),
    }
}

/// The request's head, up to its blank line, read by `deadline`; `None` if it is longer than
/// [`MAX_REQUEST_HEAD`].
fn read_head(stream: &mut TcpStream, deadline: Instant) -> io::Result<Option<String>> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST_HEAD {
            return Ok(None);
        }
        stream.set_read_timeout(Some(left(deadline)?))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

/// The time left before `deadline`; `TimedOut` once it passed.
fn left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    Ok(left)
}

/// Writes the answer, then reads what the client still sends (at most
/// [`MAX_REQUEST_HEAD`] bytes more, for at most [`ADMIN_READ_TIMEOUT`]), so that closing with
/// its bytes unread does not reset the connection before the answer is read.
fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &[u8]) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let deadline = Instant::now() + ADMIN_READ_TIMEOUT;
    let (mut chunk, mut drained) = ([0u8; 1024], 0);
    while drained < MAX_REQUEST_HEAD * 4 {
        stream.set_read_timeout(Some(left(deadline)?))?;
        match stream.read(&mut chunk)? {
            0 => break,
            n => drained += n,
        }
    }
    Ok(())
}
