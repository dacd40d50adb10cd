//! What the tester reads from or asks of the kernel: its file descriptor limit, a process's
//! resident memory, and the kernel's TCP memory.

use std::io;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use serde::Serialize;

/// The open-files limit before and after raising it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FdLimit {
    /// Soft limit at start.
    pub before: Option<u64>,
    /// Soft limit now.
    pub after: Option<u64>,
    /// Hard limit.
    pub hard: Option<u64>,
}

/// Raises the soft open-files limit to the hard one: every connection is a descriptor.
pub fn raise_fd_limit() -> FdLimit {
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    let after = match setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum,
        Err(_) => limit.current,
    };
    FdLimit {
        before: limit.current,
        after,
        hard: limit.maximum,
    }
}

/// A process's memory as /proc/PID/status reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProcessMemory {
    /// VmRSS, bytes.
    pub rss_bytes: u64,
    /// RssAnon (heap and stacks, without mapped files), bytes.
    pub rss_anon_bytes: u64,
}

/// Reads VmRSS and RssAnon of `pid`.
pub fn process_memory(pid: u32) -> io::Result<ProcessMemory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/status has no VmRSS"),
        )
    })
}

fn parse_status(status: &str) -> Option<ProcessMemory> {
    Some(ProcessMemory {
        rss_bytes: kib_field(status, "VmRSS:")?,
        rss_anon_bytes: kib_field(status, "RssAnon:").unwrap_or(0),
    })
}

/// The kernel's view: TCP sockets and their buffers in this network namespace
/// (/proc/net/sockstat), and the slab memory of the whole host (/proc/meminfo), where
/// socket structures live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TcpKernel {
    /// Sockets in use.
    pub inuse: u64,
    /// Memory of TCP buffers, bytes (the `mem` pages times the page size).
    pub mem_bytes: u64,
    /// Slab memory of the host, bytes.
    pub slab_bytes: Option<u64>,
}

/// Reads /proc/net/sockstat and /proc/meminfo.
pub fn tcp_kernel() -> io::Result<TcpKernel> {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat")?;
    let mut kernel =
        parse_sockstat(&sockstat, rustix::param::page_size() as u64).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "/proc/net/sockstat has no TCP line",
            )
        })?;
    kernel.slab_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| kib_field(&meminfo, "Slab:"));
    Ok(kernel)
}

/// A `Name:   1234 kB` field, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

fn parse_sockstat(sockstat: &str, page_size: u64) -> Option<TcpKernel> {
    let line = sockstat.lines().find_map(|l| l.strip_prefix("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let value = |name: &str| {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(TcpKernel {
        inuse: value("inuse")?,
        mem_bytes: value("mem")? * page_size,
        slab_bytes: None,
    })
}

/// CPU time used by a process (user and system), read from /proc/PID/stat (`self` for
/// this process).
pub fn process_cpu_secs(pid: &str) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc stat"))
}

/// utime + stime of a /proc/PID/stat line; the command name in parentheses may hold
/// spaces, so fields are counted after its closing parenthesis (state is field 3).
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(field(14)? + field(15)?)
}

/// The whole host's CPU time, in clock ticks, from the first line of /proc/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCpu {
    /// Ticks not idle (iowait counts as idle).
    pub busy: u64,
    /// All ticks.
    pub total: u64,
    /// CPUs online (the `cpuN` lines): the host's, whatever this process is pinned to.
    pub cpus: usize,
}

/// Reads /proc/stat.
pub fn host_cpu() -> io::Result<HostCpu> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    parse_host_cpu(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/stat"))
}

fn parse_host_cpu(stat: &str) -> Option<HostCpu> {
    let line = stat.lines().find_map(|l| l.strip_prefix("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    let cpus = stat
        .lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    Some(HostCpu {
        busy: total - idle,
        total,
        cpus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_sockstat_parse() {
        let status = "Name:\tgateway\nVmRSS:\t   10240 kB\nRssAnon:\t    8000 kB\n";
        assert_eq!(
            parse_status(status),
            Some(ProcessMemory {
                rss_bytes: 10_485_760,
                rss_anon_bytes: 8_192_000
            })
        );
        assert_eq!(parse_status("Name: x\n"), None);
        let sockstat = "sockets: used 290\nTCP: inuse 20005 orphan 0 tw 3 alloc 20010 mem 12\nUDP: inuse 1 mem 0\n";
        assert_eq!(
            parse_sockstat(sockstat, 4096),
            Some(TcpKernel {
                inuse: 20_005,
                mem_bytes: 49_152,
                slab_bytes: None
            })
        );
    }

    #[test]
    fn cpu_times_parse() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
        let host = "cpu  100 5 50 800 20 1 2 3 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n\
                    cpu1 1 2 3 4 5 6 7 8 0 0\nintr 1 2\nctxt 3\n";
        assert_eq!(
            parse_host_cpu(host),
            Some(HostCpu {
                busy: 161,
                total: 981,
                cpus: 2
            })
        );
        assert!(process_cpu_secs("self").is_ok_and(|s| s >= 0.0));
        assert!(host_cpu().is_ok_and(|h| h.total >= h.busy));
    }

    #[test]
    fn our_own_memory_and_limits_read() {
        let memory = process_memory(std::process::id()).expect("own status");
        assert!(memory.rss_bytes > 0);
        let limit = raise_fd_limit();
        assert!(limit.after >= limit.before);
        assert!(tcp_kernel().is_ok_and(|k| k.slab_bytes.is_some()));
    }
}
