//! `--user-frames-per-second` and `--user-frame-burst`: one send budget per user, shared by
//! every connection of that user, whichever core the kernel gave each one to. Without it,
//! an account with twenty connections would send twenty connections' worth.
//!
//! The budget is a single atomic word (the cell-rate algorithm's theoretical arrival time),
//! taken with a compare-and-swap per frame: cores never lock on the hot path, and meet on
//! the word only for a user with connections on more than one core. The words sit at
//! places that never move, in chunks allocated as users arrive, so a connection's hold on
//! its user's word is the place's number (four bytes) and a frame finds the word without a
//! lock. The table that finds a user's place is a [`ShardedMap`], like the per-IP table
//! ([`crate::ip_limit`]): a lock is taken when a connection opens and when it closes, never
//! per frame.
//!
//! A user's entry lives while the user has a connection, and after the last one closes for
//! as long as the user still owes (at most one burst's refill time): otherwise closing and
//! reopening a connection would buy a fresh burst each time. So the table holds the
//! connected users and those that left within the last refill time, and a place is reused
//! once its user's entry is gone.
//!
//! Every hold taken with [`UserBudgets::join`] is given back with [`UserBudgets::leave`]
//! (a session does when it finishes): the entry counts its holds, since a shared pointer
//! per user, which would count them itself, cost 24 bytes more per user than this.

use std::num::NonZeroU32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use wire::UserId;

use crate::shared_map::ShardedMap;

/// Budget words per chunk (8 KiB).
const WORDS_PER_CHUNK: usize = 1024;

/// Chunks at most: 4,194,304 users with a budget at once, far past the connections a node
/// can hold (every connection holds a descriptor). The table of chunks is 64 KiB.
const MAX_CHUNKS: usize = 4096;

/// One user's budget: when the frames it was allowed so far would have been paid for at the
/// average rate, in nanoseconds after the table's epoch. A frame is allowed while that time
/// is less than a burst's worth of frames ahead of now.
#[derive(Debug, Default)]
pub struct UserBudget {
    paid_until_ns: AtomicU64,
}

impl UserBudget {
    /// Takes one frame at `now_ns`, at one frame per `interval_ns` on average and `burst`
    /// at once; false when the user has none left.
    fn take(&self, now_ns: u64, interval_ns: u64, burst: u32) -> bool {
        let tolerance = interval_ns.saturating_mul(u64::from(burst));
        let mut seen = self.paid_until_ns.load(Relaxed);
        loop {
            let next = seen.max(now_ns).saturating_add(interval_ns);
            if next - now_ns > tolerance {
                return false;
            }
            // Relaxed is enough: the word is the whole state, and only its own order counts.
            match self
                .paid_until_ns
                .compare_exchange_weak(seen, next, Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(current) => seen = current,
            }
        }
    }

    /// Whether frames taken before `now_ns` are not all paid for yet: the user would start
    /// with less than a full burst.
    fn owes_at(&self, now_ns: u64) -> bool {
        self.paid_until_ns.load(Relaxed) > now_ns
    }
}

/// A user's entry in the table: the place of its word, and the holds on it.
#[derive(Debug)]
struct Entry {
    place: u32,
    holds: u32,
}

/// The budget words, at places that never move.
#[derive(Debug)]
struct Places {
    chunks: Box<[OnceLock<Box<[UserBudget; WORDS_PER_CHUNK]>>]>,
    /// Places given back, and the first place never handed out.
    free: Mutex<(Vec<u32>, u32)>,
}

impl Places {
    fn new() -> Places {
        Places {
            chunks: (0..MAX_CHUNKS).map(|_| OnceLock::new()).collect(),
            free: Mutex::new((Vec::new(), 0)),
        }
    }

    /// A place for a new user, its word reset to a full burst; `None` once every place is
    /// taken.
    fn take(&self) -> Option<u32> {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let place = match free.0.pop() {
            Some(place) => place,
            None if (free.1 as usize) < MAX_CHUNKS * WORDS_PER_CHUNK => {
                free.1 += 1;
                free.1 - 1
            }
            None => return None,
        };
        drop(free);
        self.chunks[place as usize / WORDS_PER_CHUNK]
            .get_or_init(|| Box::new(std::array::from_fn(|_| UserBudget::default())));
        self.word(place).paid_until_ns.store(0, Relaxed);
        Some(place)
    }

    /// Gives `place` back for another user.
    fn give_back(&self, place: u32) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        free.0.push(place);
    }

    /// The word at `place`, which [`Places::take`] handed out.
    fn word(&self, place: u32) -> &UserBudget {
        let chunk = self.chunks[place as usize / WORDS_PER_CHUNK]
            .get()
            .expect("a place handed out has its chunk");
        &chunk[place as usize % WORDS_PER_CHUNK]
    }
}

/// Every connected user's budget, shared by every core.
#[derive(Debug)]
pub struct UserBudgets {
    epoch: Instant,
    interval_ns: u64,
    burst: u32,
    table: ShardedMap<UserId, Entry>,
    places: Places,
    /// When the entries of users who left, and owe nothing any more, are next dropped.
    next_sweep_ns: AtomicU64,
}

impl UserBudgets {
    /// Budgets of `per_second` frames on average and `burst` at once per user; `None` when
    /// either is 0 (no per-user limit).
    pub fn new(per_second: u32, burst: u32) -> Option<Arc<UserBudgets>> {
        (per_second > 0 && burst > 0).then(|| {
            Arc::new(UserBudgets {
                epoch: Instant::now(),
                interval_ns: 1_000_000_000 / u64::from(per_second),
                burst,
                table: ShardedMap::new(),
                places: Places::new(),
                next_sweep_ns: AtomicU64::new(0),
            })
        })
    }

    /// Nanoseconds from the table's epoch to `now`.
    fn ns_at(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// How long a spent burst takes to refill: the longest a user who left may still owe.
    fn refill_ns(&self) -> u64 {
        self.interval_ns.saturating_mul(u64::from(self.burst))
    }

    /// Whether `entry` may go: no hold on it, and nothing owed.
    fn may_drop(&self, entry: &Entry, now_ns: u64) -> bool {
        entry.holds == 0 && !self.places.word(entry.place).owes_at(now_ns)
    }

    /// Drops the entries of users without a connection who owe nothing any more, at most
    /// once per refill time (by whichever connection opens or closes first after it), so
    /// such entries last no longer than two refill times.
    fn sweep_if_due(&self, now_ns: u64) {
        let due = self.next_sweep_ns.load(Relaxed);
        if now_ns < due
            || self
                .next_sweep_ns
                .compare_exchange(
                    due,
                    now_ns.saturating_add(self.refill_ns()),
                    Relaxed,
                    Relaxed,
                )
                .is_err()
        {
            return;
        }
        self.table.retain(|_, entry| {
            let dropped = self.may_drop(entry, now_ns);
            if dropped {
                self.places.give_back(entry.place);
            }
            !dropped
        });
    }

    /// A hold on the budget of `user_id` for one more of its connections, to give back
    /// with [`UserBudgets::leave`]; `None` in the unlikely case that every place is taken
    /// ([`MAX_CHUNKS`]), when the connection goes without a user budget (its own rate limit
    /// still applies).
    pub fn join(&self, user_id: UserId) -> Option<UserBudgetHandle> {
        self.sweep_if_due(self.ns_at(Instant::now()));
        let mut table = self.table.shard(&user_id);
        let entry = match table.entry(user_id) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(vacant) => {
                let Some(place) = self.places.take() else {
                    tracing::warn!(user_id, "no place left for a user budget");
                    return None;
                };
                vacant.insert(Entry { place, holds: 0 })
            }
        };
        entry.holds += 1;
        Some(UserBudgetHandle::at(entry.place))
    }

    /// Gives back the hold of one of `user_id`'s connections; the user's entry goes with the
    /// last one, unless the user still owes.
    pub fn leave(&self, user_id: UserId, handle: UserBudgetHandle) {
        let now_ns = self.ns_at(Instant::now());
        let mut table = self.table.shard(&user_id);
        if let Some(entry) = table.get_mut(&user_id) {
            debug_assert_eq!(
                entry.place,
                handle.place(),
                "a hold on another user's place"
            );
            entry.holds = entry.holds.saturating_sub(1);
            if self.may_drop(entry, now_ns) {
                self.places.give_back(entry.place);
                table.remove(&user_id);
            }
        }
        drop(table);
        self.sweep_if_due(now_ns);
    }

    /// Takes one frame of the budget `handle` holds at `now`; false when none is left.
    pub fn take(&self, handle: &UserBudgetHandle, now: Instant) -> bool {
        self.places
            .word(handle.place())
            .take(self.ns_at(now), self.interval_ns, self.burst)
    }

    /// Users with a budget.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table.len()
    }
}

/// One connection's hold on its user's budget, taken with [`UserBudgets::join`] and given
/// back with [`UserBudgets::leave`].
#[derive(Debug)]
#[must_use = "a hold is given back with UserBudgets::leave"]
pub struct UserBudgetHandle {
    /// The place's number plus one: never zero, so a session without a hold (an `Option`
    /// of this) takes four bytes, not eight.
    number: NonZeroU32,
}

impl UserBudgetHandle {
    fn at(place: u32) -> UserBudgetHandle {
        // Places are below MAX_CHUNKS * WORDS_PER_CHUNK, far from saturating.
        UserBudgetHandle {
            number: NonZeroU32::MIN.saturating_add(place),
        }
    }

    fn place(&self) -> u32 {
        self.number.get() - 1
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn join(budgets: &UserBudgets, user: UserId) -> UserBudgetHandle {
        budgets.join(user).expect("a place")
    }

    #[test]
    fn a_missing_hold_costs_no_more_than_a_hold() {
        assert_eq!(size_of::<Option<UserBudgetHandle>>(), 4);
    }

    #[test]
    fn zero_means_no_limit() {
        assert!(UserBudgets::new(0, 10).is_none());
        assert!(UserBudgets::new(10, 0).is_none());
    }

    #[test]
    fn connections_of_one_user_share_one_burst_and_one_rate() {
        let budgets = UserBudgets::new(100, 40).expect("a limit");
        let handles: Vec<_> = (0..20).map(|_| join(&budgets, 7)).collect();
        let start = Instant::now();
        let allowed = (0..10)
            .flat_map(|_| handles.iter())
            .filter(|handle| budgets.take(handle, start))
            .count();
        assert_eq!(allowed, 40, "twenty connections share one burst");
        let other = join(&budgets, 8);
        assert!(
            budgets.take(&other, start),
            "another user has a budget of its own"
        );
        // 100 ms at 100 frames per second buys ten frames, whichever connection asks.
        let later = start + Duration::from_millis(100);
        let allowed = handles
            .iter()
            .filter(|handle| budgets.take(handle, later))
            .count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn a_users_entry_lives_while_it_has_a_connection_or_owes() {
        // One frame a second: what was taken here is not paid for within the test.
        let budgets = UserBudgets::new(1, 1).expect("a limit");
        let first = join(&budgets, 1);
        let second = join(&budgets, 1);
        assert_eq!(budgets.tracked(), 1);
        assert!(budgets.take(&first, Instant::now()));
        budgets.leave(1, first);
        assert_eq!(budgets.tracked(), 1);
        assert!(
            !budgets.take(&second, Instant::now()),
            "the budget outlives a connection"
        );
        budgets.leave(1, second);
        assert_eq!(budgets.tracked(), 1, "the user still owes");
        let idle = join(&budgets, 2);
        budgets.leave(2, idle);
        assert_eq!(
            budgets.tracked(),
            1,
            "a user who owes nothing leaves at once"
        );
    }

    #[test]
    fn reconnecting_buys_no_fresh_burst() {
        let budgets = UserBudgets::new(1, 3).expect("a limit");
        let mut allowed = 0;
        for _ in 0..10 {
            let connection = join(&budgets, 5);
            allowed += (0..3)
                .filter(|_| budgets.take(&connection, Instant::now()))
                .count();
            budgets.leave(5, connection);
        }
        assert_eq!(allowed, 3, "ten connections in a row share one burst");
    }

    #[test]
    fn a_departed_users_entry_goes_once_it_owes_nothing() {
        // A thousand frames a second and a burst of two: a spent burst refills in 2 ms.
        let budgets = UserBudgets::new(1000, 2).expect("a limit");
        let connection = join(&budgets, 9);
        assert!(budgets.take(&connection, Instant::now()));
        budgets.leave(9, connection);
        std::thread::sleep(Duration::from_millis(10));
        // Any connection opening after the refill time sweeps the table.
        let other = join(&budgets, 10);
        assert_eq!(budgets.tracked(), 1, "only the connected user is left");
        budgets.leave(10, other);
        assert_eq!(budgets.tracked(), 0);
    }

    #[test]
    fn a_place_given_back_starts_its_next_user_with_a_full_burst() {
        // A spent burst refills in 2 ms.
        let budgets = UserBudgets::new(1000, 2).expect("a limit");
        let spender = join(&budgets, 11);
        let now = Instant::now();
        assert!(budgets.take(&spender, now) && budgets.take(&spender, now));
        assert!(!budgets.take(&spender, now));
        let place = spender.place();
        budgets.leave(11, spender);
        std::thread::sleep(Duration::from_millis(10));
        let next = join(&budgets, 12);
        assert_eq!(next.place(), place, "the place was swept and reused");
        let now = Instant::now();
        assert!(budgets.take(&next, now) && budgets.take(&next, now));
        budgets.leave(12, next);
    }

    #[test]
    fn users_past_a_chunk_get_places_of_their_own() {
        let budgets = UserBudgets::new(1, 1).expect("a limit");
        let handles: Vec<_> = (0..WORDS_PER_CHUNK as u64 + 10)
            .map(|user| (user, join(&budgets, user)))
            .collect();
        let now = Instant::now();
        assert!(
            handles.iter().all(|(_, handle)| budgets.take(handle, now)),
            "every user has a burst of its own"
        );
        for (user, handle) in handles {
            budgets.leave(user, handle);
        }
    }

    #[test]
    fn cores_taking_at_once_share_one_budget() {
        let budgets = UserBudgets::new(1, 1000).expect("a limit");
        let now = Instant::now();
        // Every connection opens before any closes: a user without one has no budget left
        // to share.
        let handles: Vec<_> = (0..4).map(|_| join(&budgets, 3)).collect();
        let allowed: usize = handles
            .into_iter()
            .map(|handle| {
                let budgets = budgets.clone();
                std::thread::spawn(move || (0..500).filter(|_| budgets.take(&handle, now)).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|thread| thread.join().expect("thread"))
            .sum();
        assert_eq!(allowed, 1000);
    }
}
