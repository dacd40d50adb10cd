//! A session's outbound queue, as the rest of its core sees it: in order, bounded in frames
//! and in bytes, and closed with 4000 when the client drains it too slowly (skipping frames
//! would break order).
//!
//! The slow-consumer rule measures how the client drains, not only how much waits. A burst
//! that many senders aim at one client at once arrives faster than any network can carry
//! it, so a queue that is merely long says nothing about the client; one that stays long
//! does. So a queue past its *marks* ([`QueueLimits::frames`], [`QueueLimits::bytes`]) is
//! *behind*, which is allowed while the client keeps draining it:
//!
//! - behind, and not one byte written to the socket for [`QueueLimits::stall`]: the client
//!   does not read (closed);
//! - behind for longer than [`QueueLimits::behind_for`] in all, however much was written:
//!   it reads, but far too slowly to ever catch up (closed);
//! - a push past a *ceiling* ([`QueueLimits::max_frames`], [`QueueLimits::max_bytes`]):
//!   closed at once, so memory stays bounded in bytes whatever the timing. The ceilings sit
//!   far above what a burst from many rate-limited senders can queue.
//!
//! A client that reads as fast as its network allows keeps its socket accepting bytes and
//! is never closed, however large the burst, up to the ceilings. While a session is behind
//! it is not read either (see `connection`): a client cannot make the server queue replies
//! for it faster than it takes them, which is what bounds a never-reading sync flooder to
//! about one mark of bytes until the stall rule closes it.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wire::{CloseCode, UserId};

use crate::clock::Millis;
use crate::metrics::CoreMetrics;
use crate::router::{Delivery, connection_index};
use crate::session_wakers::SessionWakers;

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

/// When one session's outbound queue is behind, and when it is closed as a slow consumer
/// (see the module's documentation).
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Frames waiting past which the queue is behind.
    pub frames: usize,
    /// Bytes those frames pin ([`Outgoing::pinned_bytes`]) past which the queue is behind.
    pub bytes: usize,
    /// Frames a push may never pass.
    pub max_frames: usize,
    /// Bytes a push may never pass.
    pub max_bytes: usize,
    /// How long a queue may stay behind with nothing written.
    pub stall: Duration,
    /// How long a queue may stay behind in all.
    pub behind_for: Duration,
}

/// What waits in an outbox, and its close once asked for: boxed and allocated only while a
/// frame waits or the session closes, so an idle session holds one pointer for it, not the
/// queue's bookkeeping.
#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Outgoing>,
    /// What the queued frames pin, in bytes.
    bytes: usize,
    /// Since when the queue is behind its marks.
    behind_since: Option<Instant>,
    /// When the socket last took bytes while the queue was behind.
    progress_at: Option<Instant>,
    close: Option<CloseRequest>,
}

impl Queue {
    /// Whether the box holds nothing worth keeping.
    fn is_idle(&self) -> bool {
        self.frames.is_empty() && self.close.is_none()
    }
}

/// What a push did.
enum Pushed {
    Queued,
    /// Nothing: the session is closing, and its close frame comes last.
    Closing,
    /// Nothing: the frame would pass a ceiling.
    PastCeiling,
}

/// A close asked for, once per session.
#[derive(Debug)]
struct CloseRequest {
    code: CloseCode,
    /// When: a client that does not take its close frame in time is dropped without it.
    at: Instant,
    /// Whether it was not taken in time: the session ends without waiting for it.
    aborted: bool,
}

/// What all of a core's outboxes share: one copy of the queue limits, and the wakers of
/// their sessions.
#[derive(Debug)]
pub struct OutboxShared {
    pub limits: QueueLimits,
    pub wakers: SessionWakers,
}

impl OutboxShared {
    /// Outboxes held to `limits`, whose sessions register task wakers until the driver says
    /// otherwise ([`SessionWakers::wake_connections_with`]).
    pub fn new(limits: QueueLimits) -> Rc<OutboxShared> {
        Rc::new(OutboxShared {
            limits,
            wakers: SessionWakers::default(),
        })
    }
}

/// One session's queue and the flags its task polls. One lives per open session, so what
/// only a busy or closing session needs is boxed and allocated only then, the limits and
/// the wakers are the core's, and times are 32 bits: 48 bytes, 64 with the `Rc`'s counts
/// (a size class of its own in mimalloc).
pub struct Outbox {
    /// The session's connection id.
    pub connection_id: u64,
    /// The authenticated user.
    pub user_id: UserId,
    /// When the session's token expires (Unix seconds, a token's past 2106 read as then):
    /// the session ends then with 4002.
    pub expires_at: u32,
    /// Taken out for each use and put back ([`Outbox::with_queue`]): a `RefCell` would
    /// cost its flag's eight bytes in every session.
    queue: Cell<Option<Box<Queue>>>,
    shared: Rc<OutboxShared>,
    last_read: Cell<Millis>,
    /// The registry's link to the same user's next session on this core
    /// ([`crate::core::registry`]): kept here, in bytes the outbox's alignment leaves over
    /// anyway, so a user's entry in the registry is one place whatever its sessions.
    next_of_user: Cell<u32>,
    text: Cell<bool>,
    pinged: Cell<bool>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("connection_id", &self.connection_id)
            .field("user_id", &self.user_id)
            .field("queued", &self.len())
            .field("close", &self.close_requested())
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// An empty outbox held to the limits in `shared`.
    pub fn new(
        connection_id: u64,
        user_id: UserId,
        expires_at: u64,
        text: bool,
        shared: Rc<OutboxShared>,
    ) -> Outbox {
        Outbox {
            connection_id,
            user_id,
            expires_at: u32::try_from(expires_at).unwrap_or(u32::MAX),
            queue: Cell::new(None),
            shared,
            last_read: Cell::new(Millis::at(Instant::now())),
            next_of_user: Cell::new(u32::MAX),
            text: Cell::new(text),
            pinged: Cell::new(false),
        }
    }

    /// Notes that the client sent something: it is alive.
    pub fn touch(&self, now: Instant) {
        self.last_read.set(Millis::at(now));
        self.pinged.set(false);
    }

    /// How long the client has sent nothing, at `now`.
    pub fn silent_for(&self, now: Instant) -> Duration {
        self.last_read.get().elapsed(Millis::at(now))
    }

    /// Runs `f` on the queue, taken out of its cell for the call and put back after. An
    /// outbox is its core's alone, and `f` never reaches back into it (it would find no
    /// queue).
    fn with_queue<R>(&self, f: impl FnOnce(&mut Option<Box<Queue>>) -> R) -> R {
        let mut queue = self.queue.take();
        let result = f(&mut queue);
        self.queue.set(queue);
        result
    }

    /// The registry's link to the same user's next session on this core.
    pub(crate) fn next_of_user(&self) -> u32 {
        self.next_of_user.get()
    }

    /// Sets the registry's link to the same user's next session on this core.
    pub(crate) fn set_next_of_user(&self, place: u32) {
        self.next_of_user.set(place);
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

    /// Queues a frame. A push that would pass a ceiling, or that finds the queue behind for
    /// too long, closes the session as a slow consumer instead and frees what it had queued.
    pub fn push(&self, frame: Outgoing, metrics: &CoreMetrics) {
        let bytes = frame.pinned_bytes();
        let limits = &self.shared.limits;
        let pushed = self.with_queue(|slot| {
            let queue = slot.get_or_insert_default();
            if queue.close.is_some() {
                return Pushed::Closing;
            }
            if queue.frames.len() >= limits.max_frames || queue.bytes + bytes > limits.max_bytes {
                return Pushed::PastCeiling;
            }
            queue.frames.push_back(frame);
            queue.bytes += bytes;
            metrics.queue_depth(queue.frames.len(), bytes);
            Pushed::Queued
        });
        match pushed {
            Pushed::Closing => {}
            Pushed::PastCeiling => self.close_slow_consumer(metrics),
            Pushed::Queued => {
                if !(self.is_behind() && self.drains_too_slowly(Instant::now(), metrics)) {
                    self.wake();
                }
            }
        }
    }

    /// Whether the queue is past either mark.
    pub fn is_behind(&self) -> bool {
        self.with_queue(|queue| queue.as_ref().is_some_and(|queue| self.past_marks(queue)))
    }

    fn past_marks(&self, queue: &Queue) -> bool {
        let limits = &self.shared.limits;
        queue.frames.len() > limits.frames || queue.bytes > limits.bytes
    }

    /// Notes that the socket took bytes. Only the time matters, and only while behind, so
    /// the clock is read only then.
    pub fn wrote(&self) {
        if self.behind_since().is_some() {
            self.wrote_at(Instant::now());
        }
    }

    /// Notes that the socket took bytes at `now`.
    pub fn wrote_at(&self, now: Instant) {
        self.with_queue(|queue| {
            if let Some(queue) = queue.as_mut()
                && queue.behind_since.is_some()
            {
                queue.progress_at = Some(now);
            }
        });
    }

    fn behind_since(&self) -> Option<Instant> {
        self.with_queue(|queue| queue.as_ref()?.behind_since)
    }

    /// Applies the drain rules at `now`: a queue behind with nothing written for
    /// [`QueueLimits::stall`], or behind for longer than [`QueueLimits::behind_for`],
    /// closes the session as a slow consumer. Returns whether it did.
    pub fn drains_too_slowly(&self, now: Instant, metrics: &CoreMetrics) -> bool {
        let too_slow = self.with_queue(|queue| {
            let Some(queue) = queue.as_mut() else {
                return false;
            };
            if queue.close.is_some() {
                return false;
            }
            if !self.past_marks(queue) {
                queue.behind_since = None;
                queue.progress_at = None;
                return false;
            }
            let since = *queue.behind_since.get_or_insert(now);
            // Falling behind starts the stall clock: a burst gets a whole stall to be drained.
            let progress = queue.progress_at.unwrap_or(since).max(since);
            let limits = &self.shared.limits;
            let stalled = now.saturating_duration_since(progress) >= limits.stall;
            let behind_too_long = now.saturating_duration_since(since) >= limits.behind_for;
            stalled || behind_too_long
        });
        if too_slow {
            self.close_slow_consumer(metrics);
        }
        too_slow
    }

    /// Closes the session as a slow consumer and frees what it had queued.
    fn close_slow_consumer(&self, metrics: &CoreMetrics) {
        self.discard(metrics);
        metrics.slow_consumer_closes.fetch_add(1, Relaxed);
        self.close(CloseCode::SLOW_CONSUMER);
    }

    /// Queues the close frame, the last thing the session writes, after a close request.
    /// It is not bounded: a session queues it once.
    pub fn push_final(&self, frame: Bytes, metrics: &CoreMetrics) {
        let frame = Outgoing::Own(frame);
        let bytes = frame.pinned_bytes();
        self.with_queue(|slot| {
            let queue = slot.get_or_insert_default();
            queue.frames.push_back(frame);
            queue.bytes += bytes;
            metrics.queue_depth(queue.frames.len(), bytes);
        });
    }

    /// The next frame to write, in this session's encoding. The queue that this empties is
    /// freed: an idle session holds none.
    pub fn pop(&self, metrics: &CoreMetrics) -> Option<(Bytes, Option<Arc<Delivery>>)> {
        let next = self.with_queue(|slot| {
            let queue = slot.as_mut()?;
            let next = queue.frames.pop_front()?;
            let bytes = next.pinned_bytes();
            queue.bytes -= bytes;
            metrics.dequeued(1, bytes);
            if queue.is_idle() {
                *slot = None;
            } else if queue.behind_since.is_some() && !self.past_marks(queue) {
                queue.behind_since = None;
                queue.progress_at = None;
            }
            Some(next)
        })?;
        Some(match next {
            Outgoing::Shared(delivery) => (delivery.frame(self.text.get()), Some(delivery)),
            Outgoing::Own(bytes) => (bytes, None),
        })
    }

    /// Asks the session to close with `code` after what is queued.
    pub fn close(&self, code: CloseCode) {
        self.with_queue(|slot| {
            let queue = slot.get_or_insert_default();
            queue.close.get_or_insert_with(|| CloseRequest {
                code,
                at: Instant::now(),
                aborted: false,
            });
        });
        self.wake();
    }

    /// Drops the session without waiting for its close frame to be written, once the close
    /// has been pending for longer than `grace`. Returns whether it did.
    pub fn abort_if_stuck(&self, now: Instant, grace: std::time::Duration) -> bool {
        let aborted = self.with_queue(|queue| {
            let close = queue.as_mut()?.close.as_mut()?;
            close.aborted |= now.saturating_duration_since(close.at) >= grace;
            Some(close.aborted)
        });
        if aborted == Some(true) {
            self.wake();
        }
        aborted == Some(true)
    }

    /// Whether the session must end now, written or not.
    pub fn is_aborted(&self) -> bool {
        self.with_queue(|queue| Some(queue.as_ref()?.close.as_ref()?.aborted))
            .unwrap_or(false)
    }

    /// The close the session was asked for, if any.
    pub fn close_requested(&self) -> Option<CloseCode> {
        self.with_queue(|queue| Some(queue.as_ref()?.close.as_ref()?.code))
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.with_queue(|queue| queue.as_ref().map_or(0, |queue| queue.frames.len()))
    }

    /// Bytes the waiting frames pin.
    pub fn queued_bytes(&self) -> usize {
        self.with_queue(|queue| queue.as_ref().map_or(0, |queue| queue.bytes))
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops what is queued (the session is gone, or closed as a slow consumer), keeping
    /// the gauge right, and frees the queue (all but its close, if one was asked for).
    pub fn discard(&self, metrics: &CoreMetrics) {
        self.with_queue(|slot| {
            let Some(mut queue) = slot.take() else {
                return;
            };
            metrics.dequeued(queue.frames.len(), queue.bytes);
            if let Some(close) = queue.close.take() {
                *queue = Queue {
                    close: Some(close),
                    ..Queue::default()
                };
                *slot = Some(queue);
            }
        });
    }

    /// The session's place in its core's registry, by which the core keeps its waker.
    fn place(&self) -> u32 {
        connection_index(self.connection_id) as u32
    }

    /// Registers the session task to be woken by the next push or close.
    pub fn register(&self, waker: &Waker) {
        self.shared.wakers.register(self.place(), waker);
    }

    /// The session is the completion loop's connection `conn`: pushes and closes wake it.
    pub fn bind_connection(&self, conn: u32) {
        self.shared.wakers.bind_connection(self.place(), conn);
    }

    /// The session is gone: nothing wakes for it any more.
    pub fn forget_waker(&self) {
        self.shared.wakers.forget(self.place());
    }

    fn wake(&self) {
        self.shared.wakers.wake(self.place());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(2);
    const BEHIND_FOR: Duration = Duration::from_secs(30);

    fn outbox(frames: usize, bytes: usize) -> Outbox {
        let limits = QueueLimits {
            frames,
            bytes,
            max_frames: frames * 4,
            max_bytes: bytes * 4,
            stall: STALL,
            behind_for: BEHIND_FOR,
        };
        Outbox::new(1, 1, u64::MAX, false, OutboxShared::new(limits))
    }

    #[test]
    fn an_outbox_fits_mimallocs_64_byte_class_with_its_counts() {
        assert!(size_of::<Outbox>() <= 48, "{} bytes", size_of::<Outbox>());
    }

    fn own(bytes: usize) -> Outgoing {
        Outgoing::Own(Bytes::from(vec![0; bytes]))
    }

    #[test]
    fn a_push_past_the_byte_ceiling_closes_as_slow_consumer_and_frees_the_queue() {
        let metrics = CoreMetrics::default();
        let outbox = outbox(1024, 2_500);
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
    fn a_burst_past_the_marks_is_kept_while_the_socket_takes_bytes() {
        let metrics = CoreMetrics::default();
        let outbox = outbox(8, 10_000);
        for _ in 0..30 {
            outbox.push(own(1000), &metrics);
        }
        assert!(outbox.is_behind());
        assert_eq!(
            outbox.close_requested(),
            None,
            "a burst alone closes nothing"
        );
        let start = outbox.behind_since().expect("behind");
        // The client drains a frame every half stall: never stalled, and it catches up.
        let mut now = start;
        while outbox.is_behind() {
            now += STALL / 2;
            outbox.pop(&metrics);
            outbox.wrote_at(now);
            assert!(!outbox.drains_too_slowly(now, &metrics));
        }
        assert_eq!(outbox.behind_since(), None);
        assert_eq!(outbox.close_requested(), None);
    }

    #[test]
    fn a_queue_behind_with_nothing_written_for_a_stall_is_closed() {
        let metrics = CoreMetrics::default();
        let outbox = outbox(8, 10_000);
        outbox.push(own(12_000), &metrics);
        let start = outbox.behind_since().expect("behind");
        assert!(!outbox.drains_too_slowly(start + STALL / 2, &metrics));
        outbox.wrote_at(start + STALL / 2);
        assert!(!outbox.drains_too_slowly(start + STALL, &metrics));
        assert!(outbox.drains_too_slowly(start + STALL / 2 + STALL, &metrics));
        assert_eq!(outbox.close_requested(), Some(CloseCode::SLOW_CONSUMER));
        assert_eq!(outbox.queued_bytes(), 0);
        assert_eq!(metrics.slow_consumer_closes.load(Relaxed), 1);
    }

    #[test]
    fn a_trickle_reader_that_stays_behind_is_closed() {
        let metrics = CoreMetrics::default();
        let outbox = outbox(8, 10_000);
        for _ in 0..20 {
            outbox.push(own(1000), &metrics);
        }
        let start = outbox.behind_since().expect("behind");
        let mut now = start;
        // It takes a little every second and gets a frame a second: never catches up.
        while now < start + BEHIND_FOR {
            assert!(!outbox.drains_too_slowly(now, &metrics));
            now += Duration::from_secs(1);
            outbox.wrote_at(now);
            outbox.pop(&metrics);
            outbox.push(own(1000), &metrics);
        }
        assert!(outbox.drains_too_slowly(now, &metrics));
        assert_eq!(outbox.close_requested(), Some(CloseCode::SLOW_CONSUMER));
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

    #[test]
    fn an_idle_outbox_is_small() {
        // One lives per open session, behind an `Rc` (16 bytes more): 80 is one of the
        // allocator's size classes, 96 the next.
        let size = std::mem::size_of::<Outbox>();
        assert!(size <= 64, "an outbox is {size} bytes");
        let outbox = outbox(8, 10_000);
        let metrics = CoreMetrics::default();
        outbox.push(own(10), &metrics);
        assert!(outbox.with_queue(|queue| queue.is_some()));
        outbox.pop(&metrics);
        assert!(
            outbox.with_queue(|queue| queue.is_none()),
            "an emptied queue is freed"
        );
        outbox.close(CloseCode::GOING_AWAY);
        outbox.push(own(10), &metrics);
        assert!(outbox.is_empty(), "nothing is queued after a close");
        outbox.push_final(Bytes::from_static(b"close"), &metrics);
        outbox.pop(&metrics);
        outbox.discard(&metrics);
        assert_eq!(
            outbox.close_requested(),
            Some(CloseCode::GOING_AWAY),
            "emptied and discarded, the close stays"
        );
    }
}
