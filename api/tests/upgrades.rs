//! Rolling upgrades: two versions of one service, v1 and v2, calling each other both ways,
//! under MessagePack (structs as arrays, field order matters) and JSON (structs as maps). v2
//! adds a method and an optional field at the end of a struct (`#[serde(default)]`). What
//! these tests pin down is what the guide's rules say (`guide/11-operations.md`, "Evolving a
//! service"): which changes an old peer survives, and which it meets as a typed error. It is
//! the codecs' and the method ids' behaviour, not the runtime's or the transport's, so one
//! runtime and one transport run it.

use std::{collections::HashMap, sync::Mutex};

use flumen::{
    rt::TokioRuntime, tcp::TokioTcp, Client, ClientConfig, Codec, ErrorCode, Json, MsgPack, Router,
    RpcError, Server,
};

/// The first version.
pub mod v1 {
    use serde::{Deserialize, Serialize};

    /// A stock item.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Item {
        pub name: String,
        pub count: u32,
    }

    #[flumen::service]
    pub trait Inventory {
        /// Stores `item`; returns how many items are stored.
        async fn put(&self, item: Item) -> u32;
        /// The item named `name`.
        async fn get(&self, name: String) -> Option<Item>;
    }
}

/// The second version: one field more at the end of `Item`, with a default, and one method
/// more.
pub mod v2 {
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Item {
        pub name: String,
        pub count: u32,
        /// Added in v2: absent from what v1 peers send.
        #[serde(default)]
        pub shelf: Option<String>,
    }

    #[flumen::service]
    pub trait Inventory {
        async fn put(&self, item: Item) -> u32;
        async fn get(&self, name: String) -> Option<Item>;
        /// Added in v2.
        async fn count(&self) -> u32;
    }
}

#[derive(Default)]
struct V1Store(Mutex<HashMap<String, v1::Item>>);

impl v1::Inventory for V1Store {
    async fn put(&self, item: v1::Item) -> u32 {
        let mut items = self.0.lock().unwrap();
        items.insert(item.name.clone(), item);
        items.len() as u32
    }

    async fn get(&self, name: String) -> Option<v1::Item> {
        self.0.lock().unwrap().get(&name).cloned()
    }
}

#[derive(Default)]
struct V2Store(Mutex<HashMap<String, v2::Item>>);

impl v2::Inventory for V2Store {
    async fn put(&self, item: v2::Item) -> u32 {
        let mut items = self.0.lock().unwrap();
        items.insert(item.name.clone(), item);
        items.len() as u32
    }

    async fn get(&self, name: String) -> Option<v2::Item> {
        self.0.lock().unwrap().get(&name).cloned()
    }

    async fn count(&self) -> u32 {
        self.0.lock().unwrap().len() as u32
    }
}

fn run<F: std::future::Future<Output = ()>>(test: impl FnOnce(TokioRuntime) -> F) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async { test(TokioRuntime::current()).await });
}

/// A server of `router` and a client with `codec` connected to it.
async fn pair<C: Codec>(
    rt: &TokioRuntime,
    router: Router<C>,
    codec: C,
) -> (flumen::ServerHandle<std::net::SocketAddr>, Client<C>) {
    let server = Server::new(router)
        .bind(rt, &TokioTcp::default(), &"127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client = Client::connect_with(
        rt,
        &TokioTcp::default(),
        server.local_addr(),
        ClientConfig::default(),
        codec,
    )
    .await
    .unwrap();
    (server, client)
}

fn bolt(count: u32) -> v1::Item {
    v1::Item {
        name: "bolt".into(),
        count,
    }
}

/// An old client against a new server: what the old client sends decodes (the new field takes
/// its default), and old methods keep their ids. Returns what the old client makes of a reply
/// of the new shape with the new field set.
async fn old_client_new_server<C: Codec>(
    rt: TokioRuntime,
    codec: C,
) -> Result<Option<v1::Item>, RpcError<flumen::NoError>> {
    let router = Router::with_codec(codec.clone())
        .service(v2::InventoryServer::new(V2Store::default()))
        .unwrap();
    let (_server, client) = pair(&rt, router, codec).await;
    let old = v1::InventoryClient::new(client.clone());
    assert_eq!(old.put(bolt(3)).await.unwrap(), 1);
    // The new server stored it with the default.
    let new = v2::InventoryClient::new(client);
    let stored = new.get("bolt".into()).await.unwrap().unwrap();
    assert_eq!(stored.shelf, None);
    assert_eq!(new.count().await.unwrap(), 1);
    // A reply of the new shape, with the new field set, read by the old client.
    new.put(v2::Item {
        name: "nut".into(),
        count: 9,
        shelf: Some("B4".into()),
    })
    .await
    .unwrap();
    old.get("nut".into()).await
}

/// A new client against an old server: a new method is a typed `UNKNOWN_METHOD` error, and
/// a reply of the old shape reads with the new field at its default. Returns what the old
/// server makes of a request of the new type, its new field `shelf`.
async fn new_client_old_server<C: Codec>(
    rt: TokioRuntime,
    codec: C,
    shelf: Option<String>,
) -> Result<u32, RpcError<flumen::NoError>> {
    let router = Router::with_codec(codec.clone())
        .service(v1::InventoryServer::new(V1Store::default()))
        .unwrap();
    let (_server, client) = pair(&rt, router, codec).await;
    let new = v2::InventoryClient::new(client);
    let unknown = new.count().await.unwrap_err();
    assert!(unknown.is_unknown_method(), "{unknown}");
    assert_eq!(unknown.code(), Some(ErrorCode::UNKNOWN_METHOD));
    // Old methods, and a reply of the old shape read by the new client (default field).
    v1::InventoryClient::new(new.client().clone())
        .put(bolt(3))
        .await
        .unwrap();
    let item = new.get("bolt".into()).await.unwrap().unwrap();
    assert_eq!(item.shelf, None);
    // A request of the new type, read by the old server.
    new.put(v2::Item {
        name: "nut".into(),
        count: 9,
        shelf,
    })
    .await
}

/// Method ids are the wire's names for methods: fixed by the name alone, whatever the build,
/// or two builds of one service would not find each other's methods.
#[test]
fn method_ids_are_fixed_by_name() {
    let put = v1::InventoryClient::PUT.as_u32();
    assert_eq!(put, v2::InventoryClient::PUT.as_u32());
    // FNV-1a of "Inventory.put", as PROTOCOL.md defines method ids.
    let fnv = b"Inventory.put".iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    assert_eq!(put, fnv);
}

#[test]
fn json_peers_of_either_version_interoperate_both_ways() {
    // Maps: an unknown field is ignored, a missing one takes its default.
    run(|rt| async move {
        let read = old_client_new_server(rt.clone(), Json).await;
        let nut = v1::Item {
            name: "nut".into(),
            count: 9,
        };
        assert_eq!(read.unwrap(), Some(nut));
        let stored = new_client_old_server(rt.clone(), Json, Some("B4".into())).await;
        assert_eq!(stored.unwrap(), 2);
        let stored = new_client_old_server(rt, Json, None).await;
        assert_eq!(stored.unwrap(), 2);
    });
}

#[test]
fn msgpack_old_peers_cannot_read_values_of_the_new_type() {
    // Arrays: a missing trailing field takes its default, but a value of the new type always
    // has the extra element (`None` is written as nil), which an old peer refuses (`invalid
    // length`): a typed codec error on the side that decodes it.
    run(|rt| async move {
        let e = old_client_new_server(rt.clone(), MsgPack::default())
            .await
            .unwrap_err();
        assert!(e.is_codec(), "the old client reading a longer reply: {e}");
        for shelf in [Some("B4".to_owned()), None] {
            let e = new_client_old_server(rt.clone(), MsgPack::default(), shelf)
                .await
                .unwrap_err();
            assert_eq!(e.code(), Some(ErrorCode::BAD_REQUEST), "{e}");
        }
    });
}
