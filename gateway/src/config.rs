//! Command-line flags, each with an environment variable of the same meaning.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use telemetry::flags::parse_duration;
use telemetry::logs::LogFormat;
use wire::UserId;

use crate::auth;

/// Which engine handles what clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineKind {
    /// One node, no persistence: chats, members and a bounded recent history in memory.
    Memory,
    /// Frames go over RabbitMQ to backend workers; deliveries come back on this node's queue.
    Amqp,
}

/// How each core's runtime waits for its sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IoDriver {
    /// The completion loop on io_uring (`ringio`): multishot receives into one
    /// provided-buffer ring per core, so an idle connection holds no buffer, no task and no
    /// timer, only a slot; TLS is driven by hand (rustls). Where the kernel lacks what it
    /// needs, the cores run `io-uring` instead (with a warning).
    Completion,
    /// monoio on io_uring where the kernel allows it, epoll otherwise (with a warning): a
    /// task per session, woken by readiness.
    IoUring,
    /// epoll only. Sessions are readiness-driven either way (an idle socket holds no read
    /// buffer); on io_uring monoio reaches their readiness through an epoll instance the
    /// ring polls, which costs a ring wait on top of each epoll wait (bench/RESULTS.md).
    Epoll,
}

/// The algorithm tokens must be signed with; any other is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret (`--jwt-secret`).
    Hs256,
    /// ECDSA P-256 with a public key (`--jwt-public-key`).
    Es256,
}

/// The command line: without a subcommand the gateway serves with the flags of [`Config`].
#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "Thread-per-core io_uring WebSocket gateway",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A tool to run instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The flags of the gateway when it serves.
    #[command(flatten)]
    pub config: Config,
}

/// The gateway's tools.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Print a development token for a user, signed with the key the gateway checks.
    Token(TokenArgs),
}

/// What `gateway token` needs: the user, the lifetime, and the signing half of the
/// gateway's key, read from the same flags and environment as the gateway's.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The user id the token names (its `sub`).
    #[arg(long)]
    pub user: UserId,

    /// How long the token is valid, such as 90s or 60m.
    #[arg(long, value_parser = parse_duration, default_value = "60m")]
    pub ttl: Duration,

    /// The algorithm the gateway pins.
    #[arg(long, env = "GATEWAY_JWT_ALG", value_enum, default_value_t = JwtAlgorithm::Hs256)]
    pub jwt_alg: JwtAlgorithm,

    /// The gateway's HS256 secret.
    #[arg(long, env = "GATEWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM file (PKCS#8) with the ES256 private key whose public half the gateway holds.
    #[arg(long, env = "GATEWAY_JWT_PRIVATE_KEY")]
    pub jwt_private_key: Option<PathBuf>,
}

impl TokenArgs {
    /// The token, expiring `ttl` after `now_unix_secs`.
    pub fn mint(&self, now_unix_secs: u64) -> Result<String> {
        let exp = now_unix_secs.saturating_add(self.ttl.as_secs().max(1));
        match self.jwt_alg {
            JwtAlgorithm::Hs256 => {
                let secret = self
                    .jwt_secret
                    .as_deref()
                    .context("--jwt-secret (or GATEWAY_JWT_SECRET) is required for HS256")?;
                // The gateway refuses shorter secrets, so a token signed with one is useless.
                if secret.len() < MIN_JWT_SECRET_BYTES {
                    bail!("--jwt-secret must be at least {MIN_JWT_SECRET_BYTES} bytes");
                }
                Ok(auth::mint_hs256(secret.as_bytes(), self.user, exp))
            }
            JwtAlgorithm::Es256 => {
                let path = self.jwt_private_key.as_ref().context(
                    "--jwt-private-key (or GATEWAY_JWT_PRIVATE_KEY) is required for ES256",
                )?;
                let pem =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                Ok(auth::mint_es256(&pem, self.user, exp)?)
            }
        }
    }
}

/// The shortest HS256 secret the gateway accepts (`Gateway::start` checks the same).
pub const MIN_JWT_SECRET_BYTES: usize = 16;

/// The gateway's configuration.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "gateway",
    version,
    about = "Thread-per-core io_uring WebSocket gateway"
)]
pub struct Config {
    /// Address clients connect to (WebSocket upgrade on /ws).
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of the admin port (/healthz, /readyz, /metrics).
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,

    /// Cores to run on, one pinned runtime each; 0 means every core of the machine.
    #[arg(long, env = "GATEWAY_CORES", default_value_t = 0)]
    pub cores: usize,

    /// This node's id, announced to clients and used for routing between nodes.
    #[arg(long, env = "GATEWAY_NODE_ID", default_value_t = 1)]
    pub node_id: u32,

    /// The engine behind the sessions.
    #[arg(long, env = "GATEWAY_ENGINE", value_enum, default_value_t = EngineKind::Memory)]
    pub engine: EngineKind,

    /// The pinned JWT algorithm.
    #[arg(long, env = "GATEWAY_JWT_ALG", value_enum, default_value_t = JwtAlgorithm::Hs256)]
    pub jwt_alg: JwtAlgorithm,

    /// Shared secret for HS256 tokens (at least 16 bytes; required with HS256).
    #[arg(long, env = "GATEWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM file with the ES256 public key (required with ES256).
    #[arg(long, env = "GATEWAY_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// Longest token lifetime accepted (e.g. 15m, 24h): a token whose exp lies further
    /// after its iat (or after now, without iat) is refused with 401. Unset: no bound.
    #[arg(long, env = "GATEWAY_JWT_MAX_LIFETIME", value_parser = parse_duration)]
    pub jwt_max_lifetime: Option<Duration>,

    /// Allowed browser origins, comma separated (e.g. https://app.example.com); empty allows
    /// every origin. Requests without an Origin header (non-browser clients) are allowed.
    #[arg(long, env = "GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Certificate chain (PEM) for wss://; with --tls-key, the listener speaks TLS 1.3 only.
    #[arg(long, env = "GATEWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) for wss://.
    #[arg(long, env = "GATEWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Time a client has to complete the HTTP upgrade (slowloris bound).
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub handshake_timeout: Duration,

    /// Largest HTTP request head accepted during the upgrade, in bytes.
    #[arg(long, env = "GATEWAY_MAX_HEADER_BYTES", default_value_t = 8192)]
    pub max_header_bytes: usize,

    /// The server pings a connection that has been silent this long.
    #[arg(long, env = "GATEWAY_PING_INTERVAL", value_parser = parse_duration, default_value = "25s")]
    pub ping_interval: Duration,

    /// A connection silent this long (no frame, no pong) is closed with 4001.
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub idle_timeout: Duration,

    /// Frames per second a connection may send on average.
    #[arg(long, env = "GATEWAY_FRAMES_PER_SECOND", default_value_t = 100)]
    pub frames_per_second: u32,

    /// Frames a connection may send in a burst above the average rate.
    #[arg(long, env = "GATEWAY_FRAME_BURST", default_value_t = 200)]
    pub frame_burst: u32,

    /// Frames per second one user may send on average over all its connections, whichever
    /// cores they are on (each connection also keeps to `--frames-per-second`); twice
    /// `--frames-per-second` unless given, 0 for no per-user limit.
    #[arg(long, env = "GATEWAY_USER_FRAMES_PER_SECOND")]
    pub user_frames_per_second: Option<u32>,

    /// Frames one user may send in a burst above its average rate, over all its
    /// connections; twice `--frame-burst` unless given, 0 for no per-user limit.
    #[arg(long, env = "GATEWAY_USER_FRAME_BURST")]
    pub user_frame_burst: Option<u32>,

    /// New connections per minute from one IP address, counted across all cores (0: no
    /// limit); the next one within the minute gets 429.
    #[arg(
        long,
        env = "GATEWAY_CONNECTIONS_PER_IP_PER_MINUTE",
        default_value_t = 0
    )]
    pub connections_per_ip_per_minute: u32,

    /// Frames queued for one connection past which it is behind: it is not read until it
    /// catches up, and is closed as a slow consumer (4000) if it stays behind with nothing
    /// written for `--slow-consumer-stall` or for longer than `--slow-consumer-behind`.
    #[arg(long, env = "GATEWAY_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,

    /// Bytes queued for one connection past which it is behind (as `--outbound-queue`): the
    /// frames' encoded size, shared deliveries counted in full.
    #[arg(long, env = "GATEWAY_OUTBOUND_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub outbound_queue_bytes: usize,

    /// Frames one connection's queue may never pass: a push past it closes with 4000 at once.
    #[arg(long, env = "GATEWAY_OUTBOUND_QUEUE_MAX", default_value_t = 64 * 1024)]
    pub outbound_queue_max: usize,

    /// Bytes one connection's queue may never pass: a push past it closes with 4000 at
    /// once. The default holds twenty users' whole bursts of maximal messages at once
    /// (20 x 400 x 4 KiB, about 33 MiB) with room to spare.
    #[arg(long, env = "GATEWAY_OUTBOUND_QUEUE_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub outbound_queue_max_bytes: usize,

    /// How long a connection's queue may stay behind with nothing taken by its socket.
    #[arg(long, env = "GATEWAY_SLOW_CONSUMER_STALL", value_parser = parse_duration, default_value = "2s")]
    pub slow_consumer_stall: Duration,

    /// How long a connection's queue may stay behind in all, however much it drains.
    #[arg(long, env = "GATEWAY_SLOW_CONSUMER_BEHIND", value_parser = parse_duration, default_value = "30s")]
    pub slow_consumer_behind: Duration,

    /// Messages of recent history the memory engine keeps per chat for sync.
    #[arg(long, env = "GATEWAY_HISTORY_PER_CHAT", default_value_t = 1000)]
    pub history_per_chat: usize,

    /// Chats one user may have created that still exist (memory engine; the backend has the
    /// same flag for the amqp engine). A chat is gone once its last member leaves.
    #[arg(long, env = "GATEWAY_MAX_CHATS_PER_USER", default_value_t = wire::limits::DEFAULT_MAX_CHATS_PER_USER)]
    pub max_chats_per_user: usize,

    /// Time given to sessions to close and flush on SIGTERM/SIGINT before exiting.
    #[arg(long, env = "GATEWAY_SHUTDOWN_DEADLINE", value_parser = parse_duration, default_value = "10s")]
    pub shutdown_deadline: Duration,

    /// RabbitMQ URL (amqp engine).
    #[arg(
        long,
        env = "GATEWAY_AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,

    /// Prefix of every exchange and queue name; the backend must use the same.
    #[arg(long, env = "GATEWAY_AMQP_PREFIX", default_value = "edge")]
    pub amqp_prefix: String,

    /// Inbound shards (queues); the backend must use the same number.
    #[arg(long, env = "GATEWAY_SHARDS", default_value_t = 8)]
    pub shards: u16,

    /// Publishes awaiting the broker's confirm before the gateway stops reading sockets.
    #[arg(long, env = "GATEWAY_MAX_UNCONFIRMED", default_value_t = 1000)]
    pub max_unconfirmed: usize,

    /// Deliveries the broker may push to this node before their acks. The bridge acks a
    /// delivery once it is routed, so this covers a round trip; it also bounds what the AMQP
    /// client buffers while the cores are full and the bridge stops taking deliveries. A
    /// delivery is one backend batch for this node (up to 256 KiB) or one sync page (up to
    /// 1 MiB): 256 of them hold 64 MiB of batches, 256 MiB at worst, where 1,000 could hold
    /// 1 GiB. Unpaced 2 KiB deliveries flowed as fast with 256 as with 1,000, and 20-30%
    /// slower with 64 (`node_queue`, bench/RESULTS.md).
    #[arg(long, env = "GATEWAY_PREFETCH", default_value_t = 256)]
    pub prefetch: u16,

    /// Redis URL for the user registry and presence (amqp engine).
    #[arg(
        long,
        env = "GATEWAY_REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379/"
    )]
    pub redis_url: String,

    /// Prefix of every Redis key; the backend must use the same.
    #[arg(long, env = "GATEWAY_REDIS_PREFIX", default_value = "edge")]
    pub redis_prefix: String,

    /// Lifetime of a user's registry entry; it is refreshed at a third of this.
    #[arg(long, env = "GATEWAY_REGISTRY_TTL", value_parser = parse_duration, default_value = "90s")]
    pub registry_ttl: Duration,

    /// Delivered/read acks of one session and chat within this window go out as one.
    #[arg(long, env = "GATEWAY_ACK_WINDOW", value_parser = parse_duration, default_value = "20ms")]
    pub ack_window: Duration,

    /// How long the bridge lets frames gather before it publishes them while the node is
    /// busy (its last round to the broker carried 16 frames or more). Frames always go out
    /// at once while no publish awaits its confirm and the node is not busy, and otherwise
    /// gather until the round in flight is confirmed, so batches grow with the load and a
    /// lone frame never waits. Near capacity a few milliseconds make broker messages and
    /// backend batches larger, for less broker and database CPU per message, at the price
    /// of that much latency under load only (bench/RESULTS.md measures both). `0ms` never
    /// lingers.
    #[arg(long, env = "GATEWAY_PUBLISH_LINGER", value_parser = parse_duration, default_value = "5ms")]
    pub publish_linger: Duration,

    /// The I/O driver of the core runtimes.
    #[arg(long, env = "GATEWAY_IO_DRIVER", value_enum, default_value_t = IoDriver::Completion)]
    pub io_driver: IoDriver,

    /// io_uring submission queue entries per core.
    #[arg(long, env = "GATEWAY_RING_ENTRIES", default_value_t = 4096)]
    pub ring_entries: u32,

    /// Log lines on stderr: text (coloured only on a terminal), json (one object a line),
    /// or journald (each line prefixed with its syslog priority, for `journalctl -p`).
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// The per-user rate and burst: what was given, or twice the per-connection ones.
    pub fn user_frame_limits(&self) -> (u32, u32) {
        (
            self.user_frames_per_second
                .unwrap_or(self.frames_per_second.saturating_mul(2)),
            self.user_frame_burst
                .unwrap_or(self.frame_burst.saturating_mul(2)),
        )
    }

    /// The number of cores to run, resolving 0 to every core.
    pub fn core_count(&self) -> usize {
        if self.cores > 0 {
            self.cores
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pin_hs256_and_every_core() {
        let config = Config::try_parse_from(["gateway", "--jwt-secret", "s"]).expect("valid flags");
        assert_eq!(config.jwt_alg, JwtAlgorithm::Hs256);
        assert_eq!(config.cores, 0);
        assert!(config.core_count() >= 1);
        assert!(
            Config::try_parse_from(["gateway", "--tls-cert", "c.pem"]).is_err(),
            "a certificate needs its key"
        );
    }

    #[test]
    fn without_a_subcommand_the_flags_configure_the_server() {
        let cli = Cli::try_parse_from(["gateway", "--cores", "2", "--jwt-secret", "s"])
            .expect("valid flags");
        assert!(cli.command.is_none());
        assert_eq!(cli.config.cores, 2);
        assert!(
            Cli::try_parse_from(["gateway", "--cores", "2", "token", "--user", "7"]).is_err(),
            "server flags do not mix with a subcommand"
        );
    }

    #[test]
    fn minted_tokens_pass_the_gateways_check() {
        let secret = "token-test-secret-of-enough-length";
        let cli = Cli::try_parse_from([
            "gateway",
            "token",
            "--user",
            "42",
            "--ttl",
            "2m",
            "--jwt-secret",
            secret,
        ])
        .expect("valid flags");
        let Some(Command::Token(args)) = cli.command else {
            panic!("the token subcommand");
        };
        let now = now_secs();
        let token = args.mint(now).expect("mints");
        let claims = auth::Verifier::hs256(secret.as_bytes())
            .verify(&token)
            .expect("the gateway accepts it");
        assert_eq!(claims.user_id, 42);
        assert_eq!(claims.exp, now + 120);

        let short = TokenArgs {
            jwt_secret: Some("short".into()),
            ..args.clone()
        };
        assert!(short.mint(now).is_err(), "a secret the gateway refuses");
        let missing = TokenArgs {
            jwt_secret: None,
            ..args
        };
        assert!(missing.mint(now).is_err());
    }

    fn now_secs() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    #[test]
    fn es256_tokens_are_signed_with_the_private_key() {
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
        let args = TokenArgs {
            user: 7,
            ttl: Duration::from_secs(60),
            jwt_alg: JwtAlgorithm::Es256,
            jwt_secret: None,
            jwt_private_key: Some(PathBuf::from(format!("{keys}/es256.private.pem"))),
        };
        let token = args.mint(now_secs()).expect("mints");
        let public = std::fs::read(format!("{keys}/es256.public.pem")).expect("public key");
        let verifier = auth::Verifier::es256_from_pem(&public).expect("key");
        assert_eq!(verifier.verify(&token).expect("verifies").user_id, 7);
    }
}
