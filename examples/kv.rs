//! A key-value store: unary methods with a custom error type.
//!
//! ```text
//! cargo run --example kv [-- --runtime smol]
//! ```

mod common;

use std::{collections::HashMap, net::SocketAddr, sync::Mutex};

use common::Error;
use flumen::{
    rt::{Runtime, SmolRuntime, TokioRuntime},
    stream::Transport,
    tcp::{SmolTcp, TokioTcp},
    Client, RpcError, Server,
};
use serde::{Deserialize, Serialize};

/// Why a key-value operation failed; the client receives it as this very type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    /// No value under the key.
    #[error("no such key: {0:?}")]
    NotFound(String),
    /// A compare-and-swap saw another value.
    #[error("expected {expected:?}, found {found:?}")]
    Conflict {
        /// What the caller expected.
        expected: Option<String>,
        /// What the store held.
        found: Option<String>,
    },
}

/// A string-to-string store.
#[flumen::service]
pub trait Kv {
    /// The value under `key`.
    async fn get(&self, key: String) -> Result<String, KvError>;
    /// Sets `key` to `value`; returns the previous value.
    async fn put(&self, key: String, value: String) -> Option<String>;
    /// Sets `key` to `new` only if it holds `expected`.
    async fn swap(&self, key: String, expected: Option<String>, new: String)
        -> Result<(), KvError>;
}

#[derive(Default)]
struct Store(Mutex<HashMap<String, String>>);

impl Store {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Kv for Store {
    async fn get(&self, key: String) -> Result<String, KvError> {
        self.map().get(&key).cloned().ok_or(KvError::NotFound(key))
    }

    async fn put(&self, key: String, value: String) -> Option<String> {
        self.map().insert(key, value)
    }

    async fn swap(
        &self,
        key: String,
        expected: Option<String>,
        new: String,
    ) -> Result<(), KvError> {
        let mut map = self.map();
        let found = map.get(&key).cloned();
        if found != expected {
            return Err(KvError::Conflict { expected, found });
        }
        map.insert(key, new);
        Ok(())
    }
}

/// The demo, on runtime `rt` over `transport`.
async fn run<R: Runtime, T: Transport<Addr = SocketAddr> + Clone>(
    rt: R,
    transport: T,
) -> Result<(), Error> {
    // A generated server is a Dispatch: serve it alone, or add it to a Router with others.
    let server = Server::new(KvServer::new(Store::default()))
        .bind(&rt, &transport, &common::loopback())
        .await?;
    let kv = KvClient::new(Client::connect(&rt, &transport, server.local_addr()).await?);

    println!(
        "put colour=blue -> previous {:?}",
        kv.put("colour".into(), "blue".into()).await?
    );
    println!("get colour -> {:?}", kv.get("colour".into()).await?);
    match kv.get("size".into()).await {
        Err(RpcError::Method(KvError::NotFound(key))) => {
            println!("get size -> not found ({key})")
        }
        other => return Err(format!("expected NotFound, got {other:?}").into()),
    }
    let stale = kv
        .swap("colour".into(), Some("red".into()), "green".into())
        .await;
    println!("swap red->green -> {stale:?}");
    kv.swap("colour".into(), Some("blue".into()), "green".into())
        .await?;
    println!(
        "swap blue->green -> ok, now {:?}",
        kv.get("colour".into()).await?
    );
    Ok(())
}

fn main() -> Result<(), Error> {
    // The same demo on either runtime: only the runtime, its spawner and the transport differ.
    if common::smol_requested()? {
        // smol's global executor runs the server's and the client's tasks.
        smol::block_on(run(SmolRuntime::global(), SmolTcp::default()))
    } else {
        let tokio = tokio::runtime::Runtime::new()?;
        let rt = TokioRuntime::new(tokio.handle().clone());
        tokio.block_on(run(rt, TokioTcp::default()))
    }
}
