//! Per-stream flow control in bytes (sans-IO).
//!
//! Each direction of a stream has its own credit. The receiver starts the sender with
//! [`INITIAL_STREAM_CREDIT`] bytes and grants more with `Credit` frames as its application
//! consumes items. A sender may send an item while its credit is positive (the item may take it
//! below zero), so an item larger than the window still goes through; a receiver therefore
//! buffers at most `window + one item` bytes per stream, however slowly its application reads.

/// Credit each side of a new stream starts with, in bytes (64 KiB), before any `Credit` frame.
pub const INITIAL_STREAM_CREDIT: u32 = 64 * 1024;

/// Default receive window per stream (256 KiB): the most bytes of unconsumed items a receiver
/// grants its peer, so the most it buffers per stream (plus one item).
pub const DEFAULT_STREAM_WINDOW: u32 = 256 * 1024;

/// The peer sent an item without credit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stream item of {len} bytes sent without credit")]
pub struct FlowError {
    /// The item's length.
    pub len: usize,
}

/// The receiving side of one stream direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvWindow {
    window: u32,
    /// Credit granted and not yet used by the peer (may be below zero by one item).
    remaining: i64,
    /// Bytes consumed since the last grant.
    consumed: u32,
    /// Bytes received and not yet consumed.
    buffered: usize,
}

impl RecvWindow {
    /// A window of `window` bytes (at least [`INITIAL_STREAM_CREDIT`]). Returns it and the
    /// credit to grant at once so that the peer may fill it.
    pub fn new(window: u32) -> (Self, u32) {
        let window = window.max(INITIAL_STREAM_CREDIT);
        let this = Self {
            window,
            remaining: i64::from(window),
            consumed: 0,
            buffered: 0,
        };
        (this, window - INITIAL_STREAM_CREDIT)
    }

    /// An item of `len` bytes arrived.
    ///
    /// # Errors
    ///
    /// [`FlowError`] if the peer had no credit left.
    pub fn receive(&mut self, len: usize) -> Result<(), FlowError> {
        if self.remaining <= 0 {
            return Err(FlowError { len });
        }
        self.remaining -= len as i64;
        self.buffered += len;
        Ok(())
    }

    /// The application took an item of `len` bytes. Returns credit to grant now, if enough
    /// has been consumed to be worth a frame (half the window).
    pub fn consume(&mut self, len: usize) -> Option<u32> {
        self.buffered -= len.min(self.buffered);
        self.consumed = self.consumed.saturating_add(len as u32);
        if self.consumed < self.window / 2 {
            return None;
        }
        let grant = std::mem::take(&mut self.consumed);
        self.remaining += i64::from(grant);
        Some(grant)
    }

    /// Bytes received and not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// The window.
    pub fn window(&self) -> u32 {
        self.window
    }
}

/// The sending side of one stream direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendCredit {
    available: i64,
}

impl Default for SendCredit {
    fn default() -> Self {
        Self {
            available: i64::from(INITIAL_STREAM_CREDIT),
        }
    }
}

impl SendCredit {
    /// Whether an item may be sent now.
    pub fn can_send(&self) -> bool {
        self.available > 0
    }

    /// An item of `len` bytes was sent.
    pub fn spend(&mut self, len: usize) {
        self.available -= len as i64;
    }

    /// The peer granted `bytes` more.
    pub fn grant(&mut self, bytes: u32) {
        self.available = self.available.saturating_add(i64::from(bytes));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn initial_grant_fills_the_window() {
        let (recv, grant) = RecvWindow::new(256 * 1024);
        assert_eq!(grant, 192 * 1024);
        assert_eq!(recv.window(), 256 * 1024);
        let (small, grant) = RecvWindow::new(1);
        assert_eq!((small.window(), grant), (INITIAL_STREAM_CREDIT, 0));
    }

    #[test]
    fn one_item_may_overdraw() {
        let (mut recv, _) = RecvWindow::new(INITIAL_STREAM_CREDIT);
        recv.receive(1_000_000).unwrap();
        assert_eq!(recv.receive(1), Err(FlowError { len: 1 }));
    }

    proptest! {
        /// A sender that obeys its credit is never refused, and the receiver never buffers more
        /// than its window plus one item, whatever the item sizes and consumption order.
        #[test]
        fn bounded_and_never_refused(
            window in 1u32..300_000,
            steps in prop::collection::vec((1usize..100_000, any::<bool>()), 1..400),
        ) {
            let (mut recv, initial) = RecvWindow::new(window);
            let mut send = SendCredit::default();
            send.grant(initial);
            let mut queue = std::collections::VecDeque::new();
            let mut largest = 0;
            for (len, consume) in steps {
                if send.can_send() {
                    send.spend(len);
                    recv.receive(len).unwrap();
                    queue.push_back(len);
                    largest = largest.max(len);
                }
                prop_assert!(recv.buffered() <= recv.window() as usize + largest);
                if consume || !send.can_send() {
                    if let Some(len) = queue.pop_front() {
                        if let Some(grant) = recv.consume(len) {
                            send.grant(grant);
                        }
                    }
                }
            }
        }
    }
}
