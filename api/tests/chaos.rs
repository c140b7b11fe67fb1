//! Calls through a chaos transport (`flumen_peer::chaos`) that delays, splits, stalls, cuts
//! and corrupts the client's connection, with unary calls and streams running. Under each:
//! every call resolves (its reply or a typed error), none later than its deadline allows, and
//! no call ever receives a reply meant for another call.

mod common;

use std::time::{Duration, Instant};

use common::{join_all, serve, Env};
use flumen::{
    stream::{frame::HEADER_LEN, hello::HELLO_LEN, Transport},
    Client, ClientConfig, Codec, MsgPack, Router, Server, ServerConfig, Status,
};
use flumen_peer::chaos::{Chaos, Faults};
use flumen_tls::{DevCa, TlsTransport};
use futures_lite::StreamExt;

e2e!(
    delayed_bytes,
    one_byte_at_a_time,
    a_stall_longer_than_some_deadlines,
    a_cut_connection,
    a_corrupted_byte,
);

/// Each unary call's deadline.
const DEADLINE: Duration = Duration::from_millis(1500);
/// How late past its deadline a call may resolve: the client's timer tick, and scheduling.
const SLACK: Duration = Duration::from_millis(500);
/// Tags a value so that a reply can be told apart from corruption: `check == id ^ TAG`.
const TAG: u64 = 0x5eed_f00d_dead_beef;

/// `echo` returns what it got; `items` echoes each item of a stream.
fn router() -> Router {
    Router::new()
        .route("echo", |tagged: (u64, u64)| async move {
            Ok::<_, Status>(tagged)
        })
        .route_raw("items", |request| async move {
            let missing = || Status::new(flumen::ErrorCode::BAD_REQUEST, "expected a stream");
            let mut items = request.items().ok_or_else(missing)?;
            let sink = request.sink().ok_or_else(missing)?;
            while let Some(item) = items.next().await {
                sink.send(item?).await?;
            }
            Ok(flumen::Bytes::new())
        })
}

/// What the calls of a scenario came to.
#[derive(Debug, Default)]
struct Tally {
    own: usize,
    /// Replies whose body was damaged in transit (Flumen leaves integrity to the transport:
    /// TLS and QUIC guarantee it, TCP's checksum mostly does).
    corrupted: usize,
    errors: usize,
    /// Streams that ended with a typed error.
    failed_streams: usize,
}

/// One unary call, checked: its own reply, a damaged body, or a typed error, in time.
async fn checked_call(client: &Client, id: u64) -> Result<bool, flumen::Error> {
    let started = Instant::now();
    let result = client.call::<_, (u64, u64)>("echo", &(id, id ^ TAG)).await;
    assert!(
        started.elapsed() <= DEADLINE + SLACK,
        "call {id} resolved {:?} after it started, deadline {DEADLINE:?}",
        started.elapsed()
    );
    let (got, check) = result?;
    if check != got ^ TAG {
        return Ok(false);
    }
    assert_eq!(got, id, "call {id} received the reply of call {got}");
    Ok(true)
}

/// One bidirectional stream of `count` items; each item that comes back must be the next one
/// sent, in order, unless the stream fails with a typed error.
async fn checked_stream(client: &Client, id: u64, count: u64) -> Result<(), flumen::CallError> {
    let method = flumen::MethodId::from_name("items").as_u32();
    let options = flumen::CallOptions::new().timeout(Some(DEADLINE * 2));
    let (sender, mut replies) = client
        .raw()
        .open_stream(
            method,
            flumen::Bytes::new(),
            flumen::stream::StreamMode::Bidirectional,
            &options,
        )
        .await?;
    let mut sender = sender.expect("a bidirectional stream sends");
    let send = async move {
        for k in 0..count {
            let item = (id << 32 | k).to_le_bytes().to_vec();
            if sender.send(flumen::Bytes::from(item)).await.is_err() {
                return;
            }
        }
        sender.finish().await;
    };
    let receive = async move {
        let mut next = 0;
        while let Some(item) = replies.next().await {
            let item = item?;
            if let Ok(bytes) = <[u8; 8]>::try_from(&item[..]) {
                let value = u64::from_le_bytes(bytes);
                if value >> 32 == id {
                    assert_eq!(value & 0xFFFF_FFFF, next, "stream {id}: items out of order");
                } else {
                    // Damaged in transit, or another stream's item: only damage may differ.
                    assert!(
                        value >> 32 > 1,
                        "stream {id} received an item of stream {}",
                        value >> 32
                    );
                }
            }
            next += 1;
        }
        Ok(())
    };
    futures_lite::future::zip(send, receive).await.1
}

/// Runs `calls` unary calls and two streams at once over a client whose connection suffers
/// `faults`; returns the tally.
async fn scenario<E: Env>(env: &E, faults: Faults, calls: u64) -> Tally {
    let server = serve(env, router(), ServerConfig::default()).await;
    let transport = Chaos::new(env.transport(), faults);
    let tally = calls_through(env, &transport, server.local_addr(), calls).await;
    drop(server);
    tally
}

/// Runs `calls` unary calls and, at once, two streams, over a client that connects to `addr`
/// through `transport`; returns the tally.
async fn calls_through<E: Env, T: Transport>(
    env: &E,
    transport: &T,
    addr: &T::Addr,
    calls: u64,
) -> Tally {
    let config = ClientConfig::default().default_timeout(Some(DEADLINE));
    let client = match Client::connect_with(
        &env.rt(),
        transport,
        addr,
        config,
        flumen::MsgPack::default(),
    )
    .await
    {
        Ok(client) => client,
        // A fault during the hello: a typed connect error is an acceptable outcome.
        Err(e) => {
            println!("connect failed: {e}");
            return Tally {
                errors: calls as usize,
                ..Tally::default()
            };
        }
    };
    let mut tally = Tally::default();
    let streams = join_all((0..2).map(|id| checked_stream(&client, id, 50)));
    let unary = join_all((0..calls).map(|id| checked_call(&client, id)));
    let (streams, results) = futures_lite::future::zip(streams, unary).await;
    tally.failed_streams = streams.iter().filter(|r| r.is_err()).count();
    for result in results {
        match result {
            Ok(true) => tally.own += 1,
            Ok(false) => tally.corrupted += 1,
            Err(_) => tally.errors += 1,
        }
    }
    tally
}

/// Faults that only slow the connection down: every call and stream gets its own reply.
async fn all_calls_get_their_own_reply<E: Env>(env: &E, faults: Faults) {
    let tally = scenario(env, faults, 64).await;
    assert_eq!(
        (tally.own, tally.errors, tally.failed_streams),
        (64, 0, 0),
        "{tally:?}"
    );
}

async fn delayed_bytes<E: Env>(env: E) {
    let faults = Faults {
        delay: Some(Duration::from_millis(2)),
        ..Faults::default()
    };
    all_calls_get_their_own_reply(&env, faults).await;
}

async fn one_byte_at_a_time<E: Env>(env: E) {
    let faults = Faults {
        split: true,
        ..Faults::default()
    };
    all_calls_get_their_own_reply(&env, faults).await;
}

async fn a_stall_longer_than_some_deadlines<E: Env>(env: E) {
    // Both directions stop for longer than a deadline early on: the calls caught in it time
    // out, each within its deadline, and none gets another's reply.
    let faults = Faults {
        stall: Some((300, Duration::from_millis(2_000))),
        ..Faults::default()
    };
    let tally = scenario(&env, faults, 64).await;
    assert_eq!(tally.own + tally.errors, 64, "{tally:?}");
    assert_eq!(tally.corrupted, 0, "{tally:?}");
}

async fn a_cut_connection<E: Env>(env: E) {
    for cut in [40, 300, 3_000] {
        let faults = Faults {
            cut_after: Some(cut),
            ..Faults::default()
        };
        let tally = scenario(&env, faults, 64).await;
        assert_eq!(tally.corrupted, 0, "cut after {cut}: {tally:?}");
        assert!(tally.errors > 0, "cut after {cut}: {tally:?}");
    }
}

/// What one call of [`one_at_a_time`] came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Came {
    /// Its own reply, undamaged.
    Own,
    /// A reply that decoded, but whose tag shows it damaged.
    Corrupted,
    /// A typed error.
    Failed,
}

const OWN: &[Came] = &[Came::Own];
const CORRUPTED: &[Came] = &[Came::Corrupted];
const FAILED: &[Came] = &[Came::Failed];
const NOT_OWN: &[Came] = &[Came::Corrupted, Came::Failed];
const ANY: &[Came] = &[Came::Own, Came::Corrupted, Came::Failed];

/// Calls made one after the other in `a_corrupted_byte`.
const ONE_AT_A_TIME: usize = 8;

/// Makes [`ONE_AT_A_TIME`] calls, one after the other, over a client whose connection
/// suffers `faults`: what each came to, or `None` if the connect failed.
async fn one_at_a_time<E: Env>(env: &E, faults: Faults) -> Option<Vec<Came>> {
    let server = serve(env, router(), ServerConfig::default()).await;
    let transport = Chaos::new(env.transport(), faults);
    let config = ClientConfig::default().default_timeout(Some(DEADLINE));
    let connected = Client::connect_with(
        &env.rt(),
        &transport,
        server.local_addr(),
        config,
        MsgPack::default(),
    )
    .await;
    let client = match connected {
        Ok(client) => client,
        Err(e) => {
            println!("connect failed: {e}");
            return None;
        }
    };
    let mut came = Vec::with_capacity(ONE_AT_A_TIME);
    for id in 0..ONE_AT_A_TIME as u64 {
        came.push(match checked_call(&client, id).await {
            Ok(true) => Came::Own,
            Ok(false) => Came::Corrupted,
            Err(_) => Came::Failed,
        });
    }
    drop(server);
    Some(came)
}

/// The bytes of call `id`'s reply frame: a header and its tagged echo.
fn reply_len(id: u64) -> usize {
    HEADER_LEN + MsgPack::default().encode(&(id, id ^ TAG)).unwrap().len()
}

/// Corrupting byte `at` of call `call`'s reply, with one call in flight at a time (so the
/// client reads the server's hello, then each reply in turn, `reply_len` bytes each): the
/// offset in the client's read stream, the part of the frame hit, and what each call may
/// come to. Calls before `call` were answered before the damage; after it, every call gets
/// its own reply unless the damage made the frame undecodable, which fails the connection.
fn corrupt_reply(
    call: usize,
    at: usize,
    reply_len: usize,
) -> (u64, &'static str, Vec<&'static [Came]>) {
    // The header's fields (frame.rs, PROTOCOL.md): kind 0, flags 1, reserved 2..4, method
    // 4..8, seq 8..16, len 16..20, aux 20..24.
    let (part, hit, later): (&str, &[Came], &[Came]) = match at {
        0..=3 => (
            "kind, flags or reserved bits: the frame does not decode",
            FAILED,
            FAILED,
        ),
        4..=7 | 20..=23 => (
            "method or aux, which a reply's receiver does not read",
            ANY,
            OWN,
        ),
        8..=15 => (
            "seq: the reply matches no call, and the call times out",
            FAILED,
            OWN,
        ),
        16..=19 => panic!("a damaged length desynchronises the stream: not one call's damage"),
        _ if at + 1 == reply_len => (
            "the body's last byte: the reply decodes, and its tag shows the damage",
            CORRUPTED,
            OWN,
        ),
        _ if at < reply_len => ("the body", NOT_OWN, OWN),
        _ => panic!("byte {at} is past the reply's {reply_len}"),
    };
    let expect = (0..ONE_AT_A_TIME)
        .map(|i| match i.cmp(&call) {
            std::cmp::Ordering::Less => OWN,
            std::cmp::Ordering::Equal => hit,
            std::cmp::Ordering::Greater => later,
        })
        .collect();
    ((HELLO_LEN + call * reply_len + at) as u64, part, expect)
}

async fn a_corrupted_byte<E: Env>(env: E) {
    // One call in flight at a time, so that the offset names the call it hits: the damage
    // fails (or, in the body, flags) that call alone, and every other call gets its own reply;
    // only a header that no longer decodes fails the connection, and with it the calls after.
    // Flumen leaves integrity to the transport (PROTOCOL.md §3): a damaged length
    // desynchronises the stream, and many calls in flight are covered under TLS
    // (a_corrupted_byte_under_tls_with_many_calls_in_flight).
    let hello = Faults {
        // The high byte of the hello's version.
        corrupt_at: Some(5),
        ..Faults::default()
    };
    assert_eq!(
        one_at_a_time(&env, hello).await,
        None,
        "a hello with a damaged version was accepted"
    );
    let len = reply_len(0);
    assert!(
        (0..ONE_AT_A_TIME as u64).all(|id| reply_len(id) == len),
        "every reply has the same length, so that an offset names one call"
    );
    // (call, byte of its reply frame)
    let cases = [
        (0, 0),              // kind
        (2, 2),              // reserved bits
        (1, 12),             // seq: the generation half
        (3, 5),              // method
        (4, HEADER_LEN),     // the body's first byte
        (5, HEADER_LEN + 1), // the echoed id
        (6, len - 1),        // the check value's last byte
        (7, 21),             // aux
    ];
    for (call, at) in cases {
        let (offset, part, expect) = corrupt_reply(call, at, len);
        let faults = Faults {
            corrupt_at: Some(offset),
            ..Faults::default()
        };
        let came = one_at_a_time(&env, faults)
            .await
            .unwrap_or_else(|| panic!("corrupt at {offset} ({part}): the connect failed"));
        println!("corrupt at {offset}, call {call}'s reply, {part}: {came:?}");
        for (i, (got, allowed)) in came.iter().zip(&expect).enumerate() {
            assert!(
                allowed.contains(got),
                "corrupt at {offset}, call {call}'s reply, {part}: call {i} came to {got:?}, \
                 expected one of {allowed:?} (all: {came:?})"
            );
        }
    }
}

/// With many calls and streams in flight, a corrupted byte can only be caught by a transport
/// with integrity: under TLS (the chaos below it, on the TCP bytes) the record fails to
/// authenticate, the connection fails, and every call in flight fails with a typed error;
/// none gets another's reply, whichever record the byte hits.
async fn a_corrupted_byte_under_tls_with_many_calls_in_flight<E: Env>(env: E) {
    let mut hit = 0;
    for at in [1_500u64, 2_500, 4_000, 6_000, 9_000] {
        let ca = DevCa::new().unwrap();
        let server_tls = TlsTransport::new(env.transport())
            .server(ca.server_tls(&["localhost"]).unwrap())
            .unwrap();
        let faults = Faults {
            corrupt_at: Some(at),
            ..Faults::default()
        };
        let client_tls = TlsTransport::new(Chaos::new(env.transport(), faults))
            .client(ca.client_tls("localhost").unwrap())
            .unwrap();
        let server = Server::new(router())
            .bind(&env.rt(), &server_tls, &env.addr())
            .await
            .unwrap();
        let tally = calls_through(&env, &client_tls, server.local_addr(), 64).await;
        println!("corrupt at {at}: {tally:?}");
        assert_eq!(tally.corrupted, 0, "corrupt at {at}: {tally:?}");
        assert_eq!(tally.own + tally.errors, 64, "corrupt at {at}: {tally:?}");
        if tally.errors > 0 || tally.failed_streams > 0 {
            hit += 1;
        }
    }
    assert!(hit > 0, "no offset hit the connection's bytes");
}

#[test]
fn tokio_tcp_a_corrupted_byte_under_tls_with_many_calls_in_flight() {
    common::run_tokio(a_corrupted_byte_under_tls_with_many_calls_in_flight::<common::TokioEnv>);
}

#[test]
fn smol_tcp_a_corrupted_byte_under_tls_with_many_calls_in_flight() {
    common::run_smol(a_corrupted_byte_under_tls_with_many_calls_in_flight::<common::SmolEnv>);
}

/// The chaos transport must be a `Transport` for every environment's.
#[allow(dead_code)]
fn chaos_is_a_transport<T: Transport>(t: T) -> impl Transport {
    Chaos::new(t, Faults::default())
}
