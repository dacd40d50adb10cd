//! Option parsing, and the binary's outputs and exit codes (0 ok, 1 error, 2 SLO missed)
//! against the test server.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use clap::Parser;
use common::{Faults, Mode, SECRET};
use loadtest::cli::{Metric, Scenario};
use loadtest::plan::{PlanError, Work};
use loadtest::{Cli, Plan};

fn parse(args: &[&str]) -> Cli {
    let mut all = vec!["loadtest"];
    all.extend_from_slice(args);
    Cli::try_parse_from(all).expect("valid flags")
}

#[test]
fn defaults_and_global_flags_after_the_scenario() {
    let cli = parse(&["chat"]);
    assert_eq!(cli.common.connections, 1000);
    assert_eq!(cli.common.url, "ws://127.0.0.1:8080/ws");
    assert_eq!(cli.common.duration, Duration::from_secs(30));
    let Scenario::Chat(chat) = &cli.scenario else {
        panic!("chat expected");
    };
    assert_eq!((chat.group_size, chat.rate, chat.size), (10, 1.0, 64));
    assert_eq!(chat.acks.read_ack_interval, Duration::from_millis(100));

    let cli = parse(&[
        "chat",
        "-g",
        "4",
        "-n",
        "5",
        "--secret",
        SECRET,
        "--slo-p99-ms",
        "10",
        "--slo-max-loss",
        "0",
        "--slo-metric",
        "sent-receipt",
        "--threads",
        "1",
        "--cpus",
        "1",
    ]);
    assert_eq!(cli.common.connections, 5);
    assert_eq!(cli.common.slo.slo_p99_ms, Some(10.0));
    assert_eq!(cli.common.slo.slo_max_loss, Some(0));
    assert_eq!(cli.common.slo.slo_metric, Some(Metric::SentReceipt));
    let plan = Plan::from_cli(&cli).expect("plan");
    assert_eq!((plan.threads, plan.cpus.clone()), (1, Some(vec![1])));
    assert!(matches!(
        plan.work,
        Work::Chat {
            group_size: 4,
            all_send: true,
            ..
        }
    ));
    assert_eq!(plan.connect_rate, 2000.0);
    assert_eq!(
        plan.source_addrs, 16,
        "loopback targets spread source addresses"
    );
}

#[test]
fn scenarios_resolve_to_their_work() {
    let storm = Plan::from_cli(&parse(&["storm", "--raw"])).expect("plan");
    assert_eq!(
        storm.connect_rate, 0.0,
        "a storm connects as fast as it can"
    );
    let echo = Plan::from_cli(&parse(&["echo", "--raw-echo", "--closed-loop", "-s", "48"]))
        .expect("raw needs no secret");
    assert!(matches!(
        echo.work,
        Work::Echo {
            raw: true,
            closed_loop: true,
            size: 48,
            ..
        }
    ));
    let broadcast = Plan::from_cli(&parse(&["broadcast", "--secret", SECRET])).expect("plan");
    assert!(matches!(
        broadcast.work,
        Work::Chat {
            all_send: false,
            group_size: 100,
            ..
        }
    ));
    let idle = Plan::from_cli(&parse(&["idle", "--raw", "--ping-interval", "0"])).expect("plan");
    assert!(matches!(
        idle.work,
        Work::Idle {
            ping_interval: None,
            ..
        }
    ));
    let remote =
        Plan::from_cli(&parse(&["storm", "--raw", "--url", "ws://[::1]:9/ws"])).expect("plan");
    assert_eq!(remote.source_addrs, 0, "only IPv4 loopback spreads sources");
}

#[test]
fn bad_values_are_refused_with_the_flag_named() {
    let invalid = |args: &[&str]| Plan::from_cli(&parse(args)).expect_err("refused");
    for (args, flag) in [
        (&["chat", "--secret", SECRET, "-s", "10"][..], "--size"),
        (&["chat", "--secret", SECRET, "-s", "5000"][..], "--size"),
        (&["chat", "--secret", SECRET, "-r", "0"][..], "--rate"),
        (&["chat", "--secret", SECRET, "-g", "0"][..], "--group-size"),
        (&["broadcast", "--raw", "--senders", "0"][..], "--senders"),
        (&["storm", "--raw", "-n", "0"][..], "--connections"),
        (
            &["storm", "--raw", "--connect-rate=-1"][..],
            "--connect-rate",
        ),
    ] {
        match invalid(args) {
            PlanError::Invalid { flag: got, .. } => assert_eq!(got, flag, "{args:?}"),
            other => panic!("{args:?}: {other}"),
        }
    }
    assert!(matches!(
        invalid(&["storm", "--raw", "--url", "wss://x/ws"]),
        PlanError::Target(_)
    ));
    assert!(Cli::try_parse_from(["loadtest", "chat", "--duration", "5d"]).is_err());
    assert!(Cli::try_parse_from(["loadtest", "dance"]).is_err());
}

fn loadtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .env_remove("GATEWAY_JWT_SECRET")
        .output()
        .expect("the binary runs")
}

fn chat_args<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--url",
        url,
        "--secret",
        SECRET,
        "--quiet",
        "--no-pin",
        "--threads",
        "1",
        "-n",
        "8",
        "-d",
        "500ms",
        "--drain",
        "500ms",
        "chat",
        "-g",
        "4",
        "-r",
        "10",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn a_met_slo_exits_0_and_writes_json_and_plot() {
    let url = format!("ws://{}/ws", common::start(Mode::Chat(Faults::default())));
    let dir = std::env::temp_dir().join(format!("loadtest-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("report.json");
    let svg = dir.join("latency.svg");
    let (json_arg, svg_arg) = (json.display().to_string(), svg.display().to_string());
    let out = loadtest(&chat_args(
        &url,
        &[
            "--slo-p99-ms",
            "10000",
            "--slo-max-loss",
            "0",
            "--slo-max-duplicates",
            "0",
            "--json",
            &json_arg,
            "--plot",
            &svg_arg,
        ],
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("send_to_delivery") && stdout.contains("losses 0"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    assert_eq!(report["accounting"]["losses"], 0);
    assert_eq!(report["slo"]["passed"], true);
    assert!(
        report["plan"].get("secret").is_none(),
        "the secret stays out of reports"
    );
    let plot = std::fs::read_to_string(&svg).expect("plot written");
    assert!(plot.contains("<svg") && plot.contains("send_to_delivery"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_missed_slo_exits_2_and_says_which() {
    let faults = Faults {
        drop: [5].into(),
        ..Faults::default()
    };
    let url = format!("ws://{}/ws", common::start(Mode::Chat(faults)));
    let out = loadtest(&chat_args(
        &url,
        &["--slo-max-loss", "0", "--slo-p99-ms", "0.000001"],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("SLO missed: losses is 1"), "{stderr}");
    assert!(
        stderr.contains("SLO missed: p99 send_to_delivery (ms)"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("MISS"));
}

#[test]
fn bad_options_exit_1_not_2() {
    let out = loadtest(&["chat"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--secret"));
    let out = loadtest(&["chat", "--secret", SECRET, "--size", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--size"));
    let out = loadtest(&["no-such-scenario"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "usage errors must not look like a missed SLO"
    );
    assert_eq!(loadtest(&["--help"]).status.code(), Some(0));
}
