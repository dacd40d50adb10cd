//! `--connections-per-ip-per-minute`: new connections per address, counted in one table
//! that every core shares, so that the limit holds exactly whichever core the kernel hands
//! a connection to (per-core counts let through up to one core's share more).
//!
//! The table is a [`ShardedMap`] by address: a lock is taken once per accepted connection,
//! never per frame, and two cores meet on a shard only for addresses that hash alike. It is
//! bounded: a full shard forgets the addresses whose minute is over, and if
//! every one is still within its minute, the one whose minute ends first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[cfg(test)]
use crate::shared_map::SHARDS;
use crate::shared_map::ShardedMap;

/// The span the limit counts over, from an address's first connection in it.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Addresses one shard remembers: 65,536 in all, a few MiB at most.
const ADDRESSES_PER_SHARD: usize = 4096;

/// One address's count in its current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    connections: u32,
}

/// New connections per address and minute, shared by every core.
#[derive(Debug)]
pub struct IpConnectionLimit {
    per_window: u32,
    table: ShardedMap<IpAddr, Window>,
}

impl IpConnectionLimit {
    /// A limit of `per_minute` new connections per address; `None` for 0 (no limit).
    pub fn new(per_minute: u32) -> Option<IpConnectionLimit> {
        (per_minute > 0).then(|| IpConnectionLimit {
            per_window: per_minute,
            table: ShardedMap::new(),
        })
    }

    /// Counts a new connection from `ip` at `now`; false when it is over the limit.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        let mut table = self.table.shard(&ip);
        if table.len() >= ADDRESSES_PER_SHARD && !table.contains_key(&ip) {
            make_room(&mut table, now);
        }
        let window = table.entry(ip).or_insert(Window {
            started: now,
            connections: 0,
        });
        if now.saturating_duration_since(window.started) >= WINDOW {
            *window = Window {
                started: now,
                connections: 0,
            };
        }
        window.connections = window.connections.saturating_add(1);
        window.connections <= self.per_window
    }

    /// Addresses remembered.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table.len()
    }
}

/// Frees a slot in a full shard: forgets every address whose window is over, or, if none
/// is, the one whose window ends first.
fn make_room(table: &mut HashMap<IpAddr, Window>, now: Instant) {
    table.retain(|_, window| now.saturating_duration_since(window.started) < WINDOW);
    if table.len() < ADDRESSES_PER_SHARD {
        return;
    }
    let oldest = table
        .iter()
        .min_by_key(|(_, window)| window.started)
        .map(|(ip, _)| *ip);
    if let Some(ip) = oldest {
        table.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn zero_means_no_limit() {
        assert!(IpConnectionLimit::new(0).is_none());
    }

    #[test]
    fn the_nth_connection_passes_and_the_next_is_refused_until_the_window_ends() {
        let limit = IpConnectionLimit::new(20).expect("a limit");
        let start = Instant::now();
        for n in 1..=20 {
            assert!(limit.admit(ip(1), start), "connection {n}");
        }
        assert!(!limit.admit(ip(1), start + Duration::from_secs(59)));
        assert!(
            limit.admit(ip(2), start),
            "other addresses have their own count"
        );
        assert!(limit.admit(ip(1), start + WINDOW), "a new window");
    }

    #[test]
    fn cores_counting_at_once_share_one_count() {
        let limit = Arc::new(IpConnectionLimit::new(1000).expect("a limit"));
        let now = Instant::now();
        let admitted: usize = (0..4)
            .map(|_| {
                let limit = limit.clone();
                std::thread::spawn(move || (0..500).filter(|_| limit.admit(ip(7), now)).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|thread| thread.join().expect("thread"))
            .sum();
        assert_eq!(admitted, 1000);
    }

    #[test]
    fn the_table_stays_bounded_and_forgets_the_oldest_first() {
        let limit = IpConnectionLimit::new(1).expect("a limit");
        let start = Instant::now();
        let addresses = (SHARDS * ADDRESSES_PER_SHARD * 2) as u32;
        for n in 0..addresses {
            assert!(limit.admit(ip(n), start + Duration::from_micros(u64::from(n))));
        }
        assert!(limit.tracked() <= SHARDS * ADDRESSES_PER_SHARD);
        // The most recent addresses are still counted; stale ones are forgotten first.
        let last = ip(addresses - 1);
        assert!(!limit.admit(last, start + Duration::from_secs(1)));
        let later = start + WINDOW + Duration::from_secs(1);
        assert!(limit.admit(ip(addresses), later));
        assert!(limit.tracked() <= SHARDS * ADDRESSES_PER_SHARD);
    }
}
