//! The RPC systems a user would pick instead, served and loaded the same way as Flumen: the
//! same payloads, K caller tasks per connection, one runtime thread per side (tokio).

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc},
};

use futures::{future, StreamExt};
use serde_bytes::ByteBuf;

use crate::{
    measure::{Tally, Window},
    system::{call_loop, run_tasks, BoxFuture, Load, Spawner, System},
};

pub(crate) async fn serve(
    system: System,
    addr: SocketAddr,
    bound: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    match system {
        System::Tarpc => tarpc_side::serve(addr, bound).await,
        System::Tonic => tonic_side::serve(addr, bound).await,
        System::Razor => razor_side::serve(addr, bound).await,
        _ => unreachable!("not a peer"),
    }
}

pub(crate) async fn load(
    system: System,
    spawner: Spawner,
    addr: SocketAddr,
    load: Load,
    make_window: impl FnOnce() -> Window,
    progress: Arc<AtomicU64>,
) -> Result<Vec<Tally>, String> {
    let body: Vec<u8> = (0..load.payload).map(|i| i as u8).collect();
    let mut tasks: Vec<BoxFuture<Tally>> = Vec::new();
    let mut connections = Vec::new();
    for _ in 0..load.connections {
        connections.push(match system {
            System::Tarpc => Conn::Tarpc(tarpc_side::connect(addr, load.in_flight).await?),
            System::Tonic => Conn::Tonic(tonic_side::connect(addr).await?),
            System::Razor => Conn::Razor(razor_side::connect(addr, load.in_flight)),
            _ => unreachable!("not a peer"),
        });
    }
    let window = make_window();
    for conn in connections {
        for _ in 0..load.in_flight {
            let (conn, body, tally) = (conn.clone(), body.clone(), Tally::new(progress.clone()));
            tasks.push(Box::pin(conn.run(window, tally, body)));
        }
    }
    Ok(run_tasks(&spawner, tasks).await)
}

#[derive(Clone)]
enum Conn {
    Tarpc(tarpc_side::Client),
    Tonic(tonic_side::Client),
    Razor(razor_side::Client),
}

impl Conn {
    async fn run(self, window: Window, tally: Tally, body: Vec<u8>) -> Tally {
        {
            match self {
                Conn::Tarpc(client) => {
                    call_loop!(window, tally, {
                        let reply = client
                            .echo(tarpc::context::current(), ByteBuf::from(body.clone()))
                            .await;
                        reply.is_ok_and(|r| r.as_slice() == body.as_slice())
                    })
                }
                Conn::Tonic(mut client) => {
                    let bytes = bytes::Bytes::from(body);
                    call_loop!(window, tally, {
                        let request = tonic_side::pb::Payload {
                            data: bytes.clone(),
                        };
                        let reply = client.echo(request).await;
                        reply.is_ok_and(|r| r.into_inner().data == bytes)
                    })
                }
                Conn::Razor(client) => {
                    use razor_side::RazorEcho as _;
                    call_loop!(window, tally, {
                        let reply = client.echo(ByteBuf::from(body.clone())).await;
                        reply.is_ok_and(|r| r.as_slice() == body.as_slice())
                    })
                }
            }
        }
    }
}

mod tarpc_side {
    use std::net::SocketAddr;

    use super::*;
    use tarpc::{
        client, context,
        serde_transport::tcp,
        server::{self, Channel},
        tokio_serde::formats::Bincode,
    };

    #[tarpc::service]
    pub(crate) trait Echo {
        async fn echo(data: ByteBuf) -> ByteBuf;
    }

    #[derive(Clone)]
    struct EchoServer;

    impl Echo for EchoServer {
        async fn echo(self, _: context::Context, data: ByteBuf) -> ByteBuf {
            data
        }
    }

    pub(crate) type Client = EchoClient;

    pub(crate) async fn serve(
        addr: SocketAddr,
        bound: impl FnOnce(SocketAddr),
    ) -> std::io::Result<()> {
        let mut listener = tcp::listen(addr, Bincode::default).await?;
        listener.config_mut().max_frame_length(usize::MAX);
        bound(listener.local_addr());
        listener
            .filter_map(|conn| future::ready(conn.ok()))
            .map(server::BaseChannel::with_defaults)
            .for_each(|channel| async move {
                tokio::spawn(
                    channel
                        .execute(EchoServer.serve())
                        .for_each(|response| async move {
                            tokio::spawn(response);
                        }),
                );
            })
            .await;
        Ok(())
    }

    pub(crate) async fn connect(addr: SocketAddr, in_flight: usize) -> Result<Client, String> {
        let mut connect = tcp::connect(addr, Bincode::default);
        connect.config_mut().max_frame_length(usize::MAX);
        let transport = connect.await.map_err(|e| e.to_string())?;
        let mut config = client::Config::default();
        config.max_in_flight_requests = in_flight.max(1);
        config.pending_request_buffer = in_flight.max(1);
        Ok(EchoClient::new(config, transport).spawn())
    }
}

pub(crate) mod tonic_side {
    use std::net::SocketAddr;

    use tonic::{transport::server::TcpIncoming, Request, Response, Status};

    pub(crate) mod pb {
        #![allow(
            unreachable_pub,
            missing_docs,
            missing_debug_implementations,
            clippy::all
        )]
        tonic::include_proto!("flumen.bench");
    }

    pub(crate) type Client = pb::echo_client::EchoClient<tonic::transport::Channel>;

    struct EchoServer;

    #[tonic::async_trait]
    impl pb::echo_server::Echo for EchoServer {
        async fn echo(
            &self,
            request: Request<pb::Payload>,
        ) -> Result<Response<pb::Payload>, Status> {
            Ok(Response::new(request.into_inner()))
        }
    }

    pub(crate) async fn serve(
        addr: SocketAddr,
        bound: impl FnOnce(SocketAddr),
    ) -> std::io::Result<()> {
        let incoming = TcpIncoming::bind(addr)?.with_nodelay(Some(true));
        bound(incoming.local_addr()?);
        tonic::transport::Server::builder()
            .add_service(
                pb::echo_server::EchoServer::new(EchoServer).max_decoding_message_size(usize::MAX),
            )
            .serve_with_incoming(incoming)
            .await
            .map_err(std::io::Error::other)
    }

    pub(crate) async fn connect(addr: SocketAddr) -> Result<Client, String> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Client::new(channel).max_decoding_message_size(usize::MAX))
    }
}

pub(crate) mod razor_side {
    use std::{future::Future, net::SocketAddr};

    use razor_rpc::{
        client::{endpoint_async, endpoint_client, APIConnPool, APIFact, ClientConfig},
        error::RpcError,
        server::{dispatch::Inline, service, RpcServer, ServerConfig, ServerDefault},
    };
    use razor_rpc_codec::MsgpCodec;
    use razor_rpc_tcp::{TcpClient, TcpServer};
    use serde_bytes::ByteBuf;

    type Rt = orb_tokio::TokioRT;

    endpoint_client!(EchoClient);

    #[endpoint_async(EchoClient)]
    pub(crate) trait RazorEcho {
        fn echo(&self, data: ByteBuf)
            -> impl Future<Output = Result<ByteBuf, RpcError<()>>> + Send;
    }

    #[derive(Clone)]
    struct EchoServer;

    #[service]
    impl RazorEcho for EchoServer {
        async fn echo(&self, data: ByteBuf) -> Result<ByteBuf, RpcError<()>> {
            Ok(data)
        }
    }

    pub(crate) type Client = std::sync::Arc<EchoClient<APIConnPool<MsgpCodec, TcpClient<Rt>>>>;

    pub(crate) async fn serve(
        addr: SocketAddr,
        bound: impl FnOnce(SocketAddr),
    ) -> std::io::Result<()> {
        let mut server = RpcServer::new(ServerDefault::new(ServerConfig::default()));
        let dispatch = Inline::<MsgpCodec, _>::new(EchoServer);
        let local = server
            .listen::<TcpServer<Rt>, _>(&addr.to_string(), dispatch)
            .await?;
        bound(local.parse().map_err(std::io::Error::other)?);
        std::future::pending::<()>().await;
        drop(server);
        Ok(())
    }

    pub(crate) fn connect(addr: SocketAddr, in_flight: usize) -> Client {
        let config = ClientConfig {
            thresholds: in_flight.max(1),
            ..ClientConfig::default()
        };
        let pool = APIFact::<MsgpCodec>::new(config)
            .new_conn_pool::<TcpClient<Rt>>(None, &addr.to_string());
        std::sync::Arc::new(EchoClient::new(pool))
    }
}
