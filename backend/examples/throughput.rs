//! Throughput of the full persisted path on the real services: a fake gateway node publishes
//! N send frames spread over many direct chats, a backend worker (in-process) persists and
//! routes them, and the fake node consumes the deliveries. For each batch size, two runs:
//!
//! * live: the backend runs while the frames are published; messages per second from the
//!   first publish to the last delivery received (the fake gateway shares the machine);
//! * drain: the frames are published (and confirmed) while no backend runs, then one starts;
//!   messages per second from the first delivery to the last, the backend's own pace.
//!
//! ```text
//! cargo run --release -p backend --example throughput -- --messages 20000 --batch-sizes 1,16,64,256
//! ```
//!
//! Each run uses its own schema, AMQP prefix and Redis prefix, and removes them afterwards.
//! Not a test: the figures depend on the machine.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use clap::Parser;
use common::{Env, NODE};
use wire::client::{CreateChat, SendMessage};
use wire::{ChatKind, ClientFrame, ServerFrame, UserId};

#[derive(Debug, Parser)]
struct Args {
    /// Send frames per run.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Direct chats the sends are spread over (two members each).
    #[arg(long, default_value_t = 64)]
    chats: u64,
    /// Shard queues (the backend consumes all of them).
    #[arg(long, default_value_t = 8)]
    shards: u16,
    /// Batch sizes to measure, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    batch_sizes: Vec<usize>,
    /// Body bytes per message.
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    println!(
        "messages={} chats={} shards={} body={}B",
        args.messages, args.chats, args.shards, args.body_bytes
    );
    println!("batch_size  mode   seconds  msgs_per_s  mean_batch");
    for &batch_size in &args.batch_sizes {
        for mode in [Mode::Live, Mode::Drain] {
            let run = measure(&args, batch_size, mode).await;
            println!(
                "{batch_size:>10}  {:<5}  {:>7.2}  {:>10.0}  {:>10.1}",
                match mode {
                    Mode::Live => "live",
                    Mode::Drain => "drain",
                },
                run.seconds,
                run.messages as f64 / run.seconds,
                run.mean_batch,
            );
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Live,
    Drain,
}

struct Run {
    seconds: f64,
    /// Messages the time covers (the drain's clock starts at its first delivery).
    messages: u64,
    mean_batch: f64,
}

async fn measure(args: &Args, batch_size: usize, mode: Mode) -> Run {
    let env = Env::new(args.shards).await;
    let users: Vec<UserId> = (0..args.chats * 2).map(|i| 1_000_000 + i).collect();
    for &user in &users {
        env.online(user, NODE).await;
    }
    let mut node = env.node_reader().await;
    let batch = batch_size.to_string();
    let flags = ["--batch-size", batch.as_str(), "--stats-interval", "1m"];
    let mut backend = env.start(&flags);

    // One direct chat per pair of users, created through the backend like any client would.
    let creates: Vec<_> = (0..args.chats)
        .map(|i| {
            let (a, b) = (users[(2 * i) as usize], users[(2 * i + 1) as usize]);
            (
                a,
                i,
                ClientFrame::CreateChat(CreateChat {
                    client_msg_id: i,
                    kind: ChatKind::Direct,
                    title: String::new(),
                    members: vec![b],
                }),
            )
        })
        .collect();
    env.send_all(&creates).await;
    let mut chats = Vec::new();
    while chats.len() < args.chats as usize {
        if let ServerFrame::ChatCreated(created) =
            node.next_within(Duration::from_secs(30)).await.frame
        {
            chats.push((created.chat_id, created.creator));
        }
    }

    let body = "x".repeat(args.body_bytes);
    let sends: Vec<_> = (0..args.messages)
        .map(|i| {
            let (chat_id, sender) = chats[(i % args.chats) as usize];
            (
                sender,
                1,
                ClientFrame::Send(SendMessage {
                    chat_id,
                    client_msg_id: 1_000 + i,
                    body: body.clone(),
                }),
            )
        })
        .collect();
    let run = match mode {
        Mode::Live => {
            let start = Instant::now();
            let (elapsed, ()) = tokio::join!(
                deliveries(&mut node, args.messages, start),
                env.send_all(&sends)
            );
            Run {
                seconds: elapsed.as_secs_f64(),
                messages: args.messages,
                mean_batch: 0.0,
            }
        }
        Mode::Drain => {
            backend.stop().await;
            env.send_all(&sends).await;
            backend = env.start(&flags);
            // The clock starts at the first delivery, leaving out the worker's start.
            while !matches!(
                node.next_within(Duration::from_secs(60)).await.frame,
                ServerFrame::Message(_)
            ) {}
            let elapsed = deliveries(&mut node, args.messages - 1, Instant::now()).await;
            Run {
                seconds: elapsed.as_secs_f64(),
                messages: args.messages - 1,
                mean_batch: 0.0,
            }
        }
    };
    let stats = backend.stats.snapshot();
    backend.stop().await;
    node.close().await;
    env.cleanup().await;
    Run {
        mean_batch: stats.mean_batch(),
        ..run
    }
}

/// Waits for `count` message deliveries; returns the time since `start`.
async fn deliveries(node: &mut common::NodeReader, count: u64, start: Instant) -> Duration {
    let mut delivered = 0;
    while delivered < count {
        if let ServerFrame::Message(_) = node.next_within(Duration::from_secs(60)).await.frame {
            delivered += 1;
        }
    }
    start.elapsed()
}
