//! The report: assembled once from the threads' statistics, printed as a table, written as
//! JSON, checked against the SLO.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::Metric;
use crate::ledger::{Accounting, Ledger};
use crate::plan::{Plan, Work};
use crate::slo::SloReport;
use crate::stats::{Histograms, PERCENTILES, Summary};
use crate::sys::{FdLimit, ProcessMemory, TcpKernel};
use crate::thread::{Phase, Shared, ThreadReport};

/// A thread busier than this in the measured phase may itself be the bottleneck.
const BUSY_LIMIT: f64 = 0.9;
/// Send lag p99 above this means latencies include the tester's own delay.
const LAG_P99_LIMIT_MS: f64 = 5.0;
/// Other processes using more cores than this during the measured phase contend.
const OTHER_LOAD_LIMIT: f64 = 0.25;
/// Lag that grows past this (and doubles) over the run means the tester fell behind.
const LAG_GROWTH_FLOOR_MS: f64 = 10.0;

/// How the report handles coordinated omission; printed and in the JSON.
const COORDINATED_OMISSION: &str = "open loop: every message has a send time fixed before the run \
(evenly spaced per connection, random phase) and its stamp carries that scheduled time; latency \
counts from the schedule, not from when the tester got to send, and a late tester catches up \
without skipping, so a server stall is charged to every message due during it. Send lag \
(actual - scheduled) is reported to show the tester's own delay. Closed-loop echo measures \
service time only and is subject to coordinated omission by design.";

/// Facts the main thread gathered while moving the phases.
#[derive(Debug, Clone, Default)]
pub struct RunFacts {
    /// When every attempt had finished, µs since the epoch.
    pub all_connected_us: Option<u64>,
    /// Whether setup ran out of time.
    pub setup_timed_out: bool,
    /// When the schedules started.
    pub run_start_us: Option<u64>,
    /// When Stop was given.
    pub stop_us: Option<u64>,
    /// Idle: the server's memory before connecting.
    pub memory_before: Option<MemoryReading>,
    /// Idle: the server's memory once all were connected and settled.
    pub memory_after: Option<MemoryReading>,
    /// Connections open at the second reading.
    pub memory_connections: usize,
    /// Idle: the server's memory at the end of the hold.
    pub memory_end: Option<MemoryReading>,
    /// Who used the host's CPUs in the phase that measures.
    pub cpu: Option<CpuUse>,
    /// The open-files limit.
    pub fd_limit: Option<FdLimit>,
    /// Max send lag per second of the run, µs.
    pub lag_by_second_us: Vec<u64>,
}

/// CPU use over the phase that measures, in cores (1.0 = one CPU busy all the time).
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    /// The phase: run, hold (idle) or connecting (storm).
    pub phase: &'static str,
    /// Its length, seconds.
    pub secs: f64,
    /// Its start and end on the wall clock, µs since the Unix epoch, so that tools reading
    /// other processes' CPU (bench's `cpu_report`) can measure over the same window.
    pub from_unix_us: Option<u64>,
    pub to_unix_us: Option<u64>,
    /// CPUs of the host.
    pub host_cpus: usize,
    /// Busy cores of the whole host.
    pub host_cores: f64,
    /// The tester process (its main thread included).
    pub tester_cores: Option<f64>,
    /// The server process (with --pid).
    pub server_cores: Option<f64>,
    /// Everything else on the host (with --pid): other work that contends.
    pub other_cores: Option<f64>,
}

/// One memory reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryReading {
    /// The server process.
    pub process: ProcessMemory,
    /// The kernel's TCP (absent if unreadable).
    pub tcp: Option<TcpKernel>,
}

/// Connections: attempts, failures, rate and ends.
#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    /// Connections asked for.
    pub requested: usize,
    /// Upgraded.
    pub connected: u64,
    /// Failed attempts.
    pub failed: u64,
    /// Failed attempts by reason.
    pub connect_errors: BTreeMap<String, u64>,
    /// Connections that never finished setup (no welcome, or no chat).
    pub setup_missing: u64,
    /// Whether setup ran out of time.
    pub setup_timed_out: bool,
    /// From the first attempt to the last upgrade, seconds.
    pub connect_secs: f64,
    /// Upgrades per second over that time.
    pub connects_per_sec: f64,
    /// How connections ended.
    pub closes: BTreeMap<String, u64>,
}

/// Messages per second over the measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// The measured phase, seconds.
    pub run_secs: f64,
    /// Scheduled messages sent.
    pub sent: u64,
    /// Sent per second.
    pub sent_per_sec: f64,
    /// Data messages received (deliveries, echoes, pongs; duplicates included).
    pub received: u64,
    /// Received per second.
    pub received_per_sec: f64,
}

/// One thread's CPU use per phase.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadBusy {
    /// The thread.
    pub thread: usize,
    /// Its CPU, when pinned.
    pub cpu: Option<usize>,
    /// CPU time over wall time, per phase (connecting, setup, run).
    pub busy: BTreeMap<&'static str, f64>,
}

/// Whether the tester kept up.
#[derive(Debug, Clone, Serialize)]
pub struct Tester {
    /// Runtime threads.
    pub threads: usize,
    /// The I/O driver (see `thread::run` for why it is epoll).
    pub driver: &'static str,
    /// The open-files limit.
    pub fd_limit: Option<FdLimit>,
    /// Who used the host's CPUs in the phase that measures.
    pub cpu: Option<CpuUse>,
    /// CPU use per thread.
    pub busy: Vec<ThreadBusy>,
    /// Max send lag per second of the run, milliseconds.
    pub lag_by_second_ms: Vec<f64>,
    /// Whether the tester itself may have been the limit.
    pub bottleneck: bool,
    /// Why, or why not.
    pub notes: Vec<String>,
}

/// The server's memory per connection (idle).
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// The server process.
    pub pid: Option<u32>,
    /// Reading before connecting.
    pub before: MemoryReading,
    /// Reading once connected and settled.
    pub after: MemoryReading,
    /// Reading at the end of the hold.
    pub end: Option<MemoryReading>,
    /// (end - before) VmRSS / connections, bytes.
    pub rss_per_connection_at_end: Option<f64>,
    /// Connections open at the second reading.
    pub connections: usize,
    /// (after - before) VmRSS / connections, bytes.
    pub rss_per_connection: f64,
    /// The same for RssAnon.
    pub rss_anon_per_connection: f64,
    /// The kernel's TCP buffer memory growth / connections, bytes. On loopback both ends
    /// of every connection are on this host.
    pub kernel_tcp_buffers_per_connection: Option<f64>,
    /// The host's slab growth / connections, bytes (socket structures, files, epoll
    /// entries; both ends on loopback, and anything else the host did meanwhile).
    pub kernel_slab_per_connection: Option<f64>,
}

/// Everything about a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario.
    pub scenario: &'static str,
    /// The plan it ran.
    pub plan: Plan,
    /// Connections.
    pub connections: Connections,
    /// Throughput.
    pub throughput: Throughput,
    /// Latency summaries by metric name.
    pub latency: BTreeMap<&'static str, Summary>,
    /// Where every message went.
    pub accounting: Accounting,
    /// What the accounting cannot tell by itself.
    pub accounting_notes: Vec<String>,
    /// Error frames and other errors by label.
    pub errors: BTreeMap<String, u64>,
    /// Failed connections, errors and abnormal closes together.
    pub error_total: u64,
    /// Whether the tester kept up.
    pub tester: Tester,
    /// Idle: the server's memory per connection.
    pub memory: Option<Memory>,
    /// How coordinated omission is handled.
    pub coordinated_omission: &'static str,
    /// The SLO verdict (filled by [`crate::slo::check`]).
    pub slo: SloReport,
}

impl Report {
    /// Merges the threads' statistics into the report.
    pub fn assemble(shared: &Shared, threads: Vec<ThreadReport>, facts: RunFacts) -> Report {
        let plan = &shared.plan;
        let mut histograms = Histograms::default();
        let mut ledger = Ledger::default();
        let mut connect_errors = BTreeMap::new();
        let mut errors = BTreeMap::new();
        let mut closes = BTreeMap::new();
        let (mut sent, mut received, mut connected, mut abnormal) = (0, 0, 0, 0);
        let mut first_attempt = None::<u64>;
        let mut last_connect = 0;
        let mut busy = Vec::new();
        for t in threads {
            let s = t.stats;
            histograms.merge(&s.histograms);
            ledger.merge(s.ledger);
            add_all(&mut connect_errors, s.connect_errors);
            add_all(&mut errors, s.errors);
            add_all(&mut closes, s.closes);
            sent += s.sent;
            received += s.received;
            connected += s.connected;
            abnormal += s.abnormal_closes;
            if let Some(first) = s.first_attempt_us {
                first_attempt = Some(first_attempt.map_or(first, |f| f.min(first)));
            }
            last_connect = last_connect.max(s.last_connect_us);
            busy.push(ThreadBusy {
                thread: t.index,
                cpu: plan
                    .cpus
                    .as_ref()
                    .and_then(|c| c.get(t.index % c.len().max(1)).copied()),
                busy: t
                    .cpu
                    .iter()
                    .filter(|p| p.wall_us > 0)
                    .map(|p| (phase_label(p.phase), p.cpu_us as f64 / p.wall_us as f64))
                    .collect(),
            });
        }
        busy.sort_by_key(|b| b.thread);
        let failed: u64 = connect_errors.values().sum();
        let connect_secs = first_attempt
            .filter(|_| connected > 0)
            .map_or(0.0, |first| last_connect.saturating_sub(first) as f64 / 1e6);
        let settled = shared.settled.load(std::sync::atomic::Ordering::Acquire) as u64;
        let run_secs = if plan.work.sends() {
            plan.duration.as_secs_f64()
        } else {
            facts
                .run_start_us
                .zip(facts.stop_us)
                .map_or(0.0, |(a, b)| b.saturating_sub(a) as f64 / 1e6)
        };
        let per_sec = |n: u64| {
            if run_secs > 0.0 {
                n as f64 / run_secs
            } else {
                0.0
            }
        };
        let latency = histograms.summaries();
        let accounting = ledger.account(plan.work.audience());
        let accounting_notes = accounting_notes(plan, &accounting, &latency);
        let tester = tester_verdict(plan, busy, &latency, &facts);
        let memory = memory(plan, &facts);
        let error_total = failed + errors.values().sum::<u64>() + abnormal;
        Report {
            scenario: plan.work.name(),
            plan: plan.clone(),
            connections: Connections {
                requested: plan.connections,
                connected,
                failed,
                connect_errors,
                setup_missing: connected.saturating_sub(settled),
                setup_timed_out: facts.setup_timed_out,
                connect_secs,
                connects_per_sec: if connect_secs > 0.0 {
                    connected as f64 / connect_secs
                } else {
                    0.0
                },
                closes,
            },
            throughput: Throughput {
                run_secs,
                sent,
                sent_per_sec: per_sec(sent),
                received,
                received_per_sec: per_sec(received),
            },
            latency,
            accounting,
            accounting_notes,
            errors,
            error_total,
            tester,
            memory,
            coordinated_omission: COORDINATED_OMISSION,
            slo: SloReport::default(),
        }
    }

    /// The summary of `metric`, if it recorded anything.
    pub fn summary(&self, metric: Metric) -> Option<&Summary> {
        self.latency.get(metric.name())
    }

    /// The report as a readable table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_head(&mut out);
        self.render_latency(&mut out);
        self.render_accounting(&mut out);
        self.render_counts(&mut out);
        self.render_tester(&mut out);
        self.render_memory(&mut out);
        self.render_slo(&mut out);
        out
    }

    fn render_head(&self, out: &mut String) {
        let p = &self.plan;
        let c = &self.connections;
        let t = &self.throughput;
        let _ = writeln!(
            out,
            "loadtest {}: {} connections to ws://{}{}, {} thread(s) on {}, run {:.1}s",
            self.scenario,
            p.connections,
            p.target.host,
            p.target.path,
            p.threads,
            self.tester.driver,
            t.run_secs
        );
        let _ = writeln!(
            out,
            "connections  connected {}  failed {}  setup missing {}{}  connect rate {:.0}/s over {:.2}s",
            c.connected,
            c.failed,
            c.setup_missing,
            if c.setup_timed_out {
                " (setup timed out)"
            } else {
                ""
            },
            c.connects_per_sec,
            c.connect_secs
        );
        if self.plan.work.sends() || t.received > 0 {
            let _ = writeln!(
                out,
                "throughput   sent {} ({:.1}/s)  received {} ({:.1}/s)",
                t.sent, t.sent_per_sec, t.received, t.received_per_sec
            );
        }
    }

    fn render_latency(&self, out: &mut String) {
        if self.latency.is_empty() {
            return;
        }
        let _ = write!(out, "\n{:<28}{:>10}", "latency (ms)", "count");
        for p in PERCENTILES {
            let _ = write!(out, "{:>10}", format!("p{p}"));
        }
        let _ = writeln!(out, "{:>10}", "max");
        for metric in Metric::ALL {
            let Some(s) = self.summary(metric) else {
                continue;
            };
            let _ = write!(out, "  {:<26}{:>10}", metric.name(), s.count);
            for p in PERCENTILES {
                let _ = write!(out, "{:>10.3}", s.at(p));
            }
            let _ = writeln!(out, "{:>10.3}", s.max_ms);
        }
    }

    fn render_accounting(&self, out: &mut String) {
        let a = &self.accounting;
        if a.messages_sent == 0 {
            return;
        }
        let _ = writeln!(out, "\naccounting");
        let receipts = matches!(self.plan.work, Work::Chat { .. });
        if receipts {
            let _ = writeln!(
                out,
                "  messages sent {}  sent receipts {}  refused (error frame) {}  unanswered {}",
                a.messages_sent, a.sent_receipts, a.refused, a.unanswered
            );
            let _ = writeln!(
                out,
                "  deliveries expected {} (of receipted {}, of unreceipted {})  received {}",
                a.deliveries_expected,
                a.expected_of_receipted,
                a.expected_of_unreceipted,
                a.deliveries_received
            );
            let _ = writeln!(
                out,
                "  losses {} (of receipted {}, of unreceipted {})",
                a.losses, a.losses_of_receipted, a.losses_of_unreceipted
            );
        } else {
            let _ = writeln!(
                out,
                "  messages sent {}  refused (error frame) {}  expected receptions {}  received {}  losses {}",
                a.messages_sent, a.refused, a.deliveries_expected, a.deliveries_received, a.losses
            );
        }
        let _ = writeln!(
            out,
            "  duplicates {}  out of order {}  gaps {}  unexpected {}  untracked {}",
            a.duplicates, a.out_of_order, a.gaps, a.unexpected, a.untracked
        );
        for note in &self.accounting_notes {
            let _ = writeln!(out, "  {note}");
        }
        if receipts {
            let _ = writeln!(
                out,
                "  receipts: delivered {}/{}  read {}/{}  duplicate sent receipts {}",
                a.delivered_receipts,
                a.delivered_receipts_expected,
                a.read_receipts,
                a.read_receipts_expected,
                a.duplicate_sent_receipts
            );
        }
    }

    fn render_counts(&self, out: &mut String) {
        for (title, counts) in [
            ("connect errors", &self.connections.connect_errors),
            ("errors", &self.errors),
            ("closes", &self.connections.closes),
        ] {
            if counts.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n{title}");
            for (label, n) in counts {
                let _ = writeln!(out, "  {label:<40}{n:>10}");
            }
        }
        let _ = writeln!(out, "error total  {}", self.error_total);
    }

    fn render_tester(&self, out: &mut String) {
        let t = &self.tester;
        let _ = writeln!(out, "\ntester");
        for b in &t.busy {
            let phases: Vec<String> = b
                .busy
                .iter()
                .map(|(phase, busy)| format!("{phase} {:.0}%", busy * 100.0))
                .collect();
            let cpu = b.cpu.map_or("unpinned".to_owned(), |c| format!("cpu {c}"));
            let _ = writeln!(
                out,
                "  thread {} ({cpu}): busy {}",
                b.thread,
                phases.join(", ")
            );
        }
        if let Some(cpu) = &t.cpu {
            let cores = |c: Option<f64>| c.map_or("?".to_owned(), |c| format!("{c:.2}"));
            let _ = writeln!(
                out,
                "  cpu over the {} phase ({:.1}s, in cores): host {:.2} of {}, tester {}, server {}, others {}",
                cpu.phase,
                cpu.secs,
                cpu.host_cores,
                cpu.host_cpus,
                cores(cpu.tester_cores),
                cores(cpu.server_cores),
                cores(cpu.other_cores)
            );
        }
        for note in &t.notes {
            let _ = writeln!(out, "  {note}");
        }
    }

    fn render_memory(&self, out: &mut String) {
        let Some(m) = &self.memory else {
            return;
        };
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let _ = writeln!(
            out,
            "\nserver memory (pid {}): VmRSS {:.1} MiB -> {:.1} MiB with {} connections: {:.0} bytes per connection (RssAnon {:.0})",
            m.pid.map_or("?".to_owned(), |p| p.to_string()),
            mib(m.before.process.rss_bytes),
            mib(m.after.process.rss_bytes),
            m.connections,
            m.rss_per_connection,
            m.rss_anon_per_connection
        );
        if let Some(at_end) = m.rss_per_connection_at_end {
            let _ = writeln!(
                out,
                "at the end of the hold: {:.0} bytes per connection",
                at_end
            );
        }
        if let Some(buffers) = m.kernel_tcp_buffers_per_connection {
            let _ = writeln!(
                out,
                "kernel view (both ends on loopback): TCP buffers {buffers:.0} bytes per connection, \
                 slab {} bytes per connection",
                m.kernel_slab_per_connection
                    .map_or("?".to_owned(), |s| format!("{s:.0}"))
            );
        }
    }

    fn render_slo(&self, out: &mut String) {
        let _ = writeln!(out, "\ncoordinated omission: {}", self.coordinated_omission);
        if self.slo.checks.is_empty() {
            return;
        }
        let _ = writeln!(out, "\nslo");
        for c in &self.slo.checks {
            let actual = c.actual.map_or("no samples".to_owned(), |a| format!("{a}"));
            let _ = writeln!(
                out,
                "  {:<4} {:<40} actual {actual}, limit {}",
                if c.passed { "ok" } else { "MISS" },
                c.name,
                c.limit
            );
        }
    }
}

/// Losses are what had not arrived by the end of the drain: when the server was further
/// behind than the drain, some of them are late, not lost.
fn accounting_notes(
    plan: &Plan,
    accounting: &Accounting,
    latency: &BTreeMap<&'static str, Summary>,
) -> Vec<String> {
    let drain_ms = plan.drain.as_secs_f64() * 1000.0;
    let behind = latency
        .get(plan.work.primary().name())
        .map_or(0.0, |s| s.max_ms);
    if accounting.losses > 0 && behind > drain_ms {
        vec![format!(
            "LATE OR LOST: the server was up to {:.1} s behind, longer than the {:.1} s drain; \
             some losses may still have been in flight (a longer --drain tells them apart)",
            behind / 1000.0,
            drain_ms / 1000.0
        )]
    } else {
        Vec::new()
    }
}

fn add_all(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (label, n) in from {
        *into.entry(label).or_default() += n;
    }
}

fn phase_label(phase: Phase) -> &'static str {
    match phase {
        Phase::Connecting => "connecting",
        Phase::Setup => "setup",
        Phase::Run => "run",
        Phase::Stop => "stop",
    }
}

/// Decides whether the tester itself was the limit: a thread near 100% CPU in the phase
/// that matters, or a send lag that is high or growing.
fn tester_verdict(
    plan: &Plan,
    busy: Vec<ThreadBusy>,
    latency: &BTreeMap<&'static str, Summary>,
    facts: &RunFacts,
) -> Tester {
    let measured = match plan.work {
        Work::Storm { .. } => "connecting",
        _ => "run",
    };
    let mut notes = Vec::new();
    let mut bottleneck = false;
    let busiest = busy
        .iter()
        .filter_map(|b| b.busy.get(measured).map(|&x| (b.thread, x)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((thread, load)) = busiest {
        if load >= BUSY_LIMIT {
            bottleneck = true;
            notes.push(format!(
                "TESTER SATURATED: thread {thread} was busy {:.0}% of the {measured} phase; \
                 the figures may measure the tester, not the server",
                load * 100.0
            ));
        } else {
            notes.push(format!(
                "busiest thread {thread}: {:.0}% of the {measured} phase",
                load * 100.0
            ));
        }
    }
    if let Some(lag) = latency.get(Metric::SendLag.name()) {
        if lag.p99_ms > LAG_P99_LIMIT_MS {
            bottleneck = true;
            notes.push(format!(
                "TESTER LATE: send lag p99 {:.2} ms (max {:.2} ms): sends left late against \
                 their schedule; latencies still count from the schedule",
                lag.p99_ms, lag.max_ms
            ));
        } else {
            notes.push(format!(
                "send lag p99 {:.3} ms, max {:.3} ms (how late sends left against their schedule)",
                lag.p99_ms, lag.max_ms
            ));
        }
    }
    let series: Vec<f64> = facts
        .lag_by_second_us
        .iter()
        .map(|&us| us as f64 / 1000.0)
        .collect();
    if series.len() >= 3 {
        let third = series.len() / 3;
        let first = series[..third].iter().copied().fold(0.0, f64::max);
        let last = series[series.len() - third..]
            .iter()
            .copied()
            .fold(0.0, f64::max);
        if last > LAG_GROWTH_FLOOR_MS && last > 2.0 * first {
            bottleneck = true;
            notes.push(format!(
                "TESTER FALLING BEHIND: max send lag grew from {first:.1} ms (first third) to \
                 {last:.1} ms (last third)"
            ));
        }
    }
    if let Some(cpu) = &facts.cpu {
        if let Some(other) = cpu.other_cores.filter(|&o| o > OTHER_LOAD_LIMIT) {
            notes.push(format!(
                "CONTENDED HOST: other processes used {other:.2} of the {} CPUs during the {} \
                 phase; the figures share the machine with them",
                cpu.host_cpus, cpu.phase
            ));
        }
        if cpu.host_cores > cpu.host_cpus as f64 * BUSY_LIMIT {
            notes.push(format!(
                "HOST SATURATED: {:.2} of {} CPUs busy during the {} phase",
                cpu.host_cores, cpu.host_cpus, cpu.phase
            ));
        }
    }
    Tester {
        threads: plan.threads,
        driver: "epoll (monoio legacy driver)",
        fd_limit: facts.fd_limit,
        cpu: facts.cpu.clone(),
        busy,
        lag_by_second_ms: series,
        bottleneck,
        notes,
    }
}

fn memory(plan: &Plan, facts: &RunFacts) -> Option<Memory> {
    let (Work::Idle { .. }, pid) = (&plan.work, plan.server_pid) else {
        return None;
    };
    let (before, after) = (facts.memory_before?, facts.memory_after?);
    let n = facts.memory_connections.max(1) as f64;
    let per = |a: u64, b: u64| (a as f64 - b as f64) / n;
    Some(Memory {
        pid,
        before,
        after,
        connections: facts.memory_connections,
        rss_per_connection: per(after.process.rss_bytes, before.process.rss_bytes),
        end: facts.memory_end,
        rss_per_connection_at_end: facts
            .memory_end
            .map(|end| per(end.process.rss_bytes, before.process.rss_bytes)),
        rss_anon_per_connection: per(after.process.rss_anon_bytes, before.process.rss_anon_bytes),
        kernel_tcp_buffers_per_connection: before
            .tcp
            .zip(after.tcp)
            .map(|(b, a)| per(a.mem_bytes, b.mem_bytes)),
        kernel_slab_per_connection: before
            .tcp
            .zip(after.tcp)
            .and_then(|(b, a)| Some(per(a.slab_bytes?, b.slab_bytes?))),
    })
}
