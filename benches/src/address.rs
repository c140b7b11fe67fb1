//! Server addresses as the command line and the server process's first line give them: an IP
//! socket address (TCP, TLS, QUIC) or a socket path (Unix).

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr};

use flumen::stream::Transport;

/// Where a server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Address {
    Ip(SocketAddr),
    Path(PathBuf),
}

impl Address {
    /// The IP address, for the systems that only speak TCP.
    pub(crate) fn ip(&self) -> Result<SocketAddr, String> {
        match self {
            Self::Ip(addr) => Ok(*addr),
            Self::Path(path) => Err(format!("{} is not an IP address", path.display())),
        }
    }
}

impl FromStr for Address {
    type Err = String;

    /// `host:port`, or a path (anything with a `/`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse() {
            Ok(addr) => Ok(Self::Ip(addr)),
            Err(_) if s.contains('/') => Ok(Self::Path(s.into())),
            Err(e) => Err(format!("{s:?}: {e} (and no socket path)")),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(addr) => addr.fmt(f),
            Self::Path(path) => path.display().fmt(f),
        }
    }
}

/// A transport's own address type, to and from [`Address`].
pub(crate) trait TransportAddr: Sized {
    fn from_address(address: &Address) -> Result<Self, String>;
    fn into_address(self) -> Address;
}

impl TransportAddr for SocketAddr {
    fn from_address(address: &Address) -> Result<Self, String> {
        address.ip()
    }

    fn into_address(self) -> Address {
        Address::Ip(self)
    }
}

impl TransportAddr for PathBuf {
    fn from_address(address: &Address) -> Result<Self, String> {
        match address {
            Address::Path(path) => Ok(path.clone()),
            Address::Ip(addr) => Err(format!("{addr} is not a socket path")),
        }
    }

    fn into_address(self) -> Address {
        Address::Path(self)
    }
}

/// `address` as `transport` takes it.
pub(crate) fn addr_for<T: Transport>(_transport: &T, address: &Address) -> Result<T::Addr, String>
where
    T::Addr: TransportAddr,
{
    T::Addr::from_address(address)
}

/// A socket path for a server this process starts: unique per process and call.
pub(crate) fn socket_path() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("flumen-bench-{}-{n}.sock", std::process::id()))
}
