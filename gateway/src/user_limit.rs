//! `--user-frames-per-second` and `--user-frame-burst`: one send budget per user, shared by
//! every connection of that user, whichever core the kernel gave each one to. Without it,
//! an account with twenty connections would send twenty connections' worth.
//!
//! The budget is a single atomic word (the cell-rate algorithm's theoretical arrival time),
//! taken with a compare-and-swap per frame: cores never lock on the hot path, and meet on
//! the word only for a user with connections on more than one core. The table that finds a
//! user's word is a [`ShardedMap`], like the per-IP table ([`crate::ip_limit`]): a lock is
//! taken when a connection opens and when it closes, never per frame.
//!
//! A user's entry lives while the user has a connection, and after the last one closes for
//! as long as the user still owes (at most one burst's refill time): otherwise closing and
//! reopening a connection would buy a fresh burst each time. So the table holds the
//! connected users and those that left within the last refill time.
//!
//! A connection's hold on its user's budget is one pointer ([`UserBudgetHandle`]), since
//! every connection keeps one: it is given back with [`UserBudgets::leave`], which drops the
//! user's entry at once when it can. A hold dropped without it is only late: the periodic
//! sweep drops the entry then.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use wire::UserId;

use crate::shared_map::ShardedMap;

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

/// Every connected user's budget, shared by every core.
#[derive(Debug)]
pub struct UserBudgets {
    epoch: Instant,
    interval_ns: u64,
    burst: u32,
    table: ShardedMap<UserId, Arc<UserBudget>>,
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
        self.table
            .retain(|_, budget| Arc::strong_count(budget) > 1 || budget.owes_at(now_ns));
    }

    /// The budget of `user_id` for one more of its connections, until [`UserBudgets::leave`].
    pub fn join(&self, user_id: UserId) -> UserBudgetHandle {
        self.sweep_if_due(self.ns_at(Instant::now()));
        let budget = self
            .table
            .shard(&user_id)
            .entry(user_id)
            .or_default()
            .clone();
        UserBudgetHandle { budget }
    }

    /// Gives back the hold of one of `user_id`'s connections; the user's entry goes with the
    /// last one, unless the user still owes.
    pub fn leave(&self, user_id: UserId, handle: UserBudgetHandle) {
        let now_ns = self.ns_at(Instant::now());
        let mut table = self.table.shard(&user_id);
        // Released under the lock, where every hold is taken and given back, so the last
        // one to go always sees a count of one (the table's own).
        drop(handle);
        if table
            .get(&user_id)
            .is_some_and(|budget| Arc::strong_count(budget) == 1 && !budget.owes_at(now_ns))
        {
            table.remove(&user_id);
        }
        drop(table);
        self.sweep_if_due(now_ns);
    }

    /// Takes one frame of the budget `handle` holds at `now`; false when none is left.
    pub fn take(&self, handle: &UserBudgetHandle, now: Instant) -> bool {
        handle
            .budget
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
pub struct UserBudgetHandle {
    budget: Arc<UserBudget>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn zero_means_no_limit() {
        assert!(UserBudgets::new(0, 10).is_none());
        assert!(UserBudgets::new(10, 0).is_none());
    }

    #[test]
    fn connections_of_one_user_share_one_burst_and_one_rate() {
        let budgets = UserBudgets::new(100, 40).expect("a limit");
        let handles: Vec<_> = (0..20).map(|_| budgets.join(7)).collect();
        let start = Instant::now();
        let allowed = (0..10)
            .flat_map(|_| handles.iter())
            .filter(|handle| budgets.take(handle, start))
            .count();
        assert_eq!(allowed, 40, "twenty connections share one burst");
        let other = budgets.join(8);
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
        let first = budgets.join(1);
        let second = budgets.join(1);
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
        let idle = budgets.join(2);
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
            let connection = budgets.join(5);
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
        let connection = budgets.join(9);
        assert!(budgets.take(&connection, Instant::now()));
        budgets.leave(9, connection);
        std::thread::sleep(Duration::from_millis(10));
        // Any connection opening after the refill time sweeps the table.
        let other = budgets.join(10);
        assert_eq!(budgets.tracked(), 1, "only the connected user is left");
        budgets.leave(10, other);
        assert_eq!(budgets.tracked(), 0);
    }

    #[test]
    fn a_hold_dropped_without_leave_goes_with_the_next_sweep() {
        // A spent burst refills in 2 ms, so the sweep runs every 2 ms at most.
        let budgets = UserBudgets::new(1000, 2).expect("a limit");
        drop(budgets.join(11));
        assert_eq!(budgets.tracked(), 1, "not given back: still listed");
        std::thread::sleep(Duration::from_millis(10));
        let other = budgets.join(12);
        assert_eq!(budgets.tracked(), 1, "only the connected user is left");
        budgets.leave(12, other);
    }

    #[test]
    fn cores_taking_at_once_share_one_budget() {
        let budgets = UserBudgets::new(1, 1000).expect("a limit");
        let now = Instant::now();
        // Every connection opens before any closes: a user without one has no budget left
        // to share.
        let handles: Vec<_> = (0..4).map(|_| budgets.join(3)).collect();
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
