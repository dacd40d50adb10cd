//! A map that every core shares, sharded behind plain mutexes: a core locks one shard for
//! one key, and two cores meet on a shard only for keys that hash alike. For tables touched
//! when connections open and close ([`crate::ip_limit`], [`crate::user_limit`]), never per
//! frame.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Shards of a map; a power of two well above the core count.
pub const SHARDS: usize = 16;

/// A sharded map from `K` to `V`.
#[derive(Debug)]
pub struct ShardedMap<K, V> {
    shards: Box<[Mutex<HashMap<K, V>>]>,
    shard_of: RandomState,
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    /// An empty map.
    pub fn new() -> ShardedMap<K, V> {
        ShardedMap {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_of: RandomState::new(),
        }
    }

    /// The locked shard that holds `key`.
    pub fn shard(&self, key: &K) -> MutexGuard<'_, HashMap<K, V>> {
        let shard = &self.shards[self.shard_of.hash_one(key) as usize % SHARDS];
        // A panic elsewhere while holding the lock leaves entries, not broken invariants.
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps only the entries for which `keep` is true, one shard locked at a time.
    pub fn retain(&self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|key, value| keep(key, value));
        }
    }

    /// Entries in all shards.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether no shard holds anything.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap::new()
    }
}
