//! A session's outbound queue, as the rest of its core sees it: bounded in frames and in
//! bytes, in order, and closed with 4000 when the client reads too slowly (skipping frames
//! would break order).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;
use wire::{CloseCode, UserId};

use crate::metrics::CoreMetrics;
use crate::router::Delivery;

/// A frame waiting to be written.
#[derive(Debug)]
pub enum Outgoing {
    /// Shared with every other recipient of the same delivery.
    Shared(Arc<Delivery>),
    /// This session's own frame (a reply, a control frame), already in its encoding.
    Own(Bytes),
}

impl Outgoing {
    /// The bytes this entry keeps alive while it waits. A shared delivery counts in full
    /// although other sessions hold it too: this session alone can keep it from being freed.
    /// Its binary form is what counts, since the JSON form is built only once it is written.
    pub fn pinned_bytes(&self) -> usize {
        match self {
            Outgoing::Shared(delivery) => delivery.binary_len(),
            Outgoing::Own(bytes) => bytes.len(),
        }
    }
}

/// How much one session's outbound queue may hold before the session is closed as a slow
/// consumer: whichever bound a push would pass first closes it.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Frames waiting.
    pub frames: usize,
    /// Bytes those frames pin ([`Outgoing::pinned_bytes`]).
    pub bytes: usize,
}

/// One session's queue and the flags its task polls.
#[derive(Debug)]
pub struct Outbox {
    /// The session's connection id.
    pub connection_id: u64,
    /// The authenticated user.
    pub user_id: UserId,
    /// When the session's token expires (Unix seconds): the session ends then with 4002.
    pub expires_at: u64,
    queue: RefCell<VecDeque<Outgoing>>,
    /// What the queued frames pin, in bytes.
    queued_bytes: Cell<usize>,
    waker: RefCell<Option<Waker>>,
    close: Cell<Option<CloseCode>>,
    /// When the close was asked for: a client that does not take its close frame in time
    /// is dropped without it.
    close_requested_at: Cell<Option<Instant>>,
    aborted: Cell<bool>,
    text: Cell<bool>,
    limits: QueueLimits,
    last_read: Cell<Instant>,
    pinged: Cell<bool>,
}

impl Outbox {
    /// An empty outbox holding up to `limits`.
    pub fn new(
        connection_id: u64,
        user_id: UserId,
        expires_at: u64,
        text: bool,
        limits: QueueLimits,
    ) -> Outbox {
        Outbox {
            connection_id,
            user_id,
            expires_at,
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            waker: RefCell::new(None),
            close: Cell::new(None),
            close_requested_at: Cell::new(None),
            aborted: Cell::new(false),
            text: Cell::new(text),
            limits,
            last_read: Cell::new(Instant::now()),
            pinged: Cell::new(false),
        }
    }

    /// Notes that the client sent something: it is alive.
    pub fn touch(&self, now: Instant) {
        self.last_read.set(now);
        self.pinged.set(false);
    }

    /// When the client last sent anything.
    pub fn last_read(&self) -> Instant {
        self.last_read.get()
    }

    /// Whether a ping went out since the client last sent anything.
    pub fn pinged(&self) -> bool {
        self.pinged.get()
    }

    /// Notes that a ping went out.
    pub fn set_pinged(&self, pinged: bool) {
        self.pinged.set(pinged);
    }

    /// Whether the session speaks JSON text frames.
    pub fn is_text(&self) -> bool {
        self.text.get()
    }

    /// The session switches to JSON once the client sends a text frame.
    pub fn set_text(&self, text: bool) {
        self.text.set(text);
    }

    /// Queues a frame; a push that would pass either bound closes the session as a slow
    /// consumer instead, and frees what it had queued.
    pub fn push(&self, frame: Outgoing, metrics: &CoreMetrics) {
        if self.close.get().is_some() {
            return;
        }
        let bytes = frame.pinned_bytes();
        let mut queue = self.queue.borrow_mut();
        if queue.len() >= self.limits.frames || self.queued_bytes.get() + bytes > self.limits.bytes
        {
            drop(queue);
            self.discard(metrics);
            self.queue.borrow_mut().shrink_to_fit();
            metrics.slow_consumer_closes.fetch_add(1, Relaxed);
            self.close(CloseCode::SLOW_CONSUMER);
            return;
        }
        queue.push_back(frame);
        metrics.queue_depth(queue.len(), bytes);
        self.queued_bytes.set(self.queued_bytes.get() + bytes);
        drop(queue);
        self.wake();
    }

    /// Queues the close frame, the last thing the session writes, after a close request.
    /// It is not bounded: a session queues it once.
    pub fn push_final(&self, frame: Bytes, metrics: &CoreMetrics) {
        let frame = Outgoing::Own(frame);
        let bytes = frame.pinned_bytes();
        self.queue.borrow_mut().push_back(frame);
        self.queued_bytes.set(self.queued_bytes.get() + bytes);
        metrics.queue_depth(self.len(), bytes);
    }

    /// The next frame to write, in this session's encoding.
    pub fn pop(&self, metrics: &CoreMetrics) -> Option<(Bytes, Option<Arc<Delivery>>)> {
        let mut queue = self.queue.borrow_mut();
        let next = queue.pop_front()?;
        let bytes = next.pinned_bytes();
        self.queued_bytes.set(self.queued_bytes.get() - bytes);
        metrics.dequeued(1, bytes);
        if queue.is_empty() && queue.capacity() > 16 {
            // A burst is over: give its memory back rather than keep it per idle session.
            queue.shrink_to_fit();
        }
        Some(match next {
            Outgoing::Shared(delivery) => (delivery.frame(self.text.get()), Some(delivery)),
            Outgoing::Own(bytes) => (bytes, None),
        })
    }

    /// Asks the session to close with `code` after what is queued.
    pub fn close(&self, code: CloseCode) {
        if self.close.get().is_none() {
            self.close.set(Some(code));
            self.close_requested_at.set(Some(Instant::now()));
        }
        self.wake();
    }

    /// Drops the session without waiting for its close frame to be written, once the close
    /// has been pending for longer than `grace`. Returns whether it did.
    pub fn abort_if_stuck(&self, now: Instant, grace: std::time::Duration) -> bool {
        match self.close_requested_at.get() {
            Some(at) if now.saturating_duration_since(at) >= grace => {
                self.aborted.set(true);
                self.wake();
                true
            }
            _ => false,
        }
    }

    /// Whether the session must end now, written or not.
    pub fn is_aborted(&self) -> bool {
        self.aborted.get()
    }

    /// The close the session was asked for, if any.
    pub fn close_requested(&self) -> Option<CloseCode> {
        self.close.get()
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.queue.borrow().len()
    }

    /// Bytes the waiting frames pin.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.get()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }

    /// Gives back the memory of an empty queue: an idle session should hold none.
    pub fn compact(&self) {
        let mut queue = self.queue.borrow_mut();
        if queue.is_empty() && queue.capacity() > 0 {
            *queue = VecDeque::new();
        }
    }

    /// Drops what is queued (the session is gone), keeping the gauge right.
    pub fn discard(&self, metrics: &CoreMetrics) {
        let mut queue = self.queue.borrow_mut();
        metrics.dequeued(queue.len(), self.queued_bytes.get());
        self.queued_bytes.set(0);
        queue.clear();
    }

    /// Registers the session task to be woken by the next push or close.
    pub fn register(&self, waker: &Waker) {
        let mut slot = self.waker.borrow_mut();
        match slot.as_ref() {
            Some(current) if current.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(frames: usize, bytes: usize) -> Outbox {
        Outbox::new(1, 1, u64::MAX, false, QueueLimits { frames, bytes })
    }

    #[test]
    fn a_push_past_the_byte_bound_closes_as_slow_consumer_and_frees_the_queue() {
        let metrics = CoreMetrics::default();
        let outbox = outbox(1024, 10_000);
        for _ in 0..2 {
            outbox.push(Outgoing::Own(Bytes::from(vec![0; 4000])), &metrics);
        }
        assert_eq!(outbox.queued_bytes(), 8000);
        assert_eq!(metrics.outbound_queued_bytes.load(Relaxed), 8000);
        assert_eq!(outbox.close_requested(), None);
        outbox.push(Outgoing::Own(Bytes::from(vec![0; 4000])), &metrics);
        assert_eq!(outbox.close_requested(), Some(CloseCode::SLOW_CONSUMER));
        assert!(outbox.is_empty());
        assert_eq!(outbox.queued_bytes(), 0);
        assert_eq!(metrics.outbound_queued.load(Relaxed), 0);
        assert_eq!(metrics.outbound_queued_bytes.load(Relaxed), 0);
        assert_eq!(metrics.slow_consumer_closes.load(Relaxed), 1);
    }

    #[test]
    fn bytes_are_given_back_as_frames_are_written() {
        let metrics = CoreMetrics::default();
        let outbox = outbox(1024, 10_000);
        let delivery = Delivery::new(
            &wire::ServerFrame::Pong(wire::server::Pong {
                nonce: 1,
                server_time_us: 2,
            })
            .encode()
            .unwrap(),
            Instant::now(),
        )
        .unwrap();
        outbox.push(Outgoing::Shared(delivery.clone()), &metrics);
        outbox.push(Outgoing::Own(Bytes::from_static(b"abc")), &metrics);
        assert_eq!(outbox.queued_bytes(), delivery.binary_len() + 3);
        outbox.pop(&metrics);
        assert_eq!(outbox.queued_bytes(), 3);
        outbox.discard(&metrics);
        assert_eq!(outbox.queued_bytes(), 0);
        assert_eq!(metrics.outbound_queued_bytes.load(Relaxed), 0);
    }
}
