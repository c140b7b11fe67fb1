//! Compression end to end, on every runtime and transport, with lz4 and zstd: unary calls and
//! streams in both directions carry compressible 64 KiB bodies compressed (the byte counters
//! show it) and arrive intact; small bodies go as they are; a side that did not turn
//! compression on gets nothing compressed, and calls work all the same.

mod common;

use common::{connect, eventually, serve, Env};
use flumen::{
    compress::{Algorithm, Compression},
    stream::StreamMode,
    Bytes, CallOptions, ClientConfig, ErrorCode, Router, ServerConfig, Status,
};
use futures_lite::StreamExt;

e2e_and_per_core!(
    lz4_bodies_travel_compressed,
    zstd_bodies_travel_compressed,
    only_a_side_that_asks_gets_compressed_bodies
);

/// 64 KiB of text-like bytes that compress well.
fn compressible(seed: u8) -> Bytes {
    let line = format!("{seed:03} the quick brown fox jumps over the lazy dog; ");
    Bytes::from(line.repeat(65536 / line.len() + 1)[..65536].to_owned())
}

const ITEMS: usize = 8;

fn router() -> Router {
    Router::new()
        .route_raw("echo", |request| async move { Ok(request.into_body()) })
        // Server-streaming: ITEMS compressible items.
        .route_raw("items", |request| async move {
            let sink = request
                .sink()
                .ok_or(Status::new(ErrorCode::BAD_REQUEST, "not a stream"))?;
            for i in 0..ITEMS {
                sink.send(compressible(i as u8)).await?;
            }
            Ok(Bytes::new())
        })
        // Client-streaming: checks each item, answers how many were intact.
        .route_raw("check", |request| async move {
            let mut items = request
                .items()
                .ok_or(Status::new(ErrorCode::BAD_REQUEST, "not a stream"))?;
            let mut intact = 0u32;
            let mut i = 0u8;
            while let Some(item) = items.next().await {
                intact += u32::from(item? == compressible(i));
                i += 1;
            }
            Ok(Bytes::from(intact.to_le_bytes().to_vec()))
        })
}

fn method(name: &str) -> u32 {
    flumen::MethodId::from_name(name).as_u32()
}

async fn lz4_bodies_travel_compressed<E: Env>(env: E) {
    bodies_travel_compressed(env, Algorithm::Lz4).await
}

async fn zstd_bodies_travel_compressed<E: Env>(env: E) {
    bodies_travel_compressed(env, Algorithm::Zstd { level: 3 }).await
}

async fn bodies_travel_compressed<E: Env>(env: E, algorithm: Algorithm) {
    let compression = Some(Compression::new(algorithm));
    let server = serve(
        &env,
        router(),
        ServerConfig::default().compression(compression),
    )
    .await;
    let config = ClientConfig::default().compression(compression);
    let client = connect(&env, server.local_addr().clone(), config).await;
    let raw = client.raw();
    let before = (raw.stats(), server.stats().io);

    // Unary: 16 calls of 64 KiB each way.
    for i in 0..16 {
        let body = compressible(i);
        assert_eq!(raw.call(method("echo"), body.clone()).await.unwrap(), body);
    }
    // Server-streaming: 8 items of 64 KiB from the server.
    let (_, mut replies) = raw
        .open_stream(
            method("items"),
            Bytes::new(),
            StreamMode::ServerStreaming,
            &CallOptions::new(),
        )
        .await
        .unwrap();
    for i in 0..ITEMS {
        assert_eq!(
            replies.next().await.unwrap().unwrap(),
            compressible(i as u8)
        );
    }
    assert!(replies.next().await.is_none());
    // Client-streaming: 8 items of 64 KiB to the server, all intact there.
    let (sender, replies) = raw
        .open_stream(
            method("check"),
            Bytes::new(),
            StreamMode::ClientStreaming,
            &CallOptions::new(),
        )
        .await
        .unwrap();
    let mut sender = sender.unwrap();
    for i in 0..ITEMS {
        sender.send(compressible(i as u8)).await.unwrap();
    }
    sender.finish().await;
    let intact = replies.response().await.unwrap();
    assert_eq!(
        u32::from_le_bytes(intact[..].try_into().unwrap()),
        ITEMS as u32
    );
    // A small body is below the threshold: it goes as it is, and arrives as it was.
    let small = Bytes::from_static(b"short and sweet");
    assert_eq!(
        raw.call(method("echo"), small.clone()).await.unwrap(),
        small
    );

    // The stats show compression at work: 24 bodies each way went compressed (16 echoes and
    // 8 items), the small one and the empty ones did not.
    let client_io = raw.stats().since(&before.0);
    let server_io = server.stats().io.since(&before.1);
    assert_eq!(client_io.frames_compressed, 24, "{client_io:?}");
    assert_eq!(client_io.frames_decompressed, 24, "{client_io:?}");
    assert_eq!(server_io.frames_compressed, 24, "{server_io:?}");
    assert_eq!(server_io.frames_decompressed, 24, "{server_io:?}");
    // 24 bodies of 64 KiB went each way (1.5 MiB); compressed, far less crossed the wire.
    let sent = client_io.bytes_written;
    let received = server_io.bytes_written;
    let raw_bytes = 24 * 65536;
    assert!(
        sent < raw_bytes / 8,
        "{algorithm:?}: the client wrote {sent} bytes for {raw_bytes}"
    );
    assert!(
        received < raw_bytes / 8,
        "{algorithm:?}: the server wrote {received} bytes for {raw_bytes}"
    );
}

async fn only_a_side_that_asks_gets_compressed_bodies<E: Env>(env: E) {
    let lz4 = Some(Compression::new(Algorithm::Lz4));
    // The client compresses, the server did not turn compression on: it advertises nothing,
    // so the client sends its bodies as they are (and the server's replies are plain too).
    let server = serve(&env, router(), ServerConfig::default()).await;
    let config = ClientConfig::default().compression(lz4);
    plain_both_ways(
        &env,
        &connect(&env, server.local_addr().clone(), config).await,
    )
    .await;
    // The server compresses, the client did not ask: nothing compressed either way.
    let server = serve(&env, router(), ServerConfig::default().compression(lz4)).await;
    let config = ClientConfig::default();
    plain_both_ways(
        &env,
        &connect(&env, server.local_addr().clone(), config).await,
    )
    .await;
}

/// Four echoes of 64 KiB, which cross the wire uncompressed both ways.
async fn plain_both_ways<E: Env>(env: &E, client: &flumen::Client) {
    for i in 0..4 {
        let body = compressible(i);
        assert_eq!(
            client
                .raw()
                .call(method("echo"), body.clone())
                .await
                .unwrap(),
            body
        );
    }
    // The writer counts a batch once its write returns, which may be after the reply to it
    // arrived (over shared memory, often).
    let plain = || {
        let stats = client.raw().stats();
        stats.bytes_written > 4 * 65536 && stats.bytes_read > 4 * 65536
    };
    eventually(env, "4 x 64 KiB counted each way", plain).await;
    let stats = client.raw().stats();
    assert_eq!(
        (stats.frames_compressed, stats.frames_decompressed),
        (0, 0),
        "not negotiated: nothing compressed"
    );
}
