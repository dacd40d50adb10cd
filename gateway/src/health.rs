//! What readiness follows besides the cores having started: that each core still runs, and
//! that the dependencies of the engine answer. A load balancer that sees `/readyz` fail
//! sends new clients elsewhere instead of to a node that would welcome them and then never
//! answer.
//!
//! - Cores: each core's timer task bumps its beat at least every 100 ms; a monitor thread
//!   samples the beats and marks a core stalled when its beat has not moved for
//!   [`STALL_AFTER`].
//! - Broker: the bridge sets `broker_connected` as its connection comes and goes.
//! - Redis: probed with PING every [`REDIS_PROBE_INTERVAL`] on the bridge's runtime, each
//!   probe bounded by [`REDIS_PROBE_TIMEOUT`], so a lost Redis shows within 2 s.
//! - File descriptors: the cores report accepts that failed for lack of one, and the
//!   monitor thread opens and closes one at every sample ([`crate::descriptors`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use crate::node::Node;

/// A core whose timer has not run for this long counts as stalled: ten of its longest
/// idle ticks.
pub const STALL_AFTER: Duration = Duration::from_secs(1);

/// How often the monitor samples the cores' beats.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// How often Redis is probed.
pub const REDIS_PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// How long a probe (connecting included) may take before Redis counts as lost.
pub const REDIS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Starts the thread that marks cores stalled and answering again, and probes for a free
/// file descriptor ([`crate::descriptors`]); it ends once the node begins to stop.
pub fn spawn_core_monitor(node: Arc<Node>) -> Result<()> {
    std::thread::Builder::new()
        .name("core-monitor".into())
        .spawn(move || {
            let mut beats: Vec<(u64, Instant)> = node
                .core_beats
                .iter()
                .map(|beat| (beat.load(Ordering::Relaxed), Instant::now()))
                .collect();
            while !node.stopping.load(Ordering::Acquire) {
                std::thread::sleep(SAMPLE_EVERY);
                // Readiness at the descriptor limit must not wait for a client to fail.
                if !telemetry::descriptors::can_open_one() {
                    node.descriptors.probe_failed();
                }
                let now = Instant::now();
                for (core, (last, moved_at)) in beats.iter_mut().enumerate() {
                    let beat = node.core_beats[core].load(Ordering::Relaxed);
                    if beat != *last {
                        (*last, *moved_at) = (beat, now);
                    }
                    let answers = now.duration_since(*moved_at) < STALL_AFTER;
                    let before = node.core_alive[core].swap(answers, Ordering::AcqRel);
                    if before && !answers {
                        tracing::error!(core, stalled_for = ?now.duration_since(*moved_at), "a core has stopped running its timer: not ready");
                    } else if answers && !before {
                        tracing::warn!(core, "the core runs again");
                    }
                }
            }
        })
        .context("spawning the core monitor")?;
    Ok(())
}

/// Probes Redis until the task is dropped, keeping `node.redis_connected` up to date.
pub async fn watch_redis(url: String, node: Arc<Node>) {
    let client = match redis::Client::open(url.as_str()) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "bad Redis URL: the node stays not ready");
            return;
        }
    };
    let mut connection: Option<MultiplexedConnection> = None;
    // What the log last said, so that it says the state at start and then each change.
    let mut reported: Option<bool> = None;
    loop {
        let answered = tokio::time::timeout(REDIS_PROBE_TIMEOUT, ping(&client, &mut connection))
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
            })
            .and_then(|answer| answer);
        if answered.is_err() {
            // A fresh connection next time: the old one may be half dead.
            connection = None;
        }
        let up = answered.is_ok();
        node.redis_connected.store(up, Ordering::Release);
        if reported != Some(up) {
            match answered {
                Err(error) => tracing::warn!(%error, "Redis does not answer: not ready"),
                Ok(()) => tracing::info!("Redis answers"),
            }
            reported = Some(up);
        }
        tokio::time::sleep(REDIS_PROBE_INTERVAL).await;
    }
}

async fn ping(
    client: &redis::Client,
    connection: &mut Option<MultiplexedConnection>,
) -> redis::RedisResult<()> {
    let live = match connection {
        Some(live) => live,
        None => {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(REDIS_PROBE_TIMEOUT))
                .set_response_timeout(Some(REDIS_PROBE_TIMEOUT));
            connection.insert(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            )
        }
    };
    redis::cmd("PING").query_async::<()>(live).await
}
