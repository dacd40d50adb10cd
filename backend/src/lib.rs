//! The backend worker: consumes client frames from the shard queues, persists them in
//! PostgreSQL one transaction per batch, looks up recipients in the Redis registry and
//! publishes deliveries to the gateway nodes. `README.md` beside this crate describes the
//! contracts with the gateway (AMQP and Redis) and the schema.
//!
//! [`run`] is the whole worker; the binary wraps it with flags and signals, and the tests
//! run it in-process.

pub mod config;
mod db;
mod lifecycle;
pub mod metrics;
mod migrate;
mod outcome;
mod persist;
mod registry;
mod request;
mod route;
mod stats;
mod worker;

use std::sync::Arc;

use anyhow::Context;
use broker::Topology;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use stats::{Snapshot, Stats};

use crate::registry::Registry;
use crate::worker::{Amqp, Shared};

/// Runs a worker until `shutdown` is cancelled: migrates the schema, declares the topology,
/// then consumes every shard of `--consume-shards`, one task each. On shutdown each shard
/// finishes its current batch; frames it had prefetched go back to their queue.
///
/// Failures of PostgreSQL, Redis or RabbitMQ after the start are retried with backoff
/// without losing or acknowledging anything; failures during the start are returned.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
) -> anyhow::Result<()> {
    config.validate()?;
    if usize::from(config.prefetch) < config.batch_size {
        tracing::warn!(
            prefetch = config.prefetch,
            batch_size = config.batch_size,
            "--prefetch is below --batch-size, so batches never fill"
        );
    }
    let started = tokio::select! {
        started = start(&config) => started?,
        _ = shutdown.cancelled() => {
            lifecycle::stopping();
            tracing::info!("stopped before the start finished");
            return Ok(());
        }
    };
    let Started {
        registry,
        topology,
        amqp,
    } = started;

    // A shard task that fails for good stops the others, without cancelling the caller's token.
    let shutdown = shutdown.child_token();
    let shards = config.owned_shards();
    let stats_interval = config.stats_interval;
    let shared = Arc::new(Shared {
        config,
        topology,
        amqp,
        registry,
        stats,
        shutdown: shutdown.clone(),
        consuming: tokio::sync::watch::Sender::new(0),
    });
    let mut tasks = JoinSet::new();
    for &shard in &shards {
        tasks.spawn(worker::run_shard(shared.clone(), shard));
    }
    {
        let shared = shared.clone();
        tasks.spawn(async move {
            stats::log_periodically(&shared.stats, stats_interval, shared.shutdown.clone()).await;
        });
    }
    {
        let shared = shared.clone();
        let shards = shards.len();
        tasks.spawn(async move {
            if shared.wait_until_consuming(shards).await {
                lifecycle::ready(shards);
                tracing::info!(shards, "every shard consumes; ready");
                lifecycle::watchdog(shared.shutdown.clone()).await;
            }
            lifecycle::stopping();
        });
    }
    tracing::info!(
        name = shared.config.name,
        shards = ?shards,
        prefix = shared.config.amqp_prefix,
        schema = shared.config.pg_schema,
        "backend running"
    );
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined {
            shutdown.cancel();
            if result.is_ok() {
                result = Err(error).context("a shard task failed");
            }
        }
    }
    shared.amqp.close().await;
    tracing::info!(name = shared.config.name, "backend stopped");
    result
}

/// What the start makes, before any shard runs.
struct Started {
    registry: Registry,
    topology: Topology,
    amqp: Amqp,
}

/// Migrates the schema, connects to Redis and declares the topology, each step logged and
/// bounded in time; a failure is returned (systemd's `Restart=` starts the worker again).
async fn start(config: &Config) -> anyhow::Result<Started> {
    lifecycle::status("migrating the schema");
    tracing::info!(schema = config.pg_schema, "connecting to PostgreSQL");
    {
        let mut client = db::connect_client(&config.database_url, &config.pg_schema).await?;
        tokio::time::timeout(
            MIGRATE_TIMEOUT,
            migrate::migrate(&mut client, &config.pg_schema),
        )
        .await
        .context("PostgreSQL did not finish the migration in time")?
        .context("migrating the database")?;
    }
    lifecycle::status("connecting to Redis");
    tracing::info!("connecting to Redis");
    let registry = Registry::connect(&config.redis_url, &config.redis_prefix).await?;
    lifecycle::status("declaring the broker topology");
    tracing::info!("connecting to RabbitMQ");
    let topology = Topology {
        prefix: config.amqp_prefix.clone(),
        shards: config.shards,
    };
    let amqp = Amqp::new(config.amqp_url.clone(), config.name.clone());
    tokio::time::timeout(lifecycle::CONNECT_TIMEOUT * 2, async {
        let channel = amqp
            .get()
            .await?
            .create_channel()
            .await
            .context("opening a channel to declare the topology")?;
        topology.declare_backend(&channel).await?;
        channel
            .close(200, "declared".into())
            .await
            .context("closing the declaring channel")
    })
    .await
    .context("RabbitMQ did not answer in time")??;
    Ok(Started {
        registry,
        topology,
        amqp,
    })
}

/// Longest a migration may take: it waits for other workers' migration locks and builds
/// indexes, so it gets more than a connection attempt.
const MIGRATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
