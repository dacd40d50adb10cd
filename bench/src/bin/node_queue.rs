//! Node delivery queue types measured under the backend's traffic shape (issue #11):
//! `cargo run --release -p bench --bin node_queue -- --help`.
//!
//! For each queue variant, size and rate this declares a fresh queue with the node queues'
//! arguments (`broker::NODE_*`), binds it to a direct exchange, and runs one consumer and one
//! publisher on two connections, as a gateway node and a backend worker would:
//!
//! - the consumer sets a prefetch, acks every delivery on its own, and reads the publish time
//!   the publisher wrote into the body (both are in this process, so one monotonic clock);
//! - the publisher enables confirms and keeps up to `--max-unconfirmed` publishes awaiting
//!   them, writing each publish as soon as it is made (as the backend does) and awaiting the
//!   confirms in order on a task of its own. Paced runs are open loop: message `i` is due at
//!   `i / rate`, and its latency counts from then, so a publisher held back by the confirm
//!   window is charged for it. `--rates 0` publishes as fast as the window allows.
//!
//! A run reports the messages per second consumed, publish→consume latency p50/p99, and the
//! broker's CPU seconds per 1,000 messages: the `utime + stime` of its `beam.smp` process
//! (from `/proc`, so the broker must run on this machine) between the first publish and the
//! last consume, less what the broker spent in an idle second sampled just before the run
//! (quorum queues tick even when idle, and other users of the broker add noise). This
//! process's own CPU per 1,000 messages is reported beside it: on a small machine the client
//! competes with the broker, which bounds the unpaced runs.
//!
//! Queues and the exchange are named `{prefix}.…` and deleted at the end. Every combination
//! runs `--rounds` times, the variants interleaved (A B C D A B C D), and the summary gives
//! the median of each figure over the rounds.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

#[derive(Parser, Debug)]
#[command(about = "Publish→consume rate, latency and broker CPU of node queue variants")]
struct Args {
    /// The broker (it must run on this machine: its CPU is read from /proc).
    #[arg(
        long,
        env = "AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,

    /// Start of the exchange and queue names [default: nqbench-<pid>].
    #[arg(long)]
    prefix: Option<String>,

    /// Queue variants, in the order they are interleaved.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "quorum,classic-persistent,classic-transient,lazy-transient,cqv2-transient"
    )]
    variants: Vec<Variant>,

    /// Message body sizes, bytes.
    #[arg(long, value_delimiter = ',', default_value = "2048,16384")]
    sizes: Vec<usize>,

    /// Publish rates, messages per second; 0 publishes as fast as the confirm window allows.
    #[arg(long, value_delimiter = ',', default_value = "500,2000,0")]
    rates: Vec<u32>,

    /// How long a paced run publishes, seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,

    /// How long an as-fast-as-possible run publishes, seconds.
    #[arg(long, default_value_t = 5.0)]
    max_seconds: f64,

    /// Times each combination runs.
    #[arg(long, default_value_t = 2)]
    rounds: usize,

    /// The consumer's prefetch (the gateway's default is 256).
    #[arg(long, default_value_t = 256)]
    prefetch: u16,

    /// Most publishes awaiting their confirm (the backend's default is 512).
    #[arg(long, default_value_t = 500)]
    max_unconfirmed: usize,

    /// Most messages published but not yet consumed; past it the publisher waits, so that an
    /// unpaced run cannot fill the broker's memory (other users share it).
    #[arg(long, default_value_t = 20_000)]
    max_backlog: u64,

    /// How long to wait for the last deliveries after publishing ends, seconds.
    #[arg(long, default_value_t = 60.0)]
    drain_seconds: f64,

    /// The broker's `beam.smp` process [default: the one process of that name].
    #[arg(long)]
    broker_pid: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Variant {
    /// Quorum queue, persistent messages (what `broker::Topology` declares today).
    Quorum,
    /// Classic queue, durable, persistent messages.
    ClassicPersistent,
    /// Classic queue, durable, transient messages (delivery mode 1).
    ClassicTransient,
    /// Classic queue, durable, `x-queue-mode: lazy`, transient messages.
    LazyTransient,
    /// Classic queue, durable, `x-queue-version: 2` (CQv2), transient messages.
    Cqv2Transient,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::ClassicPersistent => "classic-persistent",
            Self::ClassicTransient => "classic-transient",
            Self::LazyTransient => "lazy-transient",
            Self::Cqv2Transient => "cqv2-transient",
        }
    }

    /// The node queues' arguments, with this variant's type. Every argument here is accepted
    /// by both queue types on RabbitMQ 3.10 (quorum queues gained `x-message-ttl` in 3.10 and
    /// support `drop-head`; they refuse `x-queue-mode` and `x-queue-version`).
    fn arguments(self) -> FieldTable {
        let mut args = FieldTable::default();
        let string = |s: &str| AMQPValue::LongString(LongString::from(s));
        match self {
            Self::Quorum => {
                args.insert("x-queue-type".into(), string("quorum"));
            }
            Self::ClassicPersistent | Self::ClassicTransient => {
                args.insert("x-queue-type".into(), string("classic"));
            }
            Self::LazyTransient => {
                args.insert("x-queue-type".into(), string("classic"));
                args.insert("x-queue-mode".into(), string("lazy"));
            }
            Self::Cqv2Transient => {
                args.insert("x-queue-type".into(), string("classic"));
                args.insert("x-queue-version".into(), AMQPValue::LongLongInt(2));
            }
        }
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(broker::NODE_MESSAGE_TTL_MS),
        );
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(broker::NODE_QUEUE_EXPIRES_MS),
        );
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(broker::NODE_MAX_LENGTH),
        );
        args.insert("x-overflow".into(), string("drop-head"));
        args
    }

    fn delivery_mode(self) -> u8 {
        match self {
            Self::Quorum | Self::ClassicPersistent => 2,
            Self::ClassicTransient | Self::LazyTransient | Self::Cqv2Transient => 1,
        }
    }
}

/// What one run measured.
#[derive(Clone, Copy, Debug)]
struct Outcome {
    published: u64,
    consumed: u64,
    nacked: u64,
    /// Messages consumed per second, from the first publish to the last consume.
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Broker CPU seconds per 1,000 messages consumed, less the idle baseline.
    cpu_per_k: f64,
    /// The idle baseline: broker CPU seconds per second before the run.
    idle_cpu: f64,
    /// This process's CPU seconds (publisher and consumer) per 1,000 messages consumed.
    client_cpu_per_k: f64,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "published {} consumed {} nacked {} | {:.0} msg/s | p50 {:.2} ms p99 {:.2} ms | broker {:.3} CPU s/1k msgs (idle {:.3} CPU s/s) | client {:.3} CPU s/1k msgs",
            self.published,
            self.consumed,
            self.nacked,
            self.rate,
            self.p50_ms,
            self.p99_ms,
            self.cpu_per_k,
            self.idle_cpu,
            self.client_cpu_per_k
        )
    }
}

/// The clock of the publish times in message bodies.
static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn now_ns() -> u64 {
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.sizes.iter().any(|&size| size < 16) {
        bail!("--sizes must be at least 16 bytes (the body holds a sequence and a timestamp)");
    }
    if args.max_unconfirmed == 0 || args.prefetch == 0 || args.rounds == 0 {
        bail!("--max-unconfirmed, --prefetch and --rounds must be at least 1");
    }
    now_ns();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_all(args))
}

async fn run_all(args: Args) -> anyhow::Result<()> {
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("nqbench-{}", std::process::id()));
    let broker_cpu = ProcessCpu::broker(args.broker_pid)?;
    let client_cpu = ProcessCpu::new(std::process::id())?;
    eprintln!(
        "broker beam.smp pid {}, CLK_TCK {}; prefix {prefix}",
        broker_cpu.pid, broker_cpu.ticks_per_second
    );
    let publisher = broker::connect(&args.amqp_url, &format!("{prefix}-publisher")).await?;
    let consumer = broker::connect(&args.amqp_url, &format!("{prefix}-consumer")).await?;
    let admin = publisher.create_channel().await?;
    let exchange = format!("{prefix}.out");
    admin
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("declaring the exchange")?;
    let bench = Bench {
        args: &args,
        prefix: &prefix,
        exchange: &exchange,
        publisher: &publisher,
        consumer: &consumer,
        admin: &admin,
        broker_cpu: &broker_cpu,
        client_cpu: &client_cpu,
    };
    let result = bench.run_all().await;
    // A fresh channel: a refused declaration closes the one it was made on.
    publisher
        .create_channel()
        .await?
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .context("deleting the exchange")?;
    let summary = result?;
    println!("{summary}");
    let _ = publisher.close(200, "done".into()).await;
    let _ = consumer.close(200, "done".into()).await;
    Ok(())
}

struct Bench<'a> {
    args: &'a Args,
    prefix: &'a str,
    exchange: &'a str,
    publisher: &'a Connection,
    consumer: &'a Connection,
    admin: &'a Channel,
    broker_cpu: &'a ProcessCpu,
    client_cpu: &'a ProcessCpu,
}

impl Bench<'_> {
    /// Every combination, `rounds` times, the variants innermost; returns the summary table.
    async fn run_all(&self) -> anyhow::Result<String> {
        let args = self.args;
        let mut results: Vec<(usize, u32, Variant, Vec<Outcome>)> = Vec::new();
        for &size in &args.sizes {
            for &rate in &args.rates {
                for &variant in &args.variants {
                    results.push((size, rate, variant, Vec::new()));
                }
            }
        }
        let mut run = 0;
        for round in 1..=args.rounds {
            for (size, rate, variant, outcomes) in &mut results {
                run += 1;
                let outcome = self.run(run, *variant, *size, *rate).await?;
                eprintln!(
                    "round {round} {:>18} {:>5} B {:>7}: {outcome}",
                    variant.name(),
                    size,
                    rate_label(*rate)
                );
                outcomes.push(outcome);
            }
        }
        let mut table = String::from(
            "| size | publish rate | variant | msg/s | p50 ms | p99 ms | broker CPU s / 1k msgs | client CPU s / 1k msgs |\n\
             | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for (size, rate, variant, outcomes) in &results {
            let median = |f: fn(&Outcome) -> f64| median(outcomes.iter().map(f).collect());
            let lost: u64 = outcomes.iter().map(|o| o.published - o.consumed).sum();
            let nacked: u64 = outcomes.iter().map(|o| o.nacked).sum();
            let mut note = String::new();
            if lost > 0 || nacked > 0 {
                note = format!(" ({lost} lost, {nacked} nacked)");
            }
            table.push_str(&format!(
                "| {} KiB | {} | {}{note} | {:.0} | {:.1} | {:.1} | {:.3} | {:.3} |\n",
                size / 1024,
                rate_label(*rate),
                variant.name(),
                median(|o| o.rate),
                median(|o| o.p50_ms),
                median(|o| o.p99_ms),
                median(|o| o.cpu_per_k),
                median(|o| o.client_cpu_per_k),
            ));
        }
        let idle: Vec<f64> = results
            .iter()
            .flat_map(|(.., outcomes)| outcomes.iter().map(|o| o.idle_cpu))
            .collect();
        table.push_str(&format!(
            "\nMedians of {} rounds. Idle broker CPU subtracted: median {:.3} CPU s/s (range {:.3}–{:.3}).",
            args.rounds,
            median(idle.clone()),
            idle.iter().copied().fold(f64::INFINITY, f64::min),
            idle.iter().copied().fold(0.0, f64::max),
        ));
        Ok(table)
    }

    /// One run on a fresh queue, deleted afterwards whatever happened.
    async fn run(
        &self,
        run: usize,
        variant: Variant,
        size: usize,
        rate: u32,
    ) -> anyhow::Result<Outcome> {
        let queue = format!("{}.node.{run}.{}", self.prefix, variant.name());
        self.admin
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                variant.arguments(),
            )
            .await
            .with_context(|| format!("declaring {queue}"))?;
        let outcome = self.measure(&queue, variant, size, rate).await;
        // A fresh channel: a failed run may have closed the admin channel's peers.
        let channel = self.publisher.create_channel().await?;
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .with_context(|| format!("deleting {queue}"))?;
        let _ = channel.close(200, "done".into()).await;
        outcome
    }

    async fn measure(
        &self,
        queue: &str,
        variant: Variant,
        size: usize,
        rate: u32,
    ) -> anyhow::Result<Outcome> {
        let args = self.args;
        self.admin
            .queue_bind(
                queue.into(),
                self.exchange.into(),
                queue.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("binding the queue")?;
        let publish = self.publisher.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let consume = self.consumer.create_channel().await?;
        consume
            .basic_qos(args.prefetch, BasicQosOptions::default())
            .await?;
        let deliveries = consume
            .basic_consume(
                queue.into(),
                "bench".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("consuming")?;

        // The idle baseline, with the consumer already attached.
        let (idle_start, idle_cpu_start) = (Instant::now(), self.broker_cpu.seconds()?);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle_cpu =
            (self.broker_cpu.seconds()? - idle_cpu_start) / idle_start.elapsed().as_secs_f64();

        let consumed = Arc::new(AtomicU64::new(0));
        let (target_tx, target_rx) = watch::channel(u64::MAX);
        let consumer = tokio::spawn(consume_all(deliveries, consumed.clone(), target_rx));

        let (start, cpu_start) = (Instant::now(), self.broker_cpu.seconds()?);
        let client_cpu_start = self.client_cpu.seconds()?;
        let publishing = if rate == 0 {
            args.max_seconds
        } else {
            args.seconds
        };
        let published = self
            .publish_all(&publish, queue, variant, size, rate, publishing, &consumed)
            .await;
        let (published, nacked) = match published {
            Ok(counts) => counts,
            Err(error) => {
                consumer.abort();
                return Err(error);
            }
        };
        target_tx.send_replace(published);
        let drain = Duration::from_secs_f64(args.drain_seconds);
        let (latencies_us, last) = match tokio::time::timeout(drain, consumer).await {
            Ok(joined) => joined??,
            Err(_) => bail!(
                "{queue}: {} of {published} consumed {drain:?} after publishing ended",
                consumed.load(Ordering::Relaxed)
            ),
        };
        let cpu = self.broker_cpu.seconds()? - cpu_start;
        let client_cpu = self.client_cpu.seconds()? - client_cpu_start;
        let _ = consume.close(200, "done".into()).await;
        let _ = publish.close(200, "done".into()).await;

        let elapsed = last.unwrap_or_else(Instant::now) - start;
        let consumed = latencies_us.len() as u64;
        let mut sorted = latencies_us;
        sorted.sort_unstable();
        let percentile = |p: f64| -> f64 {
            if sorted.is_empty() {
                return f64::NAN;
            }
            let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            sorted[rank - 1] as f64 / 1000.0
        };
        let net_cpu = cpu - idle_cpu * elapsed.as_secs_f64();
        Ok(Outcome {
            published,
            consumed,
            nacked,
            rate: consumed as f64 / elapsed.as_secs_f64(),
            p50_ms: percentile(0.50),
            p99_ms: percentile(0.99),
            cpu_per_k: net_cpu / consumed.max(1) as f64 * 1000.0,
            idle_cpu,
            client_cpu_per_k: client_cpu / consumed.max(1) as f64 * 1000.0,
        })
    }

    /// Publishes for `seconds`, paced at `rate` per second (0: unpaced), with at most
    /// `max_unconfirmed` awaiting their confirm. Returns once every publish is confirmed:
    /// the number published and how many of them the broker nacked.
    #[allow(clippy::too_many_arguments)]
    async fn publish_all(
        &self,
        channel: &Channel,
        queue: &str,
        variant: Variant,
        size: usize,
        rate: u32,
        seconds: f64,
        consumed: &AtomicU64,
    ) -> anyhow::Result<(u64, u64)> {
        let args = self.args;
        let window = Arc::new(Semaphore::new(args.max_unconfirmed));
        let (pending_tx, pending_rx) = mpsc::unbounded_channel();
        let confirmer = tokio::spawn(confirm_all(pending_rx));
        let properties = BasicProperties::default().with_delivery_mode(variant.delivery_mode());
        let start = tokio::time::Instant::now();
        let end = start + Duration::from_secs_f64(seconds);
        let start_ns = now_ns();
        let mut published = 0u64;
        loop {
            let stamp = if rate == 0 {
                if tokio::time::Instant::now() >= end {
                    break;
                }
                now_ns()
            } else {
                let offset = Duration::from_secs_f64(published as f64 / f64::from(rate));
                let due = start + offset;
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due).await;
                start_ns + u64::try_from(offset.as_nanos()).unwrap_or(u64::MAX)
            };
            while published - consumed.load(Ordering::Relaxed) >= args.max_backlog {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let permit = window.clone().acquire_owned().await?;
            let body = body(published, stamp, size);
            let pending = broker::queue_publish(
                channel,
                self.exchange.to_owned(),
                queue.to_owned(),
                body,
                properties.clone(),
            )
            .await;
            published += 1;
            if pending_tx.send((pending, permit)).is_err() {
                break;
            }
        }
        drop(pending_tx);
        let nacked = confirmer.await??;
        Ok((published, nacked))
    }
}

/// Awaits every publish's confirm in order, freeing its place in the window; returns how many
/// the broker nacked.
async fn confirm_all(
    mut pending: mpsc::UnboundedReceiver<(broker::QueuedPublish, OwnedSemaphorePermit)>,
) -> anyhow::Result<u64> {
    let mut nacked = 0;
    while let Some((publish, permit)) = pending.recv().await {
        let confirm = publish.await.context("publishing")?;
        if confirm.await.context("awaiting a confirm")?.is_nack() {
            nacked += 1;
        }
        drop(permit);
    }
    Ok(nacked)
}

/// Consumes and acks until `target` messages came; returns each one's publish→consume latency
/// in microseconds and when the last came.
async fn consume_all(
    mut deliveries: lapin::Consumer,
    consumed: Arc<AtomicU64>,
    mut target: watch::Receiver<u64>,
) -> anyhow::Result<(Vec<u64>, Option<Instant>)> {
    let mut latencies_us = Vec::new();
    let mut last = None;
    loop {
        if latencies_us.len() as u64 >= *target.borrow_and_update() {
            return Ok((latencies_us, last));
        }
        tokio::select! {
            delivery = deliveries.next() => {
                let delivery = delivery.context("the consumer ended")?.context("consuming")?;
                let stamp = delivery
                    .data
                    .get(8..16)
                    .and_then(|bytes| bytes.try_into().ok())
                    .map(u64::from_le_bytes)
                    .context("a body without a timestamp")?;
                let now = now_ns();
                latencies_us.push(now.saturating_sub(stamp) / 1000);
                last = Some(Instant::now());
                delivery.acker.ack(BasicAckOptions::default()).await.context("acking")?;
                consumed.fetch_add(1, Ordering::Relaxed);
            }
            changed = target.changed() => {
                if changed.is_err() {
                    bail!("the publisher went away");
                }
            }
        }
    }
}

/// `size` bytes: the sequence number and the publish time (little-endian `u64`s), then filler.
fn body(seq: u64, stamp_ns: u64, size: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&stamp_ns.to_le_bytes());
    body.resize(size, 0xa5);
    body
}

fn rate_label(rate: u32) -> String {
    if rate == 0 {
        "max".to_owned()
    } else {
        format!("{rate}/s")
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// A process's CPU time, from `/proc/<pid>/stat`.
struct ProcessCpu {
    pid: u32,
    ticks_per_second: f64,
}

impl ProcessCpu {
    /// The broker's Erlang VM: `pid`, or the one `beam.smp` process.
    fn broker(pid: Option<u32>) -> anyhow::Result<Self> {
        let pid = match pid {
            Some(pid) => pid,
            None => {
                let mut found = Vec::new();
                for entry in std::fs::read_dir("/proc").context("reading /proc")? {
                    let entry = entry?;
                    let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                        continue;
                    };
                    let comm = std::fs::read_to_string(entry.path().join("comm"));
                    if comm.is_ok_and(|comm| comm.trim() == "beam.smp") {
                        found.push(pid);
                    }
                }
                match found[..] {
                    [pid] => pid,
                    [] => bail!("no beam.smp process here: is RabbitMQ on this machine?"),
                    _ => {
                        bail!("several beam.smp processes ({found:?}): pick one with --broker-pid")
                    }
                }
            }
        };
        Self::new(pid)
    }

    fn new(pid: u32) -> anyhow::Result<Self> {
        let ticks = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .unwrap_or(100.0);
        let cpu = Self {
            pid,
            ticks_per_second: ticks,
        };
        cpu.seconds()?;
        Ok(cpu)
    }

    /// User plus system CPU seconds the process has used so far.
    fn seconds(&self) -> anyhow::Result<f64> {
        let path = format!("/proc/{}/stat", self.pid);
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // The command name may hold spaces; the fields after it are plain. utime and stime are
        // fields 14 and 15 of the line, the 12th and 13th after the name's ')'.
        let after_name = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("an unexpected /proc stat line")?;
        let mut fields = after_name.split_whitespace().skip(11);
        let mut next = || -> anyhow::Result<f64> {
            Ok(fields
                .next()
                .context("a short /proc stat line")?
                .parse::<f64>()?)
        };
        let ticks = next()? + next()?;
        Ok(ticks / self.ticks_per_second)
    }
}
