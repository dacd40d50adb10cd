//! Precise wake-ups for one runtime thread.
//!
//! monoio's timer wheel ticks in whole milliseconds, rounds deadlines up and parks for
//! whole ticks from a rounded-down now: a send due at t leaves between t and t + 2 ms, and
//! since latency counts from the schedule, that delay would be charged to the server. So
//! deadlines go through a pacer instead: the runtime keeps them in a heap and one timerfd
//! (a nanosecond timer the kernel reports as a readable descriptor) is set to the earliest.
//! The runtime's own epoll wait sees it fire, and the pacer task wakes every connection
//! that is due. One expiry serves every deadline that falls due together, wake-ups are at
//! least 50 µs apart, and no other thread is involved: a helper thread sleeping on a
//! condition variable used to do this job, and its two context switches per wake-up cost
//! the tester a third of its CPU at 10,000 messages a second.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram as StdUnixDatagram;
use std::task::Waker;
use std::time::Instant;

use monoio::net::unix::UnixDatagram;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};

/// Shortest time between two wake-ups of the pacer task: deadlines closer than this are
/// served together, at most this late.
const COALESCE_US: u64 = 50;

/// The timer is not set.
const DISARMED: u64 = u64::MAX;

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

/// Deadlines of one runtime thread and the timer set to the earliest.
pub struct Pacer {
    heap: RefCell<BinaryHeap<Reverse<Entry>>>,
    /// When the timer fires, µs since the epoch ([`DISARMED`]: it does not).
    armed_us: Cell<u64>,
    /// When the pacer task last woke connections.
    last_run_us: Cell<u64>,
    timer: OwnedFd,
    /// The same timer, as monoio sees it, to wait for it to fire. monoio 0.2 has no public
    /// type for waiting on an arbitrary descriptor; its Unix datagram socket is used only
    /// for `readable`, which polls the descriptor and then waits on the runtime's epoll,
    /// both of which work on any pollable descriptor. No socket call is ever made on it.
    fired: UnixDatagram,
    epoch: Instant,
}

impl Pacer {
    /// A pacer whose times are µs since `epoch`; registers its timer with the current
    /// runtime, so it must be made inside it.
    pub fn new(epoch: Instant) -> io::Result<Pacer> {
        let timer = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        let fired = UnixDatagram::from_std(StdUnixDatagram::from(timer.try_clone()?))?;
        Ok(Pacer {
            heap: RefCell::new(BinaryHeap::new()),
            armed_us: Cell::new(DISARMED),
            last_run_us: Cell::new(0),
            timer,
            fired,
            epoch,
        })
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Wakes `waker` once `due_us` has passed.
    pub fn wake_at(&self, due_us: u64, waker: Waker) {
        self.heap
            .borrow_mut()
            .push(Reverse(Entry { due_us, waker }));
        self.arm_for(due_us);
    }

    /// Sets the timer for `due_us` (no sooner than [`COALESCE_US`] after the last run) if
    /// that is earlier than it is set for.
    fn arm_for(&self, due_us: u64) {
        let at_us = due_us.max(self.last_run_us.get() + COALESCE_US);
        if at_us >= self.armed_us.get() {
            return;
        }
        // A zero value would disarm the timer: one nanosecond fires at once.
        let in_ns = at_us
            .saturating_sub(self.now_us())
            .saturating_mul(1_000)
            .max(1);
        let value = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: (in_ns / 1_000_000_000) as i64,
                tv_nsec: (in_ns % 1_000_000_000) as i64,
            },
        };
        // It fails only for a bad descriptor or value, neither of which can happen here.
        timerfd_settime(&self.timer, TimerfdTimerFlags::empty(), &value)
            .expect("setting the pacer's own timer");
        self.armed_us.set(at_us);
    }

    /// The task that wakes due connections; runs until the runtime ends.
    pub async fn run(&self) {
        loop {
            if let Err(error) = self.fired.readable(false).await {
                // Without its timer the thread's schedule cannot run: fail loudly.
                panic!("waiting for the pacer's timer: {error}");
            }
            // Take the expiry so the timer reads as idle until it fires again; nothing to
            // take (a later setting cleared it) is just as good, since the heap says what
            // is due.
            let mut expiries = [0u8; 8];
            let _ = rustix::io::read(&self.timer, &mut expiries);
            self.armed_us.set(DISARMED);
            let now = self.now_us();
            self.last_run_us.set(now);
            let next = {
                let mut heap = self.heap.borrow_mut();
                while heap.peek().is_some_and(|Reverse(e)| e.due_us <= now) {
                    if let Some(Reverse(entry)) = heap.pop() {
                        entry.waker.wake();
                    }
                }
                heap.peek().map(|Reverse(e)| e.due_us)
            };
            if let Some(next) = next {
                self.arm_for(next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::rc::Rc;
    use std::task::Poll;
    use std::time::Duration;

    fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("a runtime")
    }

    /// A pacer with its task running on the current runtime.
    fn started_pacer() -> Rc<Pacer> {
        let pacer = Rc::new(Pacer::new(Instant::now()).expect("a pacer"));
        let runner = pacer.clone();
        monoio::spawn(async move { runner.run().await });
        pacer
    }

    /// Asks `pacer` for a wake-up at `due_us` and returns when woken (µs since the epoch).
    async fn wait_until(pacer: &Pacer, due_us: u64) -> u64 {
        let mut armed = false;
        poll_fn(|cx| {
            if armed {
                // A spawned task is polled again only when woken.
                return Poll::Ready(pacer.now_us());
            }
            pacer.wake_at(due_us, cx.waker().clone());
            armed = true;
            Poll::Pending
        })
        .await
    }

    #[test]
    fn deadlines_wake_in_order_and_not_early() {
        runtime().block_on(async {
            let pacer = started_pacer();
            let woken = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            // Out of order, some closer together than the coalescing gap.
            for due_us in [30_000, 5_000, 12_000, 12_010, 20_000] {
                let pacer = pacer.clone();
                let woken = woken.clone();
                tasks.push(monoio::spawn(async move {
                    let at = wait_until(&pacer, due_us).await;
                    woken.borrow_mut().push((due_us, at));
                }));
            }
            for task in tasks {
                task.await;
            }
            let woken = woken.borrow();
            let order: Vec<u64> = woken.iter().map(|&(due, _)| due).collect();
            assert_eq!(order, [5_000, 12_000, 12_010, 20_000, 30_000]);
            for &(due, at) in woken.iter() {
                assert!(at >= due, "woken at {at} µs for {due} µs");
            }
        });
    }

    #[test]
    fn an_earlier_deadline_moves_the_timer_forward() {
        runtime().block_on(async {
            let pacer = started_pacer();
            let late = pacer.clone();
            let late_task = monoio::spawn(async move { wait_until(&late, 10_000_000).await });
            // The timer is set for ten seconds from now; a deadline 2 ms away must not
            // wait for it.
            let started = Instant::now();
            wait_until(&pacer, pacer.now_us() + 2_000).await;
            assert!(started.elapsed() < Duration::from_secs(5));
            drop(late_task);
        });
    }
}
