//! Bad peers: garbage, wrong magic or version, oversized and slow frames, too many connections.
//! Each gets its connection closed with a clear error while other clients keep working.

mod common;

use std::time::Duration;

use common::{connect, serve, Addr, Env};
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
    client_answers_a_request_frame_with_protocol_error,
    client_closes_with_flow_control_when_items_pass_its_credit,
    client_answers_every_ping_of_a_flood,
    server_lingers_so_its_go_away_survives_unread_input,
);

async fn echo_server<E: Env>(env: &E, config: ServerConfig) -> ServerHandle<Addr<E>> {
    let router = Router::new().route("echo", |n: u64| async move { Ok::<_, Status>(n) });
    serve(env, router, config).await
}

/// Sends `bytes` on a raw connection and returns everything the server sends until it closes.
async fn exchange<E: Env>(env: &E, addr: Addr<E>, bytes: &[u8]) -> Vec<u8> {
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
    let good = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let received = exchange(&env, server.local_addr().clone(), &[0xde; 64]).await;
    assert_go_away(&received, ErrorCode::BAD_MAGIC);
    // Garbage after a valid hello is a protocol error.
    let mut bytes = Hello::new(1024, 8).encode().to_vec();
    bytes.extend_from_slice(&[0xff; 40]);
    let received = exchange(&env, server.local_addr().clone(), &bytes).await;
    assert_go_away(&received, ErrorCode::PROTOCOL_ERROR);
    still_serving::<E>(&good).await;
    assert_eq!(server.stats().protocol_errors, 2);
}

async fn wrong_magic_is_refused<E: Env>(env: E) {
    let server = echo_server(&env, ServerConfig::default()).await;
    let good = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let mut hello = Hello::new(1024, 8).encode();
    hello[..4].copy_from_slice(b"HTTP");
    let received = exchange(&env, server.local_addr().clone(), &hello).await;
    assert_go_away(&received, ErrorCode::BAD_MAGIC);
    still_serving::<E>(&good).await;
}

async fn wrong_version_is_refused<E: Env>(env: E) {
    let server = echo_server(&env, ServerConfig::default()).await;
    let good = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let mut hello = Hello::new(1024, 8).encode();
    hello[4] = 99;
    let received = exchange(&env, server.local_addr().clone(), &hello).await;
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
    let good = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let mut bytes = Hello::new(1024, 8).encode().to_vec();
    let mut header = [0u8; HEADER_LEN];
    // Claims 1 GiB; only the header is sent, so the server must decide from the header alone.
    FrameHeader {
        len: 1 << 30,
        ..FrameHeader::new(FrameKind::Request, 1)
    }
    .encode(&mut header);
    bytes.extend_from_slice(&header);
    let received = exchange(&env, server.local_addr().clone(), &bytes).await;
    assert_go_away(&received, ErrorCode::FRAME_TOO_LARGE);
    still_serving::<E>(&good).await;
}

async fn frame_that_never_completes_hits_the_read_timeout<E: Env>(env: E) {
    let config = ServerConfig::default().read_timeout(Duration::from_millis(100));
    let server = echo_server(&env, config).await;
    let good = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    // A hello, then half a header, then silence: the peer that sends one byte a minute.
    let mut bytes = Hello::new(1024, 8).encode().to_vec();
    bytes.extend_from_slice(&[1, 0, 0, 0, 7, 0]);
    let received = exchange(&env, server.local_addr().clone(), &bytes).await;
    assert_go_away(&received, ErrorCode::READ_TIMEOUT);
    // A peer that never finishes its hello meets the same limit.
    let received = exchange(&env, server.local_addr().clone(), b"FLM").await;
    assert_go_away(&received, ErrorCode::READ_TIMEOUT);
    // So does a large frame that stops after its header and a little of its body (read into a
    // buffer of its own on transports that read into initialised memory).
    let mut bytes = Hello::new(1024, 8).encode().to_vec();
    let mut header = [0u8; HEADER_LEN];
    FrameHeader {
        len: 64 * 1024,
        ..FrameHeader::new(FrameKind::Request, 1)
    }
    .encode(&mut header);
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&[0; 100]);
    let received = exchange(&env, server.local_addr().clone(), &bytes).await;
    assert_go_away(&received, ErrorCode::READ_TIMEOUT);
    still_serving::<E>(&good).await;
    assert_eq!(server.stats().timeouts, 3);
}

async fn connection_limit_refuses_with_a_reason<E: Env>(env: E) {
    let server = echo_server(&env, ServerConfig::default().max_connections(1)).await;
    let good = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
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
    let mut listener = env.transport().bind(&env.addr()).await.unwrap();
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
    let good = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
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
    let received = exchange(&env, server.local_addr().clone(), &bytes).await;
    assert_go_away(&received, ErrorCode::FLOW_CONTROL);
    still_serving::<E>(&good).await;
    assert_eq!(server.stats().protocol_errors, 1);
}

/// A fake server: binds, hands the listener's first connection to `script` as a raw peer
/// after the hellos, and returns its address.
async fn fake_server<E, F, Fut>(env: &E, script: F) -> Addr<E>
where
    E: Env,
    F: FnOnce(flumen_peer::TransportPeer<E::Tr>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut listener = env.transport().bind(&env.addr()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    env.spawn(async move {
        let mut peer = flumen_peer::Peer::accept(&mut listener).await.unwrap();
        peer.send_hello(Hello::new(1 << 20, 64)).await.unwrap();
        peer.read_hello().await.unwrap();
        script(peer).await;
    });
    addr
}

/// A `Request` is a frame only servers receive: the client sends `GoAway PROTOCOL_ERROR`,
/// fails its pending calls with a protocol error, and closes.
async fn client_answers_a_request_frame_with_protocol_error<E: Env>(env: E) {
    let (told, heard) = smol::channel::bounded(1);
    let addr = fake_server(&env, move |mut peer| async move {
        // Wait for the client's call, then send it a request of our own.
        let call = peer.next_frame().await.unwrap().unwrap();
        assert_eq!(call.header.kind, FrameKind::Request);
        let request = flumen_peer::request(1, 1);
        peer.send_frame(request, b"").await.unwrap();
        told.send(peer.go_away().await.unwrap()).await.unwrap();
    })
    .await;
    let client = connect(&env, addr, ClientConfig::default()).await;
    let err = client
        .call::<_, u64>("echo", &1u64)
        .await
        .expect_err("the connection failed");
    let (code, reason) = heard.recv().await.unwrap();
    assert_eq!(code, ErrorCode::PROTOCOL_ERROR, "{reason}");
    assert!(
        err.to_string().contains("Request"),
        "the error names the frame: {err}"
    );
    assert!(client.is_closed());
}

/// A server that sends stream items past the client's credit gets `GoAway FLOW_CONTROL`, and
/// the call fails.
async fn client_closes_with_flow_control_when_items_pass_its_credit<E: Env>(env: E) {
    let (told, heard) = smol::channel::bounded(1);
    let addr = fake_server(&env, move |mut peer| async move {
        let call = peer.next_frame().await.unwrap().unwrap();
        // The client's window is 64 KiB: the second 60 KB item has no credit.
        let item = FrameHeader::new(FrameKind::StreamItem, call.header.seq);
        for _ in 0..3 {
            if peer.send_frame(item, &[1u8; 60_000]).await.is_err() {
                break;
            }
        }
        told.send(peer.go_away().await.unwrap()).await.unwrap();
    })
    .await;
    let config = ClientConfig::default().stream_window(64 * 1024);
    let client = connect(&env, addr, config).await;
    let (_, mut replies) = client
        .raw()
        .open_stream(
            1,
            flumen::Bytes::new(),
            flumen::stream::StreamMode::ServerStreaming,
            &Default::default(),
        )
        .await
        .unwrap();
    let (code, reason) = heard.recv().await.unwrap();
    assert_eq!(code, ErrorCode::FLOW_CONTROL, "{reason}");
    // Whatever arrived within the credit may be read; then the stream fails.
    let mut failed = false;
    while let Some(item) = futures_lite::StreamExt::next(&mut replies).await {
        if item.is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "the stream ends with an error");
}

/// Every ping is answered, even when the client's queue fills faster than the server reads:
/// 4,000 pings of 1 KiB against a queue of 2 KiB all come back, in order.
async fn client_answers_every_ping_of_a_flood<E: Env>(env: E) {
    const PINGS: u64 = 4_000;
    let (told, heard) = smol::channel::bounded(1);
    let addr = fake_server(&env, move |peer| async move {
        let (reader, mut writer) = peer.into_parts();
        let mut bytes = Vec::new();
        for seq in 0..PINGS {
            bytes.extend(flumen_peer::frame(
                FrameHeader::new(FrameKind::Ping, seq),
                &[seq as u8; 1024],
            ));
        }
        // Sent all at once, read as they come (a peer that reads nothing is stopped by the
        // client's backpressure, as it should be).
        let writing = async move {
            writer.write_all(&bytes).await.unwrap();
            writer.flush().await.unwrap();
            writer
        };
        let mut peer = flumen_peer::Peer::new(reader, futures_lite::io::sink());
        let reading = async move {
            let mut seqs = Vec::new();
            while seqs.len() < PINGS as usize {
                let frame = peer.next_frame().await.unwrap().expect("a pong");
                assert_eq!(frame.header.kind, FrameKind::Pong);
                assert_eq!(frame.body.len(), 1024);
                seqs.push(frame.header.seq);
            }
            seqs
        };
        let (_writer, seqs) = futures_lite::future::zip(writing, reading).await;
        told.send(seqs).await.unwrap();
    })
    .await;
    let config = ClientConfig::default().max_queued_bytes(2048);
    let client = connect(&env, addr, config).await;
    let seqs = heard.recv().await.unwrap();
    assert_eq!(seqs, (0..PINGS).collect::<Vec<_>>());
    assert!(
        client.raw().stats().queue_full_waits > 0,
        "the flood did fill the queue"
    );
}

/// A server that closes a connection with unread input (bytes after the violating frame) still
/// gets its GoAway to the peer: it reads and drops the rest instead of resetting the
/// connection under the GoAway.
async fn server_lingers_so_its_go_away_survives_unread_input<E: Env>(env: E) {
    let server = echo_server(&env, ServerConfig::default()).await;
    let peer = flumen_peer::connect(&env.transport(), server.local_addr())
        .await
        .unwrap();
    let mut bytes = Hello::new(1024, 8).encode().to_vec();
    // A Response is a frame only clients receive; then 1 MiB the server will not decode.
    bytes.extend(flumen_peer::frame(
        FrameHeader::new(FrameKind::Response, 1),
        b"",
    ));
    bytes.extend(vec![0u8; 1 << 20]);
    let (reader, mut writer) = peer.into_parts();
    // Written while the server answers, so that much of it is unread when the server closes.
    let writing = async move {
        let _ = writer.write_all(&bytes).await;
        writer
    };
    let mut listening = flumen_peer::Peer::new(reader, futures_lite::io::sink());
    let reading = async move {
        listening.read_hello().await.unwrap();
        listening.go_away().await
    };
    let (_writer, go_away) = futures_lite::future::zip(writing, reading).await;
    let (code, reason) = go_away.expect("the GoAway arrives, not a reset");
    assert_eq!(code, ErrorCode::PROTOCOL_ERROR, "{reason}");
}
