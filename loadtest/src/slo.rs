//! Service level objectives: limits on latency percentiles, losses, duplicates, order and
//! errors. A run that misses one exits with code 2 and says which.

use serde::Serialize;

use crate::cli::SloArgs;
use crate::report::Report;

/// One limit and how the run fared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SloCheck {
    /// What was checked, e.g. `p99 send_to_delivery (ms)`.
    pub name: String,
    /// The limit.
    pub limit: f64,
    /// The run's value; `None` when the metric recorded nothing (a miss).
    pub actual: Option<f64>,
    /// Whether the value is within the limit.
    pub passed: bool,
}

/// Every check; `passed` when all passed (and when there were none).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SloReport {
    /// The checks, in flag order.
    pub checks: Vec<SloCheck>,
    /// Whether all passed.
    pub passed: bool,
}

impl SloReport {
    /// The checks that missed.
    pub fn misses(&self) -> impl Iterator<Item = &SloCheck> {
        self.checks.iter().filter(|c| !c.passed)
    }
}

/// Checks `report` against `slo`; latency limits apply to `slo.slo_metric`, or to the
/// scenario's main metric.
pub fn check(report: &Report, slo: &SloArgs) -> SloReport {
    let metric = slo.slo_metric.unwrap_or_else(|| report.plan.work.primary());
    let summary = report.summary(metric);
    let mut checks = Vec::new();
    let latency_limits = [
        ("p99", slo.slo_p99_ms, summary.map(|s| s.p99_ms)),
        ("p99.9", slo.slo_p999_ms, summary.map(|s| s.p99_9_ms)),
        ("max", slo.slo_max_ms, summary.map(|s| s.max_ms)),
    ];
    for (label, limit, actual) in latency_limits {
        if let Some(limit) = limit {
            checks.push(SloCheck {
                name: format!("{label} {} (ms)", metric.name()),
                limit,
                actual,
                passed: actual.is_some_and(|a| a <= limit),
            });
        }
    }
    let a = &report.accounting;
    let count_limits = [
        ("losses", slo.slo_max_loss, a.losses),
        ("duplicates", slo.slo_max_duplicates, a.duplicates),
        ("out of order", slo.slo_max_out_of_order, a.out_of_order),
        ("errors", slo.slo_max_errors, report.error_total),
    ];
    for (label, limit, actual) in count_limits {
        if let Some(limit) = limit {
            checks.push(SloCheck {
                name: label.to_owned(),
                limit: limit as f64,
                actual: Some(actual as f64),
                passed: actual <= limit,
            });
        }
    }
    SloReport {
        passed: checks.iter().all(|c| c.passed),
        checks,
    }
}
