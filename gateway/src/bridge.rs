//! The broker bridge: one thread with a tokio runtime, beside the cores, that owns the
//! node's AMQP connection and its Redis registry. Cores hand it envelopes through a bounded
//! lock-free queue; it publishes them with confirms, consumes this node's delivery queue
//! and hands each delivery to the cores' mailboxes.
//!
//! Backpressure: while more than `--max-unconfirmed` publishes await their confirm, or the
//! broker is unreachable, the node is paused and sessions stop reading their sockets.
//! Nothing is lost across a broker restart: unconfirmed publishes are kept, in order, and
//! republished on the new connection (the backend is idempotent, so a duplicate is safe).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use broker::Topology;
use crossbeam_queue::ArrayQueue;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tokio::sync::{Notify, mpsc};
use wire::UserId;
use wire::envelope::{OutboundView, Target};

use crate::node::Node;
use crate::router::{CoreMsg, Delivery};

/// Messages the cores hand the bridge before it applies backpressure of its own.
const INBOX_CAPACITY: usize = 64 * 1024;

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Work for the bridge.
#[derive(Debug)]
pub enum BridgeMsg {
    /// Publish an inbound envelope to a shard.
    Publish {
        /// The shard queue's routing key.
        shard: u16,
        /// The envelope.
        body: Vec<u8>,
    },
    /// A session of this user opened on some core.
    Online(UserId),
    /// A session of this user closed, at this time (microseconds since the epoch).
    Offline(UserId, u64),
}

/// The cores' side of the bridge.
#[derive(Debug)]
pub struct BridgeInbox {
    queue: ArrayQueue<BridgeMsg>,
    notify: Notify,
}

impl BridgeInbox {
    /// Queues work; a full inbox hands the message back (the core parks it and pauses).
    pub fn push(&self, msg: BridgeMsg) -> Result<(), BridgeMsg> {
        self.queue.push(msg)?;
        self.notify.notify_one();
        Ok(())
    }
}

/// Settings the bridge takes from the configuration.
#[derive(Debug, Clone)]
pub struct BridgeSettings {
    /// This node.
    pub node_id: u32,
    /// Exchange and queue names.
    pub topology: Topology,
    /// RabbitMQ.
    pub amqp_url: String,
    /// Redis.
    pub redis_url: String,
    /// Redis key prefix.
    pub redis_prefix: String,
    /// Publishes in flight before the node pauses.
    pub max_unconfirmed: usize,
    /// Deliveries in flight from the broker.
    pub prefetch: u16,
    /// Registry entry lifetime.
    pub registry_ttl: Duration,
}

/// A running bridge.
#[derive(Debug)]
pub struct Bridge {
    /// Where cores send work.
    pub inbox: Arc<BridgeInbox>,
    thread: std::thread::JoinHandle<()>,
    stop: Arc<Notify>,
}

impl Bridge {
    /// Starts the bridge thread.
    pub fn spawn(settings: BridgeSettings, node: Arc<Node>) -> Result<Bridge> {
        let inbox = Arc::new(BridgeInbox {
            queue: ArrayQueue::new(INBOX_CAPACITY),
            notify: Notify::new(),
        });
        let stop = Arc::new(Notify::new());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the bridge runtime")?;
        let thread = {
            let (inbox, stop) = (inbox.clone(), stop.clone());
            std::thread::Builder::new()
                .name("bridge".into())
                .spawn(move || runtime.block_on(run(settings, node, inbox, stop)))
                .context("spawning the bridge thread")?
        };
        Ok(Bridge {
            inbox,
            thread,
            stop,
        })
    }

    /// Publishes what the cores queued, waits for its confirms, removes this node's users
    /// from the registry, and stops; gives up at `deadline`.
    pub fn finish(self, deadline: Instant) {
        self.stop.notify_one();
        while !self.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Publishes not yet confirmed, in publish order, kept for a republish after a reconnect.
#[derive(Debug, Default)]
struct Unconfirmed {
    next_id: u64,
    pending: BTreeMap<u64, (u16, Arc<Vec<u8>>)>,
}

async fn run(
    settings: BridgeSettings,
    node: Arc<Node>,
    inbox: Arc<BridgeInbox>,
    stop: Arc<Notify>,
) {
    let (registry_tx, registry_rx) = mpsc::unbounded_channel();
    let registry = tokio::spawn(registry::run(settings.clone(), registry_rx));
    let mut unconfirmed = Unconfirmed::default();
    let mut backoff = Duration::from_millis(100);
    let mut stopping = false;
    loop {
        let outcome = session(
            &settings,
            &node,
            &inbox,
            &stop,
            &registry_tx,
            &mut unconfirmed,
            &mut stopping,
        )
        .await;
        node.broker_paused.store(true, Ordering::Release);
        node.broker_connected.store(false, Ordering::Release);
        match outcome {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), unconfirmed = unconfirmed.pending.len(), retry_in = ?backoff, "broker session ended");
                if stopping {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.notified() => stopping = true,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    drop(registry_tx);
    let _ = registry.await;
}

/// One connection's life. `Ok` when stopping cleanly, `Err` when the broker went away.
async fn session(
    settings: &BridgeSettings,
    node: &Node,
    inbox: &BridgeInbox,
    stop: &Notify,
    registry: &mpsc::UnboundedSender<BridgeMsg>,
    unconfirmed: &mut Unconfirmed,
    stopping: &mut bool,
) -> Result<()> {
    let connection = broker::connect(
        &settings.amqp_url,
        &format!("gateway-node-{}", settings.node_id),
    )
    .await?;
    let channel = connection
        .create_channel()
        .await
        .context("opening the publish channel")?;
    settings
        .topology
        .declare_node(&channel, settings.node_id)
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enabling publisher confirms")?;
    let consume = connection
        .create_channel()
        .await
        .context("opening the delivery channel")?;
    consume
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await
        .context("setting the prefetch")?;
    let mut deliveries = consume
        .basic_consume(
            settings.topology.node_queue(settings.node_id).into(),
            format!("gateway-{}", settings.node_id).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("consuming the node queue")?;
    let mut confirms = FuturesUnordered::new();
    // What the last connection left unconfirmed goes first, in its original order.
    let replay: Vec<(u64, u16, Arc<Vec<u8>>)> = unconfirmed
        .pending
        .iter()
        .map(|(&id, (shard, body))| (id, *shard, body.clone()))
        .collect();
    if !replay.is_empty() {
        tracing::info!(
            count = replay.len(),
            "republishing what the broker had not confirmed"
        );
    }
    for (id, shard, body) in replay {
        confirms.push(publish(&channel, &settings.topology, id, shard, body).await?);
    }
    node.broker_connected.store(true, Ordering::Release);
    tracing::info!(node = settings.node_id, "connected to the broker");
    loop {
        let paused = unconfirmed.pending.len() >= settings.max_unconfirmed;
        node.broker_paused.store(paused, Ordering::Release);
        if *stopping && inbox.queue.is_empty() && unconfirmed.pending.is_empty() {
            return Ok(());
        }
        tokio::select! {
            biased;
            Some((id, confirmation)) = confirms.next(), if !confirms.is_empty() => {
                match confirmation {
                    Ok(Confirmation::Ack(_)) | Ok(Confirmation::NotRequested) => {
                        unconfirmed.pending.remove(&id);
                    }
                    Ok(Confirmation::Nack(_)) => {
                        // The broker could not store it: publish it again.
                        if let Some((shard, body)) = unconfirmed.pending.get(&id).cloned() {
                            tracing::warn!(shard, "the broker refused a publish; retrying");
                            confirms.push(publish(&channel, &settings.topology, id, shard, body).await?);
                        }
                    }
                    Err(error) => return Err(error).context("waiting for a publisher confirm"),
                }
            }
            delivery = deliveries.next() => {
                let delivery = delivery.context("the delivery stream ended")?.context("receiving a delivery")?;
                route(node, &delivery.data).await;
                delivery.acker.ack(BasicAckOptions::default()).await.context("acking a delivery")?;
            }
            _ = inbox.notify.notified(), if !paused => {
                while unconfirmed.pending.len() < settings.max_unconfirmed {
                    let Some(msg) = inbox.queue.pop() else { break };
                    match msg {
                        BridgeMsg::Publish { shard, body } => {
                            let id = unconfirmed.next_id;
                            unconfirmed.next_id += 1;
                            let body = Arc::new(body);
                            unconfirmed.pending.insert(id, (shard, body.clone()));
                            confirms.push(publish(&channel, &settings.topology, id, shard, body).await?);
                        }
                        other => {
                            let _ = registry.send(other);
                        }
                    }
                }
                if !inbox.queue.is_empty() {
                    // More waits than this round took: come back for it.
                    inbox.notify.notify_one();
                }
            }
            _ = stop.notified(), if !*stopping => {
                *stopping = true;
                inbox.notify.notify_one();
            }
            _ = tokio::time::sleep(Duration::from_millis(50)), if *stopping => {}
        }
    }
}

type Confirm =
    std::pin::Pin<Box<dyn std::future::Future<Output = (u64, lapin::Result<Confirmation>)> + Send>>;

async fn publish(
    channel: &Channel,
    topology: &Topology,
    id: u64,
    shard: u16,
    body: Arc<Vec<u8>>,
) -> Result<Confirm> {
    let confirm = channel
        .basic_publish(
            topology.inbound_exchange().into(),
            Topology::shard_routing_key(shard).into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .context("publishing to the broker")?;
    Ok(Box::pin(async move { (id, confirm.await) }))
}

/// Hands a delivery to the cores that may hold its targets.
async fn route(node: &Node, data: &[u8]) {
    let envelope = match OutboundView::access(data) {
        Ok(envelope) => envelope,
        Err(error) => {
            tracing::error!(%error, "dropping an invalid delivery envelope");
            return;
        }
    };
    let delivery = match Delivery::new(envelope.frame_bytes(), Instant::now()) {
        Ok(delivery) => delivery,
        Err(error) => {
            tracing::error!(%error, "dropping a delivery with an invalid server frame");
            return;
        }
    };
    let targets: Arc<[Target]> = envelope.targets.iter().map(|t| t.to_native()).collect();
    for (core, mailbox) in node.mailboxes.iter().enumerate() {
        if !crate::router::core_holds_any(&targets, core) {
            continue;
        }
        let mut msg = CoreMsg::Deliver {
            targets: targets.clone(),
            except: None,
            delivery: delivery.clone(),
        };
        // A full mailbox holds the delivery (and, through the unacked prefetch, the broker).
        while let Err(back) = mailbox.push(msg) {
            msg = back;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The Redis side: which node holds which user, and when users were last seen. The
/// contract with the backend: the set `{prefix}:nodes:{user}` holds the node ids where the
/// user has a session (refreshed with a TTL); `{prefix}:seen:{user}` holds the last-seen
/// time in microseconds.
mod registry {
    use super::*;

    pub(super) async fn run(settings: BridgeSettings, mut rx: mpsc::UnboundedReceiver<BridgeMsg>) {
        let mut sessions: HashMap<UserId, u32> = HashMap::new();
        let mut redis = None;
        let ttl = settings.registry_ttl.as_secs().max(3) as i64;
        let mut refresh = tokio::time::interval(settings.registry_ttl / 3);
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    let change = match msg {
                        BridgeMsg::Online(user) => {
                            let count = sessions.entry(user).or_insert(0);
                            *count += 1;
                            (*count == 1).then_some((user, None))
                        }
                        BridgeMsg::Offline(user, at_us) => match sessions.get_mut(&user) {
                            Some(count) if *count > 1 => { *count -= 1; None }
                            Some(_) => { sessions.remove(&user); Some((user, Some(at_us))) }
                            None => None,
                        },
                        BridgeMsg::Publish { .. } => None,
                    };
                    if let Some((user, offline_at)) = change {
                        apply(&settings, &mut redis, user, offline_at, ttl).await;
                    }
                }
                _ = refresh.tick() => refresh_all(&settings, &mut redis, &sessions, ttl).await,
            }
        }
        // Shutting down: this node holds nobody any more.
        let users: Vec<UserId> = sessions.keys().copied().collect();
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        for user in users {
            apply(&settings, &mut redis, user, Some(now_us), ttl).await;
        }
    }

    async fn connection(
        settings: &BridgeSettings,
        redis: &mut Option<redis::aio::ConnectionManager>,
    ) -> Option<redis::aio::ConnectionManager> {
        if redis.is_none() {
            let client = redis::Client::open(settings.redis_url.as_str());
            match client {
                Ok(client) => match client.get_connection_manager().await {
                    Ok(manager) => *redis = Some(manager),
                    Err(error) => {
                        tracing::warn!(%error, "Redis is unreachable; the registry is stale until it returns")
                    }
                },
                Err(error) => tracing::error!(%error, "bad Redis URL"),
            }
        }
        redis.clone()
    }

    async fn apply(
        settings: &BridgeSettings,
        redis: &mut Option<redis::aio::ConnectionManager>,
        user: UserId,
        offline_at: Option<u64>,
        ttl: i64,
    ) {
        let Some(mut con) = connection(settings, redis).await else {
            return;
        };
        let nodes = format!("{}:nodes:{user}", settings.redis_prefix);
        let result: redis::RedisResult<()> = match offline_at {
            None => {
                redis::pipe()
                    .sadd(&nodes, settings.node_id)
                    .ignore()
                    .expire(&nodes, ttl)
                    .ignore()
                    .query_async(&mut con)
                    .await
            }
            Some(at_us) => {
                let seen = format!("{}:seen:{user}", settings.redis_prefix);
                redis::pipe()
                    .srem(&nodes, settings.node_id)
                    .ignore()
                    .set(&seen, at_us)
                    .ignore()
                    .query_async(&mut con)
                    .await
            }
        };
        if let Err(error) = result {
            tracing::warn!(%error, user, "updating the registry failed");
        }
    }

    async fn refresh_all(
        settings: &BridgeSettings,
        redis: &mut Option<redis::aio::ConnectionManager>,
        sessions: &HashMap<UserId, u32>,
        ttl: i64,
    ) {
        if sessions.is_empty() {
            return;
        }
        let Some(mut con) = connection(settings, redis).await else {
            return;
        };
        let users: Vec<UserId> = sessions.keys().copied().collect();
        for chunk in users.chunks(1000) {
            let mut pipe = redis::pipe();
            for user in chunk {
                let nodes = format!("{}:nodes:{user}", settings.redis_prefix);
                pipe.sadd(&nodes, settings.node_id)
                    .ignore()
                    .expire(&nodes, ttl)
                    .ignore();
            }
            if let Err(error) = pipe.query_async::<()>(&mut con).await {
                tracing::warn!(%error, "refreshing the registry failed");
                return;
            }
        }
    }
}
