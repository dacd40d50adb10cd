//! Command-line flags. Flags shared by every scenario are global: they may stand before or
//! after the scenario's name.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use telemetry::flags::parse_duration;

/// The load tester's command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Open-loop WebSocket load tester for the edge gateway and peer servers",
    long_about = "Opens real WebSocket connections, drives one scenario on a thread-per-core \
                  runtime, accounts for every message (losses, duplicates, order) and reports \
                  latency percentiles measured from each message's scheduled send time."
)]
pub struct Cli {
    /// Flags every scenario shares.
    #[command(flatten)]
    pub common: Common,
    /// What to do with the connections.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Flags every scenario shares.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// The server's WebSocket URL (ws:// only).
    #[arg(
        long,
        env = "LOADTEST_URL",
        default_value = "ws://127.0.0.1:8080/ws",
        global = true
    )]
    pub url: String,

    /// Connections to open.
    #[arg(long, short = 'n', default_value_t = 1000, global = true)]
    pub connections: usize,

    /// New connections per second over all threads; 0 opens them as fast as possible
    /// (storm's default; the others default to 2000).
    #[arg(long, global = true)]
    pub connect_rate: Option<f64>,

    /// Connection attempts (TCP connect and upgrade) in flight at once, per thread.
    #[arg(long, default_value_t = 256, global = true)]
    pub connect_concurrency: usize,

    /// Time one connection attempt may take before it counts as failed.
    #[arg(long, value_parser = parse_duration, default_value = "10s", global = true)]
    pub connect_timeout: Duration,

    /// Time the chats may take to be created before the run starts without the missing ones.
    #[arg(long, value_parser = parse_duration, default_value = "30s", global = true)]
    pub setup_timeout: Duration,

    /// Length of the measured phase (idle: how long the connections are held).
    #[arg(long, short = 'd', value_parser = parse_duration, default_value = "30s", global = true)]
    pub duration: Duration,

    /// Time after the last scheduled send for late answers, before the accounting closes.
    #[arg(long, value_parser = parse_duration, default_value = "2s", global = true)]
    pub drain: Duration,

    /// The gateway's HS256 secret, to mint one token per user (the same variable as the
    /// gateway's, so one environment serves both).
    #[arg(
        long,
        env = "GATEWAY_JWT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub secret: Option<String>,

    /// User id of the first connection; connection i is user first + i.
    #[arg(long, default_value_t = 1, global = true)]
    pub first_user_id: u64,

    /// Lifetime of the minted tokens (they must outlive the run).
    #[arg(long, value_parser = parse_duration, default_value = "60m", global = true)]
    pub token_ttl: Duration,

    /// Threads, one pinned monoio runtime each; 0 means one per core.
    #[arg(long, default_value_t = 0, global = true)]
    pub threads: usize,

    /// CPUs to pin the threads to, comma separated (thread i takes the i-th, cycling);
    /// default: thread i on CPU i.
    #[arg(long, value_delimiter = ',', global = true)]
    pub cpus: Vec<usize>,

    /// Do not pin threads to CPUs.
    #[arg(long, global = true)]
    pub no_pin: bool,

    /// With an IPv4 loopback target, bind client sockets to this many source addresses
    /// (127.0.0.1, 127.0.0.2, ...), about 28k ports each; 0 lets the kernel choose.
    #[arg(long, default_value_t = 16, global = true)]
    pub source_addrs: u32,

    /// Seed for the random send phases and keys (default: from the clock).
    #[arg(long, global = true)]
    pub seed: Option<u64>,

    /// Write the full report as JSON to this file.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,

    /// Write latency by percentile as an SVG plot to this file.
    #[arg(long, global = true)]
    pub plot: Option<PathBuf>,

    /// No progress line.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,

    /// The server's process id (when it runs on this host): its CPU use in the measured
    /// phase is reported, and idle reads its VmRSS before connecting and once all
    /// connections are up and settled.
    #[arg(long, global = true)]
    pub pid: Option<u32>,

    /// Limits that make the run fail (exit code 2).
    #[command(flatten)]
    pub slo: SloArgs,
}

/// Service level objectives: a run that misses one exits with code 2.
#[derive(Debug, Clone, Default, Args)]
pub struct SloArgs {
    /// Highest p99 of the SLO metric, in milliseconds.
    #[arg(long, global = true)]
    pub slo_p99_ms: Option<f64>,
    /// Highest p99.9 of the SLO metric, in milliseconds.
    #[arg(long, global = true)]
    pub slo_p999_ms: Option<f64>,
    /// Highest maximum of the SLO metric, in milliseconds.
    #[arg(long, global = true)]
    pub slo_max_ms: Option<f64>,
    /// Most messages (deliveries, echoes) expected and never received.
    #[arg(long, global = true)]
    pub slo_max_loss: Option<u64>,
    /// Most duplicate receptions.
    #[arg(long, global = true)]
    pub slo_max_duplicates: Option<u64>,
    /// Most receptions out of order.
    #[arg(long, global = true)]
    pub slo_max_out_of_order: Option<u64>,
    /// Most errors: failed connections, error frames and abnormal closes together.
    #[arg(long, global = true)]
    pub slo_max_errors: Option<u64>,
    /// The latency the SLO's percentiles apply to; default: the scenario's main one
    /// (delivery for chat and broadcast, rtt for echo and idle, connect for storm).
    #[arg(long, value_enum, global = true)]
    pub slo_metric: Option<Metric>,
}

/// Every latency the tester measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum)]
pub enum Metric {
    /// TCP connect and WebSocket upgrade.
    Connect,
    /// Scheduled send to the sender's sent receipt.
    SentReceipt,
    /// Scheduled send to reception, at every recipient.
    Delivery,
    /// Scheduled send to each recipient's delivered receipt, back at the sender.
    DeliveredReceipt,
    /// Scheduled send to each recipient's read receipt, back at the sender.
    ReadReceipt,
    /// Scheduled send to the echo or pong.
    Rtt,
    /// How late the tester itself sent, against the schedule.
    SendLag,
}

impl Metric {
    /// Every metric, in report order.
    pub const ALL: [Metric; 7] = [
        Metric::Connect,
        Metric::SentReceipt,
        Metric::Delivery,
        Metric::DeliveredReceipt,
        Metric::ReadReceipt,
        Metric::Rtt,
        Metric::SendLag,
    ];

    /// The name used in tables, JSON and the plot legend.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Connect => "connect",
            Metric::SentReceipt => "send_to_sent_receipt",
            Metric::Delivery => "send_to_delivery",
            Metric::DeliveredReceipt => "send_to_delivered_receipt",
            Metric::ReadReceipt => "send_to_read_receipt",
            Metric::Rtt => "rtt",
            Metric::SendLag => "send_lag",
        }
    }
}

/// The scenarios.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// Group chats: each group's first member creates the chat, every member sends; the
    /// recipients ack delivered (each message) and read (batched).
    Chat(ChatArgs),
    /// Our ping frame and its pong, or with --raw-echo opaque binary payloads a peer echo
    /// server returns unchanged; open loop at a rate, or --closed-loop.
    Echo(EchoArgs),
    /// One sender per group. On our gateway a group is a chat whose first member alone
    /// sends; with --raw, a client asks the peer server for its group with `?group=`, and
    /// every message is expected at every client of the sender's group (the sender included).
    Broadcast(BroadcastArgs),
    /// Hold the connections with heartbeats and report the server's memory per connection.
    Idle(IdleArgs),
    /// Open every connection as fast as possible and report the connect rate and latency.
    Storm(StormArgs),
}

/// `chat`.
#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    /// Members per group chat (the last group takes the remainder).
    #[arg(long, short = 'g', default_value_t = 10)]
    pub group_size: usize,
    /// Messages per second each member sends.
    #[arg(long, short = 'r', default_value_t = 1.0)]
    pub rate: f64,
    /// Message body size in bytes (at least the 48-byte stamp).
    #[arg(long, short = 's', default_value_t = 64)]
    pub size: usize,
    /// How recipients ack.
    #[command(flatten)]
    pub acks: AckArgs,
}

/// The recipients' acks, for the scenarios with group chats (`chat`, `broadcast`).
#[derive(Debug, Clone, Args)]
pub struct AckArgs {
    /// Recipients ack read at most this often per chat; 0 sends no read acks.
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    pub read_ack_interval: Duration,
    /// Recipients do not ack delivered.
    #[arg(long)]
    pub no_delivered_acks: bool,
}

/// `echo`.
#[derive(Debug, Clone, Args)]
pub struct EchoArgs {
    /// Messages per second per connection (open loop).
    #[arg(long, short = 'r', default_value_t = 1.0)]
    pub rate: f64,
    /// Payload size in bytes with --raw-echo (at least the 48-byte stamp).
    #[arg(long, short = 's', default_value_t = 64)]
    pub size: usize,
    /// Send opaque binary payloads and expect the same bytes back (peer echo servers,
    /// no welcome, no token needed).
    #[arg(long)]
    pub raw_echo: bool,
    /// One message outstanding per connection, the next sent when the answer arrives.
    #[arg(long)]
    pub closed_loop: bool,
}

/// `broadcast`.
#[derive(Debug, Clone, Args)]
pub struct BroadcastArgs {
    /// A peer server without our protocol: payloads are opaque binary frames.
    #[arg(long)]
    pub raw: bool,
    /// Members per group: a group chat on our gateway (the first member sends); with --raw,
    /// `group=` in the upgrade request's query.
    #[arg(long, short = 'g', default_value_t = 100)]
    pub group_size: usize,
    /// With --raw: how many connections of each group send (the first ones).
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// Messages per second each sender sends.
    #[arg(long, short = 'r', default_value_t = 1.0)]
    pub rate: f64,
    /// Message size in bytes (at least the 48-byte stamp).
    #[arg(long, short = 's', default_value_t = 64)]
    pub size: usize,
    /// How recipients ack.
    #[command(flatten)]
    pub acks: AckArgs,
}

/// `idle`.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Each connection sends an application ping this often; 0 sends none (server pings
    /// are answered either way).
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub ping_interval: Duration,
    /// Time between the last connection and the memory reading.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub settle: Duration,
    /// A peer server without our protocol: WebSocket pings instead of ping frames.
    #[arg(long)]
    pub raw: bool,
}

/// `storm`.
#[derive(Debug, Clone, Args)]
pub struct StormArgs {
    /// A peer server without our protocol: no welcome is awaited.
    #[arg(long)]
    pub raw: bool,
    /// Time the connections are held once all are open.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub hold: Duration,
}
