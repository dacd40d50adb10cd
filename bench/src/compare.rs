//! The side-by-side comparison's arithmetic: the figures of each load-tester report
//! (`loadtest --json`), the tables with ours/peer ratios, and the full path's knee. No I/O:
//! `compare_report` reads the files and prints what this builds.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

/// The server whose figures are the numerators of the ratios.
pub const OURS: &str = "gateway";
/// The full path's latency target (DESIGN.md): the knee is the highest load under it.
pub const KNEE_P99_MS: f64 = 10.0;

/// The servers in report order; unknown names follow, alphabetically.
const SERVER_ORDER: [&str; 7] = [
    OURS,
    "gateway_monoio",
    "gateway_epoll",
    "ringio",
    "fastwebsockets",
    "tungstenite",
    "node",
];
/// The loads in report order, with what each one is; unknown names follow.
const LOADS: [(&str, &str); 6] = [
    (
        "echo-1k",
        "echo, 1,000 connections, 10 msg/s each (open loop)",
    ),
    (
        "echo-10k",
        "echo, 10,000 connections, 1 msg/s each (open loop)",
    ),
    (
        "echo-max-1k",
        "echo, 1,000 connections, one message in flight each (closed loop: the most a core serves)",
    ),
    (
        "broadcast-1k",
        "broadcast, 1,000 connections in 10 groups of 100, one sender per group at 20 msg/s (20,000 frames/s out)",
    ),
    (
        "idle-10k",
        "idle, 10,000 connections with heartbeats: server memory per connection",
    ),
    (
        "chat-10k",
        "chat, 10,000 connections in groups of 10, 0.2 msg/s each (2,000 msg/s, 18,000 deliveries/s; ours only)",
    ),
];

/// What one load-tester report says about the server it ran against.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Connections that were open.
    pub connected: u64,
    /// Messages the clients received per second (echoes or deliveries).
    pub received_per_sec: f64,
    /// Messages the clients received.
    pub received: u64,
    /// Latency of the scenario's main metric, milliseconds (none for idle).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p99_9_ms: Option<f64>,
    /// Server CPU seconds per million messages received, when its CPU was read.
    pub cpu_secs_per_million: Option<f64>,
    /// Server VmRSS growth per connection once connected, bytes (idle).
    pub rss_per_connection: Option<f64>,
    /// The same at the end of the hold, after heartbeats (idle).
    pub rss_per_connection_at_end: Option<f64>,
    pub losses: u64,
    pub duplicates: u64,
    /// Failed connections, error frames and abnormal closes.
    pub errors: u64,
    /// The tester says it may itself have been the bottleneck.
    pub tester_bottleneck: bool,
    /// Messages the clients sent per second (the offered load).
    pub sent_per_sec: f64,
}

/// Why a report could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the report has no {0}")]
pub struct MissingField(&'static str);

impl Figures {
    /// Reads the figures out of one `loadtest --json` report.
    pub fn from_report(report: &Value) -> Result<Figures, MissingField> {
        let number = |pointer: &'static str| {
            report
                .pointer(pointer)
                .and_then(Value::as_f64)
                .ok_or(MissingField(pointer))
        };
        let optional = |pointer: &str| report.pointer(pointer).and_then(Value::as_f64);
        let scenario = report
            .pointer("/scenario")
            .and_then(Value::as_str)
            .ok_or(MissingField("/scenario"))?;
        let metric = match scenario {
            "echo" => Some("rtt"),
            "idle" | "storm" => None,
            _ => Some("send_to_delivery"),
        };
        let latency = |field: &str| metric.and_then(|m| optional(&format!("/latency/{m}/{field}")));
        let received = number("/throughput/received")? as u64;
        let server_cpu_secs = optional("/tester/cpu/server_cores")
            .zip(optional("/tester/cpu/secs"))
            .map(|(cores, secs)| cores * secs);
        Ok(Figures {
            connected: number("/connections/connected")? as u64,
            received_per_sec: number("/throughput/received_per_sec")?,
            received,
            p50_ms: latency("p50_ms"),
            p99_ms: latency("p99_ms"),
            p99_9_ms: latency("p99_9_ms"),
            cpu_secs_per_million: server_cpu_secs
                .filter(|_| received > 0)
                .map(|secs| secs * 1e6 / received as f64),
            rss_per_connection: optional("/memory/rss_per_connection"),
            rss_per_connection_at_end: optional("/memory/rss_per_connection_at_end"),
            losses: number("/accounting/losses")? as u64,
            duplicates: number("/accounting/duplicates")? as u64,
            errors: number("/error_total")? as u64,
            tester_bottleneck: report
                .pointer("/tester/bottleneck")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            sent_per_sec: number("/throughput/sent_per_sec")?,
        })
    }
}

impl Figures {
    /// One set of figures for several rounds of the same load on the same server: the
    /// median of each figure (on this noisy a host one round can be far off), but the
    /// totals of what was lost, duplicated or failed (no round's loss may be hidden), the
    /// fewest connections, and the tester flagged as the bottleneck if it was in any round.
    pub fn median_of(rounds: &[Figures]) -> Option<Figures> {
        let median = |figure: fn(&Figures) -> Option<f64>| {
            let mut values: Vec<f64> = rounds.iter().filter_map(figure).collect();
            values.sort_by(f64::total_cmp);
            let middle = values.len() / 2;
            match values.len() {
                0 => None,
                n if n % 2 == 1 => Some(values[middle]),
                _ => Some((values[middle - 1] + values[middle]) / 2.0),
            }
        };
        let total = |figure: fn(&Figures) -> u64| rounds.iter().map(figure).sum();
        Some(Figures {
            connected: rounds.iter().map(|f| f.connected).min()?,
            received_per_sec: median(|f| Some(f.received_per_sec))?,
            received: median(|f| Some(f.received as f64))? as u64,
            p50_ms: median(|f| f.p50_ms),
            p99_ms: median(|f| f.p99_ms),
            p99_9_ms: median(|f| f.p99_9_ms),
            cpu_secs_per_million: median(|f| f.cpu_secs_per_million),
            rss_per_connection: median(|f| f.rss_per_connection),
            rss_per_connection_at_end: median(|f| f.rss_per_connection_at_end),
            losses: total(|f| f.losses),
            duplicates: total(|f| f.duplicates),
            errors: total(|f| f.errors),
            tester_bottleneck: rounds.iter().any(|f| f.tester_bottleneck),
            sent_per_sec: median(|f| Some(f.sent_per_sec))?,
        })
    }
}

/// One load's runs as the report shows them.
#[derive(Debug)]
pub struct LoadRuns<'a> {
    pub load: &'a str,
    /// The most rounds any server ran.
    pub rounds: usize,
    /// The servers in report order, each with the medians of its rounds.
    pub servers: Vec<(&'a str, Figures)>,
}

/// Peer runs by load, then by server, one set of figures per round.
#[derive(Debug, Default)]
pub struct PeerRuns {
    runs: BTreeMap<String, BTreeMap<String, Vec<Figures>>>,
}

impl PeerRuns {
    /// Files are named `peer-<server>-<load>.json`, or `peer-<server>-<load>.r<round>.json`
    /// when compare.sh ran several rounds; the server's name has no dash. Gives the server
    /// and the load.
    pub fn parse_name(file_stem: &str) -> Option<(&str, &str)> {
        let (server, load) = file_stem.strip_prefix("peer-")?.split_once('-')?;
        let load = match load.rsplit_once(".r") {
            Some((load, round)) if round.parse::<u32>().is_ok() => load,
            _ => load,
        };
        Some((server, load))
    }

    /// Adds one round of `load` on `server`.
    pub fn add(&mut self, server: &str, load: &str, figures: Figures) {
        self.runs
            .entry(load.to_owned())
            .or_default()
            .entry(server.to_owned())
            .or_default()
            .push(figures);
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Loads in report order.
    pub fn ordered(&self) -> Vec<LoadRuns<'_>> {
        let mut loads: Vec<_> = self.runs.iter().collect();
        loads.sort_by_key(|(name, _)| (rank(&LOADS.map(|(n, _)| n), name), name.as_str()));
        loads
            .into_iter()
            .map(|(load, servers)| {
                let rounds = servers.values().map(Vec::len).max().unwrap_or(0);
                let mut servers: Vec<_> = servers
                    .iter()
                    .filter_map(|(s, rounds)| Some((s.as_str(), Figures::median_of(rounds)?)))
                    .collect();
                servers.sort_by_key(|(name, _)| (rank(&SERVER_ORDER, name), *name));
                LoadRuns {
                    load: load.as_str(),
                    rounds,
                    servers,
                }
            })
            .collect()
    }

    /// One markdown section per load: the figures, then ours/peer ratios.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        for LoadRuns {
            load,
            rounds,
            servers,
        } in self.ordered()
        {
            let about = LOADS
                .iter()
                .find(|(name, _)| *name == load)
                .map_or("", |(_, about)| about);
            let _ = writeln!(out, "### {load}: {about}\n");
            if rounds > 1 {
                let _ = writeln!(
                    out,
                    "Medians of {rounds} rounds; lost, duplicated and errors are their totals.\n"
                );
            }
            let servers: Vec<(&str, &Figures)> = servers.iter().map(|(s, f)| (*s, f)).collect();
            if load.starts_with("idle") {
                idle_table(&mut out, &servers);
            } else {
                traffic_table(&mut out, &servers);
            }
            out.push('\n');
        }
        out
    }
}

fn rank(order: &[&str], name: &str) -> usize {
    order.iter().position(|o| *o == name).unwrap_or(order.len())
}

fn traffic_table(out: &mut String, servers: &[(&str, &Figures)]) {
    out.push_str(
        "| server | msg/s received | p50 ms | p99 ms | p99.9 ms | server CPU s per 1M msgs | lost | duplicated | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (server, f) in servers {
        let flag = if f.tester_bottleneck {
            " (tester-bound)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "| {server}{flag} | {} | {} | {} | {} | {} | {} | {} | {} |",
            thousands(f.received_per_sec),
            ms(f.p50_ms),
            ms(f.p99_ms),
            ms(f.p99_9_ms),
            f.cpu_secs_per_million
                .map_or("-".into(), |s| format!("{s:.1}")),
            f.losses,
            f.duplicates,
            f.errors,
        );
    }
    let Some(ours) = servers.iter().find(|(s, _)| *s == OURS).map(|(_, f)| *f) else {
        return;
    };
    for (peer, theirs) in servers.iter().filter(|(s, _)| *s != OURS) {
        let _ = writeln!(
            out,
            "| *ours / {peer}* | {} | {} | {} | {} | {} | | | |",
            ratio(Some(ours.received_per_sec), Some(theirs.received_per_sec)),
            ratio(ours.p50_ms, theirs.p50_ms),
            ratio(ours.p99_ms, theirs.p99_ms),
            ratio(ours.p99_9_ms, theirs.p99_9_ms),
            ratio(ours.cpu_secs_per_million, theirs.cpu_secs_per_million),
        );
    }
}

fn idle_table(out: &mut String, servers: &[(&str, &Figures)]) {
    out.push_str(
        "| server | connections | RSS per connection, connected | RSS per connection, after heartbeats |\n\
         |---|---:|---:|---:|\n",
    );
    for (server, f) in servers {
        let _ = writeln!(
            out,
            "| {server} | {} | {} | {} |",
            f.connected,
            bytes(f.rss_per_connection),
            bytes(f.rss_per_connection_at_end),
        );
    }
    let Some(ours) = servers.iter().find(|(s, _)| *s == OURS).map(|(_, f)| *f) else {
        return;
    };
    for (peer, theirs) in servers.iter().filter(|(s, _)| *s != OURS) {
        let _ = writeln!(
            out,
            "| *ours / {peer}* | | {} | {} |",
            ratio(ours.rss_per_connection, theirs.rss_per_connection),
            ratio(
                ours.rss_per_connection_at_end,
                theirs.rss_per_connection_at_end
            ),
        );
    }
}

/// One full-path run: the offered rate per user and what the tester saw.
#[derive(Debug, Clone, PartialEq)]
pub struct PathRun {
    pub rate_per_user: f64,
    pub figures: Figures,
}

/// The highest offered load whose delivery p99 stayed under [`KNEE_P99_MS`] with nothing
/// lost, or none if no run did.
pub fn knee(runs: &[PathRun]) -> Option<&PathRun> {
    runs.iter()
        .filter(|r| r.figures.losses == 0 && r.figures.p99_ms.is_some_and(|p99| p99 < KNEE_P99_MS))
        .max_by(|a, b| a.figures.sent_per_sec.total_cmp(&b.figures.sent_per_sec))
}

/// The full path's table (rising load) and the knee.
pub fn path_markdown(runs: &[PathRun]) -> String {
    let mut out = String::from(
        "| msg/s per user | offered msg/s | deliveries/s | delivery p50 ms | p99 ms | p99.9 ms | not delivered by the end | duplicated | errors |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for run in runs {
        let f = &run.figures;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            run.rate_per_user,
            thousands(f.sent_per_sec),
            thousands(f.received_per_sec),
            ms(f.p50_ms),
            ms(f.p99_ms),
            ms(f.p99_9_ms),
            f.losses,
            f.duplicates,
            f.errors,
        );
    }
    out.push_str(
        "\n*Not delivered by the end*: deliveries the tester had not received when it stopped, \
         its drain time after the last send. Below the knee that is loss; past it, mostly \
         backlog still queued, which a client would fetch with `sync` on reconnect.\n\n",
    );
    match (
        knee(runs),
        runs.iter()
            .min_by(|a, b| a.rate_per_user.total_cmp(&b.rate_per_user)),
    ) {
        (Some(k), _) => {
            let _ = writeln!(
                out,
                "Knee (highest offered load with delivery p99 under {KNEE_P99_MS} ms and nothing lost): \
                 **{} msg/s** ({} per user), p99 {} ms, p99.9 {} ms.",
                thousands(k.figures.sent_per_sec),
                k.rate_per_user,
                ms(k.figures.p99_ms),
                ms(k.figures.p99_9_ms),
            );
        }
        (None, Some(lowest)) => {
            let _ = writeln!(
                out,
                "Knee: none. No load tried kept delivery p99 under {KNEE_P99_MS} ms; the lowest \
                 ({} msg/s) had p99 {} ms.",
                thousands(lowest.figures.sent_per_sec),
                ms(lowest.figures.p99_ms),
            );
        }
        (None, None) => {}
    }
    out
}

/// `ours / theirs` to two decimals, or `-` when either is missing or theirs is zero.
fn ratio(ours: Option<f64>, theirs: Option<f64>) -> String {
    match (ours, theirs) {
        (Some(o), Some(t)) if t > 0.0 => format!("{:.2}×", o / t),
        _ => "-".into(),
    }
}

fn ms(value: Option<f64>) -> String {
    match value {
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.1}"),
        None => "-".into(),
    }
}

fn bytes(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{} B", thousands(v)))
}

/// A whole number with thousands separators.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < -0.5 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(scenario: &str, p99: f64, received: u64, server_cores: Option<f64>) -> Value {
        json!({
            "scenario": scenario,
            "connections": {"connected": 1000},
            "throughput": {"received": received, "received_per_sec": received as f64 / 10.0,
                           "sent_per_sec": received as f64 / 10.0},
            "latency": {
                "rtt": {"p50_ms": p99 / 4.0, "p99_ms": p99, "p99_9_ms": p99 * 2.0},
                "send_to_delivery": {"p50_ms": p99 / 2.0, "p99_ms": p99 * 3.0, "p99_9_ms": p99 * 4.0}
            },
            "accounting": {"losses": 0, "duplicates": 0},
            "error_total": 0,
            "tester": {"cpu": {"secs": 10.0, "server_cores": server_cores}, "bottleneck": false},
            "memory": null
        })
    }

    #[test]
    fn echo_reads_rtt_and_broadcast_reads_delivery() {
        let echo = Figures::from_report(&report("echo", 2.0, 100_000, Some(0.5))).unwrap();
        assert_eq!(echo.p99_ms, Some(2.0));
        // 0.5 cores for 10 s over 100,000 messages: 50 s per million.
        assert_eq!(echo.cpu_secs_per_million, Some(50.0));
        let broadcast = Figures::from_report(&report("broadcast", 2.0, 10, None)).unwrap();
        assert_eq!(broadcast.p99_ms, Some(6.0));
        assert_eq!(broadcast.cpu_secs_per_million, None);
    }

    #[test]
    fn a_report_without_throughput_is_refused() {
        let mut broken = report("echo", 1.0, 1, None);
        broken.as_object_mut().unwrap().remove("throughput");
        assert!(Figures::from_report(&broken).is_err());
    }

    #[test]
    fn names_split_at_the_first_dash_after_the_prefix() {
        assert_eq!(
            PeerRuns::parse_name("peer-gateway-echo-max-1k"),
            Some(("gateway", "echo-max-1k"))
        );
        assert_eq!(
            PeerRuns::parse_name("peer-fastwebsockets-echo-max-1k.r12"),
            Some(("fastwebsockets", "echo-max-1k"))
        );
        assert_eq!(PeerRuns::parse_name("report-0.01"), None);
    }

    #[test]
    fn rounds_give_medians_but_totals_of_what_went_wrong() {
        let round = |p99: f64, cores: f64, losses: u64| Figures {
            losses,
            ..Figures::from_report(&report("echo", p99, 1000, Some(cores))).unwrap()
        };
        let mut runs = PeerRuns::default();
        for (p99, cores, losses) in [(9.0, 0.3, 0), (1.0, 0.1, 2), (2.0, 0.2, 0)] {
            runs.add(OURS, "echo-1k", round(p99, cores, losses));
        }
        let ordered = runs.ordered();
        assert_eq!(ordered[0].rounds, 3);
        let median = &ordered[0].servers[0].1;
        assert_eq!(median.p99_ms, Some(2.0));
        // 0.2 cores for 10 s over 1,000 messages.
        assert_eq!(median.cpu_secs_per_million, Some(2000.0));
        assert_eq!(median.losses, 2, "a loss in any round shows");
        assert!(runs.markdown().contains("Medians of 3 rounds"));
        let even = Figures::median_of(&[round(1.0, 0.1, 0), round(3.0, 0.1, 0)]).unwrap();
        assert_eq!(even.p99_ms, Some(2.0));
        assert!(Figures::median_of(&[]).is_none());
    }

    #[test]
    fn ratios_are_ours_over_each_peer_in_report_order() {
        let mut runs = PeerRuns::default();
        runs.add(
            "tungstenite",
            "echo-1k",
            Figures::from_report(&report("echo", 4.0, 1000, Some(1.0))).unwrap(),
        );
        runs.add(
            OURS,
            "echo-1k",
            Figures::from_report(&report("echo", 1.0, 1000, Some(0.5))).unwrap(),
        );
        let table = runs.markdown();
        let ours_row = table.find("| gateway |").unwrap();
        let peer_row = table.find("| tungstenite |").unwrap();
        assert!(ours_row < peer_row, "{table}");
        // p50 1/4 over 4/4, p99 1 over 4, CPU 0.5 over 1.
        assert!(
            table.contains("| *ours / tungstenite* | 1.00× | 0.25× | 0.25× | 0.25× | 0.50× |"),
            "{table}"
        );
    }

    #[test]
    fn the_knee_is_the_highest_load_under_the_target() {
        let run = |rate: f64, p99: f64| PathRun {
            rate_per_user: rate,
            figures: Figures {
                sent_per_sec: rate * 10_000.0,
                ..Figures::from_report(&report("chat", p99 / 3.0, 10, None)).unwrap()
            },
        };
        let runs = [run(0.001, 6.0), run(0.01, 9.0), run(0.02, 30.0)];
        assert_eq!(knee(&runs).map(|r| r.rate_per_user), Some(0.01));
        assert!(path_markdown(&runs).contains("**100 msg/s**"));
        let slow = [run(0.001, 12.0)];
        assert_eq!(knee(&slow), None);
        assert!(path_markdown(&slow).contains("Knee: none."));
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234.0), "1,234");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }
}
