//! Which shard a chat or a user belongs to.
//!
//! The key is first mixed (the SplitMix64 finaliser), then placed by jump consistent hashing
//! (Lamping and Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm", 2014). Plain
//! modulo would balance the server's sequential chat ids well, but user ids come from an
//! outside identity provider and may share a stride with the shard count (all even, all
//! multiples of 1000), which modulo maps onto a few shards. And when the shard count grows
//! from n to n+1, jump hashing moves only 1/(n+1) of the keys where modulo moves almost all
//! of them; every moved chat must be drained from its old queue before its new one is
//! consumed, or its order breaks, so moving fewer is cheaper.

/// The shard of `key` among `shards` shards (0 is treated as 1). Stable across processes,
/// versions and platforms: the gateway and every backend worker must agree on it.
pub fn shard_of(key: u64, shards: u16) -> u16 {
    let shards = i64::from(shards.max(1));
    let mut state = mix(key);
    let mut bucket: i64 = -1;
    let mut next: i64 = 0;
    while next < shards {
        bucket = next;
        state = state
            .wrapping_mul(2_862_933_555_777_941_757)
            .wrapping_add(1);
        // The paper's step: the next bucket where this key would jump, from a uniform draw
        // in (0, 1] taken from the state's top 31 bits.
        let draw = ((state >> 33) + 1) as f64;
        next = ((bucket + 1) as f64 * ((1u64 << 31) as f64 / draw)) as i64;
    }
    // `bucket` is in 0..shards, which came from a u16.
    bucket as u16
}

/// SplitMix64's finaliser: spreads sequential and strided keys over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn always_in_range() {
        for shards in [0u16, 1, 2, 7, 8, 64, u16::MAX] {
            for key in (0..2000u64).chain([u64::MAX, u64::MAX - 1, 1 << 63]) {
                assert!(shard_of(key, shards) < shards.max(1));
            }
        }
    }

    #[test]
    fn stable_values() {
        // Pinned: the gateway and the backend are built separately and must agree forever.
        let got: Vec<u16> = (1..=8).map(|k| shard_of(k, 8)).collect();
        assert_eq!(got, PINNED);
    }

    const PINNED: [u16; 8] = [3, 0, 4, 7, 3, 5, 7, 5];

    #[test]
    fn balanced_for_sequential_and_strided_keys() {
        for stride in [1u64, 8, 1000] {
            let mut counts = [0u32; 8];
            for i in 0..80_000u64 {
                counts[usize::from(shard_of(i * stride, 8))] += 1;
            }
            for c in counts {
                assert!((9_000..11_000).contains(&c), "stride {stride}: {counts:?}");
            }
        }
    }

    #[test]
    fn growing_moves_few_keys() {
        let moved = (0..10_000u64)
            .filter(|&k| shard_of(k, 8) != shard_of(k, 9))
            .count();
        // Ideal is 1/9 of the keys.
        assert!((900..1400).contains(&moved), "moved {moved}");
        // A key that moves goes to the new shard, never between old ones.
        assert!((0..10_000u64).all(|k| {
            let (a, b) = (shard_of(k, 8), shard_of(k, 9));
            a == b || b == 8
        }));
    }
}
