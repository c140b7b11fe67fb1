//! A file upload: client streaming with a digest result. The client streams a file in chunks;
//! the server hashes and counts them as they arrive (never holding the file) and answers once.
//!
//! ```text
//! cargo run --example upload [-- --runtime smol] [-- --file PATH]
//! ```

mod common;

use std::net::SocketAddr;

use common::Error;
use flumen::{
    rt::{Runtime, SmolRuntime, TokioRuntime},
    stream::Transport,
    tcp::{SmolTcp, TokioTcp},
    Client, Server, Streaming,
};
use futures_lite::StreamExt;
use serde::{Deserialize, Serialize};

/// What the server received.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// The file's name, as the client gave it.
    pub name: String,
    /// Bytes received.
    pub bytes: u64,
    /// Chunks received.
    pub chunks: u32,
    /// 64-bit FNV-1a of the content.
    pub digest: u64,
}

/// Why an upload failed.
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
pub enum UploadError {
    /// The file exceeds the server's limit.
    #[error("file exceeds {0} bytes")]
    TooLarge(u64),
    /// The client's stream broke off.
    #[error("upload interrupted: {0}")]
    Interrupted(String),
}

/// Receives files.
#[flumen::service]
pub trait Uploads {
    /// Receives `name` as a stream of chunks.
    async fn upload(
        &self,
        name: String,
        chunks: Streaming<serde_bytes::ByteBuf>,
    ) -> Result<Receipt, UploadError>;
}

const LIMIT: u64 = 1 << 30;

/// 64-bit FNV-1a, folded over chunks.
fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

struct Sink;

impl Uploads for Sink {
    async fn upload(
        &self,
        name: String,
        mut chunks: Streaming<serde_bytes::ByteBuf>,
    ) -> Result<Receipt, UploadError> {
        let mut receipt = Receipt {
            name,
            bytes: 0,
            chunks: 0,
            digest: FNV_START,
        };
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|status| UploadError::Interrupted(status.to_string()))?;
            receipt.bytes += chunk.len() as u64;
            receipt.chunks += 1;
            if receipt.bytes > LIMIT {
                return Err(UploadError::TooLarge(LIMIT));
            }
            receipt.digest = fnv(receipt.digest, &chunk);
        }
        Ok(receipt)
    }
}

/// The demo, on runtime `rt` over `transport`.
async fn run<R: Runtime, T: Transport<Addr = SocketAddr> + Clone>(
    rt: R,
    transport: T,
) -> Result<(), Error> {
    let server = Server::new(UploadsServer::new(Sink))
        .bind(&rt, &transport, &common::loopback())
        .await?;
    let uploads = UploadsClient::new(Client::connect(&rt, &transport, server.local_addr()).await?);
    let path = std::env::args().skip_while(|a| a != "--file").nth(1);
    let (name, content) = match path {
        Some(path) => (path.clone(), std::fs::read(&path)?),
        None => (
            "generated.bin".to_owned(),
            (0..8_000_000u32).map(|i| (i % 251) as u8).collect(),
        ),
    };
    let expected = fnv(FNV_START, &content);
    let chunks: Vec<serde_bytes::ByteBuf> = content
        .chunks(64 * 1024)
        .map(|c| serde_bytes::ByteBuf::from(c.to_vec()))
        .collect();
    let start = std::time::Instant::now();
    let receipt = uploads
        .upload(name, futures_lite::stream::iter(chunks))
        .await?;
    let elapsed = start.elapsed();
    println!(
        "{}: {} bytes in {} chunks, digest {:016x} ({}), {:.0} MB/s",
        receipt.name,
        receipt.bytes,
        receipt.chunks,
        receipt.digest,
        if receipt.digest == expected {
            "matches"
        } else {
            "MISMATCH"
        },
        receipt.bytes as f64 / elapsed.as_secs_f64() / 1e6,
    );
    if receipt.digest != expected {
        return Err("digest mismatch".into());
    }
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
