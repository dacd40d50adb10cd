//! Names and declarations of the exchanges and queues.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::{BrokerError, shard_of};

/// How often a message may be handed to a consumer of an inbound queue before the broker
/// dead-letters it instead. A frame that crashes or stalls every worker that takes it would
/// otherwise be redelivered forever and block its shard. Quorum queues count every return to
/// the queue (a reject with requeue, or the consumer's channel closing with the message
/// unacknowledged), so this also bounds how many worker crashes in a row a message survives.
pub const DELIVERY_LIMIT: i64 = 5;

/// Most messages an inbound (shard) queue holds. Past it the broker refuses new publishes
/// (`x-overflow: reject-publish`, a basic.nack to the gateway, which answers the client with
/// `Unavailable`), rather than growing a backlog without bound while the backend is down or
/// behind. `reject-publish` is also what at-least-once dead-lettering requires.
pub const INBOUND_MAX_LENGTH: i64 = 1_000_000;

/// How long a delivery waits in a node queue. A node that does not consume for this long is
/// down or stuck; its clients reconnect elsewhere and sync from the database, so older
/// deliveries only cost memory.
pub const NODE_MESSAGE_TTL_MS: i64 = 60_000;

/// A node queue without consumers for this long is deleted: the node is gone (node ids of
/// retired or renamed nodes would otherwise leave queues behind forever).
pub const NODE_QUEUE_EXPIRES_MS: i64 = 3_600_000;

/// Most deliveries (batch envelopes) a node queue holds; past it the oldest are dropped
/// (`drop-head`) so that a stalled gateway cannot make the backend's publishes fail. Clients
/// that lose a delivery see a seq gap and sync.
pub const NODE_MAX_LENGTH: i64 = 1_000_000;

/// Most bytes a node queue holds (the same `drop-head` policy). Node queues live in the
/// broker's memory: a stalled gateway at 2,000 envelopes/s of 16 KiB would otherwise pile up
/// about 2 GB within the TTL.
pub const NODE_MAX_BYTES: i64 = 256 * 1024 * 1024;

/// Most frames the dead-letter queue holds; past it the oldest are dropped (`drop-head`), so
/// a flood of poison frames that nobody inspects cannot fill the broker's disk.
pub const DEAD_LETTER_MAX_LENGTH: i64 = 100_000;

/// Most bytes the dead-letter queue holds (the same `drop-head` policy).
pub const DEAD_LETTER_MAX_BYTES: i64 = 256 * 1024 * 1024;

/// How long a dead-lettered frame is kept for an operator to inspect or replay.
pub const DEAD_LETTER_TTL_MS: i64 = 7 * 24 * 3_600_000;

/// The exchanges and queues of one deployment: every name starts with `prefix`, and the
/// inbound side is split into `shards` queues. Every gateway and backend of a deployment must
/// use the same two values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Start of every exchange and queue name, for example `edge`.
    pub prefix: String,
    /// Number of inbound queues. Changing it re-maps chats to shards: drain the inbound
    /// queues first, or per-chat order breaks for the chats that move.
    pub shards: u16,
}

impl Topology {
    /// `{prefix}.in`: direct exchange the gateways publish client frames to, routing key
    /// [`Topology::shard_routing_key`].
    pub fn inbound_exchange(&self) -> String {
        format!("{}.in", self.prefix)
    }

    /// `{prefix}.in.{shard}`: the quorum queue of one shard, consumed by one backend worker
    /// at a time (single active consumer).
    pub fn inbound_queue(&self, shard: u16) -> String {
        format!("{}.in.{shard}", self.prefix)
    }

    /// The routing key that binds shard `shard`'s queue to the inbound exchange.
    pub fn shard_routing_key(shard: u16) -> String {
        shard.to_string()
    }

    /// The shard of a frame that acts on `chat_id`. Every frame of a chat goes to one queue,
    /// which one worker consumes in order: that is what keeps a chat's seqs in order.
    pub fn shard_of_chat(&self, chat_id: u64) -> u16 {
        shard_of(chat_id, self.shards)
    }

    /// The shard of a frame without a chat (create chat, presence query), by its sender.
    pub fn shard_of_user(&self, user_id: u64) -> u16 {
        // Mixed with a constant so that user 7 and chat 7 are placed independently.
        shard_of(user_id ^ 0x5bd1_e995_7f4a_7c15, self.shards)
    }

    /// `{prefix}.out`: direct exchange the backend publishes deliveries to, routing key
    /// [`Topology::node_routing_key`].
    pub fn outbound_exchange(&self) -> String {
        format!("{}.out", self.prefix)
    }

    /// `{prefix}.node.{node_id}`: the deliveries for one gateway node.
    pub fn node_queue(&self, node_id: u32) -> String {
        format!("{}.node.{node_id}", self.prefix)
    }

    /// The routing key that binds a node's queue to the outbound exchange.
    pub fn node_routing_key(node_id: u32) -> String {
        node_id.to_string()
    }

    /// `{prefix}.dlx`: fanout exchange that receives what the inbound queues dead-letter.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    /// `{prefix}.dead`: holds dead-lettered frames for an operator to inspect or replay.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Declares everything the backend uses: the three exchanges, the dead-letter queue and
    /// every shard queue with its binding. Idempotent.
    pub async fn declare_backend(&self, channel: &Channel) -> Result<(), BrokerError> {
        if self.shards == 0 {
            return Err(BrokerError::NoShards);
        }
        declare_exchange(channel, &self.inbound_exchange(), ExchangeKind::Direct).await?;
        declare_exchange(channel, &self.outbound_exchange(), ExchangeKind::Direct).await?;
        declare_exchange(channel, &self.dead_letter_exchange(), ExchangeKind::Fanout).await?;
        let dead = self.dead_letter_queue();
        declare_queue(channel, &dead, dead_letter_arguments()).await?;
        bind(channel, &dead, &self.dead_letter_exchange(), "").await?;
        for shard in 0..self.shards {
            let queue = self.inbound_queue(shard);
            declare_queue(channel, &queue, self.inbound_arguments()).await?;
            bind(
                channel,
                &queue,
                &self.inbound_exchange(),
                &Self::shard_routing_key(shard),
            )
            .await?;
        }
        Ok(())
    }

    /// Declares everything a gateway node uses: the backend's side (so that frames published
    /// before any backend started are kept, not dropped as unroutable) and the node's own
    /// queue with its binding. Idempotent.
    pub async fn declare_node(&self, channel: &Channel, node_id: u32) -> Result<(), BrokerError> {
        self.declare_backend(channel).await?;
        let queue = self.node_queue(node_id);
        declare_queue(channel, &queue, node_arguments()).await?;
        bind(
            channel,
            &queue,
            &self.outbound_exchange(),
            &Self::node_routing_key(node_id),
        )
        .await
    }

    /// Deletes every queue and exchange of this topology, with the queues of `nodes`. For
    /// tests and teardown scripts; queues are deleted even if they hold messages.
    pub async fn delete_all(&self, channel: &Channel, nodes: &[u32]) -> Result<(), BrokerError> {
        let queues = (0..self.shards)
            .map(|shard| self.inbound_queue(shard))
            .chain(nodes.iter().map(|&node| self.node_queue(node)))
            .chain([self.dead_letter_queue()]);
        for queue in queues {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|source| BrokerError::Delete {
                    object: format!("queue {queue}"),
                    source,
                })?;
        }
        for exchange in [
            self.inbound_exchange(),
            self.outbound_exchange(),
            self.dead_letter_exchange(),
        ] {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .map_err(|source| BrokerError::Delete {
                    object: format!("exchange {exchange}"),
                    source,
                })?;
        }
        Ok(())
    }

    fn inbound_arguments(&self) -> FieldTable {
        let mut args = quorum();
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            string(&self.dead_letter_exchange()),
        );
        // At-most-once dead-lettering (the default) drops the message if the dead-letter
        // queue cannot take it; at-least-once keeps it in the shard queue until the
        // dead-letter queue confirms, so no poison frame disappears unseen.
        args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
        args.insert("x-overflow".into(), string("reject-publish"));
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(INBOUND_MAX_LENGTH),
        );
        args
    }
}

fn dead_letter_arguments() -> FieldTable {
    let mut args = quorum();
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(DEAD_LETTER_MAX_LENGTH),
    );
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(DEAD_LETTER_MAX_BYTES),
    );
    args.insert("x-overflow".into(), string("drop-head"));
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(DEAD_LETTER_TTL_MS),
    );
    args
}

/// A node queue is a classic queue (version 2, in memory, not lazy) whose deliveries are
/// published transient: what it carries is disposable (clients recover missed deliveries
/// with sync), and measured on one broker (`bench/src/bin/node_queue.rs`, bench/RESULTS.md)
/// it costs the broker about half the CPU per delivery of a quorum queue, with p99 under
/// 7 ms where a quorum queue's reached 38 ms (2 KiB) and 366 ms (16 KiB) at 2,000/s.
fn node_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), string("classic"));
    args.insert("x-queue-version".into(), AMQPValue::LongLongInt(2));
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(NODE_MESSAGE_TTL_MS),
    );
    args.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(NODE_QUEUE_EXPIRES_MS),
    );
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(NODE_MAX_LENGTH),
    );
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(NODE_MAX_BYTES),
    );
    args.insert("x-overflow".into(), string("drop-head"));
    args
}

/// Replicated (Raft) queues: they survive the loss of a broker node in a cluster, and they
/// are the queue type that implements delivery limits and at-least-once dead-lettering.
fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), string("quorum"));
    args
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
) -> Result<(), BrokerError> {
    channel
        .exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|source| BrokerError::Declare {
            object: format!("exchange {name}"),
            source,
        })
}

async fn declare_queue(
    channel: &Channel,
    name: &str,
    arguments: FieldTable,
) -> Result<(), BrokerError> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map(drop)
        .map_err(|source| BrokerError::Declare {
            object: format!("queue {name}"),
            source,
        })
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(), BrokerError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| BrokerError::Declare {
            object: format!("binding of queue {queue} to {exchange} with key {routing_key:?}"),
            source,
        })
}
