//! The process's own metrics, read from /proc at each scrape, under the names Prometheus'
//! client libraries use (`process_open_fds`, `process_max_fds`, ...), so stock dashboards
//! and alerts work. Open descriptors against their limit is the saturation signal of a
//! gateway holding 100k sockets.

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::metrics::{counter, gauge};

/// Reads the process's metrics from /proc at each scrape.
#[derive(Debug, Default)]
pub struct ProcessMetrics;

impl Collector for ProcessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let sample = Sample::read();
        if let Some(fds) = sample.open_fds {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Open file descriptors.",
                fds,
            )?;
        }
        if let Some(limit) = sample.max_fds {
            gauge(
                &mut encoder,
                "process_max_fds",
                "The open file descriptor limit (RLIMIT_NOFILE).",
                limit,
            )?;
        }
        if let Some(bytes) = sample.resident_bytes {
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory.",
                bytes,
            )?;
        }
        if let Some(bytes) = sample.virtual_bytes {
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory.",
                bytes,
            )?;
        }
        if let Some(cpu) = sample.cpu {
            counter(
                &mut encoder,
                "process_cpu_seconds",
                "User and system CPU time.",
                cpu.as_secs_f64(),
            )?;
        }
        if let Some(threads) = sample.threads {
            gauge(&mut encoder, "process_threads", "OS threads.", threads)?;
        }
        if let Some(started) = sample.start_time {
            gauge(
                &mut encoder,
                "process_start_time_seconds",
                "When the process started, in seconds since the Unix epoch.",
                started,
            )?;
        }
        Ok(())
    }
}

/// One reading of /proc; a field is `None` where the system did not say.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    cpu: Option<Duration>,
    threads: Option<u64>,
    start_time: Option<f64>,
}

impl Sample {
    fn read() -> Sample {
        let page = rustix::param::page_size() as u64;
        let ticks = rustix::param::clock_ticks_per_second();
        let statm = std::fs::read_to_string("/proc/self/statm").ok();
        let statm = statm.as_deref().map(parse_statm);
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let stat = stat.as_deref().and_then(parse_stat);
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| parse_boot_time(&text));
        Sample {
            // The directory's own descriptor is among the entries, as in other clients.
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count() as u64),
            max_fds: crate::descriptors::limit(),
            resident_bytes: statm.and_then(|(_, resident)| resident).map(|p| p * page),
            virtual_bytes: statm.and_then(|(size, _)| size).map(|p| p * page),
            cpu: stat
                .map(|s| Duration::from_secs_f64((s.utime + s.stime) as f64 / ticks.max(1) as f64)),
            threads: stat.map(|s| s.threads),
            start_time: stat
                .zip(boot_time)
                .map(|(s, boot)| boot as f64 + s.start_ticks as f64 / ticks.max(1) as f64),
        }
    }
}

/// Total and resident pages from /proc/self/statm.
fn parse_statm(text: &str) -> (Option<u64>, Option<u64>) {
    let mut fields = text.split_whitespace().map(|f| f.parse().ok());
    (fields.next().flatten(), fields.next().flatten())
}

/// The fields of /proc/self/stat used here; times in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    threads: u64,
    start_ticks: u64,
}

/// Parses /proc/self/stat. The command name (field 2) may hold spaces and parentheses, so
/// the fields are counted from its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state) of proc_pid_stat(5).
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        threads: field(20)?,
        start_ticks: field(22)?,
    })
}

/// The boot time (seconds since the epoch) from /proc/stat.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        assert_eq!(
            parse_statm("5000 1200 300 1 0 900 0\n"),
            (Some(5000), Some(1200))
        );
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    150 30 0 0 20 0 7 0 98765 1000000 1200 18446744073709551615";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                utime: 150,
                stime: 30,
                threads: 7,
                start_ticks: 98765
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1733000000\nprocesses 9\n"),
            Some(1_733_000_000)
        );
    }

    #[test]
    fn this_process_reads_sensibly() {
        let sample = Sample::read();
        let fds = sample.open_fds.expect("open descriptors");
        assert!(fds >= 3, "{sample:?}");
        assert!(
            sample.max_fds.is_none_or(|limit| limit >= fds),
            "{sample:?}"
        );
        assert!(sample.resident_bytes.expect("RSS") > 1 << 20, "{sample:?}");
        assert!(sample.threads.expect("threads") >= 1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let started = sample.start_time.expect("start time");
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} vs {now}"
        );
    }
}
