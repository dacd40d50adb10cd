//! Per-connection wakers that allocate nothing: a [`Waker`] whose data is not a pointer but
//! the pair (loop, connection index), and whose vtable marks that connection in its loop's
//! set of woken connections. The set lives in a thread-local registry, keyed by loop id, so
//! several loops on one thread each get their own wakes; a loop drains its set every turn.
//!
//! A wake on a thread where its loop does not live (another thread, or after the loop was
//! dropped) finds no entry and does nothing: these wakers are for code that runs on the
//! loop's own thread; other threads use the loop's eventfd waker.
//!
//! The one `unsafe` here is building the [`Waker`] from the vtable.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{RawWaker, RawWakerVTable, Waker};

// The waker's data word holds a 32-bit loop id above a 32-bit connection index.
const _: () = assert!(usize::BITS >= 64, "ringio's wakers need 64-bit pointers");

/// Loop ids handed out so far; 0 means "no loop".
static NEXT_LOOP: AtomicU32 = AtomicU32::new(1);

thread_local! {
    /// The wake sets of the loops that live on this thread.
    static LOOPS: RefCell<Vec<WakeSet>> = const { RefCell::new(Vec::new()) };
    /// The loop whose turn is running on this thread, 0 outside turns.
    static CURRENT: Cell<u32> = const { Cell::new(0) };
}

/// The connections of one loop woken since it last looked: each once, in wake order.
struct WakeSet {
    loop_id: u32,
    /// Connection indexes at or past this are not the loop's: a wake for one is ignored
    /// rather than growing `marked` to match.
    limit: u32,
    /// One bit per connection index: set while it is in `woken`.
    marked: Vec<u64>,
    woken: Vec<u32>,
}

impl WakeSet {
    fn mark(&mut self, conn: u32) {
        if conn >= self.limit {
            return;
        }
        let (word, bit) = ((conn / 64) as usize, 1u64 << (conn % 64));
        if word >= self.marked.len() {
            self.marked.resize(word + 1, 0);
        }
        if self.marked[word] & bit == 0 {
            self.marked[word] |= bit;
            self.woken.push(conn);
        }
    }
}

/// A loop's entry in its thread's registry, removed when dropped. Not `Send`: the entry
/// is in the thread that made it.
pub struct Registration {
    loop_id: u32,
    _not_send: PhantomData<*const ()>,
}

impl Registration {
    /// Registers a new loop whose connection indexes are below `limit`.
    pub fn new(limit: u32) -> Registration {
        let loop_id = NEXT_LOOP.fetch_add(1, Ordering::Relaxed);
        LOOPS.with_borrow_mut(|loops| {
            loops.push(WakeSet {
                loop_id,
                limit,
                marked: Vec::new(),
                woken: Vec::new(),
            });
        });
        Registration {
            loop_id,
            _not_send: PhantomData,
        }
    }

    /// A waker for connection `conn` of this loop.
    pub fn waker(&self, conn: u32) -> Waker {
        waker(self.loop_id, conn)
    }

    /// The loop's id, for waking its connections without a [`Waker`] ([`wake`]).
    pub fn loop_id(&self) -> u32 {
        self.loop_id
    }

    /// Moves the connections woken since the last call into the empty `into`, in wake
    /// order; they can be woken again from here on.
    pub fn take(&self, into: &mut Vec<u32>) {
        debug_assert!(into.is_empty());
        with_set(self.loop_id, |set| {
            std::mem::swap(&mut set.woken, into);
            for &conn in into.iter() {
                set.marked[(conn / 64) as usize] &= !(1u64 << (conn % 64));
            }
        });
    }

    /// Whether a connection was woken since the last [`Registration::take`].
    pub fn pending(&self) -> bool {
        with_set(self.loop_id, |set| !set.woken.is_empty()).unwrap_or(false)
    }

    /// Makes this loop the one [`current_waker`] names until the guard drops.
    pub fn enter(&self) -> Entered {
        Entered {
            previous: CURRENT.replace(self.loop_id),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // The registry may be gone already if the loop is dropped while the thread exits.
        let _ = LOOPS.try_with(|loops| {
            loops.borrow_mut().retain(|set| set.loop_id != self.loop_id);
        });
    }
}

/// While alive, [`current_waker`] names the loop that made it.
pub struct Entered {
    previous: u32,
}

impl Drop for Entered {
    fn drop(&mut self) {
        CURRENT.set(self.previous);
    }
}

/// A waker for connection `conn` of the loop whose turn is running on this thread. Outside
/// a turn there is none: the waker returned then does nothing.
pub fn current_waker(conn: u32) -> Waker {
    let loop_id = CURRENT.get();
    debug_assert!(
        loop_id != 0,
        "ringio::conn_waker called outside a loop's callbacks: use EventLoop::conn_waker"
    );
    waker(loop_id, conn)
}

fn with_set<R>(loop_id: u32, f: impl FnOnce(&mut WakeSet) -> R) -> Option<R> {
    LOOPS
        .try_with(|loops| {
            loops
                .borrow_mut()
                .iter_mut()
                .find(|set| set.loop_id == loop_id)
                .map(f)
        })
        .ok()
        .flatten()
}

fn waker(loop_id: u32, conn: u32) -> Waker {
    let data = ((loop_id as usize) << 32) | conn as usize;
    // SAFETY: the RawWaker contract holds. The data word is an integer, never dereferenced,
    // so it needs no provenance, owns nothing and is valid for as long as the waker is
    // copied around; `clone` copies it, `drop` has nothing to free. The functions are safe
    // to call from any thread (as `Waker: Send + Sync` allows): they touch only the calling
    // thread's registry, and on a thread without the loop they find nothing to do.
    unsafe { Waker::from_raw(RawWaker::new(ptr::without_provenance(data), &VTABLE)) }
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone_waker, wake_conn, wake_conn, drop_waker);

fn clone_waker(data: *const ()) -> RawWaker {
    RawWaker::new(data, &VTABLE)
}

fn wake_conn(data: *const ()) {
    let data = data.addr();
    // Truncations intended: the high and the low half of the word.
    let (loop_id, conn) = ((data >> 32) as u32, data as u32);
    wake(loop_id, conn);
}

/// Marks connection `conn` of loop `loop_id` woken, if that loop lives on this thread.
pub fn wake(loop_id: u32, conn: u32) {
    with_set(loop_id, |set| set.mark(conn));
}

fn drop_waker(_: *const ()) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_marks_its_connection_once_until_taken() {
        let registration = Registration::new(1000);
        let waker = registration.waker(70);
        waker.wake_by_ref();
        let copy = waker.clone();
        copy.wake();
        registration.waker(3).wake();
        assert!(registration.pending());
        let mut woken = Vec::new();
        registration.take(&mut woken);
        assert_eq!(woken, [70, 3]);
        assert!(!registration.pending());
        waker.wake();
        woken.clear();
        registration.take(&mut woken);
        assert_eq!(woken, [70]);
    }

    #[test]
    fn wakes_reach_their_own_loop_and_ignore_indexes_past_its_limit() {
        let first = Registration::new(10);
        let second = Registration::new(10);
        second.waker(5).wake();
        second.waker(10).wake();
        assert!(!first.pending());
        let mut woken = Vec::new();
        second.take(&mut woken);
        assert_eq!(woken, [5]);
    }

    #[test]
    fn a_wake_after_the_loop_is_gone_or_from_another_thread_does_nothing() {
        let registration = Registration::new(10);
        let waker = registration.waker(1);
        std::thread::spawn({
            let waker = waker.clone();
            move || waker.wake()
        })
        .join()
        .unwrap();
        assert!(!registration.pending());
        drop(registration);
        waker.wake();
    }

    #[test]
    fn current_waker_names_the_entered_loop() {
        let registration = Registration::new(10);
        {
            let _entered = registration.enter();
            current_waker(4).wake();
        }
        let mut woken = Vec::new();
        registration.take(&mut woken);
        assert_eq!(woken, [4]);
    }
}
