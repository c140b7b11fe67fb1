//! What every service example shares: pick the runtime (`--runtime tokio|smol`), then run the
//! example's server and client on it over loopback TCP.

use std::{future::Future, net::SocketAddr, sync::Arc};

use flumen::{
    rt::{Runtime, SmolRuntime, TokioRuntime},
    stream::Transport,
    tcp::{SmolTcp, TokioTcp},
};

/// Any error an example may end with.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

/// An example: a server and a client on runtime `R` and transport `T`.
#[allow(
    dead_code,
    reason = "examples that pick their own transport use `main_on` alone"
)]
pub(crate) trait Example {
    /// Runs the example.
    fn run<R: Runtime, T: Transport<Addr = SocketAddr> + Clone>(
        self,
        rt: R,
        transport: T,
    ) -> impl Future<Output = Result<(), Error>>;
}

/// Parses `--runtime tokio|smol` (default tokio) and runs `example` on that runtime.
#[allow(
    dead_code,
    reason = "examples that pick their own transport use `main_on` alone"
)]
pub(crate) fn main<E: Example>(example: E) {
    main_on(
        example,
        |example, rt| example.run(rt, TokioTcp::default()),
        |example, rt| example.run(rt, SmolTcp::default()),
    );
}

/// Parses `--runtime tokio|smol` (default tokio) and runs `tokio` on a two-worker tokio runtime
/// or `smol` on a smol executor (driven by this thread and one more), handing it `state`.
/// Exits with status 1 if it fails.
pub(crate) fn main_on<S, FT, FS>(
    state: S,
    tokio: impl FnOnce(S, TokioRuntime) -> FT,
    smol: impl FnOnce(S, SmolRuntime) -> FS,
) where
    FT: Future<Output = Result<(), Error>>,
    FS: Future<Output = Result<(), Error>>,
{
    let runtime = std::env::args()
        .skip_while(|arg| arg != "--runtime")
        .nth(1)
        .unwrap_or_else(|| "tokio".into());
    let result = match runtime.as_str() {
        "tokio" => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(Error::from);
            runtime.and_then(|runtime| {
                let rt = TokioRuntime::new(runtime.handle().clone());
                runtime.block_on(tokio(state, rt))
            })
        }
        "smol" => {
            let executor = Arc::new(smol::Executor::new());
            let (_stop, stopped) = smol::channel::bounded::<()>(1);
            let worker = executor.clone();
            std::thread::spawn(move || smol::block_on(worker.run(stopped.recv())));
            let rt = SmolRuntime::new(executor.clone());
            smol::block_on(executor.run(smol(state, rt)))
        }
        other => Err(format!("unknown runtime {other:?}: use tokio or smol").into()),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Loopback, any free port.
pub(crate) fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
