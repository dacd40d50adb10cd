//! Precise wake-ups for one runtime thread.
//!
//! monoio's timer wheel ticks in whole milliseconds, rounds deadlines up and parks for
//! whole ticks from a rounded-down now: a send due at t leaves between t and t + 2 ms, and
//! since latency counts from the schedule, that delay would be charged to the server. So
//! deadlines go through a pacer instead: the runtime keeps them in a heap, and a helper
//! thread (pinned beside the runtime) sleeps on a nanosecond timer until the earliest one,
//! then wakes the pacer task on the runtime, which wakes every connection that is due.
//! One cross-thread wake serves every deadline that falls due together, and wake-ups are
//! at least 50 µs apart.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::poll_fn;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Shortest time between two wake-ups of the pacer task: deadlines closer than this are
/// served together, at most this late.
const COALESCE_US: u64 = 50;

/// A deadline and whom to wake.
struct Entry {
    due_us: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.due_us == other.due_us
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.due_us.cmp(&other.due_us)
    }
}

/// What the helper thread and the runtime share.
#[derive(Default)]
struct Alarm {
    /// The earliest deadline the helper must wake the pacer task for.
    next_us: Option<u64>,
    /// The pacer task.
    waker: Option<Waker>,
    stop: bool,
}

/// The runtime side: deadlines, and the alarm shared with the helper thread.
pub struct Pacer {
    heap: RefCell<BinaryHeap<Reverse<Entry>>>,
    /// The deadline the helper was last given (u64::MAX: none).
    published: Cell<u64>,
    alarm: Arc<(Mutex<Alarm>, Condvar)>,
    epoch: Instant,
}

fn lock(alarm: &Mutex<Alarm>) -> MutexGuard<'_, Alarm> {
    // The alarm holds plain values that stay consistent even if a holder panicked.
    alarm.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pacer {
    /// A pacer with its helper thread, pinned to `cpu` when given; times are µs since
    /// `epoch`.
    pub fn start(
        epoch: Instant,
        cpu: Option<usize>,
        name: String,
    ) -> std::io::Result<(Pacer, PacerThread)> {
        let alarm = Arc::new((Mutex::new(Alarm::default()), Condvar::new()));
        let helper_alarm = alarm.clone();
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            if let Some(cpu) = cpu {
                // Unpinned only costs precision.
                let _ = monoio::utils::bind_to_cpu_set([cpu]);
            }
            ring(&helper_alarm, epoch);
        })?;
        let pacer = Pacer {
            heap: RefCell::new(BinaryHeap::new()),
            published: Cell::new(u64::MAX),
            alarm: alarm.clone(),
            epoch,
        };
        Ok((
            pacer,
            PacerThread {
                alarm,
                handle: Some(handle),
            },
        ))
    }

    /// Wakes `waker` once `due_us` has passed.
    pub fn wake_at(&self, due_us: u64, waker: Waker) {
        self.heap
            .borrow_mut()
            .push(Reverse(Entry { due_us, waker }));
        if due_us < self.published.get() {
            self.publish(due_us);
        }
    }

    fn publish(&self, due_us: u64) {
        self.published.set(due_us);
        let (alarm, ring) = &*self.alarm;
        lock(alarm).next_us = (due_us != u64::MAX).then_some(due_us);
        ring.notify_one();
    }

    /// The task that wakes due connections; runs until the runtime ends.
    pub async fn run(&self) {
        poll_fn(|cx| {
            {
                let mut alarm = lock(&self.alarm.0);
                if alarm
                    .waker
                    .as_ref()
                    .is_none_or(|w| !w.will_wake(cx.waker()))
                {
                    alarm.waker = Some(cx.waker().clone());
                }
            }
            let now = self.epoch.elapsed().as_micros() as u64;
            let mut heap = self.heap.borrow_mut();
            while heap.peek().is_some_and(|Reverse(e)| e.due_us <= now) {
                if let Some(Reverse(entry)) = heap.pop() {
                    entry.waker.wake();
                }
            }
            let next = heap.peek().map_or(u64::MAX, |Reverse(e)| e.due_us);
            drop(heap);
            // The helper fired (and forgot) the last deadline: give it the next one.
            self.publish(next);
            Poll::<()>::Pending
        })
        .await;
    }
}

/// The helper thread; stopped and joined on drop.
pub struct PacerThread {
    alarm: Arc<(Mutex<Alarm>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for PacerThread {
    fn drop(&mut self) {
        let (alarm, ring) = &*self.alarm;
        lock(alarm).stop = true;
        ring.notify_one();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// The helper: sleeps until the earliest deadline, then wakes the pacer task, at most once
/// per [`COALESCE_US`] so that a busy schedule costs a bounded number of wake-ups.
fn ring(shared: &(Mutex<Alarm>, Condvar), epoch: Instant) {
    let (alarm, bell) = shared;
    let mut state = lock(alarm);
    let mut last_ring = 0;
    loop {
        if state.stop {
            return;
        }
        let Some(due) = state.next_us else {
            state = bell.wait(state).unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        let due = due.max(last_ring + COALESCE_US);
        let now = epoch.elapsed().as_micros() as u64;
        if now < due {
            state = bell
                .wait_timeout(state, Duration::from_micros(due - now))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        state.next_us = None;
        last_ring = now;
        let waker = state.waker.clone();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        state = lock(alarm);
    }
}
