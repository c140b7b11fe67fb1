//! A whole server connection fed arbitrary bytes in arbitrary chunks, through an in-memory
//! transport (no sockets): the server must never panic or hang, whatever it reads, and must
//! close the connection once the input ends.
//!
//! Input: the first byte picks whether a valid hello is sent first (bit 0; most inputs want
//! one, to reach the frames) and seeds the chunk sizes (1 to 64 bytes each); the rest is what
//! the peer sends.
#![no_main]

#[path = "chunks.rs"]
mod chunks;

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use flumen::{
    rt::SmolRuntime,
    stream::{hello::Hello, Listener, TransportRead, TransportWrite},
    Bytes, ErrorCode, Router, Server, ServerConfig, Status,
};
use futures_io::{AsyncRead, AsyncWrite};
use futures_lite::StreamExt;
use chunks::chunks;
use libfuzzer_sys::fuzz_target;

/// The peer's bytes, handed out one chunk per read; then the end of the stream.
struct Input(VecDeque<Vec<u8>>);

impl AsyncRead for Input {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let Some(chunk) = self.0.front_mut() else {
            return Poll::Ready(Ok(0));
        };
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        chunk.drain(..n);
        if chunk.is_empty() {
            self.0.pop_front();
        }
        Poll::Ready(Ok(n))
    }
}

impl TransportRead for Input {}

impl TransportWrite for Output {}

/// Takes whatever the server writes.
struct Output;

impl AsyncWrite for Output {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Accepts one connection, then waits forever.
struct OneConnection(Option<Input>);

impl Listener for OneConnection {
    type Addr = ();
    type Reader = Input;
    type Writer = Output;
    type Connecting = std::future::Ready<io::Result<(Input, Output)>>;

    async fn accept(&mut self) -> io::Result<(Self::Connecting, ())> {
        match self.0.take() {
            Some(input) => Ok((std::future::ready(Ok((input, Output))), ())),
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Handlers of every shape: typed and raw unary, one that never answers (cancel, deadline),
/// and a bidirectional stream that echoes items.
fn router() -> Router {
    Router::new()
        .route("echo", |n: u64| async move { Ok::<_, Status>(n) })
        .route_raw("raw", |request| async move { Ok(request.into_body()) })
        .route_raw("hold", |_| async move {
            std::future::pending::<()>().await;
            Ok(Bytes::new())
        })
        .route_raw("items", |request| async move {
            let missing = || Status::new(ErrorCode::BAD_REQUEST, "expected a stream");
            let mut items = request.items().ok_or_else(missing)?;
            let sink = request.sink().ok_or_else(missing)?;
            while let Some(item) = items.next().await {
                sink.send(item?).await?;
            }
            Ok(Bytes::new())
        })
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, frames)) = data.split_first() else {
        return;
    };
    let mut bytes = Vec::with_capacity(frames.len() + 16);
    if seed & 1 == 1 {
        bytes.extend_from_slice(&Hello::new(4096, 16).encode());
    }
    bytes.extend_from_slice(frames);
    let input = Input(chunks(seed, &bytes));

    let executor = Arc::new(smol::Executor::new());
    let rt = SmolRuntime::new(executor.clone());
    let config = ServerConfig::default()
        .max_frame_len(4096)
        .max_in_flight(16)
        .max_queued_bytes(8192);
    futures_lite::future::block_on(executor.run(async {
        let server = Server::new(router())
            .config(config)
            .serve(&rt, OneConnection(Some(input)))
            .expect("an in-memory listener has an address");
        // The input ends, so the connection must close: within this many turns of the
        // executor (each task runs without waiting on anything outside this process).
        let mut turns = 0;
        loop {
            let stats = server.stats();
            if stats.accepted == 1 && stats.active == 0 {
                break;
            }
            turns += 1;
            assert!(turns < 100_000, "the connection did not close: {stats:?}");
            futures_lite::future::yield_now().await;
        }
        drop(server);
    }));
    // Every task ends once the server is stopped (the tasks hold the runtime, which holds
    // the executor: one left behind would keep all of it alive).
    let mut turns = 0;
    while !executor.is_empty() {
        turns += 1;
        assert!(turns < 100_000, "a task outlived its stopped server");
        executor.try_tick();
    }
});
