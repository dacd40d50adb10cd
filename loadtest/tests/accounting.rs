//! The accounting against servers that misbehave on purpose: every dropped, duplicated and
//! reordered delivery is reported exactly, and a clean server comes out clean.

mod common;

use clap::Parser;
use common::{Faults, Mode, SECRET};
use loadtest::{Cli, Plan, Report};

fn run(url: &str, args: &[&str]) -> Report {
    let mut all = vec![
        "loadtest",
        "--quiet",
        "--no-pin",
        "--threads",
        "2",
        "--secret",
        SECRET,
        "--url",
        url,
    ];
    all.extend_from_slice(args);
    let cli = Cli::try_parse_from(all).expect("valid flags");
    loadtest::run_and_check(Plan::from_cli(&cli).expect("valid plan")).expect("run")
}

fn url(addr: std::net::SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

/// 20 users in 5 chats of 4, each sending 20 messages: 400 messages, 1200 deliveries.
const CHAT: &[&str] = &[
    "-n", "20", "-d", "1s", "--drain", "700ms", "chat", "-g", "4", "-r", "20",
];

#[test]
fn dropped_duplicated_and_reordered_deliveries_are_each_reported_exactly() {
    let faults = Faults {
        drop: [100, 300, 500].into(),
        duplicate: [200, 400].into(),
        reorder: [150].into(),
    };
    let addr = common::start(Mode::Chat(faults));
    let report = run(&url(addr), CHAT);
    let a = &report.accounting;
    assert_eq!(a.messages_sent, 400, "{}", report.render());
    assert_eq!(a.sent_receipts, 400);
    assert_eq!(a.deliveries_expected, 1200);
    assert_eq!(a.losses, 3, "{}", report.render());
    assert_eq!(a.losses_of_receipted, 3);
    assert_eq!(a.duplicates, 2);
    assert_eq!(a.out_of_order, 1);
    assert_eq!(a.deliveries_received, 1197);
    assert_eq!(a.unexpected, 0);
    // The swap makes one gap; each drop one more unless it was a chat's last delivery.
    assert!((2..=4).contains(&a.gaps), "gaps {}", a.gaps);
    // Latency is recorded once per first reception.
    assert_eq!(report.latency["send_to_delivery"].count, 1197);
    assert_eq!(report.throughput.received, 1199);
}

#[test]
fn a_clean_server_accounts_for_every_delivery_and_receipt() {
    let addr = common::start(Mode::Chat(Faults::default()));
    let report = run(&url(addr), CHAT);
    let a = &report.accounting;
    assert_eq!(
        (
            a.messages_sent,
            a.deliveries_expected,
            a.deliveries_received
        ),
        (400, 1200, 1200),
        "{}",
        report.render()
    );
    assert_eq!(
        (a.losses, a.duplicates, a.out_of_order, a.gaps, a.unexpected),
        (0, 0, 0, 0, 0)
    );
    assert_eq!(a.delivered_receipts, a.delivered_receipts_expected);
    assert_eq!(a.read_receipts, 1200);
    assert_eq!(a.read_receipts, a.read_receipts_expected);
    for metric in [
        "send_to_sent_receipt",
        "send_to_delivery",
        "send_to_delivered_receipt",
        "send_to_read_receipt",
        "send_lag",
    ] {
        assert!(report.latency.contains_key(metric), "{metric} missing");
    }
    assert_eq!(report.latency["send_to_sent_receipt"].count, 400);
    assert_eq!(report.error_total, 0);
    assert!(report.slo.passed);
}

#[test]
fn broadcast_on_our_protocol_has_one_sender_per_group() {
    let addr = common::start(Mode::Chat(Faults::default()));
    let report = run(
        &url(addr),
        &[
            "-n",
            "12",
            "-d",
            "1s",
            "--drain",
            "500ms",
            "broadcast",
            "-g",
            "6",
            "-r",
            "10",
        ],
    );
    let a = &report.accounting;
    assert_eq!(a.messages_sent, 20, "{}", report.render());
    assert_eq!((a.deliveries_expected, a.losses), (100, 0));
}

#[test]
fn raw_echo_open_and_closed_loop() {
    let addr = common::start(Mode::RawEcho);
    let open = run(
        &url(addr),
        &[
            "-n",
            "10",
            "-d",
            "1s",
            "--drain",
            "500ms",
            "echo",
            "--raw-echo",
            "-r",
            "20",
            "-s",
            "100",
        ],
    );
    let a = &open.accounting;
    assert_eq!((a.messages_sent, a.deliveries_received), (200, 200));
    assert_eq!((a.losses, a.duplicates, a.out_of_order), (0, 0, 0));
    assert_eq!(open.latency["rtt"].count, 200);
    assert!(open.errors.is_empty(), "{:?}", open.errors);
    let closed = run(
        &url(addr),
        &[
            "-n",
            "4",
            "-d",
            "500ms",
            "--drain",
            "300ms",
            "echo",
            "--raw-echo",
            "--closed-loop",
        ],
    );
    let a = &closed.accounting;
    assert!(a.messages_sent > 20, "{}", closed.render());
    assert_eq!((a.losses, a.deliveries_received), (0, a.messages_sent));
    assert!(!closed.latency.contains_key("send_lag"));
}

#[test]
fn raw_broadcast_reaches_every_client_including_the_sender() {
    let addr = common::start(Mode::RawBroadcast);
    let report = run(
        &url(addr),
        &[
            "-n",
            "8",
            "-d",
            "1s",
            "--drain",
            "500ms",
            "broadcast",
            "--raw",
            "--senders",
            "2",
            "-r",
            "10",
            "-s",
            "64",
        ],
    );
    let a = &report.accounting;
    assert_eq!(a.messages_sent, 20, "{}", report.render());
    assert_eq!((a.deliveries_expected, a.deliveries_received), (160, 160));
    assert_eq!((a.losses, a.duplicates, a.out_of_order), (0, 0, 0));
}

#[test]
fn raw_broadcast_groups_ask_for_their_group_and_hear_only_it() {
    let addr = common::start(Mode::RawBroadcast);
    let report = run(
        &url(addr),
        &[
            "-n",
            "8",
            "-d",
            "1s",
            "--drain",
            "500ms",
            "broadcast",
            "--raw",
            "-g",
            "4",
            "--senders",
            "1",
            "-r",
            "10",
            "-s",
            "64",
        ],
    );
    let a = &report.accounting;
    // Two groups of four, one sender each: every message reaches its own group only.
    assert_eq!(a.messages_sent, 20, "{}", report.render());
    assert_eq!((a.deliveries_expected, a.deliveries_received), (80, 80));
    assert_eq!((a.losses, a.duplicates, a.unexpected), (0, 0, 0));
}
