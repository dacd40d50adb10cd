//! The load tester: real WebSocket connections to the edge gateway (or a peer server),
//! driven on a thread-per-core monoio runtime so the tester is not the bottleneck, with
//! every message accounted for and latency measured from each message's scheduled send
//! time (no coordinated omission).
//!
//! The parts: [`cli`] and [`plan`] (flags, checked), [`thread`] (one pinned runtime per
//! thread: connect, drive, count), [`conn`] (one connection's I/O around a sans-IO
//! [`conn::Behavior`]), [`pacer`] (precise deadlines), [`scenario`] (the behaviors), [`schedule`] and [`body`] (when
//! messages are due, and the stamp that carries it), [`ledger`] (the accounting),
//! [`stats`] (histograms), [`run`] (the phases), [`report`], [`slo`] and [`plot`].

pub mod body;
pub mod cli;
pub mod conn;
pub mod ledger;
pub mod pacer;
pub mod plan;
pub mod plot;
pub mod progress;
pub mod report;
pub mod run;
pub mod scenario;
pub mod schedule;
pub mod slo;
pub mod stats;
pub mod sys;
pub mod target;
pub mod thread;
pub mod token;
pub mod upgrade;

pub use cli::Cli;
pub use plan::Plan;
pub use report::Report;
pub use run::run;

/// The exit code of a run that missed its SLO.
pub const EXIT_SLO_MISSED: u8 = 2;

/// Runs `plan` and checks the report against its SLO.
pub fn run_and_check(plan: Plan) -> Result<Report, run::RunError> {
    let slo = plan.slo.clone();
    let mut report = run(plan)?;
    report.slo = slo::check(&report, &slo);
    Ok(report)
}
