//! The core's streaming calls, driven raw (no macro): every call shape, flow control, and the
//! ends of a stream, on every runtime and transport.

mod common;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{connect, eventually, serve, Env};
use flumen::{
    stream::{CallOptions, StreamMode},
    Bytes, ClientConfig, ErrorCode, Router, ServerConfig, Status,
};
use futures_lite::StreamExt;

const TICKS: u32 = 200;

/// Counts `flood` handlers running (each counts itself out when dropped: stopped) and the
/// bytes of the items they sent.
#[derive(Clone, Default)]
struct Floods(Arc<AtomicUsize>, Arc<AtomicUsize>);

struct Flooding(Arc<AtomicUsize>);

impl Drop for Flooding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Floods {
    fn enter(&self) -> Flooding {
        self.0.fetch_add(1, Ordering::SeqCst);
        Flooding(self.0.clone())
    }

    fn running(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Bytes of the items the handlers' sends accepted.
    fn sent(&self) -> usize {
        self.1.load(Ordering::SeqCst)
    }
}

fn router() -> Router {
    router_counting(&Floods::default())
}

fn router_counting(floods: &Floods) -> Router {
    let floods = floods.clone();
    Router::new()
        // Server-streaming: N items, then the reply `ticked`.
        .route_raw("ticks", |request| async move {
            let sink = request
                .sink()
                .ok_or(Status::new(ErrorCode::BAD_REQUEST, "not a stream"))?;
            let n = u32::from_le_bytes(request.body()[..4].try_into().unwrap_or([0; 4]));
            for i in 0..n {
                sink.send(Bytes::from(i.to_le_bytes().to_vec())).await?;
            }
            Ok(Bytes::from_static(b"ticked"))
        })
        // Client-streaming: sums the items' lengths.
        .route_raw("count", |request| async move {
            let mut items = request
                .items()
                .ok_or(Status::new(ErrorCode::BAD_REQUEST, "not a stream"))?;
            let mut total = 0u64;
            while let Some(item) = items.next().await {
                total += item?.len() as u64;
            }
            Ok(Bytes::from(total.to_le_bytes().to_vec()))
        })
        // Bidirectional: echoes each item.
        .route_raw("echo", |request| async move {
            let mut items = request
                .items()
                .ok_or(Status::new(ErrorCode::BAD_REQUEST, "not a stream"))?;
            let sink = request
                .sink()
                .ok_or(Status::new(ErrorCode::BAD_REQUEST, "not a stream"))?;
            while let Some(item) = items.next().await {
                sink.send(item?).await?;
            }
            Ok(Bytes::new())
        })
        // Sends forever (until the client stops reading, cancels, or the deadline passes).
        .route_raw("flood", move |request| {
            let flooding = floods.enter();
            let sent = floods.1.clone();
            async move {
                let _flooding = flooding;
                let sink = request
                    .sink()
                    .ok_or(Status::new(ErrorCode::BAD_REQUEST, "not a stream"))?;
                loop {
                    sink.send(Bytes::from(vec![0u8; 16 * 1024])).await?;
                    sent.fetch_add(16 * 1024, Ordering::SeqCst);
                }
            }
        })
        .route(
            "ping",
            |()| async move { Ok::<_, Status>("pong".to_owned()) },
        )
}

fn method(name: &str) -> u32 {
    flumen::MethodId::from_name(name).as_u32()
}

async fn server_streaming_delivers_every_item_in_order<E: Env>(env: E) {
    let server = serve(&env, router(), ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let (_, mut replies) = client
        .raw()
        .open_stream(
            method("ticks"),
            Bytes::from(TICKS.to_le_bytes().to_vec()),
            StreamMode::ServerStreaming,
            &CallOptions::new(),
        )
        .await
        .unwrap();
    let mut expected = 0u32;
    while let Some(item) = replies.next().await {
        assert_eq!(item.unwrap(), Bytes::from(expected.to_le_bytes().to_vec()));
        expected += 1;
    }
    assert_eq!(expected, TICKS);
    // The final reply is still there once the items are read to their end.
    assert_eq!(
        replies.response().await.unwrap(),
        Bytes::from_static(b"ticked")
    );
}

async fn client_streaming_gets_one_reply<E: Env>(env: E) {
    let server = serve(&env, router(), ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let (sender, replies) = client
        .raw()
        .open_stream(
            method("count"),
            Bytes::new(),
            StreamMode::ClientStreaming,
            &CallOptions::new(),
        )
        .await
        .unwrap();
    let mut sender = sender.unwrap();
    // 4 MiB through a 256 KiB window: credit must flow back as the server reads.
    for _ in 0..64 {
        sender
            .send(Bytes::from(vec![1u8; 64 * 1024]))
            .await
            .unwrap();
    }
    sender.finish().await;
    let total = replies.response().await.unwrap();
    assert_eq!(
        u64::from_le_bytes(total[..].try_into().unwrap()),
        64 * 64 * 1024
    );
}

async fn bidirectional_echoes_while_sending<E: Env>(env: E) {
    let server = serve(&env, router(), ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let (sender, mut replies) = client
        .raw()
        .open_stream(
            method("echo"),
            Bytes::new(),
            StreamMode::Bidirectional,
            &CallOptions::new(),
        )
        .await
        .unwrap();
    let mut sender = sender.unwrap();
    for i in 0..100u32 {
        let item = Bytes::from(i.to_le_bytes().to_vec());
        sender.send(item.clone()).await.unwrap();
        assert_eq!(replies.next().await.unwrap().unwrap(), item);
    }
    sender.finish().await;
    assert!(replies.next().await.is_none());
}

/// A consumer that never reads holds at most its window (plus one item) and does not stop unary
/// calls on the same connection.
async fn stalled_consumer_is_bounded_and_stalls_nothing_else<E: Env>(env: E) {
    let window = 64 * 1024;
    let floods = Floods::default();
    let server = serve(&env, router_counting(&floods), ServerConfig::default()).await;
    let config = ClientConfig::default().stream_window(window);
    let client = connect(&env, server.local_addr().clone(), config).await;
    let (_, replies) = client
        .raw()
        .open_stream(
            method("flood"),
            Bytes::new(),
            StreamMode::ServerStreaming,
            &CallOptions::new(),
        )
        .await
        .unwrap();
    eventually(&env, "window filled", || {
        replies.buffered() >= window as usize
    })
    .await;
    for _ in 0..50 {
        let pong: String = client.call("ping", &()).await.unwrap();
        assert_eq!(pong, "pong");
    }
    // The pongs came back behind every item the handler had sent before them, on the same
    // connection: a handler that sent past its credit would have gone on during the 50 round
    // trips. Both sides are checked: what the handler sent, and what the consumer holds.
    assert!(
        floods.sent() <= window as usize + 16 * 1024,
        "the handler sent {} bytes",
        floods.sent()
    );
    assert!(
        replies.buffered() <= window as usize + 16 * 1024,
        "buffered {} bytes",
        replies.buffered()
    );
}

async fn dropping_the_stream_cancels_the_handler<E: Env>(env: E) {
    let floods = Floods::default();
    let server = serve(&env, router_counting(&floods), ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let (_, mut replies) = client
        .raw()
        .open_stream(
            method("flood"),
            Bytes::new(),
            StreamMode::ServerStreaming,
            &CallOptions::new(),
        )
        .await
        .unwrap();
    assert!(replies.next().await.unwrap().is_ok());
    assert_eq!(floods.running(), 1);
    drop(replies);
    // The server hears of it and stops the handler, which would otherwise wait for credit
    // forever.
    eventually(&env, "the server to stop the handler", || {
        floods.running() == 0
    })
    .await;
    let pong: String = client.call("ping", &()).await.unwrap();
    assert_eq!(pong, "pong");
    let _ = server;
}

async fn stream_deadline_ends_it_on_both_sides<E: Env>(env: E) {
    let floods = Floods::default();
    let server = serve(&env, router_counting(&floods), ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let (_, mut replies) = client
        .raw()
        .open_stream(
            method("flood"),
            Bytes::new(),
            StreamMode::ServerStreaming,
            &CallOptions::new().timeout(Some(Duration::from_millis(200))),
        )
        .await
        .unwrap();
    let mut error = None;
    while let Some(item) = replies.next().await {
        if let Err(e) = item {
            error = Some(e);
        }
    }
    let error = error.expect("the stream ends with an error");
    assert!(error.is_timeout(), "{error}");
    // The deadline travelled with the request: the server stops the handler too.
    eventually(&env, "the server to stop the handler", || {
        floods.running() == 0
    })
    .await;
    let _ = server;
}

e2e_and_per_core!(
    server_streaming_delivers_every_item_in_order,
    client_streaming_gets_one_reply,
    bidirectional_echoes_while_sending,
    stalled_consumer_is_bounded_and_stalls_nothing_else,
    dropping_the_stream_cancels_the_handler,
    stream_deadline_ends_it_on_both_sides,
);
