//! A hostile local client against a shared-memory server. The server runs in a child process
//! (this test binary started again in a child role), so that a crash (a bus error from a
//! region shrunk under its mapping, a panic) shows as the child's death rather than taking
//! the test with it. The test plays the hostile client by hand: the socket, the region's
//! descriptor passed over it, and writes into the region through that descriptor. After each
//! attack the server must still be alive and serve a well-behaved client.

use std::{
    fs::File,
    io::{Read, Write},
    mem::MaybeUninit,
    os::{
        fd::{AsFd, OwnedFd},
        unix::{fs::FileExt, net::UnixStream},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use flumen::{
    rt::TokioRuntime,
    shm::TokioShm,
    stream::{
        frame::{FrameHeader, FrameKind, HEADER_LEN},
        hello::Hello,
    },
    Bytes, Client, Router, Server, ServerConfig,
};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

/// Set in the child: the path of the socket to serve on, and the read timeout in
/// milliseconds (`PATH MILLIS`).
const ROLE: &str = "FLUMEN_SHM_HOSTILE_SERVER";
/// The read timeout of the stall test's server: a frame begun must be finished within it.
const READ_TIMEOUT: Duration = Duration::from_millis(500);
/// The read timeout of the other tests' servers: longer than any test, so that what closes a
/// hostile connection there is the server's check of what it read, never the clock.
const PATIENT: Duration = Duration::from_secs(600);
// The region's layout (transports/shm/src/ring.rs): two rings, each a 256-byte header then
// its data; ring 0 carries what the client sends. `tail` (bytes published) is at 64.
const RING_HEADER: u64 = 256;
const TAIL: u64 = 64;
/// `head` (bytes read) of the client's ring.
const HEAD: u64 = 128;

/// The child's half: not a test of its own (it returns at once unless started as a child).
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let (path, millis) = role.rsplit_once(' ').unwrap();
    let (path, read_timeout) = (
        path.to_owned(),
        Duration::from_millis(millis.parse().unwrap()),
    );
    // A panic anywhere (a connection's task included, which the runtime would catch) ends the
    // process, so that the test sees it.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("{info}");
        std::process::abort();
    }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let rt = TokioRuntime::current();
        let router =
            Router::new().route_raw("echo", |request| async move { Ok(request.into_body()) });
        let config = ServerConfig::default().read_timeout(read_timeout);
        let _server = Server::new(router)
            .config(config)
            .bind(&rt, &TokioShm::default(), &PathBuf::from(path))
            .await
            .unwrap();
        std::future::pending::<()>().await;
    });
}

/// A server in a child process, killed when dropped.
struct ServerProcess {
    child: Child,
    path: PathBuf,
    _dir: TempDir,
}

impl ServerProcess {
    fn start(read_timeout: Duration) -> Self {
        let dir = TempDir::new();
        let path = dir.0.join("hostile.sock");
        let role = format!("{} {}", path.display(), read_timeout.as_millis());
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut server = Self {
            child,
            path,
            _dir: dir,
        };
        wait_for("the server's socket", || {
            server.assert_alive();
            UnixStream::connect(&server.path).is_ok()
        });
        server
    }

    /// Fails the test if the server process ended (crashed).
    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the server process died: {status}");
        }
    }

    /// A well-behaved client's call, in a runtime of its own.
    fn assert_serves(&mut self) {
        self.assert_alive();
        let path = self.path.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let reply = runtime.block_on(async move {
            let rt = TokioRuntime::current();
            let client = Client::connect(&rt, &TokioShm::default(), &path)
                .await
                .map_err(|e| e.to_string())?;
            let echo = flumen::MethodId::from_name("echo").as_u32();
            client
                .raw()
                .call(echo, Bytes::from_static(b"still here"))
                .await
                .map_err(|e| e.to_string())
        });
        match reply {
            Ok(reply) => assert_eq!(&reply[..], b"still here"),
            Err(e) => {
                // Most likely the process just died: say how.
                let status = (0..200).find_map(|_| {
                    std::thread::sleep(Duration::from_millis(5));
                    self.child.try_wait().unwrap()
                });
                panic!("a well-behaved client failed ({e}); the server process: {status:?}");
            }
        }
        self.assert_alive();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hostile client after the shared-memory handshake: its socket and the region it was
/// passed (a descriptor of its own, as any client holds).
struct Hostile {
    socket: UnixStream,
    region: File,
    capacity: u64,
}

impl Hostile {
    /// Connects, takes the region the server passes, and acknowledges it.
    fn connect(path: &Path) -> Self {
        let mut socket = UnixStream::connect(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut announcement = [0u8; 12];
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut filled = 0;
        while filled < announcement.len() {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut ancillary = RecvAncillaryBuffer::new(&mut space);
            let received = rustix::net::recvmsg(
                socket.as_fd(),
                &mut [std::io::IoSliceMut::new(&mut announcement[filled..])],
                &mut ancillary,
                RecvFlags::CMSG_CLOEXEC,
            )
            .unwrap();
            assert!(received.bytes > 0, "the server hung up in the handshake");
            filled += received.bytes;
            for message in ancillary.drain() {
                if let RecvAncillaryMessage::ScmRights(passed) = message {
                    fds.extend(passed);
                }
            }
        }
        assert_eq!(&announcement[..4], b"FSHM");
        let capacity = u64::from(u32::from_le_bytes(announcement[4..8].try_into().unwrap()));
        assert_eq!(fds.len(), 1, "one descriptor, the region");
        let region = File::from(fds.pop().unwrap());
        socket.write_all(&[1]).unwrap();
        Self {
            socket,
            region,
            capacity,
        }
    }

    /// The region's length, as the kernel has it now.
    fn region_len(&self) -> u64 {
        self.region.metadata().unwrap().len()
    }

    /// Writes `bytes` into the client's ring at data offset `at`, then publishes `tail`.
    fn publish(&self, at: u64, bytes: &[u8], tail: u64) {
        self.region.write_all_at(bytes, RING_HEADER + at).unwrap();
        self.region.write_all_at(&tail.to_le_bytes(), TAIL).unwrap();
    }

    /// Bytes the server has read from the client's ring (its `head`).
    fn read_by_server(&self) -> u64 {
        let mut head = [0u8; 8];
        self.region.read_exact_at(&mut head, HEAD).unwrap();
        u64::from_le_bytes(head)
    }

    /// Rings the server's bell: its reader looks at the ring.
    fn ring(&mut self) {
        self.socket.write_all(&[1]).unwrap();
    }

    /// Waits for the server to close the connection (the end of the socket).
    fn assert_closed_by_server(&mut self) {
        let mut buf = [0u8; 64];
        loop {
            match self.socket.read(&mut buf) {
                Ok(0) => return,
                // Wake-ups from the server's side.
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("the server kept the hostile connection open: {e}"),
            }
        }
    }
}

/// A Flumen hello, as a client's first bytes.
fn hello() -> [u8; flumen::stream::hello::HELLO_LEN] {
    Hello::new(1 << 20, 64).encode()
}

#[test]
fn a_client_cannot_resize_the_region() {
    let mut server = ServerProcess::start(PATIENT);
    let mut hostile = Hostile::connect(&server.path);
    let seals = rustix::fs::fcntl_get_seals(&hostile.region).unwrap();
    let all = rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW;
    assert!(
        seals.contains(all | rustix::fs::SealFlags::SEAL),
        "{seals:?}"
    );
    let len = hostile.region_len();
    assert_eq!(len, 2 * (RING_HEADER + hostile.capacity));
    // The server's reader looks at its ring after each attempt: past the end of a region
    // shrunk under its mapping, that would be a bus error.
    let shrunk = hostile.region.set_len(0);
    hostile.ring();
    server.assert_serves();
    let grown = hostile.region.set_len(len * 2);
    let sealed_more = rustix::fs::fcntl_add_seals(&hostile.region, rustix::fs::SealFlags::WRITE);
    hostile.publish(0, &hello(), hello().len() as u64);
    hostile.ring();
    server.assert_serves();
    assert!(shrunk.is_err(), "a client shrank the region");
    assert!(grown.is_err(), "a client grew the region");
    assert!(sealed_more.is_err(), "a client added a seal");
    assert_eq!(hostile.region_len(), len);
}

#[test]
fn a_peer_that_scribbles_indices_or_lengths_is_cut_off_alone() {
    let mut server = ServerProcess::start(PATIENT);
    // An index past the ring's size: refused before anything is read.
    let mut past = Hostile::connect(&server.path);
    past.publish(0, &[], past.capacity * 3 + 5);
    past.ring();
    past.assert_closed_by_server();
    assert_eq!(past.read_by_server(), 0);
    server.assert_serves();
    // An index that goes backwards, after bytes the server read.
    let mut backwards = Hostile::connect(&server.path);
    backwards.publish(0, &hello(), hello().len() as u64);
    backwards.ring();
    wait_for("the server reads the hello", || {
        backwards.read_by_server() == hello().len() as u64
    });
    backwards.publish(0, &[], u64::MAX - 2);
    backwards.ring();
    backwards.assert_closed_by_server();
    server.assert_serves();
    // A frame whose length is past every limit.
    let mut long = Hostile::connect(&server.path);
    let mut header = FrameHeader::new(FrameKind::Request, 1);
    header.len = u32::MAX;
    let mut bytes = [0u8; HEADER_LEN];
    header.encode(&mut bytes);
    let mut stream = hello().to_vec();
    stream.extend_from_slice(&bytes);
    long.publish(0, &stream, stream.len() as u64);
    long.ring();
    long.assert_closed_by_server();
    server.assert_serves();
}

#[test]
fn a_peer_that_stops_mid_frame_is_timed_out() {
    let mut server = ServerProcess::start(READ_TIMEOUT);
    let mut stalled = Hostile::connect(&server.path);
    let mut header = FrameHeader::new(FrameKind::Request, 1);
    header.len = 1000;
    let mut bytes = [0u8; HEADER_LEN];
    header.encode(&mut bytes);
    let mut stream = hello().to_vec();
    stream.extend_from_slice(&bytes);
    stream.extend_from_slice(&[7; 100]);
    stalled.publish(0, &stream, stream.len() as u64);
    stalled.ring();
    let stalled_at = Instant::now();
    // Others are served while it stalls; then its read timeout closes it, not at once (the
    // server's clock is coarse: half the timeout is the bound that holds).
    server.assert_serves();
    stalled.assert_closed_by_server();
    let waited = stalled_at.elapsed();
    assert!(waited >= READ_TIMEOUT / 2, "closed after {waited:?}");
    server.assert_serves();
}

/// Waits (at most 10 s) for `cond`, polling every 5 ms.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("flumen-hostile-{}", fastrand::u64(..)));
        std::fs::create_dir(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
