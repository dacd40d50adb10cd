//! CPU per message of every process on the full path: what `cpu_report` reads from /proc,
//! parsed, summed per process group, cut to the load tester's run window and tabled. No
//! I/O here: `cpu_report` reads the files and hands the text in.
//!
//! A group's counter is the sum, over its processes alive at a sample, of utime + stime +
//! cutime + cstime (clock ticks). A process that starts during the run counts from zero;
//! one that exits moves its time into its parent's cutime/cstime when reaped, so as long
//! as the parent is in the group (PostgreSQL's postmaster and its backends, the broker and
//! its port programs, Redis and its save child), the counter runs on without a jump.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use serde_json::{Value, json};

/// One line of /proc/PID/stat: what the accounting needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    /// The command name (at most 15 bytes, from the kernel).
    pub comm: String,
    pub ppid: u32,
    /// utime + stime (all its threads), clock ticks.
    pub ticks: u64,
    /// cutime + cstime: its children's, once it has reaped them.
    pub reaped: u64,
}

/// Parses /proc/PID/stat. The name in parentheses may hold spaces and parentheses, so
/// fields are counted after its last closing parenthesis (state is field 3).
pub fn parse_proc_stat(stat: &str) -> Option<ProcStat> {
    let (head, rest) = stat.rsplit_once(')')?;
    let (pid, comm) = head.split_once(" (")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        pid: pid.trim().parse().ok()?,
        comm: comm.to_owned(),
        ppid: u32::try_from(field(4)?).ok()?,
        ticks: field(14)? + field(15)?,
        reaped: field(16)? + field(17)?,
    })
}

/// The whole host's CPU time, clock ticks, from the first line of /proc/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCpu {
    /// Ticks not idle (iowait counts as idle, as in the load tester).
    pub busy: u64,
    /// All ticks of all CPUs.
    pub total: u64,
    /// Ticks in interrupts (irq + softirq): busy, but no process's utime or stime. Much
    /// of it is loopback networking, the kernel's half of the sockets' traffic.
    pub interrupts: u64,
}

/// Parses the `cpu` line of /proc/stat.
pub fn parse_host_cpu(proc_stat: &str) -> Option<HostCpu> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    let interrupts = ticks.get(5).copied().unwrap_or(0) + ticks.get(6).copied().unwrap_or(0);
    Some(HostCpu {
        busy: total - idle,
        total,
        interrupts,
    })
}

/// CPUs of the host: the `cpuN` lines of /proc/stat.
pub fn host_cpus(proc_stat: &str) -> usize {
    proc_stat
        .lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count()
}

/// The inodes of the listening TCP sockets on `port`, from /proc/net/tcp or tcp6.
pub fn listening_inodes(proc_net_tcp: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    proc_net_tcp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            let port_matches = u16::from_str_radix(local_port, 16).ok()? == port;
            (port_matches && *fields.get(3)? == LISTEN).then(|| fields.get(9)?.parse().ok())?
        })
        .collect()
}

/// What picks a group's processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// This process.
    Pid(u32),
    /// The process(es) listening on this TCP port (resolved once, at the start).
    Port(u16),
    /// Every process with this command name, at each sample.
    Comm(String),
    /// The command `cpu_report` runs (the load tester), also once reaped.
    Child,
}

impl Selector {
    /// `pid:N`, `port:N`, `comm:NAME` or `child`.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let bad = || format!("bad selector {text:?}: want pid:N, port:N, comm:NAME or child");
        match text.split_once(':') {
            None if text == "child" => Ok(Selector::Child),
            Some(("pid", n)) => n.parse().map(Selector::Pid).map_err(|_| bad()),
            Some(("port", n)) => n.parse().map(Selector::Port).map_err(|_| bad()),
            Some(("comm", name)) if !name.is_empty() => Ok(Selector::Comm(name.to_owned())),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Pid(pid) => write!(f, "pid:{pid}"),
            Selector::Port(port) => write!(f, "port:{port}"),
            Selector::Comm(name) => write!(f, "comm:{name}"),
            Selector::Child => f.write_str("child"),
        }
    }
}

/// A named group of processes: the selected ones and all their descendants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub selectors: Vec<Selector>,
}

impl Group {
    /// `NAME=SELECTOR[+SELECTOR...]`, e.g. `rabbitmq=port:5672+port:4369`.
    pub fn parse(text: &str) -> Result<Group, String> {
        let (name, selectors) = text
            .split_once('=')
            .filter(|(name, _)| !name.is_empty())
            .ok_or_else(|| format!("bad group {text:?}: want NAME=SELECTOR[+SELECTOR...]"))?;
        Ok(Group {
            name: name.to_owned(),
            selectors: selectors
                .split('+')
                .map(Selector::parse)
                .collect::<Result<_, _>>()?,
        })
    }
}

/// A group's processes, ready to be summed at each sample.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roots {
    /// Fixed processes (pids, resolved ports, the child).
    pub pids: HashSet<u32>,
    /// Command names matched at each sample.
    pub comms: Vec<String>,
    /// Whether the child's reaped time (`cpu_report`'s own cutime + cstime) counts.
    pub child: bool,
}

/// A group's counter at one sample: ticks, and how many processes it summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupTicks {
    pub ticks: u64,
    pub processes: usize,
}

/// Sums the roots and their descendants among `procs`. `reaped_children` is
/// `cpu_report`'s own cutime + cstime: the child's time once it has exited. None when
/// nothing of the group is alive (and the child does not count).
pub fn group_ticks(procs: &[ProcStat], roots: &Roots, reaped_children: u64) -> Option<GroupTicks> {
    let mut children: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, p) in procs.iter().enumerate() {
        children.entry(p.ppid).or_default().push(i);
    }
    let mut seen = vec![false; procs.len()];
    let mut stack: Vec<usize> = procs
        .iter()
        .enumerate()
        .filter(|(_, p)| roots.pids.contains(&p.pid) || roots.comms.contains(&p.comm))
        .map(|(i, _)| i)
        .collect();
    let (mut ticks, mut processes) = (0, 0);
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        ticks += procs[i].ticks + procs[i].reaped;
        processes += 1;
        if let Some(kids) = children.get(&procs[i].pid) {
            stack.extend(kids.iter().filter(|&&k| !seen[k]));
        }
    }
    if roots.child {
        ticks += reaped_children;
    }
    (processes > 0 || roots.child).then_some(GroupTicks { ticks, processes })
}

/// Every group's counter at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Wall clock, µs since the Unix epoch.
    pub unix_us: u64,
    pub host: Option<HostCpu>,
    /// One per group, in the groups' order.
    pub groups: Vec<Option<GroupTicks>>,
}

/// The stretch the figures cover: the load tester's run phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub from_us: u64,
    pub to_us: u64,
    /// Estimated from the tester's exit, drain and duration (a tester that does not
    /// report its window: an older build).
    pub estimated: bool,
}

impl Window {
    pub fn secs(&self) -> f64 {
        self.to_us.saturating_sub(self.from_us) as f64 / 1e6
    }
}

/// Why the figures cannot be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CpuError {
    #[error("the load-tester report has no {0}")]
    Missing(&'static str),
    #[error("the samples do not cover the run window")]
    NotCovered,
}

/// The run window from a `loadtest --json` report: `tester.cpu.from_unix_us` and
/// `to_unix_us` when the tester reports them, else estimated as ending the drain before
/// `exit_us` (when the tester was seen gone) and lasting the plan's duration.
pub fn window(report: &Value, exit_us: Option<u64>) -> Result<Window, CpuError> {
    let int = |pointer: &str| report.pointer(pointer).and_then(Value::as_u64);
    if let (Some(from_us), Some(to_us)) = (
        int("/tester/cpu/from_unix_us"),
        int("/tester/cpu/to_unix_us"),
    ) {
        return Ok(Window {
            from_us,
            to_us,
            estimated: false,
        });
    }
    let exit_us = exit_us.ok_or(CpuError::Missing("tester/cpu/to_unix_us"))?;
    let drain_ms = int("/plan/drain").ok_or(CpuError::Missing("plan/drain"))?;
    let duration_ms = int("/plan/duration").ok_or(CpuError::Missing("plan/duration"))?;
    let to_us = exit_us.saturating_sub(drain_ms * 1000);
    Ok(Window {
        from_us: to_us.saturating_sub(duration_ms * 1000),
        to_us,
        estimated: true,
    })
}

/// One group's figures over the span.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    /// CPU seconds in the span; None when the group was not found at either end.
    pub cpu_secs: Option<f64>,
    /// Processes summed at the span's end (or start, if more).
    pub processes: usize,
}

/// The table for one run.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTable {
    /// The tester's run phase.
    pub window: Window,
    /// What is measured: from the first sample inside the window to the last, µs since
    /// the Unix epoch. Inside, so that no CPU of setup (busy) or drain leaks in.
    pub span_us: (u64, u64),
    /// User messages the tester sent in the window (`throughput.sent`).
    pub sent: u64,
    /// Messages the clients received in the window (`throughput.received`).
    pub received: u64,
    /// Deliveries the tester expected and those it got by its end (`accounting`): fewer
    /// means the stack fell behind.
    pub deliveries: Option<(u64, u64)>,
    pub rows: Vec<Row>,
    /// Busy CPU seconds of the whole host in the span.
    pub host_cpu_secs: Option<f64>,
    /// Of which in interrupts (irq + softirq), charged to no process.
    pub interrupt_cpu_secs: Option<f64>,
    /// CPUs of the host.
    pub host_cpus: usize,
    /// Clock ticks per second.
    pub hz: u64,
}

impl CpuTable {
    /// Cuts the samples to the window of `report` and builds the table.
    pub fn build(
        names: &[String],
        samples: &[Sample],
        report: &Value,
        exit_us: Option<u64>,
        hz: u64,
        host_cpus: usize,
    ) -> Result<CpuTable, CpuError> {
        let window = window(report, exit_us)?;
        let count = |pointer: &'static str| {
            report
                .pointer(pointer)
                .and_then(Value::as_u64)
                .ok_or(CpuError::Missing(pointer))
        };
        let (sent, received) = (count("/throughput/sent")?, count("/throughput/received")?);
        let deliveries = count("/accounting/deliveries_expected")
            .ok()
            .zip(count("/accounting/deliveries_received").ok());
        // Samples are in time order: the first and the last inside the window.
        let first = samples.partition_point(|s| s.unix_us < window.from_us);
        let last = samples.partition_point(|s| s.unix_us <= window.to_us);
        let (Some(a), Some(b)) = (samples.get(first), last.checked_sub(1).map(|l| &samples[l]))
        else {
            return Err(CpuError::NotCovered);
        };
        if b.unix_us <= a.unix_us {
            return Err(CpuError::NotCovered);
        }
        let delta = |value: &dyn Fn(&Sample) -> Option<u64>| {
            Some(value(b)?.saturating_sub(value(a)?) as f64 / hz as f64)
        };
        let rows = names
            .iter()
            .enumerate()
            .map(|(g, name)| {
                let group = |s: &Sample| s.groups.get(g).copied().flatten();
                let processes = |s: &Sample| group(s).map_or(0, |t| t.processes);
                Row {
                    name: name.clone(),
                    cpu_secs: delta(&|s: &Sample| group(s).map(|t| t.ticks)),
                    processes: processes(a).max(processes(b)),
                }
            })
            .collect();
        Ok(CpuTable {
            window,
            span_us: (a.unix_us, b.unix_us),
            sent,
            received,
            deliveries,
            rows,
            host_cpu_secs: delta(&|s: &Sample| s.host.map(|h| h.busy)),
            interrupt_cpu_secs: delta(&|s: &Sample| s.host.map(|h| h.interrupts)),
            host_cpus,
            hz,
        })
    }

    /// The measured span, seconds.
    pub fn span_secs(&self) -> f64 {
        self.span_us.1.saturating_sub(self.span_us.0) as f64 / 1e6
    }

    /// Messages sent in the span: the window's, pro rata (the tester spreads its sends
    /// evenly over the run).
    pub fn sent_in_span(&self) -> f64 {
        let secs = self.window.secs();
        if secs > 0.0 {
            self.sent as f64 * self.span_secs().min(secs) / secs
        } else {
            0.0
        }
    }

    /// CPU seconds per 1,000 messages sent.
    pub fn per_thousand(&self, cpu_secs: f64) -> Option<f64> {
        let sent = self.sent_in_span();
        (sent > 0.0).then(|| cpu_secs * 1000.0 / sent)
    }

    /// Cores used: CPU seconds over the span's wall seconds.
    pub fn cores(&self, cpu_secs: f64) -> f64 {
        cpu_secs / self.span_secs()
    }

    /// CPU seconds of every group that was found.
    pub fn total(&self) -> f64 {
        self.rows.iter().filter_map(|r| r.cpu_secs).sum()
    }

    /// The table as markdown, with a line saying what it covers.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "CPU over {:.2} s of the load tester's {:.2} s run phase{} (from the first sample in \
             it to the last): {} user messages sent in the run ({:.1}/s; {} in the span, pro \
             rata), {} received.\n",
            self.span_secs(),
            self.window.secs(),
            if self.window.estimated {
                ", estimated from the tester's exit (this tester does not report it)"
            } else {
                ""
            },
            thousands(self.sent),
            self.sent as f64 / self.window.secs(),
            thousands(self.sent_in_span().round() as u64),
            thousands(self.received),
        );
        if let Some((expected, got)) = self.deliveries.filter(|(e, g)| g < e) {
            let _ = writeln!(
                out,
                "**Behind:** {} of {} expected deliveries ({:.0}%) arrived by the tester's end. \
                 Past the knee, CPU per message sent is what the host had to give, not what a \
                 message costs.\n",
                thousands(got),
                thousands(expected),
                got as f64 * 100.0 / expected as f64,
            );
        }
        out.push_str(
            "| process | CPU s during run | cores used | CPU s per 1,000 messages |\n|---|---:|---:|---:|\n",
        );
        let mut line = |name: &str, secs: Option<f64>| {
            let Some(secs) = secs else {
                let _ = writeln!(out, "| {name} | not found | | |");
                return;
            };
            let per = self
                .per_thousand(secs)
                .map_or("-".to_owned(), |p| format!("{p:.3}"));
            let _ = writeln!(
                out,
                "| {name} | {secs:.2} | {:.3} | {per} |",
                self.cores(secs)
            );
        };
        for row in &self.rows {
            let name = if row.processes > 1 {
                format!("{} ({} processes)", row.name, row.processes)
            } else {
                row.name.clone()
            };
            line(&name, row.cpu_secs);
        }
        let total = self.total();
        line("**all of the above**", Some(total));
        if let Some(host) = self.host_cpu_secs {
            line(
                &format!("host, all processes ({} CPUs)", self.host_cpus),
                Some(host),
            );
            let interrupts = self.interrupt_cpu_secs.unwrap_or(0.0);
            line(
                "kernel interrupts (irq + softirq: loopback networking)",
                Some(interrupts),
            );
            line(
                "other processes on the host",
                Some((host - total - interrupts).max(0.0)),
            );
        }
        out
    }

    /// The figures as JSON (`cpu*.json` next to the load tester's report).
    pub fn json(&self) -> Value {
        let figures = |secs: Option<f64>| {
            json!({
                "cpu_secs": secs,
                "cores": secs.map(|s| self.cores(s)),
                "cpu_secs_per_1000_messages": secs.and_then(|s| self.per_thousand(s)),
            })
        };
        let processes: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut v = figures(r.cpu_secs);
                v["name"] = json!(r.name);
                v["processes"] = json!(r.processes);
                v
            })
            .collect();
        json!({
            "window": {
                "from_unix_us": self.window.from_us,
                "to_unix_us": self.window.to_us,
                "secs": self.window.secs(),
                "estimated": self.window.estimated,
            },
            "span": {
                "from_unix_us": self.span_us.0,
                "to_unix_us": self.span_us.1,
                "secs": self.span_secs(),
            },
            "messages_sent": self.sent,
            "messages_sent_in_span": self.sent_in_span(),
            "messages_received": self.received,
            "deliveries_expected": self.deliveries.map(|d| d.0),
            "deliveries_received": self.deliveries.map(|d| d.1),
            "clock_ticks_per_sec": self.hz,
            "processes": processes,
            "total": figures(Some(self.total())),
            "host": {
                "cpus": self.host_cpus,
                "busy": figures(self.host_cpu_secs),
                "interrupts": figures(self.interrupt_cpu_secs),
            },
        })
    }
}

/// 1234567 as "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pid: u32, comm: &str, ppid: u32, utime: u64, cutime: u64) -> String {
        format!(
            "{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 100 0 0 0 {utime} 5 {cutime} 1 20 0 4 0 123 1000 200"
        )
    }

    #[test]
    fn stat_lines_are_read_past_odd_names() {
        let p = parse_proc_stat(&stat(42, "a (b) c", 7, 100, 3)).unwrap();
        assert_eq!(p.pid, 42);
        assert_eq!(p.comm, "a (b) c");
        assert_eq!(p.ppid, 7);
        // utime 100 + stime 5; cutime 3 + cstime 1.
        assert_eq!((p.ticks, p.reaped), (105, 4));
        assert_eq!(parse_proc_stat("42 (x) S 1"), None);
    }

    #[test]
    fn host_cpu_counts_iowait_as_idle() {
        let text = "cpu  100 10 50 800 40 5 5 0 0 0\ncpu0 50 5 25 400 20 2 3 0 0 0\n";
        assert_eq!(
            parse_host_cpu(text),
            Some(HostCpu {
                busy: 170,
                total: 1010,
                interrupts: 10
            })
        );
        assert_eq!(host_cpus(text), 1);
    }

    #[test]
    fn listeners_are_found_by_port() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1628 00000000:0000 0A 00000000:00000000 00:00000000 00000000   106        0 31337 1 0 100 0 0 10 0\n\
   1: 0100007F:1628 0100007F:9C40 01 00000000:00000000 00:00000000 00000000   106        0 4444 1 0 20 4 30 10 -1\n\
   2: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   108        0 555 1 0 100 0 0 10 0\n";
        // 0x1628 = 5672; the established socket on it is not a listener.
        assert_eq!(listening_inodes(tcp, 5672), vec![31337]);
        assert_eq!(listening_inodes(tcp, 5432), vec![555]);
        assert!(listening_inodes(tcp, 6379).is_empty());
    }

    #[test]
    fn groups_and_selectors_parse() {
        assert_eq!(
            Group::parse("rabbitmq=port:5672+comm:epmd").unwrap(),
            Group {
                name: "rabbitmq".into(),
                selectors: vec![Selector::Port(5672), Selector::Comm("epmd".into())]
            }
        );
        assert_eq!(
            Group::parse("tester=child").unwrap().selectors,
            vec![Selector::Child]
        );
        for text in ["pid:7", "port:5432", "comm:redis-server", "child"] {
            assert_eq!(Selector::parse(text).unwrap().to_string(), text);
        }
        assert!(Group::parse("=pid:1").is_err());
        assert!(Group::parse("x=pid:abc").is_err());
        assert!(Group::parse("x=socket:1").is_err());
        assert!(Group::parse("x").is_err());
    }

    fn procs(list: &[(u32, &str, u32, u64)]) -> Vec<ProcStat> {
        list.iter()
            .map(|&(pid, comm, ppid, ticks)| ProcStat {
                pid,
                comm: comm.into(),
                ppid,
                ticks,
                reaped: 0,
            })
            .collect()
    }

    #[test]
    fn a_group_is_its_roots_and_their_descendants() {
        let ps = procs(&[
            (1, "init", 0, 1000),
            (10, "postgres", 1, 50),
            (11, "postgres", 10, 7),
            (12, "postgres", 10, 3),
            (20, "beam.smp", 1, 400),
            (21, "erl_child_setup", 20, 2),
            (22, "inet_gethost", 21, 1),
            (30, "beam.smp", 1, 900),
        ]);
        let by_pid = Roots {
            pids: [20].into(),
            ..Roots::default()
        };
        // The broker on the port, not the other beam.smp.
        assert_eq!(
            group_ticks(&ps, &by_pid, 0),
            Some(GroupTicks {
                ticks: 403,
                processes: 3
            })
        );
        let by_name = Roots {
            comms: vec!["postgres".into()],
            ..Roots::default()
        };
        // Each process once, although every backend is also a descendant of a match.
        assert_eq!(group_ticks(&ps, &by_name, 99).unwrap().ticks, 60);
        let child = Roots {
            pids: [99].into(),
            child: true,
            ..Roots::default()
        };
        // The child gone and reaped: its time is in cpu_report's cutime.
        assert_eq!(
            group_ticks(&ps, &child, 77),
            Some(GroupTicks {
                ticks: 77,
                processes: 0
            })
        );
        let gone = Roots {
            pids: [99].into(),
            ..Roots::default()
        };
        assert_eq!(group_ticks(&ps, &gone, 77), None);
    }

    #[test]
    fn a_backend_that_comes_and_goes_keeps_the_counter_steady() {
        // A new backend counts from zero; when it exits the postmaster reaps its time.
        let before = procs(&[(10, "postgres", 1, 50)]);
        let during = procs(&[(10, "postgres", 1, 52), (11, "postgres", 10, 30)]);
        let mut after = procs(&[(10, "postgres", 1, 52)]);
        after[0].reaped = 35;
        let roots = Roots {
            pids: [10].into(),
            ..Roots::default()
        };
        let t = |ps: &[ProcStat]| group_ticks(ps, &roots, 0).unwrap().ticks;
        assert_eq!((t(&before), t(&during), t(&after)), (50, 82, 87));
    }

    fn sample(unix_us: u64, host_busy: u64, ticks: &[Option<u64>]) -> Sample {
        Sample {
            unix_us,
            host: Some(HostCpu {
                busy: host_busy,
                total: host_busy * 2,
                interrupts: host_busy / 10,
            }),
            groups: ticks
                .iter()
                .map(|t| {
                    t.map(|ticks| GroupTicks {
                        ticks,
                        processes: 2,
                    })
                })
                .collect(),
        }
    }

    fn report(from: Option<u64>, to: Option<u64>, sent: u64) -> Value {
        json!({
            "plan": {"duration": 10_000, "drain": 2_000},
            "throughput": {"sent": sent, "received": sent * 9},
            "tester": {"cpu": {"from_unix_us": from, "to_unix_us": to}},
        })
    }

    const S: u64 = 1_000_000;

    #[test]
    fn the_window_is_the_testers_or_estimated_from_its_exit() {
        let exact = window(&report(Some(5 * S), Some(15 * S), 1), None).unwrap();
        assert_eq!(
            (exact.from_us, exact.to_us, exact.estimated),
            (5 * S, 15 * S, false)
        );
        // Exit at 20 s, 2 s of drain, 10 s of run.
        let guessed = window(&report(None, None, 1), Some(20 * S)).unwrap();
        assert_eq!(
            (guessed.from_us, guessed.to_us, guessed.estimated),
            (8 * S, 18 * S, true)
        );
        assert!(window(&report(None, None, 1), None).is_err());
    }

    #[test]
    fn figures_are_cut_to_the_window_and_counted_per_thousand() {
        let names = ["gateway".to_owned(), "redis".to_owned()];
        // 100 ticks/s; samples every 2 s; the window is 1 s to 11 s.
        // gateway: 50 ticks/s, after a burst of setup before the window (left out);
        // redis: missing.
        let samples: Vec<Sample> = (0..=6)
            .map(|i| {
                let gateway = if i == 0 { 0 } else { 1000 + i * 100 };
                sample(i * 2 * S, i * 300, &[Some(gateway), None])
            })
            .collect();
        let table = CpuTable::build(
            &names,
            &samples,
            &report(Some(S), Some(11 * S), 2000),
            None,
            100,
            2,
        )
        .unwrap();
        assert_eq!(table.window.secs(), 10.0);
        // The samples inside: 2 s to 10 s, with 8/10 of the 2,000 messages.
        assert_eq!(table.span_us, (2 * S, 10 * S));
        assert_eq!(table.sent_in_span(), 1600.0);
        // 400 ticks = 4 s, 0.5 cores, 2.5 s per 1,000 messages.
        let gateway = table.rows[0].cpu_secs.unwrap();
        assert_eq!(gateway, 4.0);
        assert_eq!(table.cores(gateway), 0.5);
        assert_eq!(table.per_thousand(gateway), Some(2.5));
        assert_eq!(table.rows[1].cpu_secs, None);
        // Host: 150 ticks/s = 12 s, of which 1.2 s in interrupts and 6.8 s in others.
        assert_eq!(table.host_cpu_secs, Some(12.0));
        assert_eq!(table.interrupt_cpu_secs, Some(1.2));
        let md = table.markdown();
        assert!(md.contains("2,000 user messages sent"), "{md}");
        assert!(!md.contains("Behind"), "{md}");
        assert!(
            md.contains("| gateway (2 processes) | 4.00 | 0.500 | 2.500 |"),
            "{md}"
        );
        assert!(md.contains("| redis | not found | | |"), "{md}");
        assert!(
            md.contains("| other processes on the host | 6.80 | 0.850 | 4.250 |"),
            "{md}"
        );
        let json = table.json();
        assert_eq!(json["processes"][0]["cpu_secs_per_1000_messages"], 2.5);
        assert_eq!(json["messages_sent"], 2000);
    }

    #[test]
    fn a_stack_that_fell_behind_is_flagged() {
        let names = ["gateway".to_owned()];
        let samples: Vec<Sample> = (0..=6).map(|i| sample(i * S, 0, &[Some(i)])).collect();
        let mut behind = report(Some(S), Some(5 * S), 100);
        behind["accounting"] = json!({"deliveries_expected": 900, "deliveries_received": 300});
        let table = CpuTable::build(&names, &samples, &behind, None, 100, 2).unwrap();
        assert_eq!(table.deliveries, Some((900, 300)));
        let md = table.markdown();
        assert!(
            md.contains("**Behind:** 300 of 900 expected deliveries (33%)"),
            "{md}"
        );
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(6000), "6,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn samples_that_miss_the_window_are_refused() {
        let names = ["gateway".to_owned()];
        // One sample inside the window is no span.
        let samples = vec![sample(2 * S, 0, &[Some(0)]), sample(4 * S, 0, &[Some(10)])];
        assert_eq!(
            CpuTable::build(
                &names,
                &samples,
                &report(Some(S), Some(3 * S), 1),
                None,
                100,
                2
            ),
            Err(CpuError::NotCovered)
        );
    }
}
