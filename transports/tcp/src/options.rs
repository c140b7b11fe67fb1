//! Socket options both TCP transports apply to every connection they open or accept.

use std::{io, time::Duration};

use socket2::{SockRef, TcpKeepalive};

/// Socket options for TCP connections: keepalive probes and `TCP_USER_TIMEOUT`, so that a peer
/// that disappears without closing (cable pulled, host frozen, a route gone) is noticed by
/// the kernel instead of leaving the connection open forever. `TCP_NODELAY` is always set:
/// Flumen batches its writes itself.
///
/// Both are off by default (the operating system's settings apply). Flumen's own keep-alive
/// pings (`ClientConfig::keepalive`, `ServerConfig::keepalive`) detect a dead peer on every
/// transport; these add the kernel's view on TCP.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use flumen_tcp::TcpOptions;
///
/// let options = TcpOptions::new()
///     .keepalive(Some(Duration::from_secs(30)), Duration::from_secs(5), 3)
///     .user_timeout(Some(Duration::from_secs(20)));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    keepalive: Option<Keepalive>,
    user_timeout: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Keepalive {
    idle: Duration,
    interval: Duration,
    retries: u32,
}

impl TcpOptions {
    /// No keepalive probes, no user timeout: the operating system's defaults.
    pub const fn new() -> Self {
        Self {
            keepalive: None,
            user_timeout: None,
        }
    }

    /// Turns TCP keepalive on (`SO_KEEPALIVE`): after `idle` without traffic the kernel sends
    /// a probe every `interval`, and gives up on the connection after `retries` unanswered
    /// ones (reads then fail, and with them every pending call). `None` turns it off.
    pub const fn keepalive(
        mut self,
        idle: Option<Duration>,
        interval: Duration,
        retries: u32,
    ) -> Self {
        self.keepalive = match idle {
            Some(idle) => Some(Keepalive {
                idle,
                interval,
                retries,
            }),
            None => None,
        };
        self
    }

    /// Sets `TCP_USER_TIMEOUT` (Linux): the connection fails when data it sent stays
    /// unacknowledged this long, for example when the peer vanished mid-call. `None` keeps
    /// the kernel's default (retransmissions for about 15 minutes). Ignored elsewhere.
    pub const fn user_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.user_timeout = timeout;
        self
    }

    /// Applies the options (and `TCP_NODELAY`) to `socket`.
    #[cfg_attr(not(any(feature = "tokio", feature = "smol")), allow(dead_code))]
    pub(crate) fn apply(&self, socket: SockRef<'_>) -> io::Result<()> {
        socket.set_tcp_nodelay(true)?;
        if let Some(keepalive) = self.keepalive {
            let params = TcpKeepalive::new()
                .with_time(keepalive.idle)
                .with_interval(keepalive.interval);
            #[cfg(not(any(target_os = "windows", target_os = "openbsd", target_os = "haiku")))]
            let params = params.with_retries(keepalive.retries);
            socket.set_tcp_keepalive(&params)?;
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(timeout) = self.user_timeout {
            socket.set_tcp_user_timeout(Some(timeout))?;
        }
        Ok(())
    }
}
