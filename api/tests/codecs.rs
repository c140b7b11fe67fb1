//! The generated client and server over every codec (MessagePack, JSON, postcard, CBOR,
//! bincode), on tokio and smol: unary calls with structs, enums, options and byte strings, a
//! method's own error type, and streams in both directions. Also: every typed decode lends
//! its body, so that a large `Blob` shares the frame it came in.

mod common;

use common::{run_smol, run_tokio, Env, SmolEnv, TokioEnv};
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use flumen::{
    Attachment, Bincode, Blob, Bytes, Cbor, Client, ClientConfig, Codec, CodecError, Json, MsgPack,
    Postcard, Router, RpcError, Server, ServerConfig, Status, Stream, Streaming, WithAttachment,
    BLOB_SHARE_MIN,
};
use futures_lite::{stream, StreamExt};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Kind {
    Plain,
    Tagged { tag: String, weight: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: u64,
    pub kind: Kind,
    pub note: Option<String>,
    #[serde(with = "serde_bytes")]
    pub blob: Vec<u8>,
    /// Large enough to share its body for every fifth id.
    pub big: Blob,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum StoreError {
    #[error("no item {0}")]
    Missing(u64),
}

#[flumen::service]
pub trait Store {
    /// Echoes the item with its id doubled.
    async fn put(&self, item: Item) -> Item;
    /// Fails with the method's own error for odd ids.
    async fn get(&self, id: u64) -> Result<Item, StoreError>;
    /// `n` items.
    async fn list(&self, n: u32) -> impl futures_lite::Stream<Item = Item>;
    /// The sum of the ids sent.
    async fn total(&self, items: Streaming<Item>) -> u64;
    /// Each item back, with its note set.
    async fn stamp(&self, items: Streaming<Item>) -> impl futures_lite::Stream<Item = Item>;
    /// The item's id and the attachment's length.
    async fn weigh(&self, item: Item, data: Attachment) -> (u64, u64);
    /// Item `id`, with `id` bytes beside it.
    async fn fetch(&self, id: u64) -> WithAttachment<Item>;
}

struct Shelf;

fn item(id: u64) -> Item {
    Item {
        id,
        kind: match id % 2 {
            0 => Kind::Plain,
            _ => Kind::Tagged {
                tag: format!("t{id}"),
                weight: id as f64 / 3.0,
            },
        },
        note: (id % 3 == 0).then(|| "third".to_string()),
        blob: (0..(id % 200) as u8).collect(),
        big: match id % 5 {
            0 => vec![id as u8; BLOB_SHARE_MIN + id as usize].into(),
            _ => Blob::default(),
        },
    }
}

impl Store for Shelf {
    async fn put(&self, item: Item) -> Item {
        Item {
            id: item.id * 2,
            ..item
        }
    }

    async fn get(&self, id: u64) -> Result<Item, StoreError> {
        match id % 2 {
            0 => Ok(item(id)),
            _ => Err(StoreError::Missing(id)),
        }
    }

    async fn list(&self, n: u32) -> impl Stream<Item = Item> {
        Box::pin(stream::iter((0..u64::from(n)).map(item)))
    }

    async fn total(&self, items: Streaming<Item>) -> u64 {
        items
            .fold(0, |sum, item| sum + item.map_or(0, |item| item.id))
            .await
    }

    async fn weigh(&self, item: Item, data: Attachment) -> (u64, u64) {
        (item.id, data.len() as u64)
    }

    async fn fetch(&self, id: u64) -> WithAttachment<Item> {
        WithAttachment::new(item(id), Bytes::from(vec![1u8; id as usize]))
    }

    async fn stamp(&self, items: Streaming<Item>) -> impl Stream<Item = Item> {
        Box::pin(items.filter_map(|item| {
            item.ok().map(|item| Item {
                note: Some("stamped".into()),
                ..item
            })
        }))
    }
}

async fn every_call_shape<E: Env, C: Codec>(env: E, codec: C) {
    let router = Router::with_codec(codec.clone())
        .service(StoreServer::new(Shelf))
        .unwrap();
    let server = Server::new(router)
        .config(ServerConfig::default())
        .bind(&env.rt(), &env.transport(), &env.addr())
        .await
        .unwrap();
    let client = Client::connect_with(
        &env.rt(),
        &env.transport(),
        server.local_addr(),
        ClientConfig::default(),
        codec,
    )
    .await
    .unwrap();
    let store = StoreClient::new(client);

    for id in [0, 1, 3, 7, 150] {
        assert_eq!(
            store.put(item(id)).await.unwrap(),
            Item {
                id: id * 2,
                ..item(id)
            }
        );
    }
    assert_eq!(store.get(4).await.unwrap(), item(4));
    match store.get(5).await {
        Err(RpcError::Method(StoreError::Missing(5))) => {}
        other => panic!("expected the method's error, got {other:?}"),
    }
    let listed: Vec<Item> = store
        .list(20)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(listed, (0..20).map(item).collect::<Vec<_>>());
    let sent = stream::iter((0..50).map(item));
    assert_eq!(store.total(sent).await.unwrap(), (0..50).sum::<u64>());
    let stamped: Vec<Item> = store
        .stamp(stream::iter((0..10).map(item)))
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(stamped.len(), 10);
    assert!(stamped.iter().all(|i| i.note.as_deref() == Some("stamped")));
    assert_eq!(
        stamped.iter().map(|i| i.id).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    let data = Attachment::from(Bytes::from(vec![2u8; 300]));
    assert_eq!(store.weigh(item(5), data).await.unwrap(), (5, 300));
    let fetched = store.fetch(10).await.unwrap();
    assert_eq!((&fetched.value, fetched.attachment.len()), (&item(10), 10));
    // From a plain thread.
    let blocking = store.clone();
    let put = smol::unblock(move || blocking.put_blocking(item(3))).await;
    assert_eq!(put.unwrap().id, 6);
}

/// MessagePack, counting the decodes that were lent their body and those that were not.
#[derive(Clone, Default)]
struct Probe {
    lent: Arc<AtomicUsize>,
    unlent: Arc<AtomicUsize>,
}

impl Codec for Probe {
    fn encode<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, CodecError> {
        MsgPack::default().encode(value)
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, body: &[u8]) -> Result<T, CodecError> {
        self.unlent.fetch_add(1, Ordering::SeqCst);
        MsgPack::default().decode(body)
    }

    fn decode_body<T: serde::de::DeserializeOwned>(&self, body: &Bytes) -> Result<T, CodecError> {
        self.lent.fetch_add(1, Ordering::SeqCst);
        MsgPack::default().decode_body(body)
    }
}

/// Every call shape of the generated client and server decodes through `decode_body`.
async fn every_typed_decode_lends_its_body<E: Env>(env: E) {
    let probe = Probe::default();
    every_call_shape(env, probe.clone()).await;
    assert!(probe.lent.load(Ordering::SeqCst) > 100);
    assert_eq!(
        probe.unlent.load(Ordering::SeqCst),
        0,
        "a typed decode was not lent its body"
    );
}

/// A typed handler's large `Blob` is the request's bytes, not a copy (the request still holds
/// the body, so a shared `Blob` is not the only reference to its buffer); a small one is a
/// copy.
async fn a_large_blob_shares_the_request<E: Env>(env: E) {
    let router = Router::new().route("unique", |blob: Blob| async move {
        Ok::<_, Status>((blob.len(), blob.is_unique()))
    });
    let server = Server::new(router)
        .bind(&env.rt(), &env.transport(), &env.addr())
        .await
        .unwrap();
    let client = common::connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    for (len, unique) in [(BLOB_SHARE_MIN, false), (64 * 1024, false), (100, true)] {
        let got: (usize, bool) = client
            .call("unique", &Blob::from(vec![1u8; len]))
            .await
            .unwrap();
        assert_eq!(got, (len, unique), "a Blob of {len} bytes");
    }
}

#[test]
fn every_typed_decode_lends_its_body_tokio() {
    run_tokio(every_typed_decode_lends_its_body::<TokioEnv>);
}

#[test]
fn every_typed_decode_lends_its_body_smol() {
    run_smol(every_typed_decode_lends_its_body::<SmolEnv>);
}

#[test]
fn a_large_blob_shares_the_request_tokio() {
    run_tokio(a_large_blob_shares_the_request::<TokioEnv>);
}

#[test]
fn a_large_blob_shares_the_request_smol() {
    run_smol(a_large_blob_shares_the_request::<SmolEnv>);
}

macro_rules! codecs {
    ($($name:ident: $codec:expr,)*) => {$(
        mod $name {
            use super::*;

            #[test]
            fn tokio() {
                run_tokio(|env: TokioEnv| every_call_shape(env, $codec));
            }

            #[test]
            fn smol() {
                run_smol(|env: SmolEnv| every_call_shape(env, $codec));
            }
        }
    )*};
}

codecs! {
    msgpack: MsgPack::default(),
    json: Json,
    postcard: Postcard,
    cbor: Cbor::default(),
    bincode: Bincode,
}
