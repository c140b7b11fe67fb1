//! In process, the core hands frames over whole: a raw call's body reaches the handler, and
//! the reply reaches the caller, as the very bytes that were sent (no copy, no encoding), on
//! tokio and smol. Frames handed over whole are checked as decoded ones are: a peer that
//! sends unknown flags, a length over the limit or a length that is not its body's gets a
//! `GoAway`, and the server goes on serving others.

mod common;

use std::{collections::VecDeque, future::poll_fn, pin::Pin};

use common::{connect, eventually, run_smol, run_tokio, serve, Echo, Env};
use flumen::{
    inproc::{InProc, InProcAddr},
    stream::{
        frame::{flags, Frame, FrameDecoder, FrameHeader, FrameKind},
        hello::{Hello, HELLO_LEN},
        Bytes, Transport, TransportWrite,
    },
    ClientConfig, ErrorCode, ServerConfig,
};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

type TokioInProc = common::TokioInProcEnv;
type SmolInProc = common::SmolInProcEnv;

#[test]
fn tokio_bodies_reach_the_peer_uncopied() {
    run_tokio(bodies_reach_the_peer_uncopied::<TokioInProc>);
}

#[test]
fn smol_bodies_reach_the_peer_uncopied() {
    run_smol(bodies_reach_the_peer_uncopied::<SmolInProc>);
}

#[test]
fn tokio_whole_frames_are_checked() {
    run_tokio(whole_frames_are_checked::<TokioInProc>);
}

#[test]
fn smol_whole_frames_are_checked() {
    run_smol(whole_frames_are_checked::<SmolInProc>);
}

/// Echo returns the request's body as its reply: over frames handed whole, the caller gets
/// back the allocation it sent.
async fn bodies_reach_the_peer_uncopied<E: Env<Tr = InProc>>(env: E) {
    let server = serve(&env, Echo, ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let sizes = [0, 32, 4096, 64 * 1024, 1 << 20];
    for len in sizes {
        let body = Bytes::from(vec![len as u8; len]);
        let reply = client.raw().call(1, body.clone()).await.unwrap();
        assert_eq!(reply, body, "len {len}");
        if len > 0 {
            assert_eq!(reply.as_ptr(), body.as_ptr(), "len {len}: a copy came back");
        }
    }
    // The last request is counted once its hand-over returns, which can be after the reply.
    eventually(&env, "the last request counted", || {
        client.raw().stats().frames_written >= sizes.len() as u64
    })
    .await;
    let stats = client.raw().stats();
    assert_eq!(stats.frames_written, sizes.len() as u64);
    assert_eq!(stats.frames_read, sizes.len() as u64);
}

/// Opens a connection by hand and sends `frame` whole after the handshake; returns the
/// `GoAway` code the server answers with.
async fn goaway_for(addr: &InProcAddr, frame: Frame) -> ErrorCode {
    let (mut reader, mut writer) = InProc.connect(addr).await.unwrap();
    writer
        .write_all(&Hello::new(1 << 20, 16).encode())
        .await
        .unwrap();
    let mut hello = [0u8; HELLO_LEN];
    reader.read_exact(&mut hello).await.unwrap();
    let mut queue = VecDeque::from([frame]);
    poll_fn(|cx| Pin::new(&mut writer).poll_write_frames(cx, &mut queue))
        .await
        .unwrap();
    // Read as bytes, the pipe encodes the server's frames.
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await.unwrap();
    let mut buf = bytes::BytesMut::from(&bytes[..]);
    let goaway = FrameDecoder::new(1 << 20)
        .decode(&mut buf)
        .unwrap()
        .expect("a GoAway");
    assert_eq!(goaway.header.kind, FrameKind::GoAway);
    ErrorCode::from_u32(goaway.header.aux)
}

async fn whole_frames_are_checked<E: Env<Tr = InProc>>(env: E) {
    let max = 4096;
    let server = serve(&env, Echo, ServerConfig::default().max_frame_len(max)).await;
    let addr = server.local_addr().clone();
    let client = connect(&env, addr.clone(), ClientConfig::default()).await;
    let request = |body: Bytes| {
        let header = FrameHeader {
            method: 1,
            ..FrameHeader::new(FrameKind::Request, 1)
        };
        Frame::new(header, body)
    };

    let mut unknown_flags = request(Bytes::from_static(b"x"));
    unknown_flags.header.flags = 0x80;
    assert_eq!(!flags::KNOWN & 0x80, 0x80);
    let too_large = request(Bytes::from(vec![0; max as usize + 1]));
    let mut lying = request(Bytes::from_static(b"four"));
    lying.header.len = 3;
    let cases = [
        ("unknown flags", unknown_flags, ErrorCode::PROTOCOL_ERROR),
        ("over the limit", too_large, ErrorCode::FRAME_TOO_LARGE),
        ("length not the body's", lying, ErrorCode::PROTOCOL_ERROR),
    ];
    for (i, (case, frame, code)) in cases.into_iter().enumerate() {
        assert_eq!(goaway_for(&addr, frame).await, code, "{case}");
        eventually(&env, "the violation counted", || {
            server.stats().protocol_errors == i as u64 + 1
        })
        .await;
        // Others are still served.
        let body = Bytes::from_static(b"still here");
        assert_eq!(client.raw().call(1, body.clone()).await.unwrap(), body);
    }
}
