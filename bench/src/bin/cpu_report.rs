//! Runs a command (the load tester) while sampling the CPU time of named process groups
//! from /proc, then cuts the samples to the tester's run window (from its `--json`
//! report) and prints, per group: CPU seconds, cores used and CPU seconds per 1,000 user
//! messages sent. Writes the same as JSON with `--json` and markdown with `--markdown`. `scripts/demo.sh` runs it around
//! every load-tester run; the arithmetic is in `bench::cpu`.
//!
//! ```sh
//! cpu_report --report out/report.json --json out/cpu.json --hz "$(getconf CLK_TCK)" \
//!   gateway=pid:1234 rabbitmq=port:5672+port:4369 postgresql=port:5432 tester=child \
//!   -- target/release/loadtest --json out/report.json ...
//! ```

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bench::cpu::{self, CpuTable, Group, ProcStat, Roots, Sample, Selector};
use clap::Parser;
use serde_json::{Value, json};

/// Runs COMMAND and reports the CPU per message of each process group over its run phase.
#[derive(Debug, Parser)]
struct Args {
    /// The load tester's JSON report (its `--json`), read once COMMAND has exited.
    #[arg(long)]
    report: PathBuf,
    /// Where to write the figures as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where to write the table (what is printed) as markdown.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Where to write every sample (tab-separated clock ticks per group, over time).
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Time between samples, milliseconds.
    #[arg(long, default_value_t = 250)]
    every_ms: u64,
    /// Clock ticks per second of /proc's times (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    hz: u64,
    /// Groups, in table order: NAME=SELECTOR[+SELECTOR...], a selector being pid:N,
    /// port:N (whoever listens on that TCP port), comm:NAME (every process so named) or
    /// child (COMMAND). Each group also holds its processes' descendants.
    #[arg(value_parser = Group::parse, required = true)]
    groups: Vec<Group>,
    /// The command to run.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn main() -> Result<ExitCode> {
    let args = Args::parse();
    let mut roots = resolve(&args.groups);
    let mut child = Command::new(&args.command[0])
        .args(&args.command[1..])
        .spawn()
        .with_context(|| format!("starting {}", args.command[0]))?;
    for (group, roots) in args.groups.iter().zip(&mut roots) {
        if group.selectors.contains(&Selector::Child) {
            roots.pids.insert(child.id());
            roots.child = true;
        }
    }
    let loadavg_start = loadavg();
    let every = Duration::from_millis(args.every_ms.max(10));
    let mut samples = vec![sample(&roots)];
    let (status, exit_us) = loop {
        std::thread::sleep(every);
        if let Some(status) = child.try_wait().context("waiting for the command")? {
            let last = sample(&roots);
            let exit_us = last.unix_us;
            samples.push(last);
            break (status, exit_us);
        }
        samples.push(sample(&roots));
    };
    if let Some(path) = &args.samples {
        write_samples(path, &args.groups, &samples)?;
    }
    if !status.success() {
        eprintln!(
            "cpu_report: {} ended with {status}: no table",
            args.command[0]
        );
        return Ok(ExitCode::from(
            status
                .code()
                .and_then(|c| u8::try_from(c).ok())
                .unwrap_or(1),
        ));
    }
    let report = read_json(&args.report)?;
    let names: Vec<String> = args.groups.iter().map(|g| g.name.clone()).collect();
    let host_cpus = fs::read_to_string("/proc/stat").map_or(0, |s| cpu::host_cpus(&s));
    let table = CpuTable::build(&names, &samples, &report, Some(exit_us), args.hz, host_cpus)
        .context("cutting the samples to the run window")?;
    let own_secs = own_cpu_ticks() as f64 / args.hz as f64;
    let loadavg_end = loadavg();
    let markdown = format!(
        "{}\nLoad average (1, 5, 15 min) at the start: {loadavg_start}; at the end: {loadavg_end}. \
         {} samples every {} ms, {own_secs:.2} CPU s of cpu_report's own.\n",
        table.markdown(),
        samples.len(),
        every.as_millis()
    );
    print!("{markdown}");
    if let Some(path) = &args.markdown {
        fs::write(path, &markdown).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let mut json = table.json();
        json["groups"] = args
            .groups
            .iter()
            .zip(&roots)
            .map(|(g, r)| {
                let mut pids: Vec<u32> = r.pids.iter().copied().collect();
                pids.sort_unstable();
                let selectors: Vec<String> = g.selectors.iter().map(ToString::to_string).collect();
                json!({"name": g.name, "selectors": selectors.join("+"), "root_pids": pids})
            })
            .collect();
        json["sampling"] = json!({
            "every_ms": every.as_millis() as u64,
            "samples": samples.len(),
            "own_cpu_secs": own_secs,
        });
        json["loadavg"] = json!({"start": loadavg_start, "end": loadavg_end});
        let text = serde_json::to_string_pretty(&json)?;
        fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_samples(path: &Path, groups: &[Group], samples: &[Sample]) -> Result<()> {
    let mut text = String::from("unix_us\thost_busy\thost_interrupts");
    for g in groups {
        text.push('\t');
        text.push_str(&g.name);
    }
    text.push('\n');
    let cell = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
    for s in samples {
        text.push_str(&s.unix_us.to_string());
        text.push('\t');
        text.push_str(&cell(s.host.map(|h| h.busy)));
        text.push('\t');
        text.push_str(&cell(s.host.map(|h| h.interrupts)));
        for g in &s.groups {
            text.push('\t');
            text.push_str(&cell(g.map(|t| t.ticks)));
        }
        text.push('\n');
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Turns the selectors into processes; ports are looked up once, before the run.
fn resolve(groups: &[Group]) -> Vec<Roots> {
    groups
        .iter()
        .map(|group| {
            let mut roots = Roots::default();
            for selector in &group.selectors {
                match selector {
                    Selector::Pid(pid) => {
                        roots.pids.insert(*pid);
                    }
                    Selector::Port(port) => {
                        let found = listeners(*port);
                        if found.is_empty() {
                            eprintln!(
                                "cpu_report: {}: no process found listening on port {port} \
                                 (other users' sockets need root to be seen)",
                                group.name
                            );
                        }
                        roots.pids.extend(found);
                    }
                    Selector::Comm(name) => roots.comms.push(name.clone()),
                    Selector::Child => {}
                }
            }
            roots
        })
        .collect()
}

/// The processes holding a listening TCP socket on `port`.
fn listeners(port: u16) -> Vec<u32> {
    let wanted: HashSet<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .flat_map(|text| cpu::listening_inodes(&text, port))
        .map(|inode| format!("socket:[{inode}]"))
        .collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let mut found = Vec::new();
    for pid in pids() {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            fs::read_link(fd.path())
                .is_ok_and(|target| target.to_str().is_some_and(|t| wanted.contains(t)))
        });
        if holds {
            found.push(pid);
        }
    }
    found
}

fn pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// Every process's stat line that could be read (processes come and go meanwhile).
fn processes() -> Vec<ProcStat> {
    let mut procs = Vec::with_capacity(512);
    for pid in pids() {
        if let Some(p) = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| cpu::parse_proc_stat(&s))
        {
            procs.push(p);
        }
    }
    procs
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Reads every group's counter; timed at the middle of the reading.
fn sample(roots: &[Roots]) -> Sample {
    let start_us = unix_us();
    let procs = processes();
    // The child's time once reaped: this process's own cutime + cstime.
    let reaped = fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| cpu::parse_proc_stat(&s))
        .map_or(0, |p| p.reaped);
    let host = fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| cpu::parse_host_cpu(&s));
    Sample {
        unix_us: start_us + unix_us().saturating_sub(start_us) / 2,
        host,
        groups: roots
            .iter()
            .map(|r| cpu::group_ticks(&procs, r, reaped))
            .collect(),
    }
}

/// This process's own utime + stime: what the sampling cost.
fn own_cpu_ticks() -> u64 {
    fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| cpu::parse_proc_stat(&s))
        .map_or(0, |p| p.ticks)
}

/// The first three fields of /proc/loadavg.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if !value.is_object() {
        bail!("{} is not a load-tester report", path.display());
    }
    Ok(value)
}
