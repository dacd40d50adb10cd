//! The main thread: starts the tester threads, moves the run through its phases, shows
//! progress, and assembles the report from what the threads hand back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::plan::{Plan, Work};
use crate::progress::ProgressLine;
use crate::report::{CpuUse, MemoryReading, Report, RunFacts};
use crate::stats::histogram;
use crate::sys;
use crate::thread::{self, Phase, Shared, Snapshot, ThreadError, ThreadReport};

/// Time between the main thread's looks at the run.
const TICK: Duration = Duration::from_millis(20);

/// Margin between the end of setup and the first scheduled send, so every thread has
/// relayed the run phase before anything is due.
const RUN_START_MARGIN_US: u64 = 50_000;

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A thread could not start.
    #[error("starting thread {thread}: {source}")]
    Spawn {
        /// The thread.
        thread: usize,
        /// The cause.
        source: std::io::Error,
    },
    /// A thread failed.
    #[error(transparent)]
    Thread(#[from] ThreadError),
    /// A thread panicked.
    #[error("thread {0} panicked")]
    Panicked(usize),
    /// The server's memory could not be read.
    #[error("reading the memory of process {pid}: {source}")]
    Memory {
        /// The process.
        pid: u32,
        /// The cause.
        source: std::io::Error,
    },
}

/// Runs `plan` and reports.
pub fn run(plan: Plan) -> Result<Report, RunError> {
    let fd_limit = sys::raise_fd_limit();
    let memory_pid = match plan.work {
        Work::Idle { .. } => plan.server_pid,
        _ => None,
    };
    let before = memory_pid.map(read_memory).transpose()?;
    if let Some(cpus) = &plan.cpus {
        // The main thread (progress, snapshots, /proc readings) stays on the tester's CPUs
        // too, off the server's: unpinned, it ran on the server's CPU and took its turns.
        // Unpinned is noisier, not wrong: go on.
        let _ = monoio::utils::bind_to_cpu_set(cpus.iter().copied());
    }
    let quiet = plan.quiet;
    let threads = plan.threads;
    let connections = plan.connections;
    let shared = Arc::new(Shared::new(plan));
    let (sender, receiver) = channel();
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let indices: Vec<usize> = (t..connections).step_by(threads).collect();
        let for_thread = shared.clone();
        let sender = sender.clone();
        let handle = std::thread::Builder::new()
            .name(format!("loadtest-{t}"))
            .spawn(move || thread::run(for_thread, t, indices, sender))
            .map_err(|source| RunError::Spawn { thread: t, source });
        match handle {
            Ok(handle) => handles.push(handle),
            Err(error) => {
                shared.set_phase(Phase::Stop);
                join(handles)?;
                return Err(error);
            }
        }
    }
    drop(sender);
    let mut monitor = Monitor::new(&shared, receiver, ProgressLine::new(quiet));
    let phases = drive_phases(&shared, &mut monitor, &handles, memory_pid);
    shared.set_phase(Phase::Stop);
    let reports = join(handles)?;
    monitor.pump(&shared, true);
    monitor.progress.finish();
    let mut facts = phases?;
    facts.memory_before = before;
    facts.fd_limit = Some(fd_limit);
    if let Some(start) = facts.run_start_us {
        let end = start + shared.plan.duration.as_micros() as u64;
        facts.lag_by_second_us = monitor.lag_by_second(start, end);
    }
    Ok(Report::assemble(&shared, reports, facts))
}

fn read_memory(pid: u32) -> Result<MemoryReading, RunError> {
    Ok(MemoryReading {
        process: sys::process_memory(pid).map_err(|source| RunError::Memory { pid, source })?,
        tcp: sys::tcp_kernel().ok(),
    })
}

/// Moves the global phase: all connected, setup, run, and the scenario's end; samples CPU
/// use over the phase that measures (the run; the connects for a storm).
fn drive_phases(
    shared: &Shared,
    monitor: &mut Monitor,
    handles: &[JoinHandle<Result<ThreadReport, ThreadError>>],
    memory_pid: Option<u32>,
) -> Result<RunFacts, RunError> {
    let plan = &shared.plan;
    let total = plan.connections;
    let storm = matches!(plan.work, Work::Storm { .. });
    let start_sample = CpuSample::take(shared);
    let attempts_done = || {
        shared.connected.load(Ordering::Acquire) + shared.failed.load(Ordering::Acquire) >= total
    };
    if !monitor.wait(shared, handles, attempts_done, None) {
        return Ok(RunFacts::default());
    }
    let connected_us = shared.now_us();
    let connected = shared.connected.load(Ordering::Acquire);
    let mut facts = RunFacts {
        all_connected_us: Some(connected_us),
        ..RunFacts::default()
    };
    if storm {
        facts.cpu = start_sample.until(&CpuSample::take(shared), "connecting");
    }
    if connected == 0 {
        return Ok(facts);
    }
    shared.set_phase(Phase::Setup);
    let setup_deadline = shared.now_us() + plan.setup_timeout.as_micros() as u64;
    let settled = || shared.settled.load(Ordering::Acquire) >= connected;
    if !monitor.wait(shared, handles, settled, Some(setup_deadline)) && !monitor.stopped {
        facts.setup_timed_out = true;
    }
    let run_start = shared.now_us() + RUN_START_MARGIN_US;
    shared.set_run_start_us(run_start);
    shared.set_phase(Phase::Run);
    facts.run_start_us = Some(run_start);
    let duration_us = plan.duration.as_micros() as u64;
    match plan.work {
        Work::Idle { settle, .. } => {
            let held_from = CpuSample::take(shared);
            let settle_us = settle.as_micros() as u64;
            monitor.wait(shared, handles, || false, Some(connected_us + settle_us));
            if let Some(pid) = memory_pid {
                facts.memory_after = Some(read_memory(pid)?);
                facts.memory_connections = shared.connected.load(Ordering::Acquire);
            }
            let stop_at = connected_us + duration_us.max(settle_us);
            monitor.wait(shared, handles, || false, Some(stop_at));
            if let Some(pid) = memory_pid {
                facts.memory_end = Some(read_memory(pid)?);
            }
            facts.cpu = held_from.until(&CpuSample::take(shared), "hold");
        }
        Work::Storm { hold, .. } => {
            let stop_at = shared.now_us() + hold.as_micros() as u64;
            monitor.wait(shared, handles, || false, Some(stop_at));
        }
        _ => {
            monitor.wait(shared, handles, || false, Some(run_start));
            let run_from = CpuSample::take(shared);
            monitor.wait(shared, handles, || false, Some(run_start + duration_us));
            facts.cpu = run_from.until(&CpuSample::take(shared), "run");
            let stop_at = run_start + duration_us + plan.drain.as_micros() as u64;
            monitor.wait(shared, handles, || false, Some(stop_at));
        }
    }
    facts.stop_us = Some(shared.now_us());
    Ok(facts)
}

/// CPU counters at one moment: the host's, the tester's and the server's.
struct CpuSample {
    at_us: u64,
    /// The same moment on the wall clock, µs since the Unix epoch.
    unix_us: Option<u64>,
    host: Option<sys::HostCpu>,
    tester_secs: Option<f64>,
    server_secs: Option<f64>,
}

impl CpuSample {
    fn take(shared: &Shared) -> CpuSample {
        CpuSample {
            at_us: shared.now_us(),
            unix_us: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_micros() as u64),
            host: sys::host_cpu().ok(),
            tester_secs: sys::process_cpu_secs("self").ok(),
            server_secs: shared
                .plan
                .server_pid
                .and_then(|pid| sys::process_cpu_secs(&pid.to_string()).ok()),
        }
    }

    /// Who used the CPUs between `self` and `later`, in cores.
    fn until(&self, later: &CpuSample, phase: &'static str) -> Option<CpuUse> {
        let secs = later.at_us.saturating_sub(self.at_us) as f64 / 1e6;
        let (before, after) = (self.host?, later.host?);
        let total = after.total.saturating_sub(before.total);
        if secs <= 0.0 || total == 0 {
            return None;
        }
        let cpus = after.cpus.max(1);
        let host_cores = after.busy.saturating_sub(before.busy) as f64 / total as f64 * cpus as f64;
        let cores = |a: Option<f64>, b: Option<f64>| Some((b? - a?).max(0.0) / secs);
        let tester_cores = cores(self.tester_secs, later.tester_secs);
        let server_cores = cores(self.server_secs, later.server_secs);
        let others = host_cores - tester_cores.unwrap_or(0.0) - server_cores.unwrap_or(0.0);
        Some(CpuUse {
            phase,
            secs,
            from_unix_us: self.unix_us,
            to_unix_us: later.unix_us,
            host_cpus: cpus,
            host_cores,
            tester_cores,
            server_cores,
            other_cores: server_cores.map(|_| others.max(0.0)),
        })
    }
}

fn join(
    handles: Vec<JoinHandle<Result<ThreadReport, ThreadError>>>,
) -> Result<Vec<ThreadReport>, RunError> {
    let mut reports = Vec::with_capacity(handles.len());
    for (index, handle) in handles.into_iter().enumerate() {
        reports.push(handle.join().map_err(|_| RunError::Panicked(index))??);
    }
    Ok(reports)
}

/// Snapshots in, the progress line out.
struct Monitor {
    receiver: Receiver<Snapshot>,
    progress: ProgressLine,
    primary: Histogram<u64>,
    primary_name: &'static str,
    /// Max send lag per whole second since the epoch.
    lag: BTreeMap<u64, u64>,
    live: Vec<usize>,
    sent: u64,
    received: u64,
    errors: u64,
    window_sent: u64,
    window_received: u64,
    window_start_us: u64,
    /// A thread ended before Stop: the run is cut short.
    stopped: bool,
}

impl Monitor {
    fn new(shared: &Shared, receiver: Receiver<Snapshot>, progress: ProgressLine) -> Monitor {
        Monitor {
            receiver,
            progress,
            primary: histogram(),
            primary_name: shared.plan.work.primary().name(),
            lag: BTreeMap::new(),
            live: vec![0; shared.plan.threads],
            sent: 0,
            received: 0,
            errors: 0,
            window_sent: 0,
            window_received: 0,
            window_start_us: shared.now_us(),
            stopped: false,
        }
    }

    /// Waits until `done` or the deadline (µs since the epoch) while showing progress;
    /// false unless `done` was met. A thread that ends early stops the wait for good.
    fn wait(
        &mut self,
        shared: &Shared,
        handles: &[JoinHandle<Result<ThreadReport, ThreadError>>],
        done: impl Fn() -> bool,
        deadline_us: Option<u64>,
    ) -> bool {
        loop {
            if self.stopped {
                return false;
            }
            if done() {
                return true;
            }
            if deadline_us.is_some_and(|d| shared.now_us() >= d) {
                return false;
            }
            if handles.iter().any(JoinHandle::is_finished) {
                self.stopped = true;
                return false;
            }
            std::thread::sleep(TICK);
            self.pump(shared, false);
        }
    }

    /// Takes the snapshots that arrived and redraws the line once a second.
    fn pump(&mut self, shared: &Shared, last: bool) {
        while let Ok(snapshot) = self.receiver.try_recv() {
            self.sent += snapshot.sent;
            self.received += snapshot.received;
            self.errors += snapshot.errors;
            self.window_sent += snapshot.sent;
            self.window_received += snapshot.received;
            // Intervals come from histograms built alike: adding cannot fail.
            let _ = self.primary.add(&snapshot.primary);
            let slot = self.lag.entry(snapshot.at_us / 1_000_000).or_default();
            *slot = (*slot).max(snapshot.max_lag_us);
            if let Some(live) = self.live.get_mut(snapshot.thread) {
                *live = snapshot.live;
            }
        }
        let now = shared.now_us();
        let window = now.saturating_sub(self.window_start_us);
        if window < 1_000_000 || last {
            return;
        }
        let per_sec = |n: u64| n as f64 * 1e6 / window as f64;
        let p99 = if self.primary.is_empty() {
            "-".to_owned()
        } else {
            format!(
                "{:.2} ms",
                self.primary.value_at_quantile(0.99) as f64 / 1000.0
            )
        };
        let line = format!(
            "{:<10} {:>3}s | conns {}/{} (failed {}) | sent/s {:.0} | recv/s {:.0} | p99 {} {} | errors {}",
            phase_name(shared.phase()),
            now / 1_000_000,
            shared.connected.load(Ordering::Acquire),
            shared.plan.connections,
            shared.failed.load(Ordering::Acquire),
            per_sec(self.window_sent),
            per_sec(self.window_received),
            self.primary_name,
            p99,
            self.errors,
        );
        self.progress.show(line);
        self.window_sent = 0;
        self.window_received = 0;
        self.window_start_us = now;
    }

    /// Max send lag per whole second between `start_us` and `end_us`, in order.
    fn lag_by_second(&self, start_us: u64, end_us: u64) -> Vec<u64> {
        let (first, last) = (start_us / 1_000_000 + 1, end_us / 1_000_000);
        if first > last {
            return Vec::new();
        }
        self.lag.range(first..=last).map(|(_, &lag)| lag).collect()
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Connecting => "connecting",
        Phase::Setup => "setup",
        Phase::Run => "run",
        Phase::Stop => "stopping",
    }
}
