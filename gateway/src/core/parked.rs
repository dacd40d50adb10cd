//! Messages a core could not hand over because the queue they go to (another core's
//! mailbox, the broker bridge) was full: kept in order and retried by the core's timer,
//! bounded in count and bytes.
//!
//! Why the bound is there although readers pause: while anything is parked for frames, the
//! core's sessions stop reading, so what clients send cannot fill it. What still can is the
//! rest of the read each session was acting on when the first message parked (at most one
//! read, [`crate::core::SCRATCH_BYTES`], per session in that turn), and what the core does
//! for its mailbox, which it keeps draining: another core's traffic relayed onward to a
//! third. Cores that wait on each other in a cycle cannot all stop draining (that would
//! deadlock), so one whose peer stopped draining altogether (a stuck core, which the
//! watchdog reports) would park without end. Past the bound a message is dropped and
//! counted instead: a delivery lost that way shows its recipients a gap in the chat's
//! sequence, which they close with a sync; other work dropped that way is lost as it
//! would be to a core that crashed, and `gateway_parked_dropped` and a warning say so.

use std::collections::VecDeque;

/// Something that can wait in a [`ParkedQueue`].
pub trait Pinned {
    /// The bytes it keeps alive while it waits.
    fn pinned_bytes(&self) -> usize;
}

/// What became of a message offered to a [`ParkedQueue`].
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<T> {
    /// Its queue took it at once.
    Sent,
    /// It waits behind others that wait already.
    Queued,
    /// Its queue was full and nothing waited before: it is the first to wait, and the
    /// timer must retry it.
    Parked,
    /// The parked queue is at its bound: handed back, not kept.
    Refused(T),
}

/// Bounds of one [`ParkedQueue`].
#[derive(Debug, Clone, Copy)]
pub struct ParkedLimits {
    /// Messages that may wait.
    pub messages: usize,
    /// Bytes they may keep alive ([`Pinned::pinned_bytes`]).
    pub bytes: usize,
}

/// Messages waiting for room, in the order they were sent.
#[derive(Debug)]
pub struct ParkedQueue<T> {
    waiting: VecDeque<T>,
    bytes: usize,
    limits: ParkedLimits,
}

impl<T: Pinned> ParkedQueue<T> {
    /// An empty queue within `limits`.
    pub fn new(limits: ParkedLimits) -> ParkedQueue<T> {
        ParkedQueue {
            waiting: VecDeque::new(),
            bytes: 0,
            limits,
        }
    }

    /// Sends `msg` through `push` unless messages already wait (order comes first), and
    /// keeps it when its queue is full, within the bounds.
    pub fn offer(&mut self, msg: T, push: impl FnOnce(T) -> Result<(), T>) -> Offer<T> {
        let first = self.waiting.is_empty();
        let msg = if first {
            match push(msg) {
                Ok(()) => return Offer::Sent,
                Err(msg) => msg,
            }
        } else {
            msg
        };
        let bytes = msg.pinned_bytes();
        if self.waiting.len() >= self.limits.messages || self.bytes + bytes > self.limits.bytes {
            return Offer::Refused(msg);
        }
        self.bytes += bytes;
        self.waiting.push_back(msg);
        if first { Offer::Parked } else { Offer::Queued }
    }

    /// Sends what waits through `push`, in order, until a queue is still full.
    pub fn retry(&mut self, mut push: impl FnMut(T) -> Result<(), T>) {
        while let Some(msg) = self.waiting.pop_front() {
            let bytes = msg.pinned_bytes();
            match push(msg) {
                Ok(()) => self.bytes -= bytes,
                Err(msg) => {
                    self.waiting.push_front(msg);
                    return;
                }
            }
        }
        // A long wait is over: give its memory back.
        self.waiting = VecDeque::new();
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    struct Msg(usize);

    impl Pinned for Msg {
        fn pinned_bytes(&self) -> usize {
            self.0
        }
    }

    fn queue(messages: usize, bytes: usize) -> ParkedQueue<Msg> {
        ParkedQueue::new(ParkedLimits { messages, bytes })
    }

    #[test]
    fn a_queue_with_room_takes_the_message_at_once() {
        let mut parked = queue(2, 100);
        let mut sent = Vec::new();
        let offer = parked.offer(Msg(5), |m| {
            sent.push(m);
            Ok(())
        });
        assert_eq!(offer, Offer::Sent);
        assert_eq!(sent, [Msg(5)]);
        assert!(parked.is_empty());
    }

    #[test]
    fn once_one_waits_later_messages_wait_behind_it_and_leave_in_order() {
        let mut parked = queue(8, 100);
        assert_eq!(parked.offer(Msg(1), Err), Offer::Parked);
        // The queue has room again, but order keeps the next one behind the first.
        assert_eq!(parked.offer(Msg(2), |_| panic!("not tried")), Offer::Queued);
        assert_eq!((parked.waiting.len(), parked.bytes), (2, 3));
        let mut sent = Vec::new();
        parked.retry(|m| {
            sent.push(m);
            Ok(())
        });
        assert_eq!(sent, [Msg(1), Msg(2)]);
        assert_eq!((parked.waiting.len(), parked.bytes), (0, 0));
    }

    #[test]
    fn a_retry_stops_at_the_first_message_still_refused() {
        let mut parked = queue(8, 100);
        for n in 1..=3 {
            parked.offer(Msg(n), Err);
        }
        let mut room = 1;
        parked.retry(|m| {
            if room == 0 {
                return Err(m);
            }
            room -= 1;
            Ok(())
        });
        assert_eq!((parked.waiting.len(), parked.bytes), (2, 5));
        parked.retry(Err);
        assert_eq!(parked.waiting.len(), 2);
    }

    #[test]
    fn past_either_bound_a_message_is_handed_back() {
        let mut by_count = queue(2, 100);
        by_count.offer(Msg(1), Err);
        by_count.offer(Msg(1), Err);
        assert_eq!(by_count.offer(Msg(1), Err), Offer::Refused(Msg(1)));
        assert_eq!(by_count.waiting.len(), 2);

        let mut by_bytes = queue(8, 10);
        by_bytes.offer(Msg(6), Err);
        assert_eq!(by_bytes.offer(Msg(5), Err), Offer::Refused(Msg(5)));
        assert_eq!(by_bytes.offer(Msg(4), Err), Offer::Queued);
        assert_eq!(by_bytes.bytes, 10);
    }
}
