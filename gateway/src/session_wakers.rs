//! How a core's outboxes wake their sessions' driver, kept by the core rather than in
//! every outbox: a session is found by its registry place (the low bits of its connection
//! id), and the core holds, per place, what the driver needs to serve it again.
//!
//! - The completion loop ([`crate::completion`]) binds a place to its connection's index
//!   once, at open: a wake marks that connection in the loop's set (four bytes a session).
//! - monoio's tasks register their waker at each poll, as with any future; a wake takes it
//!   (sixteen bytes a session, as before, but here instead of in the outbox).
//!
//! An outbox that held its own `Option<Waker>` was 16 bytes larger, which put it past
//! mimalloc's 64-byte size class.

use std::cell::RefCell;
use std::task::Waker;

/// A place no connection is bound to.
const UNBOUND: u32 = u32::MAX;

/// The wake-up targets of one core's sessions, by place.
#[derive(Debug, Default)]
pub struct SessionWakers {
    targets: RefCell<Targets>,
}

enum Targets {
    /// Task wakers (monoio), taken when woken.
    Tasks(Vec<Option<Waker>>),
    /// Connection indexes of a completion loop, and how to wake one.
    Connections {
        wake: Box<dyn Fn(u32)>,
        by_place: Vec<u32>,
    },
}

impl std::fmt::Debug for Targets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Targets::Tasks(tasks) => f.debug_tuple("Tasks").field(&tasks.len()).finish(),
            Targets::Connections { by_place, .. } => {
                f.debug_tuple("Connections").field(&by_place.len()).finish()
            }
        }
    }
}

impl Default for Targets {
    fn default() -> Self {
        Targets::Tasks(Vec::new())
    }
}

impl SessionWakers {
    /// Sessions are served by a completion loop that `wake` wakes by connection index
    /// (instead of by task wakers): set once, before the first session opens.
    pub fn wake_connections_with(&self, wake: impl Fn(u32) + 'static) {
        *self.targets.borrow_mut() = Targets::Connections {
            wake: Box::new(wake),
            by_place: Vec::new(),
        };
    }

    /// The session at `place` is the loop's connection `conn`.
    pub fn bind_connection(&self, place: u32, conn: u32) {
        if let Targets::Connections { by_place, .. } = &mut *self.targets.borrow_mut() {
            *entry_at(by_place, place, UNBOUND) = conn;
        }
    }

    /// The task serving the session at `place` waits to be woken by `waker`.
    pub fn register(&self, place: u32, waker: &Waker) {
        if let Targets::Tasks(tasks) = &mut *self.targets.borrow_mut() {
            let task = entry_at(tasks, place, None);
            if !task
                .as_ref()
                .is_some_and(|current| current.will_wake(waker))
            {
                *task = Some(waker.clone());
            }
        }
    }

    /// Wakes whatever serves the session at `place`; nothing if nothing is registered.
    pub fn wake(&self, place: u32) {
        let place = place as usize;
        let task = match &mut *self.targets.borrow_mut() {
            Targets::Tasks(tasks) => tasks.get_mut(place).and_then(Option::take),
            Targets::Connections { wake, by_place } => {
                match by_place.get(place) {
                    Some(&conn) if conn != UNBOUND => wake(conn),
                    _ => {}
                }
                None
            }
        };
        // Woken outside the borrow: a waker may run code that reaches back here.
        if let Some(task) = task {
            task.wake();
        }
    }

    /// The session at `place` is gone: its waker (which may keep its task alive) goes.
    pub fn forget(&self, place: u32) {
        let place = place as usize;
        let dropped = match &mut *self.targets.borrow_mut() {
            Targets::Tasks(tasks) => tasks.get_mut(place).and_then(Option::take),
            Targets::Connections { by_place, .. } => {
                if let Some(conn) = by_place.get_mut(place) {
                    *conn = UNBOUND;
                }
                None
            }
        };
        drop(dropped);
    }
}

/// The entry for `place`, the table grown with `empty` entries to reach it.
fn entry_at<T: Clone>(table: &mut Vec<T>, place: u32, empty: T) -> &mut T {
    let place = place as usize;
    if table.len() <= place {
        table.resize(place + 1, empty);
    }
    &mut table[place]
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    struct Counting(AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_task_is_woken_once_per_registration_and_forgotten_with_its_session() {
        let wakers = SessionWakers::default();
        let task = Arc::new(Counting(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        wakers.wake(3);
        wakers.register(3, &waker);
        wakers.wake(3);
        wakers.wake(3);
        assert_eq!(task.0.load(Ordering::Relaxed), 1);
        wakers.register(3, &waker);
        wakers.forget(3);
        wakers.wake(3);
        assert_eq!(task.0.load(Ordering::Relaxed), 1);
        assert_eq!(
            Arc::strong_count(&task),
            2,
            "the forgotten waker was dropped"
        );
    }

    thread_local! {
        static WOKEN: Cell<Option<u32>> = const { Cell::new(None) };
    }

    fn note(conn: u32) {
        WOKEN.set(Some(conn));
    }

    #[test]
    fn a_bound_place_wakes_its_connection_every_time_until_forgotten() {
        let wakers = SessionWakers::default();
        wakers.wake_connections_with(note);
        wakers.wake(5);
        assert_eq!(WOKEN.get(), None, "nothing bound yet");
        wakers.bind_connection(5, 42);
        wakers.wake(5);
        assert_eq!(WOKEN.take(), Some(42));
        wakers.wake(5);
        assert_eq!(
            WOKEN.take(),
            Some(42),
            "a connection's wake needs no new registration"
        );
        wakers.forget(5);
        wakers.wake(5);
        assert_eq!(WOKEN.get(), None);
    }
}
