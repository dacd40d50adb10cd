//! Times in 32 bits, for what every session keeps (when it last read, when its rate bucket
//! was refilled, when its closing handshake gives up): milliseconds after the process's
//! clock epoch, in a quarter of an `Instant`'s room. They are compared modulo 2^32, so they
//! stay right past 49.7 days of uptime, for spans under 24.8 days; every span a session
//! measures is seconds long.

use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The process's first reading of the clock through this module.
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// A time to the millisecond (see the module's documentation). Never zero, so an
/// `Option<Millis>` is four bytes too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis(NonZeroU32);

impl Millis {
    /// `at`, to the millisecond below it. A time before the epoch reads as the epoch.
    pub fn at(at: Instant) -> Millis {
        let epoch = *EPOCH.get_or_init(Instant::now);
        Millis::after_epoch(at.saturating_duration_since(epoch).as_millis() as u64)
    }

    /// The time `ms` milliseconds after the epoch, wrapped to 32 bits.
    fn after_epoch(ms: u64) -> Millis {
        Millis(NonZeroU32::new(ms as u32).unwrap_or(NonZeroU32::MIN))
    }

    /// How many milliseconds `now` is after this time, or `None` when it is before it.
    fn ahead(self, now: Millis) -> Option<u32> {
        let ahead = now.0.get().wrapping_sub(self.0.get());
        (ahead < u32::MAX / 2).then_some(ahead)
    }

    /// Whether `now` is at or past this time.
    pub fn reached(self, now: Millis) -> bool {
        self.ahead(now).is_some()
    }

    /// How long after this time `now` is; zero when it is before it.
    pub fn elapsed(self, now: Millis) -> Duration {
        Duration::from_millis(self.ahead(now).map_or(0, u64::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_compare_and_subtract_across_the_wrap() {
        let at = Millis::after_epoch;
        assert!(at(1_000).reached(at(1_000)));
        assert!(at(1_000).reached(at(1_001)));
        assert!(!at(1_001).reached(at(1_000)));
        assert_eq!(at(1_000).elapsed(at(1_250)), Duration::from_millis(250));
        assert_eq!(at(1_250).elapsed(at(1_000)), Duration::ZERO);
        // A second before and after 2^32 milliseconds (49.7 days) of uptime.
        let wrap = 1u64 << 32;
        assert!(at(wrap + 500).reached(at(wrap + 600)));
        assert!(at(wrap - 500).reached(at(wrap + 500)));
        assert!(!at(wrap + 500).reached(at(wrap - 500)));
        assert_eq!(
            at(wrap - 500).elapsed(at(wrap + 500)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn an_instant_reads_to_the_millisecond() {
        // A second after the epoch, whichever test reads the clock first: the epoch's own
        // millisecond reads as the next (a time is never zero).
        Millis::at(Instant::now());
        let start = Instant::now() + Duration::from_secs(1);
        let later = start + Duration::from_millis(25_000);
        assert_eq!(
            Millis::at(start).elapsed(Millis::at(later)),
            Duration::from_secs(25)
        );
        assert_eq!(Millis::at(later).elapsed(Millis::at(start)), Duration::ZERO);
    }
}
