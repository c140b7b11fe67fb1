//! The state both ends keep for one streaming call: items received and not yet taken, the
//! credit in each direction, and who waits for what.
//!
//! The connection's reader pushes items in without ever waiting (a slow consumer of one stream
//! never stalls the connection: its peer simply runs out of credit), the application takes them
//! out and grants credit back; a sender waits for credit, then queues its item for the writer.

use std::{
    collections::VecDeque,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;

use crate::{
    error::ErrorCode,
    flow::{FlowError, RecvWindow, SendCredit},
    frame::{FrameHeader, FrameKind},
    io::{Outbox, Outgoing},
    sync::Mutex,
};

/// How the peer's item stream ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Normally (`StreamEnd` with `NO_ERROR`).
    Done,
    /// With an error code: the peer aborted, or the call is over.
    Failed(ErrorCode, String),
}

#[derive(Debug)]
struct Inner {
    items: VecDeque<Bytes>,
    recv: RecvWindow,
    /// Set once no more items will arrive.
    ended: Option<End>,
    recv_waker: Option<Waker>,
    send: SendCredit,
    /// Set once this side may send no more items: the call is over.
    closed: Option<ErrorCode>,
    send_waker: Option<Waker>,
}

/// One streaming call's shared state, on either side.
#[derive(Debug)]
pub(crate) struct StreamState {
    seq: u64,
    inner: Mutex<Inner>,
}

impl StreamState {
    /// A new stream `seq` receiving into a window of `window` bytes; returns it and the credit
    /// to grant the peer at once (sent by the caller).
    pub(crate) fn new(seq: u64, window: u32) -> (Self, u32) {
        let (recv, grant) = RecvWindow::new(window);
        let state = Self {
            seq,
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                recv,
                ended: None,
                recv_waker: None,
                send: SendCredit::default(),
                closed: None,
                send_waker: None,
            }),
        };
        (state, grant)
    }

    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// The reader got an item (with `end`, the last one). Returns the waker to wake.
    pub(crate) fn on_item(&self, item: Bytes, end: bool) -> Result<Option<Waker>, FlowError> {
        let mut inner = self.inner.lock();
        if inner.ended.is_some() {
            // Items after the end (or after the call closed here) are dropped.
            return Ok(None);
        }
        inner.recv.receive(item.len())?;
        inner.items.push_back(item);
        if end {
            inner.ended = Some(End::Done);
        }
        Ok(inner.recv_waker.take())
    }

    /// The peer ended its items, with `code` (`NO_ERROR` for a normal end).
    pub(crate) fn on_end(&self, code: ErrorCode, message: String) -> Option<Waker> {
        let mut inner = self.inner.lock();
        inner.ended.get_or_insert(if code == ErrorCode::NO_ERROR {
            End::Done
        } else {
            End::Failed(code, message)
        });
        inner.recv_waker.take()
    }

    /// The peer granted `bytes` of credit.
    pub(crate) fn on_credit(&self, bytes: u32) -> Option<Waker> {
        let mut inner = self.inner.lock();
        inner.send.grant(bytes);
        inner.send_waker.take()
    }

    /// The call is over: senders fail with `code`, receivers end after what is buffered.
    /// Returns the wakers to wake.
    pub(crate) fn close(&self, code: ErrorCode) -> [Option<Waker>; 2] {
        let mut inner = self.inner.lock();
        inner.closed.get_or_insert(code);
        inner
            .ended
            .get_or_insert_with(|| End::Failed(code, "call ended".into()));
        [inner.recv_waker.take(), inner.send_waker.take()]
    }

    /// Takes the next item, granting credit through `out` as items are consumed. `Ready(None)`
    /// once the peer's items ended normally; `Ready(Some(Err))` once they ended otherwise.
    pub(crate) fn poll_item(
        &self,
        cx: &mut Context<'_>,
        out: &Outbox,
    ) -> Poll<Option<Result<Bytes, (ErrorCode, String)>>> {
        let mut inner = self.inner.lock();
        if let Some(item) = inner.items.pop_front() {
            if let Some(grant) = inner.recv.consume(item.len()) {
                if inner.ended.is_none() {
                    out.send_control(credit(self.seq, grant));
                }
            }
            return Poll::Ready(Some(Ok(item)));
        }
        match &inner.ended {
            Some(End::Done) => Poll::Ready(None),
            Some(End::Failed(code, message)) => Poll::Ready(Some(Err((*code, message.clone())))),
            None => {
                inner.recv_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Bytes received and not yet taken.
    pub(crate) fn buffered(&self) -> usize {
        self.inner.lock().recv.buffered()
    }

    /// Waits for credit to send one item of `len` bytes and spends it. `Err` with the code the
    /// call closed with.
    pub(crate) fn poll_send(
        &self,
        cx: &mut Context<'_>,
        len: usize,
    ) -> Poll<Result<(), ErrorCode>> {
        let mut inner = self.inner.lock();
        if let Some(code) = inner.closed {
            return Poll::Ready(Err(code));
        }
        if inner.send.can_send() {
            inner.send.spend(len);
            return Poll::Ready(Ok(()));
        }
        inner.send_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Ready once the call is over (this side may send no more). Shares the sender's waker
    /// slot: one task sends and waits here, never both at once.
    pub(crate) fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.inner.lock();
        if inner.closed.is_some() {
            return Poll::Ready(());
        }
        inner.send_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Whether this side may still send.
    pub(crate) fn closed(&self) -> Option<ErrorCode> {
        self.inner.lock().closed
    }
}

/// A `Credit` frame header granting `bytes` on stream `seq`.
pub(crate) fn credit(seq: u64, bytes: u32) -> FrameHeader {
    FrameHeader {
        aux: bytes,
        ..FrameHeader::new(FrameKind::Credit, seq)
    }
}

/// A `StreamItem` frame for stream `seq`.
pub(crate) fn item(seq: u64, body: Bytes) -> Outgoing {
    Outgoing::frame(FrameHeader::new(FrameKind::StreamItem, seq), body)
}

/// A `StreamEnd` frame for stream `seq` with `code` and `message`.
pub(crate) fn end(seq: u64, code: ErrorCode, message: &str) -> Outgoing {
    let header = FrameHeader {
        aux: code.as_u32(),
        ..FrameHeader::new(FrameKind::StreamEnd, seq)
    };
    Outgoing::frame(header, Bytes::copy_from_slice(message.as_bytes()))
}

/// Wakes what `close` or the `on_*` calls returned.
pub(crate) fn wake(wakers: impl IntoIterator<Item = Option<Waker>>) {
    wakers.into_iter().flatten().for_each(Waker::wake);
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;
    use crate::{flow::INITIAL_STREAM_CREDIT, io::outbox};

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    #[test]
    fn items_then_end_flag_then_nothing() {
        let (out, _rx) = outbox(crate::io::DEFAULT_MAX_QUEUED_BYTES, None);
        let (state, _) = StreamState::new(1, INITIAL_STREAM_CREDIT);
        state.on_item(Bytes::from_static(b"a"), false).unwrap();
        state.on_item(Bytes::from_static(b"b"), true).unwrap();
        // After the END flag, items are dropped, not queued.
        state.on_item(Bytes::from_static(b"c"), false).unwrap();
        let mut cx = cx();
        assert_eq!(
            state.poll_item(&mut cx, &out),
            Poll::Ready(Some(Ok(Bytes::from_static(b"a"))))
        );
        assert_eq!(
            state.poll_item(&mut cx, &out),
            Poll::Ready(Some(Ok(Bytes::from_static(b"b"))))
        );
        assert_eq!(state.poll_item(&mut cx, &out), Poll::Ready(None));
    }

    #[test]
    fn abort_reports_its_code_after_buffered_items() {
        let (out, _rx) = outbox(crate::io::DEFAULT_MAX_QUEUED_BYTES, None);
        let (state, _) = StreamState::new(1, INITIAL_STREAM_CREDIT);
        state.on_item(Bytes::from_static(b"a"), false).unwrap();
        state.on_end(ErrorCode::CANCELLED, "gone".into());
        let mut cx = cx();
        assert!(matches!(
            state.poll_item(&mut cx, &out),
            Poll::Ready(Some(Ok(_)))
        ));
        assert_eq!(
            state.poll_item(&mut cx, &out),
            Poll::Ready(Some(Err((ErrorCode::CANCELLED, "gone".into()))))
        );
    }

    #[test]
    fn sender_waits_for_credit_and_fails_once_closed() {
        let (state, _) = StreamState::new(1, INITIAL_STREAM_CREDIT);
        let mut cx = cx();
        // The initial credit lets one large item through, then the sender waits.
        assert_eq!(state.poll_send(&mut cx, 100_000), Poll::Ready(Ok(())));
        assert_eq!(state.poll_send(&mut cx, 1), Poll::Pending);
        state.on_credit(50_000);
        assert_eq!(state.poll_send(&mut cx, 1), Poll::Ready(Ok(())));
        assert_eq!(state.poll_closed(&mut cx), Poll::Pending);
        state.close(ErrorCode::DEADLINE_EXCEEDED);
        assert_eq!(state.poll_closed(&mut cx), Poll::Ready(()));
        assert_eq!(
            state.poll_send(&mut cx, 1),
            Poll::Ready(Err(ErrorCode::DEADLINE_EXCEEDED))
        );
    }

    #[test]
    fn consuming_grants_credit_through_the_control_queue() {
        let (out, mut rx) = outbox(crate::io::DEFAULT_MAX_QUEUED_BYTES, None);
        let (state, grant) = StreamState::new(7, 2 * INITIAL_STREAM_CREDIT);
        assert_eq!(grant, INITIAL_STREAM_CREDIT);
        for _ in 0..4 {
            state
                .on_item(Bytes::from(vec![0; 32 * 1024]), false)
                .unwrap();
        }
        let mut cx = cx();
        for _ in 0..4 {
            assert!(matches!(
                state.poll_item(&mut cx, &out),
                Poll::Ready(Some(Ok(_)))
            ));
        }
        let mut granted = 0;
        while let Some(Outgoing::Frame(header, _)) = rx.try_recv() {
            assert_eq!((header.kind, header.seq), (FrameKind::Credit, 7));
            granted += header.aux;
        }
        assert_eq!(granted, 4 * 32 * 1024);
        assert_eq!(state.buffered(), 0);
    }

    /// Loom models of stream credit (`--cfg flumen_loom`, see `src/sync.rs`): a sender out of
    /// credit is woken by the grant or by the call's end, whatever the interleaving; a lost
    /// wake-up is a deadlock, which loom reports.
    #[cfg(flumen_loom)]
    mod loom_models {
        use std::future::poll_fn;

        use loom::{future::block_on, sync::Arc, thread};

        use super::*;

        /// A stream whose first item spends all its initial credit.
        fn exhausted() -> Arc<StreamState> {
            let (state, _) = StreamState::new(1, INITIAL_STREAM_CREDIT);
            let mut cx = cx();
            let spend_all = state.poll_send(&mut cx, INITIAL_STREAM_CREDIT as usize);
            assert_eq!(spend_all, Poll::Ready(Ok(())));
            Arc::new(state)
        }

        #[test]
        fn loom_a_grant_wakes_a_sender_out_of_credit() {
            loom::model(|| {
                let state = exhausted();
                let peer = state.clone();
                let granter = thread::spawn(move || {
                    for _ in 0..2 {
                        wake([peer.on_credit(1)]);
                    }
                });
                for _ in 0..2 {
                    block_on(poll_fn(|cx| state.poll_send(cx, 1))).unwrap();
                }
                granter.join().unwrap();
            });
        }

        #[test]
        fn loom_the_end_of_the_call_wakes_a_sender_out_of_credit() {
            loom::model(|| {
                let state = exhausted();
                let peer = state.clone();
                let closer = thread::spawn(move || wake(peer.close(ErrorCode::CANCELLED)));
                let sent = block_on(poll_fn(|cx| state.poll_send(cx, 1)));
                assert_eq!(sent, Err(ErrorCode::CANCELLED));
                closer.join().unwrap();
            });
        }
    }
}
