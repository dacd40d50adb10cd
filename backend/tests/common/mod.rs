//! A fake gateway node and a private corner of the real services for each test: its own
//! PostgreSQL schema, AMQP name prefix and Redis key prefix (random suffix), so tests run in
//! parallel, and a cleanup that removes them.
//!
//! The services default to the local ones; `TEST_DATABASE_URL`, `TEST_AMQP_URL` and
//! `TEST_REDIS_URL` override them.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use backend::{Config, Stats};
use broker::{REPUBLISH_HEADER, Topology};
use clap::Parser;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wire::envelope::{Inbound, Target, outbound_items};
use wire::{ClientFrame, ClientFrameRef, ServerFrame, ServerFrameRef, UserId};

/// The gateway node this fake plays.
pub const NODE: u32 = 1;

pub fn database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// One delivery as the gateway node receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub targets: Vec<Target>,
    pub frame: ServerFrame,
    pub republish: bool,
}

/// A running backend worker.
pub struct Backend {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    pub stats: Arc<Stats>,
}

impl Backend {
    /// Asks the worker to stop and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(10), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => panic!("the backend failed: {error:#}"),
            Ok(Err(error)) => panic!("the backend task failed: {error}"),
            Err(_) => panic!("the backend did not stop within 10 s"),
        }
    }

    /// Kills the worker as a crash would: its task is dropped mid-work, its connections
    /// close, and the broker requeues what it had not acknowledged.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The test's services and the fake gateway node's handles.
pub struct Env {
    pub suffix: String,
    pub schema: String,
    pub topology: Topology,
    pub redis_prefix: String,
    pub connection: Connection,
    publish: Channel,
    pub redis: redis::aio::MultiplexedConnection,
    pub pg: tokio_postgres::Client,
    next_connection_id: std::sync::atomic::AtomicU64,
    backends: std::sync::atomic::AtomicU32,
}

impl Env {
    pub async fn new(shards: u16) -> Env {
        // Logs of the backends under test, shown for failing tests (`RUST_LOG` filters).
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .try_init();
        let suffix = format!(
            "{:012x}",
            RandomState::new().hash_one(std::process::id()) & 0xffff_ffff_ffff
        );
        let topology = Topology {
            prefix: format!("test-backend-{suffix}"),
            shards,
        };
        let connection = broker::connect(&amqp_url(), &format!("fake-gateway-{suffix}"))
            .await
            .expect("connect to RabbitMQ");
        let publish = connection.create_channel().await.expect("channel");
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        topology
            .declare_node(&publish, NODE)
            .await
            .expect("declare the topology");
        let redis = redis::Client::open(redis_url())
            .expect("Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to Redis");
        let (pg, pg_connection) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(pg_connection);
        Env {
            schema: format!("test_{suffix}"),
            redis_prefix: format!("test-{suffix}"),
            suffix,
            topology,
            connection,
            publish,
            redis,
            pg,
            next_connection_id: std::sync::atomic::AtomicU64::new(1),
            backends: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// A backend configuration for this test, with `extra` flags.
    pub fn config(&self, extra: &[&str]) -> Config {
        let n = self
            .backends
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shards = self.topology.shards.to_string();
        let name = format!("backend-{}-{n}", self.suffix);
        let mut args: Vec<String> = [
            "backend",
            "--amqp-url",
            &amqp_url(),
            "--database-url",
            &database_url(),
            "--redis-url",
            &redis_url(),
            "--pg-schema",
            &self.schema,
            "--amqp-prefix",
            &self.topology.prefix,
            "--redis-prefix",
            &self.redis_prefix,
            "--shards",
            &shards,
            "--name",
            &name,
        ]
        .map(String::from)
        .into();
        args.extend(extra.iter().map(|a| a.to_string()));
        Config::parse_from(args)
    }

    /// Starts a backend worker on this runtime.
    pub fn start(&self, extra: &[&str]) -> Backend {
        let config = self.config(extra);
        let shutdown = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(backend::run(config, shutdown.clone(), stats.clone()));
        Backend {
            shutdown,
            task,
            stats,
        }
    }

    /// Registers `user` as online on `node`, as a gateway does.
    pub async fn online(&self, user: UserId, node: u32) {
        let mut redis = self.redis.clone();
        let _: () = redis::cmd("SADD")
            .arg(format!("{}:nodes:{user}", self.redis_prefix))
            .arg(node)
            .query_async(&mut redis)
            .await
            .expect("SADD");
    }

    /// Records `user` as offline since `seen_us`, as a gateway does on the last disconnect.
    pub async fn offline(&self, user: UserId, seen_us: u64) {
        let mut redis = self.redis.clone();
        let _: () = redis::pipe()
            .cmd("DEL")
            .arg(format!("{}:nodes:{user}", self.redis_prefix))
            .ignore()
            .cmd("SET")
            .arg(format!("{}:seen:{user}", self.redis_prefix))
            .arg(seen_us)
            .ignore()
            .query_async(&mut redis)
            .await
            .expect("offline");
    }

    /// A fresh connection id on the fake node.
    pub fn connection_id(&self) -> u64 {
        self.next_connection_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// The shard the gateway's routing rule picks for `frame` from `user`.
    pub fn shard_for(&self, user: UserId, frame_bytes: &[u8]) -> u16 {
        let frame = ClientFrameRef::access(frame_bytes).expect("a valid client frame");
        match frame.chat_id() {
            Some(chat) => self.topology.shard_of_chat(chat),
            None => self.topology.shard_of_user(user),
        }
    }

    /// Publishes client frames as the gateway would (one envelope each, routed by the
    /// routing rule), and waits until the broker confirmed all of them.
    pub async fn send_all(&self, frames: &[(UserId, u64, ClientFrame)]) {
        let mut confirms = Vec::with_capacity(frames.len());
        for (user, connection_id, frame) in frames {
            let bytes = frame.encode().expect("encode frame");
            let envelope = Inbound {
                user_id: *user,
                node_id: NODE,
                core: 0,
                connection_id: *connection_id,
                received_at_us: 0,
                frame: &bytes,
            }
            .encode()
            .expect("encode envelope");
            let shard = self.shard_for(*user, &bytes);
            confirms.push(self.publish_raw(shard, &envelope).await);
        }
        for confirm in confirms {
            let confirmation = confirm.await.expect("confirm");
            assert!(confirmation.is_ack(), "the broker refused a frame");
        }
    }

    /// Publishes one frame and waits for its confirm.
    pub async fn send(&self, user: UserId, connection_id: u64, frame: ClientFrame) {
        self.send_all(&[(user, connection_id, frame)]).await;
    }

    /// Publishes arbitrary bytes to a shard; returns the pending confirm.
    pub async fn publish_raw(&self, shard: u16, body: &[u8]) -> lapin::PublisherConfirm {
        self.publish
            .basic_publish(
                self.topology.inbound_exchange().as_str().into(),
                Topology::shard_routing_key(shard).into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
    }

    /// Starts consuming the fake node's queue.
    pub async fn node_reader(&self) -> NodeReader {
        let channel = self.connection.create_channel().await.expect("channel");
        let consumer = channel
            .basic_consume(
                self.topology.node_queue(NODE).as_str().into(),
                "fake-gateway".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume the node queue");
        NodeReader {
            channel,
            consumer,
            buffer: VecDeque::new(),
        }
    }

    /// Takes one message from the dead-letter queue, if one arrives within 5 s.
    pub async fn dead_letter(&self) -> Option<Vec<u8>> {
        for _ in 0..250 {
            let got = self
                .publish
                .basic_get(
                    self.topology.dead_letter_queue().as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .expect("basic.get");
            if let Some(message) = got {
                return Some(message.delivery.data.clone());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Runs a statement in the test's schema (`{schema}` names it).
    pub async fn execute(&self, sql: &str) {
        let sql = sql.replace("{schema}", &self.schema);
        self.pg
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// One query's first column, as i64s.
    pub async fn column(&self, sql: &str) -> Vec<i64> {
        let sql = sql.replace("{schema}", &self.schema);
        self.pg
            .query(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// Removes the test's queues, exchanges, schema and keys. Stop the backends and the node
    /// reader first.
    pub async fn cleanup(self) {
        // Over a connection of its own: a node reader's channel closed while lapin still
        // sends its consumer's cancel can leave the shared connection in error.
        let cleaner = broker::connect(&amqp_url(), &format!("cleanup-{}", self.suffix))
            .await
            .expect("connect to RabbitMQ");
        let channel = cleaner.create_channel().await.expect("channel");
        self.topology
            .delete_all(&channel, &[NODE])
            .await
            .expect("delete the topology");
        let _ = cleaner.close(200, "done".into()).await;
        let _ = self.connection.close(200, "done".into()).await;
        self.pg
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                self.schema
            ))
            .await
            .expect("drop the schema");
        let mut redis = self.redis.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.redis_prefix))
            .query_async(&mut redis)
            .await
            .expect("KEYS");
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut redis)
                .await
                .expect("DEL");
        }
    }
}

/// The fake node's delivery stream.
pub struct NodeReader {
    channel: Channel,
    consumer: Consumer,
    buffer: VecDeque<Received>,
}

impl NodeReader {
    /// The next delivery, failing the test if none arrives within `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Received {
        match self.try_next(timeout).await {
            Some(received) => received,
            None => panic!("no delivery within {timeout:?}"),
        }
    }

    /// The next delivery within 10 s.
    pub async fn next(&mut self) -> Received {
        self.next_within(Duration::from_secs(10)).await
    }

    /// The next delivery, or `None` if none arrives within `timeout`.
    pub async fn try_next(&mut self, timeout: Duration) -> Option<Received> {
        if let Some(received) = self.buffer.pop_front() {
            return Some(received);
        }
        let delivery = tokio::time::timeout(timeout, self.consumer.next())
            .await
            .ok()?
            .expect("the node queue consumer ended")
            .expect("a delivery");
        let republish = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(REPUBLISH_HEADER).cloned())
            == Some(AMQPValue::Boolean(true));
        // One envelope carries a batch of frames: each is one received delivery, in order.
        for view in outbound_items(&delivery.data).expect("a valid outbound envelope") {
            let targets = view.targets.iter().map(|t| t.to_native()).collect();
            let frame = ServerFrameRef::access(view.frame_bytes())
                .and_then(|f| f.to_owned())
                .expect("a valid server frame");
            self.buffer.push_back(Received {
                targets,
                frame,
                republish,
            });
        }
        self.buffer.pop_front()
    }

    /// Reads deliveries until one matches `wanted`, returning it; others are kept for later
    /// reads, in order.
    pub async fn find(&mut self, mut wanted: impl FnMut(&Received) -> bool) -> Received {
        let mut skipped = VecDeque::new();
        loop {
            let received = self.next().await;
            if wanted(&received) {
                skipped.extend(self.buffer.drain(..));
                self.buffer = skipped;
                return received;
            }
            skipped.push_back(received);
        }
    }

    /// Forgets deliveries that `find` skipped.
    pub fn discard_buffered(&mut self) {
        self.buffer.clear();
    }

    /// Asserts that nothing arrives within `quiet`.
    pub async fn expect_nothing(&mut self, quiet: Duration) {
        if let Some(received) = self.try_next(quiet).await {
            panic!("unexpected delivery: {received:?}");
        }
    }

    pub async fn close(self) {
        drop(self.consumer);
        let _ = self.channel.close(200, "done".into()).await;
    }
}
