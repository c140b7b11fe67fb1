//! The generated client and server over every codec (MessagePack, JSON, postcard, CBOR,
//! bincode), on tokio and smol: unary calls with structs, enums, options and byte strings, a
//! method's own error type, and streams in both directions.

mod common;

use common::{run_smol, run_tokio, Env, SmolEnv, TokioEnv};
use flumen::{
    Bincode, Cbor, Client, ClientConfig, Codec, Json, MsgPack, Postcard, Router, RpcError, Server,
    ServerConfig, Stream, Streaming,
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
