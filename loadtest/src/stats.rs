//! Latency histograms (microseconds, HdrHistogram with 3 significant digits) and their
//! summaries. Each thread records into its own set; the sets are merged at the end.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::Metric;

/// Largest latency recorded exactly: one hour. Larger values saturate to it.
const HIGHEST_US: u64 = 3_600_000_000;

/// Percentiles in summaries and tables.
pub const PERCENTILES: [f64; 5] = [50.0, 90.0, 99.0, 99.9, 99.99];

/// Points per decade of the curves (0-90, 90-99, ...), up to 99.999, then the maximum.
const CURVE_STEPS_PER_DECADE: u32 = 10;
const CURVE_DECADES: u32 = 5;

/// A new empty latency histogram.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3)
        .expect("1 µs to 1 h at 3 significant digits is a valid histogram")
}

/// One histogram per metric.
#[derive(Debug, Clone)]
pub struct Histograms {
    by_metric: [Histogram<u64>; Metric::ALL.len()],
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            by_metric: std::array::from_fn(|_| histogram()),
        }
    }
}

impl Histograms {
    /// Records `us` microseconds for `metric`.
    pub fn record(&mut self, metric: Metric, us: u64) {
        self.by_metric[metric as usize].saturating_record(us.max(1));
    }

    /// The histogram of `metric`.
    pub fn get(&self, metric: Metric) -> &Histogram<u64> {
        &self.by_metric[metric as usize]
    }

    /// Adds another set.
    pub fn merge(&mut self, other: &Histograms) {
        for (mine, theirs) in self.by_metric.iter_mut().zip(&other.by_metric) {
            // Both come from `histogram()`, so their bounds agree and adding cannot fail.
            let _ = mine.add(theirs);
        }
    }

    /// Summaries of the metrics that recorded anything, by name.
    pub fn summaries(&self) -> BTreeMap<&'static str, Summary> {
        Metric::ALL
            .into_iter()
            .filter(|&m| !self.get(m).is_empty())
            .map(|m| (m.name(), Summary::of(self.get(m))))
            .collect()
    }
}

/// A latency distribution in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p99_9_ms: f64,
    /// 99.99th percentile.
    pub p99_99_ms: f64,
    /// Largest value.
    pub max_ms: f64,
    /// (percentile, milliseconds) points, evenly spaced on the log percentile axis from 0
    /// to 99.999, then 100 (the maximum): what the plot draws.
    pub curve: Vec<(f64, f64)>,
}

impl Summary {
    /// Summarises a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Summary {
        let ms = |us: u64| us as f64 / 1000.0;
        let at = |p: f64| ms(h.value_at_quantile(p / 100.0));
        Summary {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: at(50.0),
            p90_ms: at(90.0),
            p99_ms: at(99.0),
            p99_9_ms: at(99.9),
            p99_99_ms: at(99.99),
            max_ms: ms(h.max()),
            curve: (0..=CURVE_STEPS_PER_DECADE * CURVE_DECADES)
                .map(|i| {
                    let x = f64::from(i) / f64::from(CURVE_STEPS_PER_DECADE);
                    100.0 * (1.0 - 10f64.powf(-x))
                })
                .chain([100.0])
                .map(|p| (p, at(p)))
                .collect(),
        }
    }

    /// The value at one of [`PERCENTILES`], or the maximum for 100.
    pub fn at(&self, percentile: f64) -> f64 {
        match percentile {
            p if p >= 100.0 => self.max_ms,
            p if p >= 99.99 => self.p99_99_ms,
            p if p >= 99.9 => self.p99_9_ms,
            p if p >= 99.0 => self.p99_ms,
            p if p >= 90.0 => self.p90_ms,
            _ => self.p50_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_summarise_in_milliseconds() {
        let mut a = Histograms::default();
        let mut b = Histograms::default();
        for us in 1..=990 {
            a.record(Metric::Delivery, us);
        }
        for _ in 0..10 {
            b.record(Metric::Delivery, 5_000_000);
        }
        b.record(Metric::Rtt, 0);
        a.merge(&b);
        let summaries = a.summaries();
        assert_eq!(
            summaries.keys().copied().collect::<Vec<_>>(),
            ["rtt", "send_to_delivery"]
        );
        let delivery = &summaries["send_to_delivery"];
        assert_eq!(delivery.count, 1000);
        assert!((delivery.p50_ms - 0.5).abs() < 0.01, "{delivery:?}");
        assert!((delivery.max_ms - 5000.0).abs() < 5.0, "{delivery:?}");
        assert_eq!(delivery.at(99.99), delivery.p99_99_ms);
        assert_eq!(summaries["rtt"].max_ms, 0.001);
    }
}
