//! The broker bridge: one thread with a tokio runtime, beside the cores, that owns the
//! node's AMQP connection and its Redis registry. Cores hand it frames and session changes
//! through bounded lock-free queues; it publishes the frames in batches with confirms
//! (`publish`), consumes this node's delivery queue and hands each delivery to the cores
//! that hold its targets (`deliver`), and keeps the registry (`registry`).
//!
//! One bridge per node, not one per core: the frames of every core bound for one shard
//! travel in one broker message, so the broker's cost per message is shared by all cores'
//! traffic, and the node keeps one AMQP connection and one registry writer. The bridge does
//! little per frame (an append to a batch) and little per delivery (a lookup and a queue
//! push), so one thread keeps up with several cores; the work that grows with the load, the
//! WebSocket frames, stays on the cores. A node with many cores that outgrows one bridge
//! thread would shard the bridge by inbound shard, each with its own connection.
//!
//! Backpressure: while more than `--max-unconfirmed` publishes await their confirm, or the
//! broker is unreachable, the node is paused and sessions stop reading their sockets.
//! Nothing is lost across a broker restart: unconfirmed publishes are kept, in order, and
//! republished on the new connection (the backend is idempotent, so a duplicate is safe).
//! The registry does not wait for the broker: it runs beside it and reaches Redis whether
//! or not the broker is up.

mod deliver;
mod publish;
mod registry;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use broker::Topology;
use crossbeam_queue::ArrayQueue;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use tokio::sync::{Notify, watch};
use wire::UserId;

use crate::node::Node;
use deliver::Router;
use publish::{NextRound, Publisher};
use registry::Sessions;

/// Frames the cores hand the bridge before they park theirs and pause reading.
const PUBLISH_CAPACITY: usize = 64 * 1024;

/// Session changes the cores hand the registry before they park theirs. The registry drains
/// them whether or not Redis answers, so this fills only in a burst.
const REGISTRY_CAPACITY: usize = 64 * 1024;

/// First pause before connecting again after a session with the broker ended; it doubles
/// up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Longest pause between reconnection attempts. One attempt a second costs a restarting
/// broker one refused TCP connection, and bounds how long after it accepts again live
/// delivery resumes (the operations target is under 5 s).
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A client frame with what the gateway asserts about it, on its way into a batch.
#[derive(Debug)]
pub struct InboundFrame {
    /// From the verified token.
    pub user_id: UserId,
    /// The core that read it.
    pub core: u16,
    /// The connection that sent it.
    pub connection_id: u64,
    /// When the gateway read it, microseconds since the Unix epoch.
    pub received_at_us: u64,
    /// The client's binary frame, byte for byte.
    pub frame: Vec<u8>,
}

/// Work for the bridge.
#[derive(Debug)]
pub enum BridgeMsg {
    /// Publish a frame to a shard.
    Publish {
        /// The shard queue's routing key.
        shard: u16,
        /// The frame.
        frame: InboundFrame,
    },
    /// A session of this user opened on this core.
    Online {
        /// The user.
        user: UserId,
        /// The core holding the session.
        core: u16,
    },
    /// A session of this user on this core closed, at this time (microseconds since the
    /// epoch).
    Offline {
        /// The user.
        user: UserId,
        /// The core that held the session.
        core: u16,
        /// When.
        at_us: u64,
    },
}

/// A session change for the registry.
#[derive(Debug, Clone, Copy)]
struct SessionChange {
    user: UserId,
    core: u16,
    /// `None` when a session opened; the close time when one closed.
    closed_at_us: Option<u64>,
}

/// The cores' side of the bridge.
#[derive(Debug)]
pub struct BridgeInbox {
    publishes: ArrayQueue<(u16, InboundFrame)>,
    publish_ready: Notify,
    sessions: ArrayQueue<SessionChange>,
    sessions_ready: Notify,
}

impl BridgeInbox {
    fn new() -> BridgeInbox {
        BridgeInbox {
            publishes: ArrayQueue::new(PUBLISH_CAPACITY),
            publish_ready: Notify::new(),
            sessions: ArrayQueue::new(REGISTRY_CAPACITY),
            sessions_ready: Notify::new(),
        }
    }

    /// Queues work; a full queue hands the message back (the core parks it and pauses).
    pub fn push(&self, msg: BridgeMsg) -> Result<(), BridgeMsg> {
        match msg {
            BridgeMsg::Publish { shard, frame } => {
                self.publishes
                    .push((shard, frame))
                    .map_err(|(shard, frame)| BridgeMsg::Publish { shard, frame })?;
                self.publish_ready.notify_one();
            }
            BridgeMsg::Online { user, core } => {
                self.push_change(SessionChange {
                    user,
                    core,
                    closed_at_us: None,
                })
                .map_err(|_| msg)?;
            }
            BridgeMsg::Offline { user, core, at_us } => {
                self.push_change(SessionChange {
                    user,
                    core,
                    closed_at_us: Some(at_us),
                })
                .map_err(|_| msg)?;
            }
        }
        Ok(())
    }

    /// Whether `msg` is a session change, which the registry takes whatever the broker does.
    pub fn is_session_change(msg: &BridgeMsg) -> bool {
        !matches!(msg, BridgeMsg::Publish { .. })
    }

    fn push_change(&self, change: SessionChange) -> Result<(), SessionChange> {
        self.sessions.push(change)?;
        self.sessions_ready.notify_one();
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
    /// How long frames gather before a publish.
    pub publish_linger: Duration,
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
        let inbox = Arc::new(BridgeInbox::new());
        let stop = Arc::new(Notify::new());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the bridge runtime")?;
        let thread = {
            let (inbox, stop) = (inbox.clone(), stop.clone());
            std::thread::Builder::new()
                .name("bridge".into())
                .spawn(move || {
                    let local = tokio::task::LocalSet::new();
                    runtime.block_on(local.run_until(run(settings, node, inbox, stop)));
                })
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

async fn run(
    settings: BridgeSettings,
    node: Arc<Node>,
    inbox: Arc<BridgeInbox>,
    stop: Arc<Notify>,
) {
    let probe = tokio::task::spawn_local(crate::health::watch_redis(
        settings.redis_url.clone(),
        node.clone(),
    ));
    let sessions = Rc::new(RefCell::new(Sessions::default()));
    let (registry_stop, registry_stopped) = watch::channel(false);
    let registry = tokio::task::spawn_local(registry::run(
        settings.clone(),
        inbox.clone(),
        sessions.clone(),
        registry_stopped,
    ));
    let mut publisher = Publisher::new(&settings);
    let mut router = Router::new(node.mailboxes.len(), sessions);
    let mut backoff = FIRST_BACKOFF;
    let mut stopping = false;
    loop {
        let outcome = session(
            &settings,
            &node,
            &inbox,
            &stop,
            &mut publisher,
            &mut router,
            &mut stopping,
        )
        .await;
        node.broker_paused.store(true, Ordering::Release);
        node.note_broker_down();
        if node.broker_connected.swap(false, Ordering::AcqRel) {
            // A session that got going starts the backoff over: one broker restart an
            // hour must not leave every later reconnection at the longest pause.
            backoff = FIRST_BACKOFF;
        }
        match outcome {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), unconfirmed = publisher.unconfirmed(), retry_in = ?backoff, "broker session ended");
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
    let _ = registry_stop.send(true);
    let _ = registry.await;
    probe.abort();
}

/// One connection's life. `Ok` when stopping cleanly, `Err` when the broker went away.
async fn session(
    settings: &BridgeSettings,
    node: &Node,
    inbox: &BridgeInbox,
    stop: &Notify,
    publisher: &mut Publisher,
    router: &mut Router,
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
    let mut in_flight = publisher.republish(&channel).await;
    // The deliveries this thread allocated are freed by the cores; the allocator gives
    // their memory back only when this thread asks.
    let mut release_memory = tokio::time::interval(Duration::from_secs(1));
    // With a linger: when the frames queued since the last publish go out.
    let mut publish_at: Option<tokio::time::Instant> = None;
    node.broker_connected.store(true, Ordering::Release);
    node.note_broker_up();
    tracing::info!(node = settings.node_id, "connected to the broker");
    loop {
        if router.is_parked() {
            // Also here, not only on the retry timer, which busy branches could keep from
            // firing.
            router.retry(&node.mailboxes);
        }
        let paused = publisher.is_full();
        node.broker_paused.store(paused, Ordering::Release);
        if *stopping && inbox.publishes.is_empty() && publisher.unconfirmed() == 0 {
            return Ok(());
        }
        tokio::select! {
            biased;
            Some((id, confirmation)) = in_flight.next(), if !in_flight.is_empty() => {
                if let Some(again) = publisher.confirmed(&channel, id, confirmation).await? {
                    in_flight.push(again);
                }
                // Frames held back while this round was unconfirmed go out now.
                if publish_at.is_none() && !inbox.publishes.is_empty() {
                    inbox.publish_ready.notify_one();
                }
            }
            delivery = deliveries.next(), if router.has_room(&node.mailboxes) => {
                let delivery = delivery.context("the delivery stream ended")?.context("receiving a delivery")?;
                router.route(&node.mailboxes, &delivery.data);
                delivery.acker.ack(BasicAckOptions::default()).await.context("acking a delivery")?;
            }
            _ = tokio::time::sleep(deliver::RETRY), if router.is_parked() => {
                router.retry(&node.mailboxes);
            }
            _ = inbox.publish_ready.notified(), if !paused && publish_at.is_none() => {
                let next = if *stopping { NextRound::Now } else { publisher.next_round(inbox.publishes.len()) };
                match next {
                    NextRound::Now => in_flight.extend(publisher.publish_queued(&channel, inbox).await?),
                    NextRound::After(linger) => publish_at = Some(tokio::time::Instant::now() + linger),
                    // The round in flight's confirm wakes this branch again.
                    NextRound::OnConfirm => {}
                }
            }
            _ = tokio::time::sleep_until(publish_at.unwrap_or_else(tokio::time::Instant::now)), if !paused && publish_at.is_some() => {
                publish_at = None;
                in_flight.extend(publisher.publish_queued(&channel, inbox).await?);
            }
            _ = release_memory.tick() => crate::core::release_freed_memory(false),
            _ = stop.notified(), if !*stopping => {
                *stopping = true;
                publish_at = None;
                inbox.publish_ready.notify_one();
            }
            _ = tokio::time::sleep(Duration::from_millis(50)), if *stopping => {}
        }
    }
}
