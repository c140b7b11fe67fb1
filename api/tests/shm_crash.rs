//! Shared memory between two processes, one of which is killed (SIGKILL, no chance to say
//! goodbye): the survivor notices at once, through the socket the kernel closes, and fails
//! what was pending. The other process is this test binary started again in a child role.
//! Also: the mapped file is gone once the connection is up.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::Env;
use flumen::{
    rt::TokioRuntime,
    shm::{SmolShm, TokioShm},
    stream::Transport,
    Bytes, Client, ClientConfig, Router, Server, Status,
};

/// Set in a child: `server PATH` or `client PATH`.
const ROLE: &str = "FLUMEN_SHM_CHILD";
const HANGING: usize = 8;

/// `hang` never answers (and counts the handlers running); `echo` echoes.
fn router(running: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route_raw("echo", |request| async move { Ok(request.into_body()) })
        .route_raw("hang", move |_| {
            let running = running.clone();
            async move {
                let _running = Running::enter(running);
                std::future::pending::<()>().await;
                Ok::<_, Status>(Bytes::new())
            }
        })
}

struct Running(Arc<AtomicUsize>);

impl Running {
    fn enter(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The child's half: not a test of its own (it returns at once unless started as a child).
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let (role, path) = role.split_once(' ').unwrap();
    let path = PathBuf::from(path);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let rt = TokioRuntime::current();
        match role {
            "server" => {
                let server = Server::new(router(Arc::default()))
                    .bind(&rt, &TokioShm::default(), &path)
                    .await
                    .unwrap();
                common::announce_listening();
                std::future::pending::<()>().await;
                drop(server);
            }
            _ => {
                let client = Client::connect(&rt, &TokioShm::default(), &path)
                    .await
                    .unwrap();
                let hanging: Vec<_> = (0..HANGING)
                    .map(|_| {
                        let client = client.clone();
                        tokio::spawn(async move {
                            let _ = client
                                .raw()
                                .call_with_timeout(method("hang"), Bytes::new(), None)
                                .await;
                        })
                    })
                    .collect();
                for call in hanging {
                    let _ = call.await;
                }
            }
        }
    });
}

fn method(name: &str) -> u32 {
    flumen::MethodId::from_name(name).as_u32()
}

fn child_command(role: &str, path: &Path) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(ROLE, format!("{role} {}", path.display()));
    command
}

/// Files the shared-memory listener of process `pid` left in `/dev/shm` (or the temporary
/// directory where there is none).
fn leftovers(pid: u32) -> usize {
    let dir = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let prefix = format!("flumen-shm-{pid}-");
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .count()
        })
        .unwrap_or(0)
}

/// The server process dies with calls pending: each fails with a connection error.
async fn server_dies<T: Transport<Addr = PathBuf> + Default>(
    rt: impl flumen::stream::Runtime,
    path: PathBuf,
) {
    let mut child = common::spawn_listening(&mut child_command("server", &path));
    let client = Client::connect_with(
        &rt,
        &T::default(),
        &path,
        ClientConfig::default(),
        flumen::MsgPack::default(),
    )
    .await
    .unwrap();
    let raw = client.raw().clone();
    assert_eq!(
        raw.call(method("echo"), Bytes::from_static(b"hi"))
            .await
            .unwrap(),
        Bytes::from_static(b"hi")
    );
    assert_eq!(
        leftovers(child.id()),
        0,
        "the mapped file outlived the handshake"
    );
    let (done, results) = smol::channel::unbounded();
    for _ in 0..HANGING {
        let (raw, done) = (raw.clone(), done.clone());
        rt.spawn(async move {
            let result = raw
                .call_with_timeout(method("hang"), Bytes::new(), None)
                .await;
            let _ = done.send(result).await;
        });
    }
    let written = || raw.stats().frames_written > HANGING as u64;
    while !written() {
        rt.sleep_until(Instant::now() + Duration::from_millis(5))
            .await;
    }
    child.kill().unwrap();
    let _ = child.wait();
    let started = Instant::now();
    for _ in 0..HANGING {
        let timeout = rt.sleep_until(Instant::now() + Duration::from_secs(10));
        let result = futures_lite::FutureExt::or(async { results.recv().await.ok() }, async {
            timeout.await;
            None
        })
        .await
        .expect("a pending call resolves within 10 s");
        let err = result.expect_err("no reply can come from a dead server");
        assert!(err.is_connection(), "{err}");
    }
    println!(
        "pending calls failed {:?} after the server was killed",
        started.elapsed()
    );
}

/// The client process dies with calls running: the server notices and stops their handlers.
async fn client_dies<T: Transport<Addr = PathBuf> + Default>(
    rt: impl flumen::stream::Runtime,
    path: PathBuf,
) {
    let running = Arc::new(AtomicUsize::new(0));
    let server = Server::new(router(running.clone()))
        .bind(&rt, &T::default(), &path)
        .await
        .unwrap();
    let mut child = child_command("client", &path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    while running.load(Ordering::SeqCst) < HANGING {
        rt.sleep_until(Instant::now() + Duration::from_millis(5))
            .await;
    }
    assert_eq!(
        leftovers(std::process::id()),
        0,
        "the mapped file outlived the handshake"
    );
    child.kill().unwrap();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while running.load(Ordering::SeqCst) > 0 || server.stats().active > 0 {
        assert!(
            Instant::now() < deadline,
            "the dead client's handlers still run"
        );
        rt.sleep_until(Instant::now() + Duration::from_millis(5))
            .await;
    }
}

/// The socket of test `name` in this process. A file already there is stale: a killed process
/// leaves its socket file behind, and a later process may get the same id.
fn socket(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "flumen-shm-crash-{name}-{}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

#[test]
fn a_killed_server_process_fails_every_pending_call() {
    common::run_tokio(|env: common::TokioEnv| async move {
        server_dies::<TokioShm>(env.rt(), socket("server-tokio")).await
    });
    common::run_smol(|env: common::SmolEnv| async move {
        server_dies::<SmolShm>(env.rt(), socket("server-smol")).await
    });
}

#[test]
fn a_killed_client_process_stops_its_handlers() {
    common::run_tokio(|env: common::TokioEnv| async move {
        client_dies::<TokioShm>(env.rt(), socket("client-tokio")).await
    });
    common::run_smol(|env: common::SmolEnv| async move {
        client_dies::<SmolShm>(env.rt(), socket("client-smol")).await
    });
}
