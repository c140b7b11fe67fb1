//! The connection a command runs on: TCP, TLS, QUIC or a Unix socket, as the flags say.

use std::net::{SocketAddr, ToSocketAddrs};

use flumen::{
    quic::QuicTransport,
    rt::TokioRuntime,
    stream::{Client, ClientConfig, Transport},
    tcp::TokioTcp,
    tls::{ClientTls, TlsTransport},
    unix::TokioUnix,
};

use crate::{Failure, Target};

/// Connects to `target`.
pub(crate) async fn connect(target: &Target) -> Result<Client, Failure> {
    let config = ClientConfig::default()
        .connect_timeout(target.connect_timeout)
        .max_frame_len(target.max_frame)
        // Each call sets its own deadline.
        .default_timeout(None);
    if let Some(path) = target.addr.strip_prefix("unix:") {
        if target.tls || target.quic {
            return Err(Failure::Usage(
                "--tls and --quic need HOST:PORT, not a Unix socket".into(),
            ));
        }
        return open(target, &TokioUnix, &path.into(), config).await;
    }
    let addr = resolve(&target.addr)?;
    if !(target.tls || target.quic) {
        return open(target, &TokioTcp::default(), &addr, config).await;
    }
    let tls = client_tls(target)?;
    let refused = |e: flumen::tls::TlsError| Failure::Usage(format!("TLS settings: {e}"));
    if target.quic {
        let quic = QuicTransport::tokio().client(tls).map_err(refused)?;
        open(target, &quic, &addr, config).await
    } else {
        let tls = TlsTransport::new(TokioTcp::default())
            .client(tls)
            .map_err(refused)?;
        open(target, &tls, &addr, config).await
    }
}

async fn open<T: Transport>(
    target: &Target,
    transport: &T,
    addr: &T::Addr,
    config: ClientConfig,
) -> Result<Client, Failure> {
    Client::connect(&TokioRuntime::current(), transport, addr, config)
        .await
        .map_err(|e| Failure::Connection(format!("cannot connect to {}: {e}", target.addr)))
}

/// `HOST:PORT`'s first address: a usage error if it is not of that form, a connection
/// failure if the name does not resolve.
fn resolve(addr: &str) -> Result<SocketAddr, Failure> {
    let well_formed = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !well_formed {
        return Err(Failure::Usage(format!(
            "{addr:?} is not HOST:PORT or unix:PATH"
        )));
    }
    addr.to_socket_addrs()
        .map_err(|e| Failure::Connection(format!("cannot resolve {addr:?}: {e}")))?
        .next()
        .ok_or_else(|| Failure::Connection(format!("{addr:?} resolves to no address")))
}

/// The TLS settings of `--ca`, `--server-name`, `--cert` and `--key`.
fn client_tls(target: &Target) -> Result<ClientTls, Failure> {
    let Some(ca) = &target.ca else {
        return Err(Failure::Usage(
            "--tls and --quic need --ca FILE, the CA that signed the server's certificate".into(),
        ));
    };
    let name = match &target.server_name {
        Some(name) => name.clone(),
        None => host(&target.addr).to_owned(),
    };
    let bad = |e: flumen::tls::TlsError| Failure::Usage(format!("TLS settings: {e}"));
    let tls = ClientTls::from_ca_file(ca, &name).map_err(bad)?;
    match (&target.cert, &target.key) {
        (Some(cert), Some(key)) => tls.identity_from_pem_files(cert, key).map_err(bad),
        _ => Ok(tls),
    }
}

/// The host of `HOST:PORT` (`[::1]:80`'s is `::1`).
fn host(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host("localhost:7000"), "localhost");
        assert_eq!(host("[::1]:7000"), "::1");
        assert_eq!(host("10.0.0.1:1"), "10.0.0.1");
    }
}
