//! The future of one unary call, written by hand.
//!
//! Every async call method of [`Client`](super::Client) is this one future. As an `async fn`
//! it held its arguments twice (as arguments, and moved into what it awaited), the futures of
//! the steps it awaited, and the guards around them: 456 bytes, copied again by each layer
//! that awaits it. Here it is its request, the step it is at, and the connection.

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::Bytes;

use super::Conn;
use crate::{
    error::{CallError, ErrorCode},
    io::Sending,
    sync::EventListener,
};

/// A call's request until its frame is queued.
pub(super) struct Request {
    pub(super) method: u32,
    pub(super) head: Bytes,
    pub(super) tail: Bytes,
    pub(super) timeout: Option<Duration>,
    pub(super) metadata: Option<Bytes>,
}

/// One unary call, from taking a slot of the window to its outcome. Dropping it before it
/// resolves cancels the call: the slot goes back and, if the request went out, the server is
/// told (a `Cancel` frame).
///
/// Where the call is follows from its fields: starting while `request` is kept, waiting for
/// room while `send` is, waiting for its outcome while `slot` is; resolved once none is.
/// Moving on takes a field out and drops nothing else.
#[must_use = "a call does nothing unless awaited"]
pub(super) struct Exchange<'a> {
    conn: &'a Conn,
    /// The request, until the call begins and its frame is made.
    request: Option<Request>,
    /// The deadline tick and the timeout, worked out on the first attempt to start (`None`
    /// until then): waiting for a slot counts against the deadline.
    deadline: Option<Option<(u64, Duration)>>,
    /// Set while every slot is in use: wakes the caller when one is given back.
    listener: Option<EventListener>,
    /// Whether the caller is counted among those waiting for a slot.
    counted: bool,
    /// The slot the call began in, until its outcome is taken.
    slot: Option<u32>,
    /// The request's frame, while it waits for room in the outbox.
    send: Option<Sending<'a>>,
}

impl<'a> Exchange<'a> {
    pub(super) fn new(conn: &'a Conn, request: Request) -> Self {
        Self {
            conn,
            request: Some(request),
            deadline: None,
            listener: None,
            counted: false,
            slot: None,
            send: None,
        }
    }

    /// Takes a slot and begins the call in it, then queues its request: `Ready` with the
    /// call's error if it cannot begin (the request dropped), `Pending` while it waits for a
    /// slot or once it began.
    fn start(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        let conn = self.conn;
        loop {
            if let Some(listener) = &mut self.listener {
                ready!(Pin::new(listener).poll(cx));
                self.listener = None;
            }
            let Some(request) = &self.request else {
                return Poll::Pending;
            };
            let deadline = match self.deadline {
                Some(deadline) => deadline,
                None => {
                    let len = request.head.len() + request.tail.len();
                    if let Err(e) = conn.check_len(len, request.metadata.as_ref()) {
                        self.request = None;
                        return Poll::Ready(Err(e));
                    }
                    let at = request.timeout.map(|t| (conn.clock.deadline(t), t));
                    *self.deadline.insert(at)
                }
            };
            // The waker is kept with the call: a reply that comes before the caller looks for
            // it wakes the caller.
            match conn.try_start(&mut self.counted, deadline, Some(cx.waker())) {
                Ok(Ok((slot, seq, alone))) => {
                    self.slot = Some(slot);
                    if let Some(request) = self.request.take() {
                        let request = conn.request(
                            request.method,
                            seq,
                            request.timeout,
                            0,
                            (request.head, request.tail),
                            request.metadata.as_ref(),
                        );
                        // The only call in flight: no other request is on its way to batch
                        // this one with.
                        let send = match alone {
                            true => conn.out.send_now(request),
                            false => conn.out.send(request),
                        };
                        self.send = (!send.is_done()).then_some(send);
                    }
                    return Poll::Pending;
                }
                Ok(Err(full)) => self.listener = Some(full),
                Err(e) => {
                    self.request = None;
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

impl Future for Exchange<'_> {
    type Output = Result<Bytes, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.request.is_some() {
            if let Poll::Ready(Err(e)) = this.start(cx) {
                return Poll::Ready(Err(e));
            }
            // Pending: waiting for a slot, or the call began in this poll with this poll's
            // waker kept for its outcome (looking for it now would only find it pending).
            // Only a request waiting for room goes on at once.
            if this.send.is_none() {
                return Poll::Pending;
            }
        }
        if let Some(send) = &mut this.send {
            // Sent or not (the writer gone fails the call), the outcome tells.
            let _ = ready!(Pin::new(send).poll(cx));
            this.send = None;
        }
        let Some(slot) = this.slot else {
            panic!("a call polled after it resolved");
        };
        let outcome = ready!(this.conn.poll_outcome(slot, cx));
        this.slot = None;
        this.conn.out.caller_resumed();
        Poll::Ready(outcome)
    }
}

impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.conn.table.lock().remove_waiter();
        }
        if let Some(slot) = self.slot {
            self.conn.abandon(slot, ErrorCode::CANCELLED);
        }
    }
}

#[cfg(all(test, not(flumen_loom)))]
mod tests {
    use std::{
        future::Future,
        pin::pin,
        sync::Arc,
        task::{Context, Poll, Waker},
        time::Duration,
    };

    use bytes::Bytes;

    use crate::{
        client::{CallOptions, Client, ClientConfig, Conn, Handle},
        error::{CallError, ErrorCode},
        frame::{Frame, FrameHeader, FrameKind},
        io::{outbox, Inbox, Outgoing, DEFAULT_MAX_QUEUED_BYTES},
        proto::client::{on_frames, Effects},
        testing::Count,
        trace::Peer,
    };

    /// A client over no socket with `window` slots, taking request bodies up to `max_len`;
    /// its frames come out of the returned inbox.
    fn client(window: usize, max_len: u32) -> (Client, Inbox) {
        client_queueing(window, max_len, DEFAULT_MAX_QUEUED_BYTES)
    }

    /// [`client`] whose outbox holds up to `queued` bytes.
    fn client_queueing(window: usize, max_len: u32, queued: usize) -> (Client, Inbox) {
        let config = ClientConfig::default()
            .default_timeout(Some(Duration::from_secs(60)))
            .keepalive(None, Duration::from_secs(1));
        let (out, rx) = outbox(queued, None);
        let conn = Arc::new(Conn::new(window, out, &config, max_len, Peer::default()));
        let handle = Arc::new(Handle { conn });
        (Client { handle }, rx)
    }

    /// The kind and sequence id of each frame queued so far.
    fn queued(rx: &mut Inbox) -> Vec<(FrameKind, u64)> {
        std::iter::from_fn(|| rx.try_recv())
            .filter_map(|message| match message {
                Outgoing::Frame(header, _) | Outgoing::Parts(header, _) => {
                    Some((header.kind, header.seq))
                }
                Outgoing::Close => None,
            })
            .collect()
    }

    /// The server's reply to call `seq`, through the client's engine as its reader does.
    fn reply(conn: &Conn, seq: u64, body: &'static [u8]) {
        let mut header = FrameHeader::new(FrameKind::Response, seq);
        header.len = body.len() as u32;
        let frame = Frame {
            header,
            body: Bytes::from_static(body),
        };
        let mut fx = Effects::default();
        on_frames(&mut conn.table.lock(), [frame], false, &mut fx).unwrap();
        conn.apply(&mut fx).unwrap();
    }

    #[test]
    fn a_reply_wakes_the_waker_kept_when_the_call_began_and_resolves_it() {
        let (client, mut rx) = client(4, u32::MAX);
        let woken = Arc::new(Count::default());
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let seq = {
            let mut call = pin!(client.call(7, Bytes::from_static(b"ping")));
            assert!(call.as_mut().poll(&mut cx).is_pending());
            let frames = queued(&mut rx);
            assert_eq!(frames.len(), 1);
            let (kind, seq) = frames[0];
            assert_eq!(kind, FrameKind::Request);
            // The first poll looked for no outcome: the waker it kept must be the one woken.
            reply(&client.handle.conn, seq, b"pong");
            assert_eq!(woken.get(), 1);
            match call.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(body)) => assert_eq!(body, &b"pong"[..]),
                other => panic!("expected the reply, got {other:?}"),
            }
            seq
        };
        // The slot went back with the outcome: dropping the resolved call sent nothing, and
        // a late copy of its reply is refused.
        assert!(queued(&mut rx).is_empty());
        let mut fx = Effects::default();
        let mut header = FrameHeader::new(FrameKind::Response, seq);
        header.len = 0;
        let late = Frame {
            header,
            body: Bytes::new(),
        };
        on_frames(&mut client.handle.conn.table.lock(), [late], false, &mut fx).unwrap();
        assert!(fx.wakers.is_empty());
    }

    #[test]
    fn a_call_dropped_after_its_request_went_out_is_cancelled_and_frees_its_slot() {
        let (client, mut rx) = client(1, u32::MAX);
        let mut cx = Context::from_waker(Waker::noop());
        {
            let mut call = pin!(client.call(7, Bytes::from_static(b"a")));
            assert!(call.as_mut().poll(&mut cx).is_pending());
        }
        let frames: Vec<_> = std::iter::from_fn(|| rx.try_recv())
            .filter_map(|message| match message {
                Outgoing::Frame(header, _) => Some(header),
                _ => None,
            })
            .collect();
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[0].kind, FrameKind::Request);
        assert_eq!(frames[1].kind, FrameKind::Cancel);
        assert_eq!(frames[1].seq, frames[0].seq);
        // The server is told the caller gave up, not that a deadline passed.
        assert_eq!(frames[1].aux, ErrorCode::CANCELLED.as_u32());
        // The only slot is free again: the next call begins at once.
        let mut next = pin!(client.call(7, Bytes::from_static(b"b")));
        assert!(next.as_mut().poll(&mut cx).is_pending());
        assert_eq!(queued(&mut rx)[0].0, FrameKind::Request);
    }

    #[test]
    fn a_caller_that_gives_up_waiting_for_a_slot_is_no_longer_counted() {
        let (client, mut rx) = client(1, u32::MAX);
        let conn = &client.handle.conn;
        let mut cx = Context::from_waker(Waker::noop());
        let mut first = pin!(client.call(7, Bytes::from_static(b"a")));
        assert!(first.as_mut().poll(&mut cx).is_pending());
        {
            let mut second = pin!(client.call(7, Bytes::from_static(b"b")));
            assert!(second.as_mut().poll(&mut cx).is_pending());
            assert_eq!(conn.table.lock().waiters(), 1);
            // Still waiting: polled again, it is not counted twice.
            assert!(second.as_mut().poll(&mut cx).is_pending());
            assert_eq!(conn.table.lock().waiters(), 1);
        }
        assert_eq!(conn.table.lock().waiters(), 0);
        // Only the first call's request went out.
        assert_eq!(queued(&mut rx).len(), 1);
    }

    #[test]
    fn a_waiting_caller_takes_the_slot_given_back_and_is_uncounted() {
        let (client, mut rx) = client(1, u32::MAX);
        let conn = &client.handle.conn;
        let woken = Arc::new(Count::default());
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut first = pin!(client.call(7, Bytes::from_static(b"a")));
        let mut second = pin!(client.call(7, Bytes::from_static(b"b")));
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        let seq = queued(&mut rx)[0].1;
        reply(conn, seq, b"A");
        assert!(matches!(first.as_mut().poll(&mut cx), Poll::Ready(Ok(_))));
        // The slot went back to the waiting caller, which was woken and now begins.
        assert!(woken.get() >= 2);
        assert!(second.as_mut().poll(&mut cx).is_pending());
        assert_eq!(conn.table.lock().waiters(), 0);
        let frames = queued(&mut rx);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].0, FrameKind::Request);
        assert_ne!(frames[0].1, seq, "a new sequence id on the same slot");
    }

    #[test]
    fn a_request_over_the_servers_limit_fails_before_it_takes_a_slot() {
        let (client, mut rx) = client(1, 8);
        let mut cx = Context::from_waker(Waker::noop());
        let options = CallOptions::new().with_entry("k", "v").unwrap();
        {
            let mut call =
                pin!(client.call_with_options(7, Bytes::from_static(b"0123456"), &options));
            match call.as_mut().poll(&mut cx) {
                Poll::Ready(Err(CallError::RequestTooLarge { len, max: 8 })) => assert!(len > 8),
                other => panic!("expected RequestTooLarge, got {other:?}"),
            }
        }
        assert!(queued(&mut rx).is_empty());
        assert_eq!(client.handle.conn.table.lock().waiters(), 0);
        // Nothing was taken: a call that fits begins and sends its request.
        let mut fits = pin!(client.call(7, Bytes::from_static(b"ok")));
        assert!(fits.as_mut().poll(&mut cx).is_pending());
        assert_eq!(queued(&mut rx)[0].0, FrameKind::Request);
    }

    #[test]
    fn a_caller_waiting_for_a_slot_when_the_connection_fails_is_uncounted() {
        let (client, _rx) = client(1, u32::MAX);
        let conn = &client.handle.conn;
        let mut cx = Context::from_waker(Waker::noop());
        let mut first = pin!(client.call(7, Bytes::from_static(b"a")));
        let mut second = pin!(client.call(7, Bytes::from_static(b"b")));
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        assert_eq!(conn.table.lock().waiters(), 1);
        conn.fail(&crate::error::ConnectionError::Closed);
        assert!(matches!(
            second.as_mut().poll(&mut cx),
            Poll::Ready(Err(CallError::NotSent(_)))
        ));
        assert_eq!(
            conn.table.lock().waiters(),
            0,
            "the refused waiter is uncounted"
        );
    }

    #[test]
    fn a_request_waits_for_room_in_the_outbox_then_goes_or_is_cancelled() {
        // An outbox of 64 bytes: the first request fills it, the second waits for room.
        let (client, mut rx) = client_queueing(4, u32::MAX, 64);
        let woken = Arc::new(Count::default());
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let body = Bytes::from(vec![7u8; 100]);
        let mut first = pin!(client.call(7, body.clone()));
        assert!(first.as_mut().poll(&mut cx).is_pending());
        {
            let mut second = pin!(client.call(7, body.clone()));
            assert!(second.as_mut().poll(&mut cx).is_pending());
            // Only the first request is queued; taking it makes room and wakes the second.
            let frames = queued(&mut rx);
            assert_eq!(frames.len(), 1);
            assert!(woken.get() >= 1, "the waiting sender is woken");
            assert!(second.as_mut().poll(&mut cx).is_pending());
            let frames = queued(&mut rx);
            assert_eq!(frames.len(), 1, "the second request went out");
            assert_eq!(frames[0].0, FrameKind::Request);
        }
        // Dropped after its request went out: cancelled.
        assert_eq!(queued(&mut rx)[0].0, FrameKind::Cancel);
        {
            // A third waits for room (the first fills the outbox again), then is dropped
            // while it waits: its slot goes back, and nothing of it is queued.
            let mut refill = pin!(client.call(7, body.clone()));
            assert!(refill.as_mut().poll(&mut cx).is_pending());
            let mut third = pin!(client.call(7, body.clone()));
            assert!(third.as_mut().poll(&mut cx).is_pending());
            assert_eq!(client.handle.conn.table.lock().in_use(), 3);
        }
        assert_eq!(
            client.handle.conn.table.lock().in_use(),
            1,
            "only the first is left"
        );
    }
}
