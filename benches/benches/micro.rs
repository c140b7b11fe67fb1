//! Criterion micro-benchmarks of the core's pieces, and a full client -> server round trip over
//! an in-memory transport (no sockets).
//!
//! `cargo bench -p flumen-bench --bench micro`

use std::{
    collections::VecDeque,
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use flumen::{
    rt::TokioRuntime,
    stream::{
        advanced::{CallTable, Wheel},
        frame::{Frame, FrameDecoder, FrameHeader, FrameKind, DEFAULT_MAX_FRAME_LEN},
        Listener, Transport,
    },
    Codec, MsgPack, Request, Server, Status,
};
use futures_lite::{AsyncRead, AsyncWrite};
use serde::{Deserialize, Serialize};

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    let frame = Frame::new(
        FrameHeader {
            method: 7,
            ..FrameHeader::new(FrameKind::Request, 42)
        },
        Bytes::from(vec![1u8; 32]),
    );
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_32B", |b| {
        let mut buf = BytesMut::with_capacity(1 << 20);
        b.iter(|| {
            frame.encode(&mut buf);
            if buf.len() > (1 << 19) {
                buf.clear();
            }
        })
    });
    let mut stream = BytesMut::new();
    for _ in 0..64 {
        frame.encode(&mut stream);
    }
    group.throughput(Throughput::Elements(64));
    group.bench_function("decode_64x32B", |b| {
        b.iter_batched(
            || stream.clone(),
            |mut buf| {
                let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
                while let Ok(Some(frame)) = decoder.decode(&mut buf) {
                    std::hint::black_box(frame);
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn wheel(c: &mut Criterion) {
    let mut group = c.benchmark_group("wheel");
    group.throughput(Throughput::Elements(1));
    group.bench_function("insert_remove", |b| {
        let mut wheel = Wheel::with_capacity(256, 0, 1024);
        let mut tick = 0u64;
        b.iter(|| {
            tick += 1;
            let key = wheel.insert(tick + 3000, tick);
            std::hint::black_box(wheel.remove(key));
        })
    });
    group.throughput(Throughput::Elements(1024));
    group.bench_function("expire_1024", |b| {
        b.iter_batched(
            || {
                let mut wheel = Wheel::with_capacity(256, 0, 1024);
                for i in 0..1024u64 {
                    wheel.insert(1 + i % 100, i);
                }
                wheel
            },
            |mut wheel| {
                let mut n = 0;
                wheel.poll(100, |_| n += 1);
                assert_eq!(n, 1024);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn window(c: &mut Criterion) {
    let mut group = c.benchmark_group("window");
    group.throughput(Throughput::Elements(1));
    // One call's bookkeeping: take a slot, begin, complete, take the outcome, return the slot.
    group.bench_function("acquire_call_release", |b| {
        let mut table = CallTable::new(64, 0);
        let mut wakers = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        let body = Bytes::from_static(b"reply");
        b.iter(|| {
            let slot = table.acquire().unwrap().unwrap();
            let seq = table
                .begin(slot, Some((1000, Duration::from_secs(1))), None)
                .unwrap();
            table.complete(seq, Ok(body.clone()), &mut wakers);
            let _ = std::hint::black_box(table.poll(slot, &mut cx));
            table.release(slot);
        })
    });
    group.finish();
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Small {
    id: u64,
    name: String,
    tags: Vec<u32>,
    ok: bool,
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    let value = Small {
        id: 7,
        name: "flumen".into(),
        tags: vec![1, 2, 3, 4],
        ok: true,
    };
    group.throughput(Throughput::Elements(1));
    codec_pair(&mut group, "msgpack", MsgPack::default(), &value);
    codec_pair(&mut group, "json", flumen::Json, &value);
    codec_pair(&mut group, "postcard", flumen::Postcard, &value);
    codec_pair(&mut group, "cbor", flumen::Cbor::default(), &value);
    codec_pair(&mut group, "bincode", flumen::Bincode, &value);
    group.finish();
}

/// Encodes and decodes `value` with `codec`: `NAME_encode_small`, `NAME_decode_small`.
fn codec_pair<C: Codec>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    codec: C,
    value: &Small,
) {
    let body = codec.encode(value).unwrap();
    group.bench_function(format!("{name}_encode_small"), |b| {
        b.iter(|| codec.encode(std::hint::black_box(value)).unwrap())
    });
    group.bench_function(format!("{name}_decode_small"), |b| {
        b.iter(|| codec.decode::<Small>(std::hint::black_box(&body)).unwrap())
    });
}

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_trip_mem");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt = TokioRuntime::new(runtime.handle().clone());
    let transport = MemTransport::default();
    let (server, client) = runtime.block_on(async {
        let echo = flumen::Router::new().route_raw("echo", |r: Request| async move {
            Ok::<_, Status>(r.into_body())
        });
        let server = Server::new(echo).bind(&rt, &transport, &0).await.unwrap();
        let client = flumen::stream::Client::connect(&rt, &transport, &0, Default::default())
            .await
            .unwrap();
        (server, client)
    });
    let echo = flumen::MethodId::from_name("echo").as_u32();
    let body = Bytes::from(vec![7u8; 32]);
    for in_flight in [1u64, 64] {
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("32B_x{in_flight}"), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let started = Instant::now();
                    let per_task = iters.div_ceil(in_flight);
                    let tasks: Vec<_> = (0..in_flight)
                        .map(|_| {
                            let (client, body) = (client.clone(), body.clone());
                            tokio::spawn(async move {
                                for _ in 0..per_task {
                                    client.call(echo, body.clone()).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                    started.elapsed() * iters as u32 / (per_task * in_flight) as u32
                })
            })
        });
    }
    drop(server);
    group.finish();
}

criterion_group!(benches, frames, wheel, window, codec, round_trip);
criterion_main!(benches);

/// An in-memory transport: connect hands the listener the other end of a pair of byte pipes.
#[derive(Clone, Default)]
struct MemTransport {
    listener: Arc<std::sync::Mutex<Option<Accepting>>>,
}

/// Hands connections to the listener.
type Accepting = smol::channel::Sender<(MemReader, MemWriter)>;

/// A one-way byte pipe with a bounded buffer.
#[derive(Default)]
struct Pipe {
    state: std::sync::Mutex<PipeState>,
}

#[derive(Default)]
struct PipeState {
    bytes: VecDeque<u8>,
    reader: Option<Waker>,
    writer: Option<Waker>,
    closed: bool,
}

const PIPE_CAPACITY: usize = 256 * 1024;

struct MemReader(Arc<Pipe>);
struct MemWriter(Arc<Pipe>);

fn pipe() -> (MemWriter, MemReader) {
    let pipe = Arc::new(Pipe::default());
    (MemWriter(pipe.clone()), MemReader(pipe))
}

impl flumen::stream::TransportRead for MemReader {}

impl flumen::stream::TransportWrite for MemWriter {}

impl AsyncRead for MemReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.0.state.lock().unwrap();
        if state.bytes.is_empty() {
            if state.closed {
                return Poll::Ready(Ok(0));
            }
            state.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(state.bytes.len());
        for (dst, src) in buf.iter_mut().zip(state.bytes.drain(..n)) {
            *dst = src;
        }
        if let Some(w) = state.writer.take() {
            w.wake();
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for MemWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.0.state.lock().unwrap();
        let room = PIPE_CAPACITY - state.bytes.len();
        if room == 0 {
            state.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        state.bytes.extend(&buf[..n]);
        if let Some(r) = state.reader.take() {
            r.wake();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.0.state.lock().unwrap();
        state.closed = true;
        if let Some(r) = state.reader.take() {
            r.wake();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for MemWriter {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap();
        state.closed = true;
        if let Some(r) = state.reader.take() {
            r.wake();
        }
    }
}

struct MemListener(smol::channel::Receiver<(MemReader, MemWriter)>);

impl Transport for MemTransport {
    type Addr = u32;
    type Reader = MemReader;
    type Writer = MemWriter;
    type Listener = MemListener;

    fn connect(&self, _: &u32) -> impl Future<Output = io::Result<(MemReader, MemWriter)>> + Send {
        let listener = self.listener.lock().unwrap().clone();
        async move {
            let listener =
                listener.ok_or_else(|| io::Error::from(io::ErrorKind::ConnectionRefused))?;
            let (to_server, server_reads) = pipe();
            let (to_client, client_reads) = pipe();
            listener
                .send((server_reads, to_client))
                .await
                .map_err(|_| io::ErrorKind::ConnectionRefused)?;
            Ok((client_reads, to_server))
        }
    }

    fn bind(&self, _: &u32) -> impl Future<Output = io::Result<MemListener>> + Send {
        let (tx, rx) = smol::channel::unbounded();
        *self.listener.lock().unwrap() = Some(tx);
        async move { Ok(MemListener(rx)) }
    }
}

impl Listener for MemListener {
    type Addr = u32;
    type Reader = MemReader;
    type Writer = MemWriter;
    type Connecting = std::future::Ready<io::Result<(MemReader, MemWriter)>>;

    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Connecting, u32)>> + Send {
        let rx = self.0.clone();
        async move {
            let halves = rx
                .recv()
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
            Ok((std::future::ready(Ok(halves)), 0))
        }
    }

    fn local_addr(&self) -> io::Result<u32> {
        Ok(0)
    }
}
