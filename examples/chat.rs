//! A chat room: bidirectional streaming. Each member streams messages in and receives every
//! member's messages (its own included) out, on one connection per member.
//!
//! ```text
//! cargo run --example chat [-- --runtime smol]
//! ```

mod common;

use std::{net::SocketAddr, sync::Mutex};

use common::Error;
use flumen::{
    rt::{Runtime, SmolRuntime, TokioRuntime},
    stream::Transport,
    tcp::{SmolTcp, TokioTcp},
    BoxStream, Client, Server, Stream, Streaming,
};
use futures_lite::StreamExt;
use serde::{Deserialize, Serialize};

/// A message in the room.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub from: String,
    /// What they wrote.
    pub text: String,
}

/// Why joining failed.
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
pub enum ChatError {
    /// The name is taken.
    #[error("{0} is already in the room")]
    NameTaken(String),
}

/// One room.
#[flumen::service]
pub trait Chat {
    /// Joins as `name`: sends `messages` to the room, receives the room's messages.
    async fn join(
        &self,
        name: String,
        messages: Streaming<String>,
    ) -> impl Stream<Item = Result<Message, ChatError>>;
}

/// Members and their outboxes (bounded: a member that stops reading loses messages, never
/// grows the server's memory).
#[derive(Default)]
struct Room {
    members: Mutex<Vec<(String, async_channel::Sender<Message>)>>,
}

impl Room {
    fn broadcast(&self, message: Message) {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.retain(|(_, outbox)| !outbox.is_closed());
        for (_, outbox) in members.iter() {
            let _ = outbox.try_send(message.clone());
        }
    }
}

impl Chat for std::sync::Arc<Room> {
    async fn join(
        &self,
        name: String,
        mut messages: Streaming<String>,
    ) -> impl Stream<Item = Result<Message, ChatError>> {
        let (outbox, inbox) = async_channel::bounded(256);
        {
            let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
            if members.iter().any(|(member, _)| *member == name) {
                // Two kinds of stream, picked at run time: boxed, they are one type.
                let refused = futures_lite::stream::once(Err(ChatError::NameTaken(name)));
                return Box::pin(refused) as BoxStream<_>;
            }
            members.push((name.clone(), outbox));
        }
        // Everyone, the newcomer included, hears who joined: a member knows it is in the room
        // (and will hear what is said from now on) once it hears its own arrival.
        self.broadcast(Message {
            from: "room".into(),
            text: format!("{name} joined"),
        });
        // Messages in are broadcast by a task of the room's; the member's stream out is its inbox.
        let room = self.clone();
        let reader = async move {
            while let Some(Ok(text)) = messages.next().await {
                room.broadcast(Message {
                    from: name.clone(),
                    text,
                });
            }
            room.members
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|(m, _)| *m != name);
        };
        // One stream drives both: it polls the reader (which never yields) first, then yields
        // the inbox until it closes, after the member left and what was queued was delivered.
        let reading = futures_lite::stream::once_future(reader)
            .filter_map(|()| None)
            .chain(futures_lite::stream::pending());
        Box::pin(reading.or(inbox.map(Ok)))
    }
}

/// The demo, on runtime `rt` over `transport`.
async fn run<R: Runtime, T: Transport<Addr = SocketAddr> + Clone>(
    rt: R,
    transport: T,
) -> Result<(), Error> {
    let room = std::sync::Arc::new(Room::default());
    let server = Server::new(ChatServer::new(room))
        .bind(&rt, &transport, &common::loopback())
        .await?;
    let connect = || async {
        Ok::<_, Error>(ChatClient::new(
            Client::connect(&rt, &transport, server.local_addr()).await?,
        ))
    };
    let (ada, bob) = (connect().await?, connect().await?);
    // Each member types into a channel; their stream out ends when they leave.
    let (ada_says, ada_lines) = async_channel::bounded::<String>(8);
    let (bob_says, bob_lines) = async_channel::bounded::<String>(8);
    let hear = |who: &'static str,
                message: Option<Result<Message, flumen::RpcError<ChatError>>>| {
        let message = message.ok_or("room closed")??;
        println!("{who} hears {}: {}", message.from, message.text);
        Ok::<_, Error>(())
    };
    let mut ada_hears = ada.join("ada".into(), ada_lines).await?;
    hear("ada", ada_hears.next().await)?; // ada joined
    let mut bob_hears = bob.join("bob".into(), bob_lines).await?;
    hear("bob", bob_hears.next().await)?; // bob joined
    hear("ada", ada_hears.next().await)?; // bob joined
    bob_says.send("hi ada".into()).await?;
    ada_says.send("hello bob".into()).await?;
    for _ in 0..2 {
        hear("bob", bob_hears.next().await)?;
        hear("ada", ada_hears.next().await)?;
    }
    // Leaving: closing a member's messages ends their stream.
    drop((ada_says, bob_says));
    let rest = ada_hears.count().await + bob_hears.count().await;
    println!("both left ({rest} messages unread)");
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
