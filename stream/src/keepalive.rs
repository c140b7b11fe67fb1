//! Keep-alive bookkeeping (sans-IO): when to ping a peer that has gone silent while calls are
//! in flight, and when to give it up for gone. Driven by a clock of whole periods (the
//! client's ticks, the server's watchdog periods) and the count of reads that returned bytes:
//! anything read is proof of life, so a busy connection never pings.

/// What the driver does after [`KeepAlive::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing yet; poll again at this time.
    Wait(u64),
    /// Send a `Ping` now; poll again at this time.
    Ping(u64),
    /// Nothing was read within the timeout of a ping: the peer is gone.
    Dead,
}

/// One connection's keep-alive state.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeepAlive {
    interval: u64,
    timeout: u64,
    /// The read count last seen.
    reads: u64,
    /// When the read count last changed (or keep-alive was last reset).
    heard: u64,
    /// When the unanswered ping was sent.
    ping_sent: Option<u64>,
}

impl KeepAlive {
    /// Pings after `interval` of silence and gives up `timeout` after the ping (both at
    /// least 1).
    pub(crate) fn new(interval: u64, timeout: u64) -> Self {
        Self {
            interval: interval.max(1),
            timeout: timeout.max(1),
            reads: 0,
            heard: 0,
            ping_sent: None,
        }
    }

    /// Starts counting silence from `now` (when calls start after an idle spell, during
    /// which nothing needed the peer).
    pub(crate) fn reset(&mut self, now: u64, reads: u64) {
        self.reads = reads;
        self.heard = now;
        self.ping_sent = None;
    }

    /// What to do at `now`, given the reads so far.
    pub(crate) fn poll(&mut self, now: u64, reads: u64) -> Action {
        if reads != self.reads {
            self.reset(now, reads);
        }
        if let Some(sent) = self.ping_sent {
            let give_up = sent + self.timeout;
            return if now >= give_up {
                Action::Dead
            } else {
                Action::Wait(give_up)
            };
        }
        let ping_at = self.heard + self.interval;
        if now >= ping_at {
            self.ping_sent = Some(now);
            Action::Ping(now + self.timeout)
        } else {
            Action::Wait(ping_at)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_peer_is_pinged_then_given_up() {
        let mut alive = KeepAlive::new(10, 5);
        alive.reset(100, 7);
        assert_eq!(alive.poll(105, 7), Action::Wait(110));
        assert_eq!(alive.poll(110, 7), Action::Ping(115));
        assert_eq!(alive.poll(112, 7), Action::Wait(115));
        assert_eq!(alive.poll(115, 7), Action::Dead);
    }

    #[test]
    fn anything_read_is_proof_of_life() {
        let mut alive = KeepAlive::new(10, 5);
        alive.reset(0, 0);
        // Traffic keeps the peer alive: no ping is ever due.
        for now in 1..100 {
            assert_eq!(alive.poll(now, now), Action::Wait(now + 10));
        }
        // A ping, then an answer (any read) before the timeout.
        assert_eq!(alive.poll(109, 99), Action::Ping(114));
        assert_eq!(alive.poll(112, 100), Action::Wait(122));
    }

    #[test]
    fn reset_forgets_an_old_silence() {
        let mut alive = KeepAlive::new(10, 5);
        alive.reset(0, 0);
        alive.reset(1_000, 0);
        assert_eq!(alive.poll(1_001, 0), Action::Wait(1_010));
    }
}
