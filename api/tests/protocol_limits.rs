//! Bad peers: garbage, wrong magic or version, oversized and slow frames, too many connections.
//! Each gets its connection closed with a clear error while other clients keep working.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{connect, serve, Env};
use flumen::{
    stream::{
        frame::{self, Decoded, FrameHeader, FrameKind, HEADER_LEN},
        hello::{Hello, HELLO_LEN},
        Listener, Transport,
    },
    ClientConfig, ConnectError, ErrorCode, Router, ServerConfig, ServerHandle, Status,
};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

e2e!(
    garbage_bytes_close_only_that_connection,
    wrong_magic_is_refused,
    wrong_version_is_refused,
    frame_over_the_limit_is_refused_before_its_body,
    frame_that_never_completes_hits_the_read_timeout,
    connection_limit_refuses_with_a_reason,
    non_flumen_server_fails_the_handshake,
    flood_of_pings_is_answered_in_order,
    stream_items_past_their_credit_close_with_flow_control,
);

async fn echo_server<E: Env>(env: &E, config: ServerConfig) -> ServerHandle<SocketAddr> {
    let router = Router::new().route("echo", |n: u64| async move { Ok::<_, Status>(n) });
    serve(env, router, config).await
}

/// Sends `bytes` on a raw connection and returns everything the server sends until it closes.
async fn exchange<E: Env>(env: &E, addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let (mut reader, mut writer) = env.transport().connect(&addr).await.unwrap();
    writer.write_all(bytes).await.unwrap();
    writer.flush().await.unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Splits what a server sent into its hello and its frames.
fn parse(received: &[u8]) -> (Hello, Vec<(FrameHeader, Vec<u8>)>) {
    let hello = Hello::decode(received[..HELLO_LEN].try_into().unwrap()).unwrap();
    let mut rest = &received[HELLO_LEN..];
    let mut frames = Vec::new();
    while let Ok(Decoded::Complete(header)) = frame::decode(rest, u32::MAX) {
        let end = HEADER_LEN + header.len as usize;
        frames.push((header, rest[HEADER_LEN..end].to_vec()));
        rest = &rest[end..];
    }
    assert!(rest.is_empty(), "trailing partial frame from the server");
    (hello, frames)
}

/// Asserts the server ended the connection with a `GoAway` carrying `code`.
fn assert_go_away(received: &[u8], code: ErrorCode) {
    let (_, frames) = parse(received);
    let (header, reason) = frames.last().expect("no frame before the close");
    assert_eq!(header.kind, FrameKind::GoAway);
    assert_eq!(
        ErrorCode::from_u32(header.aux),
        code,
        "reason: {}",
        String::from_utf8_lossy(reason)
    );
    assert!(!reason.is_empty(), "a GoAway with an error says why");
}

/// A client connected before the bad peer keeps working after it.
async fn still_serving<E: Env>(client: &flumen::Client) {
    for n in 0..10u64 {
        let got: u64 = client.call("echo", &n).await.unwrap();
        assert_eq!(got, n);
    }
}

async fn garbage_bytes_close_only_that_connection<E: Env>(env: E) {
    let server = echo_server(&env, ServerConfig::default()).await;
    let good = connect(&env, *server.local_addr(), ClientConfig::default()).await;
    let received = exchange(&env, *server.local_addr(), &[0xde; 64]).await;
    assert_go_away(&received, ErrorCode::BAD_MAGIC);
    // Garbage after a valid hello is a protocol error.
    let mut bytes = Hello::new(1024, 8).encode().to_vec();
    bytes.extend_from_slice(&[0xff; 40]);
    let received = exchange(&env, *server.local_addr(), &bytes).await;
    assert_go_away(&received, ErrorCode::PROTOCOL_ERROR);
    still_serving::<E>(&good).await;
    assert_eq!(server.stats().protocol_errors, 2);
}

async fn wrong_magic_is_refused<E: Env>(env: E) {
    let server = echo_server(&env, ServerConfig::default()).await;
    let good = connect(&env, *server.local_addr(), ClientConfig::default()).await;
    let mut hello = Hello::new(1024, 8).encode();
    hello[..4].copy_from_slice(b"HTTP");
    let received = exchange(&env, *server.local_addr(), &hello).await;
    assert_go_away(&received, ErrorCode::BAD_MAGIC);
    still_serving::<E>(&good).await;
}

async fn wrong_version_is_refused<E: Env>(env: E) {
    let server = echo_server(&env, ServerConfig::default()).await;
    let good = connect(&env, *server.local_addr(), ClientConfig::default()).await;
    let mut hello = Hello::new(1024, 8).encode();
    hello[4] = 99;
    let received = exchange(&env, *server.local_addr(), &hello).await;
    let (server_hello, _) = parse(&received);
    assert_eq!(
        server_hello.version, 1,
        "the server still says which version it speaks"
    );
    assert_go_away(&received, ErrorCode::UNSUPPORTED_VERSION);
    still_serving::<E>(&good).await;
}

async fn frame_over_the_limit_is_refused_before_its_body<E: Env>(env: E) {
    let server = echo_server(&env, ServerConfig::default().max_frame_len(1024)).await;
    let good = connect(&env, *server.local_addr(), ClientConfig::default()).await;
    let mut bytes = Hello::new(1024, 8).encode().to_vec();
    let mut header = [0u8; HEADER_LEN];
    // Claims 1 GiB; only the header is sent, so the server must decide from the header alone.
    FrameHeader {
        len: 1 << 30,
        ..FrameHeader::new(FrameKind::Request, 1)
    }
    .encode(&mut header);
    bytes.extend_from_slice(&header);
    let received = exchange(&env, *server.local_addr(), &bytes).await;
    assert_go_away(&received, ErrorCode::FRAME_TOO_LARGE);
    still_serving::<E>(&good).await;
}

async fn frame_that_never_completes_hits_the_read_timeout<E: Env>(env: E) {
    let config = ServerConfig::default().read_timeout(Duration::from_millis(100));
    let server = echo_server(&env, config).await;
    let good = connect(&env, *server.local_addr(), ClientConfig::default()).await;
    // A hello, then half a header, then silence: the peer that sends one byte a minute.
    let mut bytes = Hello::new(1024, 8).encode().to_vec();
    bytes.extend_from_slice(&[1, 0, 0, 0, 7, 0]);
    let received = exchange(&env, *server.local_addr(), &bytes).await;
    assert_go_away(&received, ErrorCode::READ_TIMEOUT);
    // A peer that never finishes its hello meets the same limit.
    let received = exchange(&env, *server.local_addr(), b"FLM").await;
    assert_go_away(&received, ErrorCode::READ_TIMEOUT);
    still_serving::<E>(&good).await;
    assert_eq!(server.stats().timeouts, 2);
}

async fn connection_limit_refuses_with_a_reason<E: Env>(env: E) {
    let server = echo_server(&env, ServerConfig::default().max_connections(1)).await;
    let good = connect(&env, *server.local_addr(), ClientConfig::default()).await;
    let refused = flumen::Client::connect(&env.rt(), &env.transport(), server.local_addr())
        .await
        .unwrap_err();
    match refused {
        ConnectError::Refused { code, .. } => assert_eq!(code, ErrorCode::TOO_MANY_CONNECTIONS),
        other => panic!("expected a refusal, got {other}"),
    }
    still_serving::<E>(&good).await;
    assert_eq!(server.stats().refused, 1);
}

async fn non_flumen_server_fails_the_handshake<E: Env>(env: E) {
    let mut listener = env.transport().bind(&common::loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    env.spawn(async move {
        let (connecting, _) = listener.accept().await.unwrap();
        let (_reader, mut writer) = connecting.await.unwrap();
        let _ = writer.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        let _ = writer.close().await;
    });
    let err = flumen::Client::connect(&env.rt(), &env.transport(), &addr)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Handshake(_)), "{err}");
}

async fn flood_of_pings_is_answered_in_order<E: Env>(env: E) {
    let server = echo_server(&env, ServerConfig::default()).await;
    let (mut reader, mut writer) = env.transport().connect(server.local_addr()).await.unwrap();
    const PINGS: u64 = 20_000;
    let sender = async move {
        let mut bytes = Hello::new(1024, 8).encode().to_vec();
        let mut header = [0u8; HEADER_LEN];
        for seq in 0..PINGS {
            FrameHeader::new(FrameKind::Ping, seq).encode(&mut header);
            bytes.extend_from_slice(&header);
        }
        writer.write_all(&bytes).await.unwrap();
        writer.flush().await.unwrap();
        writer
    };
    let receiver = async move {
        let expected = HELLO_LEN + PINGS as usize * HEADER_LEN;
        let mut received = vec![0u8; expected];
        reader.read_exact(&mut received).await.unwrap();
        received
    };
    let (_writer, received) = futures_lite::future::zip(sender, receiver).await;
    let (_, frames) = parse(&received);
    assert_eq!(frames.len() as u64, PINGS);
    for (seq, (header, _)) in frames.iter().enumerate() {
        assert_eq!((header.kind, header.seq), (FrameKind::Pong, seq as u64));
    }
}

/// A client that ignores stream credit is cut off with `FLOW_CONTROL` after at most the stream
/// window (plus one item) was buffered for it; other clients go on.
async fn stream_items_past_their_credit_close_with_flow_control<E: Env>(env: E) {
    let router = Router::new()
        .route("echo", |n: u64| async move { Ok::<_, Status>(n) })
        // Takes a client stream and never reads it.
        .route_raw("hold", |request| async move {
            let _items = request.items();
            std::future::pending::<()>().await;
            Ok(flumen::Bytes::new())
        });
    let server = serve(&env, router, ServerConfig::default()).await;
    let good = connect(&env, *server.local_addr(), ClientConfig::default()).await;
    let mut bytes = Hello::new(1 << 20, 8).encode().to_vec();
    let mut header = [0u8; HEADER_LEN];
    let request = FrameHeader {
        method: flumen::MethodId::from_name("hold").as_u32(),
        flags: frame::flags::STREAM_REQUEST,
        ..FrameHeader::new(FrameKind::Request, 1)
    };
    request.encode(&mut header);
    bytes.extend_from_slice(&header);
    // The default window is 256 KiB: the fifth 64 KiB item has no credit.
    let item = vec![7u8; 64 * 1024];
    for _ in 0..5 {
        FrameHeader {
            len: item.len() as u32,
            ..FrameHeader::new(FrameKind::StreamItem, 1)
        }
        .encode(&mut header);
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&item);
    }
    let received = exchange(&env, *server.local_addr(), &bytes).await;
    assert_go_away(&received, ErrorCode::FLOW_CONTROL);
    still_serving::<E>(&good).await;
    assert_eq!(server.stats().protocol_errors, 1);
}
