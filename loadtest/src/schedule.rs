//! Open-loop schedules: when each message is due, fixed before the run and never moved by
//! how the server answers.
//!
//! A connection sending at rate R sends message k at `start + phase + k / R`, with a phase
//! drawn uniformly from one interval so that connections do not send in lockstep. A message
//! the tester could not send on time still counts from its scheduled time: a server that
//! stalls for a second is charged the whole second for every message due during the stall,
//! instead of the one message a closed-loop client would have waiting (coordinated
//! omission).

/// One connection's send schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenLoop {
    first_us: u64,
    interval_us: f64,
    count: u64,
}

impl OpenLoop {
    /// Sends at `rate` per second from `start_us` for `duration_us`, offset by
    /// `phase` (a fraction of one interval, in `[0, 1)`).
    pub fn new(start_us: u64, rate: f64, duration_us: u64, phase: f64) -> OpenLoop {
        let interval_us = 1e6 / rate;
        let offset = phase.clamp(0.0, 1.0) * interval_us;
        // Every k with offset + k * interval < duration.
        let count = ((duration_us as f64 - offset) / interval_us)
            .ceil()
            .max(0.0) as u64;
        OpenLoop {
            first_us: start_us + offset as u64,
            interval_us,
            count,
        }
    }

    /// When message `k` (from 0) is due, microseconds since the epoch.
    pub fn due(&self, k: u64) -> u64 {
        self.first_us + (k as f64 * self.interval_us) as u64
    }

    /// Messages in the schedule.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// When a thread opens its `k`-th connection: evenly at `rate` per second from `start_us`,
/// or all at once when the rate is 0.
pub fn connect_due(start_us: u64, rate: f64, k: usize) -> u64 {
    if rate > 0.0 {
        start_us + (k as f64 * 1e6 / rate) as u64
    } else {
        start_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_spreads_rate_times_duration_sends() {
        let s = OpenLoop::new(1_000, 10.0, 1_000_000, 0.0);
        assert_eq!(s.count(), 10);
        assert_eq!(s.due(0), 1_000);
        assert_eq!(s.due(9), 901_000);
        let s = OpenLoop::new(0, 10.0, 1_000_000, 0.5);
        assert_eq!((s.count(), s.due(0), s.due(9)), (10, 50_000, 950_000));
        let s = OpenLoop::new(0, 3.0, 1_000_000, 0.99);
        assert!(s.due(s.count() - 1) < 1_000_000);
    }

    #[test]
    fn a_rate_below_one_over_the_duration_may_send_nothing() {
        assert_eq!(OpenLoop::new(0, 0.5, 1_000_000, 0.9).count(), 0);
        assert_eq!(OpenLoop::new(0, 0.5, 1_000_000, 0.0).count(), 1);
    }

    #[test]
    fn connects_are_paced_or_immediate() {
        assert_eq!(connect_due(10, 1000.0, 5), 5_010);
        assert_eq!(connect_due(10, 0.0, 5), 10);
    }
}
