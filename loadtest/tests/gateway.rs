//! The tester against the real gateway (memory engine) started in-process.

mod common;

use clap::Parser;
use common::SECRET;
use gateway::{Config, Gateway};
use loadtest::{Cli, Plan, Report};

fn start_gateway() -> Gateway {
    let config = Config::try_parse_from([
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--jwt-secret",
        SECRET,
    ])
    .expect("gateway flags");
    Gateway::start(config).expect("gateway starts")
}

fn run(gateway: &Gateway, secret: &str, args: &[&str]) -> Report {
    let url = format!("ws://{}/ws", gateway.local_addr());
    let mut all = vec![
        "loadtest",
        "--quiet",
        "--no-pin",
        "--threads",
        "2",
        "--secret",
        secret,
        "--url",
        &url,
    ];
    all.extend_from_slice(args);
    let cli = Cli::try_parse_from(all).expect("valid flags");
    loadtest::run_and_check(Plan::from_cli(&cli).expect("valid plan")).expect("run")
}

fn stop(gateway: Gateway) {
    gateway.begin_shutdown();
    gateway.join();
}

#[test]
fn chat_through_the_gateway_loses_nothing_and_gets_every_receipt() {
    let gateway = start_gateway();
    let report = run(
        &gateway,
        SECRET,
        &[
            "-n", "30", "-d", "1s", "--drain", "700ms", "chat", "-g", "5", "-r", "10",
        ],
    );
    let a = &report.accounting;
    assert_eq!(a.messages_sent, 300, "{}", report.render());
    assert_eq!((a.sent_receipts, a.deliveries_expected), (300, 1200));
    assert_eq!(
        (a.losses, a.duplicates, a.out_of_order, a.gaps, a.unexpected),
        (0, 0, 0, 0, 0),
        "{}",
        report.render()
    );
    assert_eq!(a.delivered_receipts, a.delivered_receipts_expected);
    assert_eq!(a.read_receipts, a.read_receipts_expected);
    assert_eq!(report.error_total, 0, "{}", report.render());
    stop(gateway);
}

#[test]
fn pings_are_echoed_by_pongs() {
    let gateway = start_gateway();
    let report = run(
        &gateway,
        SECRET,
        &[
            "-n", "20", "-d", "1s", "--drain", "500ms", "echo", "-r", "20",
        ],
    );
    let a = &report.accounting;
    assert_eq!((a.messages_sent, a.deliveries_received), (400, 400));
    assert_eq!(report.latency["rtt"].count, 400);
    stop(gateway);
}

#[test]
fn idle_reports_memory_per_connection_and_heartbeat_round_trips() {
    let gateway = start_gateway();
    let pid = std::process::id().to_string();
    let report = run(
        &gateway,
        SECRET,
        &[
            "-n",
            "50",
            "-d",
            "1s",
            "idle",
            "--pid",
            &pid,
            "--ping-interval",
            "200ms",
            "--settle",
            "300ms",
        ],
    );
    let memory = report.memory.as_ref().expect("memory was read");
    assert_eq!(memory.connections, 50);
    assert!(memory.after.process.rss_bytes > 0);
    assert!(report.latency["rtt"].count >= 50, "{}", report.render());
    assert!(report.render().contains("bytes per connection"));
    stop(gateway);
}

#[test]
fn a_storm_connects_everyone_and_wrong_tokens_are_counted_as_refusals() {
    let gateway = start_gateway();
    let report = run(&gateway, SECRET, &["-n", "200", "storm", "--hold", "200ms"]);
    assert_eq!(report.connections.connected, 200, "{}", report.render());
    assert_eq!(report.latency["connect"].count, 200);
    assert!(report.connections.connects_per_sec > 0.0);
    let refused = run(
        &gateway,
        "another-secret-entirely",
        &["-n", "10", "storm", "--hold", "0s"],
    );
    assert_eq!(refused.connections.failed, 10);
    assert_eq!(
        refused.connections.connect_errors.get("upgrade: http_401"),
        Some(&10),
        "{:?}",
        refused.connections.connect_errors
    );
    stop(gateway);
}
