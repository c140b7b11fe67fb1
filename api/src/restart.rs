//! Restarts without a failed call: a running server hands its listening sockets to a new
//! process of the same program, which serves on them at once; the old one then drains
//! ([`ServerHandle::shutdown`]: it stops accepting, tells its clients `GoAway`, finishes the
//! calls it has) and exits. Clients reconnect to the same address, now served by the new
//! process; a call that reached the old one just after its `GoAway` is refused unrun, so a
//! balanced client retries it there, idempotent or not. (A single connection made with
//! `Client::connect` ends with the `GoAway`: its owner reconnects, or uses a balanced client
//! over the one address.)
//!
//! Both processes name a control socket, a path only their user can reach. A process that
//! finds a predecessor there asks it for its listeners, each under the name it was opened
//! with, and gets their descriptors (`SCM_RIGHTS`); a process that finds none binds fresh
//! ones. Once it serves, it calls [`ready`](Restart::ready): it takes the control path over
//! for its own successor, and the predecessor's [`handed_over`](Restart::handed_over)
//! resolves. A successor that fails before it is ready changes nothing: the predecessor
//! serves on and waits for the next one.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use flumen::{restart::Restart, rt::TokioRuntime, tcp::TokioTcp, Router, Server, Status};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let rt = TokioRuntime::current();
//!     // The listener of the running process, if there is one; a new one if not.
//!     let restart = Restart::new("/run/kv/restart.sock")?;
//!     let listener = restart.tcp("api", "0.0.0.0:7000".parse()?)?;
//!     let router = Router::new().route("Kv.get", |key: String| async move { Ok::<_, Status>(key) });
//!     let server = Server::new(router).serve(&rt, TokioTcp::default().listener_from_std(listener)?)?;
//!     restart.ready()?; // the predecessor, if any, drains now
//!
//!     // Run until the next generation has taken over (start it the same way), then drain.
//!     restart.handed_over().await;
//!     server.shutdown(Duration::from_secs(30)).await;
//!     Ok(())
//! }
//! ```
//!
//! The exchange on the control socket: the successor writes `FLMNTAKE`; the predecessor
//! answers `FLMNLIST` followed by the listeners' names, one per line, in one message carrying
//! their descriptors in the same order; the successor writes `FLMNDONE` once it serves.
//!
//! [`ServerHandle::shutdown`]: crate::ServerHandle::shutdown

use std::{
    io::{self, IoSlice, IoSliceMut, Read, Write},
    mem::MaybeUninit,
    os::{
        fd::{AsFd, OwnedFd},
        unix::{
            fs::{FileTypeExt, PermissionsExt},
            net::{UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use event_listener::Event;
use parking_lot::Mutex;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Most listeners one process hands over: bounds the descriptors a successor accepts.
pub const MAX_LISTENERS: usize = 16;
/// How long each step of the exchange (the ask, the answer) may take before the other side
/// gives up on it.
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a predecessor waits, after handing its listeners over, for its successor to be
/// ready; past it, the restart failed and the predecessor waits for another successor (it
/// serves throughout).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the control socket's thread looks at whether its [`Restart`] was dropped.
const ACCEPT_TICK: Duration = Duration::from_millis(100);
/// The longest list of names a predecessor sends.
const MAX_NAMES_LEN: usize = 4096;

const TAKE: &[u8; 8] = b"FLMNTAKE";
const LIST: &[u8; 8] = b"FLMNLIST";
const DONE: &[u8; 8] = b"FLMNDONE";

/// One generation of a restartable server: the listeners it inherited or opened, and the
/// control socket its successor will ask (see the [module](self)).
#[derive(Debug)]
pub struct Restart {
    control: PathBuf,
    /// What the predecessor handed over, by name, until taken.
    inherited: Mutex<Vec<(String, OwnedFd)>>,
    /// The connection to the predecessor, until [`ready`](Self::ready) tells it.
    predecessor: Mutex<Option<UnixStream>>,
    /// This generation's listeners, to hand to the next.
    listeners: Arc<Mutex<Vec<(String, OwnedFd)>>>,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    handed_over: AtomicBool,
    changed: Event,
    /// The [`Restart`] was dropped: the control thread ends.
    stop: AtomicBool,
}

impl Restart {
    /// Starts a generation that uses `control` as its control socket: takes the listeners of
    /// the process serving there, if one does; otherwise this is the first generation, and
    /// [`tcp`](Self::tcp) and [`unix`](Self::unix) bind fresh listeners.
    ///
    /// # Errors
    ///
    /// If a predecessor answers but the exchange fails (it timed out, it broke off, or it sent
    /// more than [`MAX_LISTENERS`] descriptors or names that do not match them), or the
    /// control path cannot be reached for another reason than nobody listening there.
    pub fn new(control: impl Into<PathBuf>) -> io::Result<Self> {
        let control = control.into();
        let (predecessor, inherited) = match UnixStream::connect(&control) {
            Ok(mut stream) => {
                let inherited = take(&mut stream)?;
                (Some(stream), inherited)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                (None, Vec::new())
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            control,
            inherited: Mutex::new(inherited),
            predecessor: Mutex::new(predecessor),
            listeners: Arc::default(),
            shared: Arc::default(),
        })
    }

    /// Whether a predecessor handed its listeners over.
    pub fn is_successor(&self) -> bool {
        self.predecessor.lock().is_some()
    }

    /// The TCP listener named `name`: the predecessor's, whatever address it is bound to (a
    /// restart keeps the address), or a new one on `addr` bound as the TCP transports bind.
    /// Adopt it with `TokioTcp::listener_from_std` or `SmolTcp::listener_from_std`.
    ///
    /// # Errors
    ///
    /// If `name` is taken in this generation, the inherited descriptor is not a TCP
    /// listener, or `addr` cannot be bound.
    #[cfg(feature = "tcp")]
    pub fn tcp(&self, name: &str, addr: std::net::SocketAddr) -> io::Result<std::net::TcpListener> {
        let listener = match self.inherit(name)? {
            Some(fd) => {
                let listener = std::net::TcpListener::from(fd);
                // A descriptor of another kind has no socket address of this family.
                listener.local_addr()?;
                listener
            }
            None => flumen_tcp::std_listener(&addr)?,
        };
        self.keep(name, listener.try_clone()?.into());
        Ok(listener)
    }

    /// The Unix socket listener named `name`: the predecessor's, or a new one on `path`. A
    /// socket file left at `path` by a server that stopped (nothing accepts there) is
    /// replaced; one a process still serves is an error. Adopt it with
    /// `TokioUnix::listener_from_std` or `SmolUnix::listener_from_std`; the socket file stays
    /// when the listener goes, since the next generation serves on it.
    ///
    /// # Errors
    ///
    /// If `name` is taken in this generation, the inherited descriptor is not a Unix
    /// listener, or `path` cannot be bound (`AddrInUse` if a process serves there).
    #[cfg(feature = "unix")]
    pub fn unix(&self, name: &str, path: &Path) -> io::Result<UnixListener> {
        let listener = match self.inherit(name)? {
            Some(fd) => {
                let listener = UnixListener::from(fd);
                listener.local_addr()?;
                listener
            }
            None => {
                remove_stale_socket(path)?;
                UnixListener::bind(path)?
            }
        };
        self.keep(name, listener.try_clone()?.into());
        Ok(listener)
    }

    /// Declares this generation serving: binds the control socket for the next generation,
    /// then tells the predecessor, whose [`handed_over`](Self::handed_over) resolves.
    /// Listeners the predecessor handed over and this generation did not take are closed
    /// here.
    ///
    /// # Errors
    ///
    /// If the control socket cannot be bound (`AddrInUse` if a first generation finds a
    /// process serving there), or the predecessor cannot be told (it died: this generation
    /// serves alone, and the error says so).
    pub fn ready(&self) -> io::Result<()> {
        let predecessor = self.predecessor.lock().take();
        self.inherited.lock().clear();
        if predecessor.is_none() {
            remove_stale_socket(&self.control)?;
        }
        // Bound beside the control path, private before anyone can reach it, and put in its
        // place only once the predecessor was told: a successor that dies in between leaves
        // the predecessor's control socket where the next successor finds it.
        let staging = self
            .control
            .with_extension(format!("{}.new", std::process::id()));
        let _ = std::fs::remove_file(&staging);
        let control = UnixListener::bind(&staging)?;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))?;
        control.set_nonblocking(true)?;
        let told = match predecessor {
            Some(mut predecessor) => predecessor.write_all(DONE),
            None => Ok(()),
        };
        std::fs::rename(&staging, &self.control)?;
        let (listeners, shared) = (self.listeners.clone(), self.shared.clone());
        std::thread::Builder::new()
            .name("flumen-restart".into())
            .spawn(move || serve_successors(&control, &listeners, &shared))?;
        told
    }

    /// Resolves once a successor has taken this generation's listeners and is serving on
    /// them: time to drain ([`ServerHandle::shutdown`](crate::ServerHandle::shutdown)) and
    /// exit. Works on any runtime.
    pub async fn handed_over(&self) {
        loop {
            let listener = self.shared.changed.listen();
            if self.is_handed_over() {
                return;
            }
            listener.await;
        }
    }

    /// Whether a successor has taken over.
    pub fn is_handed_over(&self) -> bool {
        self.shared.handed_over.load(Ordering::Acquire)
    }

    /// The inherited descriptor named `name`, if any; an error if this generation already
    /// has a listener of that name.
    #[cfg(any(feature = "tcp", feature = "unix"))]
    fn inherit(&self, name: &str) -> io::Result<Option<OwnedFd>> {
        if self.listeners.lock().iter().any(|(taken, _)| taken == name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("a listener named {name:?} is already open"),
            ));
        }
        let mut inherited = self.inherited.lock();
        let found = inherited.iter().position(|(named, _)| named == name);
        Ok(found.map(|at| inherited.swap_remove(at).1))
    }

    #[cfg(any(feature = "tcp", feature = "unix"))]
    fn keep(&self, name: &str, fd: OwnedFd) {
        self.listeners.lock().push((name.to_owned(), fd));
    }
}

impl Drop for Restart {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

/// Asks the predecessor on `stream` for its listeners.
fn take(stream: &mut UnixStream) -> io::Result<Vec<(String, OwnedFd)>> {
    stream.set_read_timeout(Some(HANDOFF_TIMEOUT))?;
    stream.set_write_timeout(Some(HANDOFF_TIMEOUT))?;
    stream.write_all(TAKE)?;
    let mut buf = vec![0; LIST.len() + MAX_NAMES_LEN];
    let mut fds = Vec::new();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        stream.as_fd(),
        &mut [IoSliceMut::new(&mut buf)],
        &mut ancillary,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    for message in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(passed) = message {
            fds.extend(passed);
        }
    }
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
    if received.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        return Err(invalid(
            "the predecessor sent more listeners than MAX_LISTENERS",
        ));
    }
    let message = &buf[..received.bytes];
    let names = message
        .strip_prefix(LIST)
        .ok_or_else(|| invalid("the predecessor's answer is not a list of listeners"))?;
    let names = std::str::from_utf8(names).map_err(|_| invalid("listener names not UTF-8"))?;
    let names: Vec<&str> = names.split('\n').filter(|n| !n.is_empty()).collect();
    if names.len() != fds.len() {
        return Err(invalid(
            "the predecessor's names do not match its descriptors",
        ));
    }
    Ok(names.into_iter().map(str::to_owned).zip(fds).collect())
}

/// Answers successors on `control` until one is ready (or the [`Restart`] is dropped).
fn serve_successors(
    control: &UnixListener,
    listeners: &Mutex<Vec<(String, OwnedFd)>>,
    shared: &Shared,
) {
    while !shared.stop.load(Ordering::Acquire) {
        let stream = match control.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(ACCEPT_TICK);
                continue;
            }
            Err(_) => {
                std::thread::sleep(ACCEPT_TICK);
                continue;
            }
        };
        // A successor that failed (timed out, died, lied) leaves this generation serving.
        if let Ok(true) = hand_over(stream, listeners) {
            shared.handed_over.store(true, Ordering::Release);
            shared.changed.notify(usize::MAX);
            return;
        }
    }
}

/// One successor's exchange: whether it took the listeners and is ready.
fn hand_over(
    mut stream: UnixStream,
    listeners: &Mutex<Vec<(String, OwnedFd)>>,
) -> io::Result<bool> {
    stream.set_nonblocking(false)?;
    if !same_user(&stream)? {
        return Ok(false);
    }
    stream.set_read_timeout(Some(HANDOFF_TIMEOUT))?;
    stream.set_write_timeout(Some(HANDOFF_TIMEOUT))?;
    let mut ask = [0; TAKE.len()];
    stream.read_exact(&mut ask)?;
    if &ask != TAKE {
        return Ok(false);
    }
    let (names, fds) = {
        let listeners = listeners.lock();
        let names: Vec<&str> = listeners.iter().map(|(name, _)| name.as_str()).collect();
        let mut message = LIST.to_vec();
        message.extend_from_slice(names.join("\n").as_bytes());
        let fds = listeners
            .iter()
            .map(|(_, fd)| fd.try_clone())
            .collect::<io::Result<Vec<OwnedFd>>>()?;
        (message, fds)
    };
    let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !ancillary.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(io::Error::other("more listeners than MAX_LISTENERS"));
    }
    let sent = rustix::net::sendmsg(
        stream.as_fd(),
        &[IoSlice::new(&names)],
        &mut ancillary,
        SendFlags::NOSIGNAL,
    )?;
    if sent != names.len() {
        return Err(io::Error::other("the list of listeners was cut short"));
    }
    stream.set_read_timeout(Some(READY_TIMEOUT))?;
    let mut done = [0; DONE.len()];
    stream.read_exact(&mut done)?;
    Ok(&done == DONE)
}

/// Whether the peer on `stream` runs as this process's user, where the system tells (Linux;
/// elsewhere the control socket's mode, owner only, is the guard).
fn same_user(stream: &UnixStream) -> io::Result<bool> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let peer = rustix::net::sockopt::socket_peercred(stream)?;
        Ok(peer.uid == rustix::process::getuid())
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = stream;
        Ok(true)
    }
}

/// Removes a socket file at `path` that nothing accepts on (left by a process that
/// stopped); `AddrInUse` if a process serves there; nothing if there is no file.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !metadata.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("a process serves on {}", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}
