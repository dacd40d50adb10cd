//! The run's plan: the command line checked and resolved into what the threads need.

use std::time::Duration;

use serde::Serialize;
use wire::limits::{MAX_BODY_BYTES, MAX_MEMBERS_PER_CHAT, MAX_SERVER_FRAME_BYTES};

use crate::body::STAMP_LEN;
use crate::cli::{Cli, Metric, Scenario, SloArgs};
use crate::ledger::Audience;
use crate::target::{Target, TargetError};

/// Largest raw payload: the tester's decoder refuses larger messages.
pub const MAX_RAW_SIZE: usize = 16 * 1024 * 1024;

/// Connections per second when neither the flag nor the scenario says otherwise.
const DEFAULT_CONNECT_RATE: f64 = 2000.0;

/// Why the flags do not make a run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The URL.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A flag out of range.
    #[error("{flag}: {reason}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Our gateway's scenarios need tokens.
    #[error("--secret (or GATEWAY_JWT_SECRET) is required to mint the gateway's tokens")]
    NoSecret,
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> PlanError {
    PlanError::Invalid {
        flag,
        reason: reason.into(),
    }
}

/// What each connection does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "scenario", rename_all = "snake_case")]
pub enum Work {
    /// Group chats on our gateway (also `broadcast` there, with one sender per group).
    Chat {
        /// Members per group.
        group_size: usize,
        /// Whether every member sends (chat) or only the group's first (broadcast).
        all_send: bool,
        /// Messages per second per sender.
        rate: f64,
        /// Body bytes.
        size: usize,
        /// Read ack batching; `None` sends none.
        read_ack_interval: Option<Duration>,
        /// Whether recipients ack delivered.
        delivered_acks: bool,
    },
    /// Ping/pong on our gateway, or opaque payloads to a raw echo server.
    Echo {
        /// Messages per second per connection (open loop).
        rate: f64,
        /// Raw payload bytes.
        size: usize,
        /// Opaque payloads instead of ping frames.
        raw: bool,
        /// One outstanding message per connection.
        closed_loop: bool,
    },
    /// A raw peer that broadcasts every message to every client of the sender's group.
    RawBroadcast {
        /// Connections per group: connection `i` is in group `i / group_size` and asks for
        /// it with `group=` in the upgrade request's query.
        group_size: usize,
        /// The first `senders` connections of each group send.
        senders: usize,
        /// Messages per second per sender.
        rate: f64,
        /// Payload bytes.
        size: usize,
    },
    /// Connections held with heartbeats.
    Idle {
        /// Application ping interval; `None` sends none.
        ping_interval: Option<Duration>,
        /// Wait before reading the memory.
        settle: Duration,
        /// A peer without our protocol.
        raw: bool,
    },
    /// Connect as fast as possible.
    Storm {
        /// A peer without our protocol.
        raw: bool,
        /// Hold time once connected.
        hold: Duration,
    },
}

impl Work {
    /// The scenario's name.
    pub fn name(&self) -> &'static str {
        match self {
            Work::Chat { all_send: true, .. } => "chat",
            Work::Chat {
                all_send: false, ..
            }
            | Work::RawBroadcast { .. } => "broadcast",
            Work::Echo { .. } => "echo",
            Work::Idle { .. } => "idle",
            Work::Storm { .. } => "storm",
        }
    }

    /// Whether the server speaks our protocol (a welcome first, tokens, rkyv frames).
    pub fn speaks_protocol(&self) -> bool {
        match self {
            Work::Chat { .. } => true,
            Work::Echo { raw, .. } | Work::Idle { raw, .. } | Work::Storm { raw, .. } => !raw,
            Work::RawBroadcast { .. } => false,
        }
    }

    /// The latency that the progress line shows and the SLO checks by default.
    pub fn primary(&self) -> Metric {
        match self {
            Work::Chat { .. } | Work::RawBroadcast { .. } => Metric::Delivery,
            Work::Echo { .. } | Work::Idle { .. } => Metric::Rtt,
            Work::Storm { .. } => Metric::Connect,
        }
    }

    /// Who receives a message.
    pub fn audience(&self) -> Audience {
        match self {
            Work::Chat { .. } => Audience::Others,
            Work::RawBroadcast { .. } => Audience::Everyone,
            Work::Echo { .. } | Work::Idle { .. } | Work::Storm { .. } => Audience::SenderOnly,
        }
    }

    /// Whether a message schedule runs after setup (the others only hold connections).
    pub fn sends(&self) -> bool {
        matches!(
            self,
            Work::Chat { .. } | Work::Echo { .. } | Work::RawBroadcast { .. }
        )
    }

    /// Largest message the tester accepts from the server.
    pub fn max_message(&self) -> usize {
        if self.speaks_protocol() {
            MAX_SERVER_FRAME_BYTES
        } else {
            MAX_RAW_SIZE
        }
    }
}

/// Everything a run needs, checked.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The server.
    #[serde(serialize_with = "target_url")]
    pub target: Target,
    /// Connections to open.
    pub connections: usize,
    /// New connections per second (0: unlimited).
    pub connect_rate: f64,
    /// Attempts in flight per thread.
    pub connect_concurrency: usize,
    /// Limit of one attempt.
    #[serde(with = "millis")]
    pub connect_timeout: Duration,
    /// Limit of the chats' creation.
    #[serde(with = "millis")]
    pub setup_timeout: Duration,
    /// Measured phase.
    #[serde(with = "millis")]
    pub duration: Duration,
    /// Wait for late answers.
    #[serde(with = "millis")]
    pub drain: Duration,
    /// The HS256 secret.
    #[serde(skip)]
    pub secret: Option<String>,
    /// User id of connection 0.
    pub first_user_id: u64,
    /// Token lifetime.
    #[serde(with = "millis")]
    pub token_ttl: Duration,
    /// Runtime threads.
    pub threads: usize,
    /// CPU of each thread, cycling; `None`: not pinned.
    pub cpus: Option<Vec<usize>>,
    /// Loopback source addresses to spread over (0: none bound).
    pub source_addrs: u32,
    /// Random seed.
    pub seed: u64,
    /// No progress line.
    #[serde(skip)]
    pub quiet: bool,
    /// The server process, when it runs on this host.
    pub server_pid: Option<u32>,
    /// The scenario.
    pub work: Work,
    /// Limits.
    #[serde(skip)]
    pub slo: SloArgs,
}

fn target_url<S: serde::Serializer>(target: &Target, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("ws://{}{}", target.host, target.path))
}

mod millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

impl Plan {
    /// Checks the command line and resolves the target.
    pub fn from_cli(cli: &Cli) -> Result<Plan, PlanError> {
        let c = &cli.common;
        let work = work(&cli.scenario, c.connections)?;
        if c.connections == 0 {
            return Err(invalid("--connections", "at least 1"));
        }
        if c.connect_concurrency == 0 {
            return Err(invalid("--connect-concurrency", "at least 1"));
        }
        let connect_rate = c.connect_rate.unwrap_or(match work {
            Work::Storm { .. } => 0.0,
            _ => DEFAULT_CONNECT_RATE,
        });
        if !(connect_rate.is_finite() && connect_rate >= 0.0) {
            return Err(invalid(
                "--connect-rate",
                "a number of connections per second",
            ));
        }
        if c.duration.is_zero() {
            return Err(invalid("--duration", "longer than 0"));
        }
        let secret = c.secret.clone().filter(|s| !s.is_empty());
        if work.speaks_protocol() && secret.is_none() {
            return Err(PlanError::NoSecret);
        }
        let target = Target::parse(&c.url)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = if c.threads == 0 { cores } else { c.threads }.min(c.connections);
        let cpus = if c.no_pin {
            None
        } else if c.cpus.is_empty() {
            Some((0..threads).map(|t| t % cores).collect())
        } else {
            Some(c.cpus.clone())
        };
        let seed = c.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        Ok(Plan {
            source_addrs: if target.is_ipv4_loopback() {
                c.source_addrs
            } else {
                0
            },
            target,
            connections: c.connections,
            connect_rate,
            connect_concurrency: c.connect_concurrency,
            connect_timeout: c.connect_timeout,
            setup_timeout: c.setup_timeout,
            duration: c.duration,
            drain: c.drain,
            secret,
            first_user_id: c.first_user_id,
            token_ttl: c.token_ttl,
            threads,
            cpus,
            seed,
            quiet: c.quiet,
            server_pid: c.pid,
            work,
            slo: c.slo.clone(),
        })
    }

    /// The user (and connection) id of connection `index`.
    pub fn user_id(&self, index: usize) -> u64 {
        self.first_user_id + index as u64
    }

    /// The raw broadcast group of connection `index`, if the work has groups.
    pub fn raw_group(&self, index: usize) -> Option<u64> {
        match self.work {
            Work::RawBroadcast { group_size, .. } => Some((index / group_size) as u64),
            _ => None,
        }
    }
}

fn check_rate(rate: f64) -> Result<f64, PlanError> {
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        Err(invalid("--rate", "messages per second, above 0"))
    }
}

fn check_size(size: usize, max: usize) -> Result<usize, PlanError> {
    if (STAMP_LEN..=max).contains(&size) {
        Ok(size)
    } else {
        Err(invalid(
            "--size",
            format!("{STAMP_LEN} (the stamp) to {max} bytes"),
        ))
    }
}

fn check_group(group_size: usize) -> Result<usize, PlanError> {
    if (1..=MAX_MEMBERS_PER_CHAT).contains(&group_size) {
        Ok(group_size)
    } else {
        Err(invalid(
            "--group-size",
            format!("1 to {MAX_MEMBERS_PER_CHAT} members"),
        ))
    }
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

fn work(scenario: &Scenario, connections: usize) -> Result<Work, PlanError> {
    Ok(match scenario {
        Scenario::Chat(a) => Work::Chat {
            group_size: check_group(a.group_size)?,
            all_send: true,
            rate: check_rate(a.rate)?,
            size: check_size(a.size, MAX_BODY_BYTES)?,
            read_ack_interval: nonzero(a.acks.read_ack_interval),
            delivered_acks: !a.acks.no_delivered_acks,
        },
        Scenario::Echo(a) => Work::Echo {
            rate: check_rate(a.rate)?,
            size: if a.raw_echo {
                check_size(a.size, MAX_RAW_SIZE)?
            } else {
                0
            },
            raw: a.raw_echo,
            closed_loop: a.closed_loop,
        },
        Scenario::Broadcast(a) if a.raw => {
            let group_size = check_group(a.group_size)?;
            if a.senders == 0 || a.senders > group_size.min(connections) {
                return Err(invalid("--senders", "1 to --group-size"));
            }
            Work::RawBroadcast {
                group_size,
                senders: a.senders,
                rate: check_rate(a.rate)?,
                size: check_size(a.size, MAX_RAW_SIZE)?,
            }
        }
        Scenario::Broadcast(a) => Work::Chat {
            group_size: check_group(a.group_size)?,
            all_send: false,
            rate: check_rate(a.rate)?,
            size: check_size(a.size, MAX_BODY_BYTES)?,
            read_ack_interval: nonzero(a.acks.read_ack_interval),
            delivered_acks: !a.acks.no_delivered_acks,
        },
        Scenario::Idle(a) => Work::Idle {
            ping_interval: nonzero(a.ping_interval),
            settle: a.settle,
            raw: a.raw,
        },
        Scenario::Storm(a) => Work::Storm {
            raw: a.raw,
            hold: a.hold,
        },
    })
}
