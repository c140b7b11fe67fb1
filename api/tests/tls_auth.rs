//! Certificate failures over TLS-TCP and QUIC, on tokio and smol: each fails the one client with
//! a typed `HandshakeError` while the server goes on serving a good client.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{eventually, loopback, run_smol, run_tokio, Env, MakeTransport};
use flumen::{
    quic::QuicTransport,
    stream::Transport,
    tcp::{SmolTcp, TokioTcp},
    tls::{ClientTls, DevCa, HandshakeError, ServerTls, TlsTransport},
    Client, ConnectError, Router, Server, ServerConfig, ServerHandle, Status,
};

fn router() -> Router {
    Router::new().route("echo", |text: String| async move { Ok::<_, Status>(text) })
}

/// A transport that can be built with either TLS side.
trait Secure: Transport<Addr = SocketAddr> + Clone + MakeTransport {
    fn with_client(self, tls: ClientTls) -> Self;
    fn with_server(self, tls: ServerTls) -> Self;

    fn secure(self, client: Option<ClientTls>, server: Option<ServerTls>) -> Self {
        let transport = match client {
            Some(tls) => self.with_client(tls),
            None => self,
        };
        match server {
            Some(tls) => transport.with_server(tls),
            None => transport,
        }
    }
}

impl<T: Transport<Addr = SocketAddr> + Clone + MakeTransport> Secure for TlsTransport<T> {
    fn with_client(self, tls: ClientTls) -> Self {
        self.client(tls).unwrap()
    }

    fn with_server(self, tls: ServerTls) -> Self {
        self.server(tls).unwrap()
    }
}

impl Secure for QuicTransport {
    fn with_client(self, tls: ClientTls) -> Self {
        self.client(tls).unwrap()
    }

    fn with_server(self, tls: ServerTls) -> Self {
        self.server(tls).unwrap()
    }
}

/// A server over `env`'s transport kind with `server` TLS.
async fn serve<E: Env>(env: &E, server: ServerTls) -> ServerHandle<SocketAddr>
where
    E::Tr: Secure,
{
    let transport = env.transport().secure(None, Some(server));
    Server::new(router())
        .config(ServerConfig::default().handshake_timeout(Duration::from_secs(5)))
        .bind(&env.rt(), &transport, &loopback())
        .await
        .unwrap()
}

async fn connect<E: Env>(env: &E, addr: SocketAddr, tls: ClientTls) -> Result<Client, ConnectError>
where
    E::Tr: Secure,
{
    let transport = env.transport().secure(Some(tls), None);
    Client::connect(&env.rt(), &transport, &addr).await
}

async fn echo(client: &Client) {
    let reply: String = client.call("echo", &"still serving").await.unwrap();
    assert_eq!(reply, "still serving");
}

fn handshake_error(err: &ConnectError) -> HandshakeError {
    HandshakeError::find(err)
        .unwrap_or_else(|| panic!("expected a handshake error, got {err:?}"))
        .clone()
}

/// Connects a good client, runs `bad`, and checks the good client still works and the server
/// counted a failed handshake.
async fn with_good_client<E: Env>(
    env: &E,
    server_tls: ServerTls,
    good: ClientTls,
    bad: ClientTls,
) -> HandshakeError
where
    E::Tr: Secure,
{
    let server = serve(env, server_tls).await;
    let addr = *server.local_addr();
    let good = connect(env, addr, good).await.unwrap();
    echo(&good).await;
    let err = connect(env, addr, bad).await.unwrap_err();
    echo(&good).await;
    eventually(env, "server counts the failed handshake", || {
        server.stats().handshake_failures >= 1
    })
    .await;
    handshake_error(&err)
}

async fn untrusted_server_certificate<E: Env>(env: E)
where
    E::Tr: Secure,
{
    let ca = DevCa::new().unwrap();
    let stranger = DevCa::new().unwrap();
    let err = with_good_client(
        &env,
        ca.server_tls(&["localhost"]).unwrap(),
        ca.client_tls("localhost").unwrap(),
        stranger.client_tls("localhost").unwrap(),
    )
    .await;
    assert!(
        matches!(err, HandshakeError::UntrustedCertificate(_)),
        "{err:?}"
    );
}

async fn wrong_server_name<E: Env>(env: E)
where
    E::Tr: Secure,
{
    let ca = DevCa::new().unwrap();
    let err = with_good_client(
        &env,
        ca.server_tls(&["localhost"]).unwrap(),
        ca.client_tls("localhost").unwrap(),
        ca.client_tls("billing.internal").unwrap(),
    )
    .await;
    assert_eq!(err, HandshakeError::WrongServerName);
}

fn mutual(ca: &DevCa) -> ServerTls {
    ca.server_tls(&["localhost"])
        .unwrap()
        .require_client_certs(ca.roots())
        .unwrap()
}

fn with_identity(tls: ClientTls, issuer: &DevCa) -> ClientTls {
    let identity = issuer.issue(&["client.test"]).unwrap();
    tls.identity(identity.chain().to_vec(), identity.key())
        .unwrap()
}

async fn missing_client_certificate<E: Env>(env: E)
where
    E::Tr: Secure,
{
    let ca = DevCa::new().unwrap();
    let err = with_good_client(
        &env,
        mutual(&ca),
        with_identity(ca.client_tls("localhost").unwrap(), &ca),
        ca.client_tls("localhost").unwrap(),
    )
    .await;
    assert_eq!(err, HandshakeError::ClientCertificateRequired);
}

async fn client_certificate_from_another_ca<E: Env>(env: E)
where
    E::Tr: Secure,
{
    let ca = DevCa::new().unwrap();
    let stranger = DevCa::new().unwrap();
    let err = with_good_client(
        &env,
        mutual(&ca),
        with_identity(ca.client_tls("localhost").unwrap(), &ca),
        with_identity(ca.client_tls("localhost").unwrap(), &stranger),
    )
    .await;
    assert!(
        matches!(err, HandshakeError::CertificateRejected(_)),
        "{err:?}"
    );
}

/// A peer that opens a connection and never starts the handshake is dropped after the handshake
/// timeout; it never holds up the accept loop.
async fn silent_peer_times_out_without_blocking_others<E: Env>(env: E)
where
    E::Tr: Secure,
{
    let ca = DevCa::new().unwrap();
    let transport = env
        .transport()
        .secure(None, Some(ca.server_tls(&["localhost"]).unwrap()));
    let server = Server::new(router())
        // Long enough for the good client's handshake on a loaded machine (a debug build).
        .config(ServerConfig::default().handshake_timeout(Duration::from_secs(1)))
        .bind(&env.rt(), &transport, &loopback())
        .await
        .unwrap();
    let addr = *server.local_addr();
    // A TCP connection that never sends its ClientHello.
    let _silent = std::net::TcpStream::connect(addr).unwrap();
    let good = connect(&env, addr, ca.client_tls("localhost").unwrap())
        .await
        .unwrap();
    echo(&good).await;
    eventually(&env, "silent peer dropped", || {
        server.stats().handshake_failures >= 1
    })
    .await;
    echo(&good).await;
}

/// At `max_handshakes`, a new peer is dropped before any handshake work: a silent peer holding
/// the only slot makes the next client's connect fail, until the handshake timeout frees it.
async fn peers_past_max_handshakes_are_dropped<E: Env>(env: E)
where
    E::Tr: Secure,
{
    let ca = DevCa::new().unwrap();
    let transport = env
        .transport()
        .secure(None, Some(ca.server_tls(&["localhost"]).unwrap()));
    let config = ServerConfig::default()
        .max_handshakes(1)
        // Long enough that the next connect lands while the silent peer holds the slot.
        .handshake_timeout(Duration::from_secs(2));
    let server = Server::new(router())
        .config(config)
        .bind(&env.rt(), &transport, &loopback())
        .await
        .unwrap();
    let addr = *server.local_addr();
    // A TCP connection that never sends its ClientHello takes the one slot.
    let _silent = std::net::TcpStream::connect(addr).unwrap();
    eventually(&env, "the silent peer accepted", || {
        server.stats().accepted == 1
    })
    .await;
    let err = connect(&env, addr, ca.client_tls("localhost").unwrap())
        .await
        .expect_err("no handshake slot is free");
    assert!(server.stats().refused >= 1, "{err}");
    // The silent peer times out; then clients get in again.
    eventually(&env, "the silent peer dropped", || {
        server.stats().handshake_failures >= 1
    })
    .await;
    let good = connect(&env, addr, ca.client_tls("localhost").unwrap())
        .await
        .unwrap();
    echo(&good).await;
}

/// A TLS server that does not speak `flumen/1` (ALPN `h2` only): the Flumen client's handshake
/// fails with `NoCommonProtocol`, not with a confusing error later.
async fn server_without_the_flumen_protocol<E: Env>(env: E)
where
    E::Tr: Secure,
{
    let ca = DevCa::new().unwrap();
    let mut config = ca.server_tls(&["localhost"]).unwrap().to_rustls().unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = flumen::tls::rustls::ServerConnection::new(std::sync::Arc::new(config)).unwrap();
        let mut stream = flumen::tls::rustls::StreamOwned::new(conn, tcp);
        // The handshake fails on our side too; what matters is what the client reports.
        let _ = std::io::Write::flush(&mut stream);
        let _ = std::io::Read::read(&mut stream, &mut [0u8; 16]);
    });
    let err = connect(&env, addr, ca.client_tls("localhost").unwrap())
        .await
        .expect_err("no common protocol");
    assert!(
        matches!(handshake_error(&err), HandshakeError::NoCommonProtocol),
        "{err:?}"
    );
    server.join().unwrap();
}

macro_rules! auth_suite {
    (tls: [$($tls:ident),*], quic: [$($quic:ident),*] $(,)?) => {
        mod tokio_tls {
            use super::common::With;
            use flumen::rt::TokioRuntime;
            $(#[test] fn $tls() { super::run_tokio(super::$tls::<With<TokioRuntime, super::TlsTransport<super::TokioTcp>>>) })*
        }
        mod smol_tls {
            use super::common::With;
            use flumen::rt::SmolRuntime;
            $(#[test] fn $tls() { super::run_smol(super::$tls::<With<SmolRuntime, super::TlsTransport<super::SmolTcp>>>) })*
        }
        mod tokio_quic {
            $(#[test] fn $quic() { super::run_tokio(super::$quic::<super::common::TokioQuicEnv>) })*
        }
        mod smol_quic {
            $(#[test] fn $quic() { super::run_smol(super::$quic::<super::common::SmolQuicEnv>) })*
        }
    };
}

auth_suite!(
    tls: [
        untrusted_server_certificate,
        wrong_server_name,
        missing_client_certificate,
        client_certificate_from_another_ca,
        silent_peer_times_out_without_blocking_others,
        peers_past_max_handshakes_are_dropped,
        server_without_the_flumen_protocol
    ],
    quic: [
        untrusted_server_certificate,
        wrong_server_name,
        missing_client_certificate,
        client_certificate_from_another_ca
    ],
);
