//! Command-line flags, each with an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use telemetry::flags::parse_duration;
use telemetry::logs::LogFormat;

/// How one backend worker connects and works.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "backend",
    version,
    about = "Consumes client frames from RabbitMQ, persists them in PostgreSQL, and routes deliveries by the Redis registry."
)]
pub struct Config {
    /// RabbitMQ URL (`?heartbeat=` and `?connection_timeout=` are honoured).
    #[arg(
        long,
        env = "BACKEND_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,

    /// PostgreSQL URL or key=value connection string.
    #[arg(
        long,
        env = "BACKEND_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    pub database_url: String,

    /// The PostgreSQL schema that holds the tables (created if missing).
    #[arg(long, env = "BACKEND_PG_SCHEMA", default_value = "edge")]
    pub pg_schema: String,

    /// Redis URL of the routing registry and presence.
    #[arg(
        long,
        env = "BACKEND_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// Start of every Redis key (`{prefix}:nodes:{user}`, `{prefix}:seen:{user}`).
    #[arg(long, env = "BACKEND_REDIS_PREFIX", default_value = "edge")]
    pub redis_prefix: String,

    /// Start of every exchange and queue name; the gateways must use the same.
    #[arg(long, env = "BACKEND_AMQP_PREFIX", default_value = "edge")]
    pub amqp_prefix: String,

    /// Number of inbound shard queues; the gateways must use the same.
    #[arg(long, env = "BACKEND_SHARDS", default_value_t = 8)]
    pub shards: u16,

    /// Shards this worker consumes, as a list of numbers and ranges (`0-3,6`); all if unset.
    /// Several workers may consume the same shard: one is active, the others stand by.
    #[arg(long, env = "BACKEND_CONSUME_SHARDS", value_parser = parse_shard_list)]
    pub consume_shards: Option<ShardList>,

    /// Most frames handled in one database transaction.
    #[arg(long, env = "BACKEND_BATCH_SIZE", default_value_t = 256)]
    pub batch_size: usize,

    /// How long a batch waits for more frames after its first one (`0ms`, `2ms`, `1s`).
    /// The default takes only what is already here: frames that arrive while a batch runs
    /// form the next one, so batches grow with the load by themselves, and a frame under
    /// light load does not wait for company (measured: no loss of throughput, 2 ms less
    /// latency; bench/RESULTS.md).
    #[arg(long, env = "BACKEND_BATCH_WAIT", value_parser = parse_duration, default_value = "0ms")]
    pub batch_wait: Duration,

    /// Send each node one batch envelope per batch (`true`), or one single-frame envelope
    /// per frame (`false`), which gateways of releases before batch envelopes read. For a
    /// rolling upgrade: backends first with `false`, then the gateways, then `true`.
    #[arg(long, env = "BACKEND_OUTBOUND_BATCHES", default_value_t = true, action = clap::ArgAction::Set)]
    pub outbound_batches: bool,

    /// Chats one user may have created that still exist; one more `create_chat` is refused
    /// with `limit_exceeded`. The gateway's memory engine has the same flag and default.
    #[arg(long, env = "BACKEND_MAX_CHATS_PER_USER", default_value_t = wire::limits::DEFAULT_MAX_CHATS_PER_USER)]
    pub max_chats_per_user: usize,

    /// Unacknowledged deliveries the broker may push to each shard consumer.
    #[arg(long, env = "BACKEND_PREFETCH", default_value_t = 1024)]
    pub prefetch: u16,

    /// Most outbound publishes of one batch awaiting their confirm at once (a shard has at
    /// most four batches awaiting theirs; see `worker`).
    #[arg(long, env = "BACKEND_MAX_UNCONFIRMED", default_value_t = 512)]
    pub max_unconfirmed: usize,

    /// How often the counters are logged.
    #[arg(long, env = "BACKEND_STATS_INTERVAL", value_parser = parse_duration, default_value = "10s")]
    pub stats_interval: Duration,

    /// This worker's name in RabbitMQ's connection list and in logs.
    #[arg(long, env = "BACKEND_NAME", default_value = "backend")]
    pub name: String,

    /// Where to serve /metrics (Prometheus text) and /healthz; none if unset. Keep it on
    /// loopback or a private interface: it is unauthenticated.
    #[arg(long, env = "BACKEND_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log lines on stderr: text (coloured only on a terminal), json (one object a line),
    /// or journald (each line prefixed with its syslog priority, for `journalctl -p`).
    #[arg(long, env = "BACKEND_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// Checks what clap cannot: ranges between flags.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.shards == 0 {
            bail!("--shards must be at least 1");
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if self.prefetch == 0 {
            bail!("--prefetch must be at least 1");
        }
        if self.max_unconfirmed == 0 {
            bail!("--max-unconfirmed must be at least 1");
        }
        if let Some(list) = &self.consume_shards
            && let Some(bad) = list.0.iter().find(|&&s| s >= self.shards)
        {
            bail!(
                "--consume-shards names shard {bad}, but there are only {} (0-{})",
                self.shards,
                self.shards - 1
            );
        }
        crate::db::check_schema_name(&self.pg_schema).context("--pg-schema")?;
        Ok(())
    }

    /// The shards this worker consumes, sorted and without repeats.
    pub fn owned_shards(&self) -> Vec<u16> {
        match &self.consume_shards {
            Some(list) => list.0.clone(),
            None => (0..self.shards).collect(),
        }
    }
}

/// A parsed `--consume-shards` value: sorted shard numbers without repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardList(pub Vec<u16>);

/// Parses `0-3,6` into `[0, 1, 2, 3, 6]`.
pub fn parse_shard_list(text: &str) -> Result<ShardList, String> {
    let mut shards = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let number = |s: &str| {
            s.trim()
                .parse::<u16>()
                .map_err(|_| format!("'{s}' is not a shard number"))
        };
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (number(from)?, number(to)?);
                if from > to {
                    return Err(format!("'{part}' is an empty range"));
                }
                shards.extend(from..=to);
            }
            None => shards.push(number(part)?),
        }
    }
    if shards.is_empty() {
        return Err("the shard list is empty".into());
    }
    shards.sort_unstable();
    shards.dedup();
    Ok(ShardList(shards))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn shard_lists_accept_numbers_and_ranges() {
        assert_eq!(
            parse_shard_list("0-3,6"),
            Ok(ShardList(vec![0, 1, 2, 3, 6]))
        );
        assert_eq!(parse_shard_list(" 5, 1,5 "), Ok(ShardList(vec![1, 5])));
        assert!(parse_shard_list("3-1").is_err());
        assert!(parse_shard_list("x").is_err());
        assert!(parse_shard_list(",").is_err());
    }

    #[test]
    fn defaults_are_valid_and_shards_are_checked() {
        let config = Config::parse_from(["backend"]);
        config.validate().expect("defaults");
        assert_eq!(config.owned_shards(), (0..8).collect::<Vec<_>>());
        let config = Config::parse_from(["backend", "--shards", "4", "--consume-shards", "2-5"]);
        assert!(config.validate().is_err());
        let config = Config::parse_from(["backend", "--pg-schema", "bad;name"]);
        assert!(config.validate().is_err());
    }

    #[test]
    fn log_format_and_metrics_address_are_flags() {
        let config = Config::parse_from(["backend"]);
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.metrics_listen, None);
        let config = Config::parse_from([
            "backend",
            "--log-format",
            "journald",
            "--metrics-listen",
            "127.0.0.1:9091",
        ]);
        assert_eq!(config.log_format, LogFormat::Journald);
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9091".parse().expect("address"))
        );
    }
}
