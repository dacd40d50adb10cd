//! Waking a loop from another thread: an eventfd the loop keeps a read armed on, so a
//! write to it completes that read and ends the loop's wait. Wakes coalesce: only the first
//! since the loop last drained the eventfd writes it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Wake;

use crate::ring;

/// The eventfd and whether a wake is on its way to the loop.
#[derive(Debug)]
pub struct Notifier {
    eventfd: File,
    pending: AtomicBool,
}

impl Notifier {
    pub fn new() -> io::Result<Arc<Notifier>> {
        Ok(Arc::new(Notifier {
            eventfd: File::from(ring::eventfd()?),
            pending: AtomicBool::new(false),
        }))
    }

    pub fn fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// The loop's read of the eventfd completed: the next wake writes it again.
    ///
    /// A swap, not a store, on both sides: a waker that finds `pending` set and skips the
    /// write has made its changes (a message queued for the loop) before its swap, and
    /// this swap reads from it, so they are visible to the loop once the turn that saw
    /// the read complete returns.
    pub fn drained(&self) {
        self.pending.swap(false, Ordering::AcqRel);
    }
}

impl Wake for Notifier {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            // Adding 1 to the counter cannot block or fail while the loop's read keeps it
            // far below its limit; if it did, the loop would only wake at its next event.
            let _ = (&self.eventfd).write(&1u64.to_ne_bytes());
        }
    }
}
