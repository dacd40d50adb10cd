//! Which of the provided-buffer ring's buffers the kernel holds: as many as the reads
//! between two turns need, not all of them.
//!
//! The kernel takes buffers in ring order, so every buffer it holds is written sooner or
//! later and stays resident: a ring kept full costs all of its memory however quiet the
//! connections are (512 KiB a core, about 52 bytes a connection at 10,000). Here the kernel
//! holds a target number; a buffer coming back beyond the target waits, idle, until more are
//! needed, and idle buffers can be given back to the operating system. The target doubles
//! when a turn used more than half of it or the ring ran dry, and once a second falls
//! (halving at most) to twice the most one turn used since. Idle buffers are handed out
//! lowest first, so a small target keeps reusing the same few pages.
//!
//! No I/O and no memory here: the ring module asks which ids to hand to the kernel.

use std::ops::Range;

/// Buffers the kernel holds at least (fewer if the ring has fewer): enough for the reads a
/// quiet core's turn completes without running dry.
pub const MIN_POSTED: u16 = 32;

/// The bookkeeping of a ring of `count` buffers, ids `0..count`.
#[derive(Debug)]
pub struct Posting {
    count: u16,
    /// How many buffers the kernel should hold.
    target: u16,
    /// Buffers provided to the kernel and not yet taken by a receive.
    posted: u16,
    /// One bit per buffer neither the kernel's nor lent out.
    idle: Box<[u64]>,
    /// Buffers taken since the last [`Posting::reaped`].
    taken_this_turn: u16,
    /// The most taken in one turn since the last [`Posting::fit`].
    peak: u16,
}

impl Posting {
    /// A ring of `count` buffers (a power of two, as the kernel's ring wants), all idle:
    /// [`Posting::next_to_provide`] gives the first ones to provide.
    pub fn new(count: u16) -> Posting {
        debug_assert!(count.is_power_of_two());
        let mut idle = vec![0u64; usize::from(count).div_ceil(64)].into_boxed_slice();
        for id in 0..count {
            idle[usize::from(id / 64)] |= 1 << (id % 64);
        }
        Posting {
            count,
            target: MIN_POSTED.min(count),
            posted: 0,
            idle,
            taken_this_turn: 0,
            peak: 0,
        }
    }

    /// How many buffers the kernel should hold now.
    #[cfg(test)]
    pub fn target(&self) -> u16 {
        self.target
    }

    /// Buffers the kernel holds.
    pub fn posted(&self) -> u16 {
        self.posted
    }

    /// A receive took a buffer from the kernel's ring.
    pub fn taken(&mut self) {
        self.posted -= 1;
        self.taken_this_turn = self.taken_this_turn.saturating_add(1);
    }

    /// Buffer `id` came back from its reader: whether to provide it to the kernel now
    /// (counted as posted) rather than keep it idle.
    pub fn returned(&mut self, id: u16) -> bool {
        if self.posted < self.target {
            self.posted += 1;
            true
        } else {
            self.idle[usize::from(id / 64)] |= 1 << (id % 64);
            false
        }
    }

    /// A receive found the ring empty: the kernel needs more.
    pub fn ran_dry(&mut self) {
        self.grow();
    }

    /// The turn's completions are all handled: a turn that took more than half the target
    /// grows it before the next one runs dry.
    pub fn reaped(&mut self) {
        if self.taken_this_turn > self.target / 2 {
            self.grow();
        }
        self.peak = self.peak.max(self.taken_this_turn);
        self.taken_this_turn = 0;
    }

    fn grow(&mut self) {
        self.target = self.target.saturating_mul(2).min(self.count);
    }

    /// Called about once a second: the target falls toward twice the busiest turn since the
    /// last call, at most by half at a time.
    pub fn fit(&mut self) {
        // At most `count`: a power of two itself.
        let wanted = self
            .peak
            .saturating_mul(2)
            .max(MIN_POSTED)
            .min(self.count)
            .next_power_of_two();
        self.target = wanted.max(self.target / 2);
        self.peak = 0;
    }

    /// The next idle buffer to provide, lowest id first, while the kernel holds fewer than
    /// the target (counted as posted).
    pub fn next_to_provide(&mut self) -> Option<u16> {
        if self.posted >= self.target {
            return None;
        }
        let (word, bits) = self
            .idle
            .iter_mut()
            .enumerate()
            .find(|(_, bits)| **bits != 0)?;
        let bit = bits.trailing_zeros();
        *bits &= !(1 << bit);
        self.posted += 1;
        Some(word as u16 * 64 + bit as u16)
    }

    fn is_idle(&self, id: u16) -> bool {
        self.idle[usize::from(id / 64)] & (1 << (id % 64)) != 0
    }

    /// The maximal runs of consecutive idle ids.
    pub fn idle_runs(&self) -> impl Iterator<Item = Range<u16>> + '_ {
        let mut id = 0;
        std::iter::from_fn(move || {
            while id < self.count && !self.is_idle(id) {
                id += 1;
            }
            let start = id;
            while id < self.count && self.is_idle(id) {
                id += 1;
            }
            (start < id).then_some(start..id)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provide_all(posting: &mut Posting) -> Vec<u16> {
        std::iter::from_fn(|| posting.next_to_provide()).collect()
    }

    #[test]
    fn a_new_ring_posts_the_lowest_ids_up_to_the_minimum() {
        let mut posting = Posting::new(512);
        assert_eq!(
            provide_all(&mut posting),
            (0..MIN_POSTED).collect::<Vec<_>>()
        );
        assert_eq!(posting.posted(), MIN_POSTED);
        assert_eq!(
            posting.idle_runs().collect::<Vec<_>>(),
            vec![MIN_POSTED..512]
        );
        let mut tiny = Posting::new(2);
        assert_eq!(provide_all(&mut tiny), vec![0, 1]);
        assert_eq!(tiny.idle_runs().count(), 0);
    }

    #[test]
    fn a_buffer_back_within_the_target_is_provided_again_and_beyond_it_waits() {
        let mut posting = Posting::new(512);
        provide_all(&mut posting);
        posting.taken();
        assert!(
            posting.returned(7),
            "the kernel holds one fewer than the target"
        );
        posting.fit();
        assert_eq!(posting.target(), MIN_POSTED, "never below the minimum");
        let mut big = Posting::new(512);
        for _ in 0..4 {
            big.ran_dry();
        }
        provide_all(&mut big);
        assert_eq!(big.posted(), 512);
        // A quiet second: the target halves, and buffers coming back beyond it wait.
        big.fit();
        assert_eq!(big.target(), 256);
        big.taken();
        assert!(!big.returned(300));
        assert_eq!(big.idle_runs().collect::<Vec<_>>(), vec![300..301]);
        assert_eq!(big.next_to_provide(), None);
    }

    #[test]
    fn a_busy_turn_or_a_dry_ring_doubles_the_target_up_to_the_ring() {
        let mut posting = Posting::new(128);
        provide_all(&mut posting);
        for _ in 0..17 {
            posting.taken();
        }
        posting.reaped();
        assert_eq!(posting.target(), 64, "17 of 32 taken in one turn");
        assert_eq!(provide_all(&mut posting).len(), 64 - 15);
        posting.ran_dry();
        assert_eq!(posting.target(), 128);
        posting.ran_dry();
        assert_eq!(posting.target(), 128, "never past the ring");
    }

    #[test]
    fn each_second_the_target_falls_toward_twice_the_busiest_turn() {
        let mut posting = Posting::new(4096);
        for _ in 0..7 {
            posting.ran_dry();
        }
        assert_eq!(posting.target(), 4096);
        provide_all(&mut posting);
        for _ in 0..100 {
            posting.taken();
        }
        posting.reaped();
        posting.fit();
        assert_eq!(posting.target(), 2048, "halving at most");
        posting.fit();
        assert_eq!(posting.target(), 1024, "no turn since: halving again");
        for _ in 0..300 {
            posting.taken();
        }
        posting.reaped();
        posting.fit();
        assert_eq!(
            posting.target(),
            1024,
            "twice 300, rounded to a power of two"
        );
    }

    #[test]
    fn idle_runs_are_maximal() {
        let mut posting = Posting::new(256);
        for _ in 0..3 {
            posting.ran_dry();
        }
        assert_eq!(provide_all(&mut posting).len(), 256);
        posting.fit();
        posting.fit();
        for id in [3, 4, 5, 64, 65, 200, 255] {
            posting.taken();
            posting.returned(id);
        }
        assert_eq!(
            posting.idle_runs().collect::<Vec<_>>(),
            vec![3..6, 64..66, 200..201, 255..256]
        );
    }
}
