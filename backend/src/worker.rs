//! One shard's worker: consume the shard queue in batches, persist each batch in one
//! transaction, publish what it produced with confirms (one envelope per gateway node),
//! then acknowledge it.
//!
//! The steps are pipelined: once a batch's envelopes are queued on the channel, the next
//! batch is persisted while the broker confirms them, and batches are acknowledged in
//! order as their confirms come in (at most [`MAX_UNSETTLED_BATCHES`] at a time). A
//! batch's cycle is then its transaction, not its transaction plus a confirm's round trip.
//!
//! The order of the steps is the delivery guarantee. Nothing is acknowledged before its
//! transaction commits and its deliveries are confirmed; a failure anywhere before the ack
//! leaves the frames with the broker (held by this worker while it retries, or returned to
//! the queue when the channel goes), and doing them again is safe because the database side
//! is idempotent: see `persist`. A frame the broker returns that way comes back marked as
//! redelivered, and a stored message found by a redelivered frame is published again in
//! full, since its first publish may never have happened.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use broker::{DEAD_LETTER_REASON_HEADER, QueuedPublish, REPUBLISH_HEADER, Topology};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wire::ErrorCode;
use wire::envelope::Inbound;
use wire::server::ErrorFrame;

use crate::config::Config;
use crate::db::{Db, Failure, classify};
use crate::outcome::{Outcome, Output, Recipients};
use crate::registry::{Directory, Registry};
use crate::request::{self, Request};
use crate::route::{self, Envelope};
use crate::stats::Stats;

/// How many times a batch that conflicts with another transaction is tried again as it is,
/// before it is treated like a permanent failure (and split to find the cause).
const MAX_CONFLICT_RETRIES: u32 = 5;

/// Batches whose deliveries await their confirms while the next ones are persisted. Each
/// holds its encoded envelopes until they are written, so this also bounds that memory.
const MAX_UNSETTLED_BATCHES: usize = 4;

/// How long opening a session's channels and starting its consumer may take (the
/// connection has its own timeout) before the session starts over.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What every shard task of the worker shares.
pub(crate) struct Shared {
    pub config: Config,
    pub topology: Topology,
    pub amqp: Amqp,
    pub registry: Registry,
    pub stats: Arc<Stats>,
    pub shutdown: CancellationToken,
    /// How many shards have consumed their queue at least once (readiness).
    pub consuming: tokio::sync::watch::Sender<usize>,
}

impl Shared {
    /// Waits until `shards` shards consume; false if shutdown comes first.
    pub(crate) async fn wait_until_consuming(&self, shards: usize) -> bool {
        let mut consuming = self.consuming.subscribe();
        tokio::select! {
            reached = consuming.wait_for(|&n| n >= shards) => reached.is_ok(),
            _ = self.shutdown.cancelled() => false,
        }
    }
}

/// The worker's AMQP connection, opened again by whichever shard first finds it broken.
pub(crate) struct Amqp {
    url: String,
    name: String,
    connection: Mutex<Option<Arc<Connection>>>,
}

impl Amqp {
    pub(crate) fn new(url: String, name: String) -> Amqp {
        Amqp {
            url,
            name,
            connection: Mutex::new(None),
        }
    }

    /// The open connection, connecting first if there is none or it broke.
    pub(crate) async fn get(&self) -> anyhow::Result<Arc<Connection>> {
        let mut current = self.connection.lock().await;
        if let Some(connection) = current.as_ref()
            && connection.status().connected()
        {
            return Ok(connection.clone());
        }
        let connection = Arc::new(broker::connect(&self.url, &self.name).await?);
        *current = Some(connection.clone());
        Ok(connection)
    }

    /// Closes the connection cleanly, if it is open.
    pub(crate) async fn close(&self) {
        if let Some(connection) = self.connection.lock().await.take()
            && connection.status().connected()
            && let Err(error) = connection.close(200, "shutting down".into()).await
        {
            tracing::debug!(%error, "closing the AMQP connection");
        }
    }
}

/// Runs shard `shard` until shutdown, starting a new session after any failure.
pub(crate) async fn run_shard(shared: Arc<Shared>, shard: u16) {
    let mut worker = ShardWorker {
        shared,
        shard,
        db: None,
        backoff: Backoff::default(),
        counted: false,
        consumed: false,
    };
    // While a dependency is down every attempt fails the same way: the first failure is
    // logged, then one line per `QUIET` with the count, instead of one per attempt and shard.
    let mut next_warning = Instant::now();
    let mut unlogged = 0u64;
    loop {
        match worker.session().await {
            Ok(()) => return,
            Err(_) if worker.shared.shutdown.is_cancelled() => return,
            Err(error) => {
                Stats::add(&worker.shared.stats.retries, 1);
                let now = Instant::now();
                if std::mem::take(&mut worker.consumed) || now >= next_warning {
                    tracing::warn!(
                        shard,
                        error = format!("{error:#}"),
                        failed_attempts_not_logged = std::mem::take(&mut unlogged),
                        "shard session failed; starting again"
                    );
                    next_warning = now + QUIET;
                } else {
                    unlogged += 1;
                    tracing::debug!(
                        shard,
                        error = format!("{error:#}"),
                        "shard session failed again"
                    );
                }
                if worker.pause().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// How long repeated session failures of a shard go unlogged (at warn) after one is logged.
const QUIET: Duration = Duration::from_secs(30);

struct ShardWorker {
    shared: Arc<Shared>,
    shard: u16,
    db: Option<Db>,
    backoff: Backoff,
    /// This shard is counted in [`Shared::consuming`].
    counted: bool,
    /// The current session got as far as consuming (its failure is news, not a repeat).
    consumed: bool,
}

/// The two channels of a session: deliveries come in and are settled on one, outbound
/// envelopes go out with confirms on the other.
struct Channels {
    consume: Channel,
    publish: Channel,
}

/// The frames of the deliveries taken so far, in queue order, and the tag of the last valid
/// delivery (acknowledging a rejected one again would be a channel error).
#[derive(Default)]
struct Batch {
    requests: Vec<Request>,
    last_tag: Option<u64>,
}

/// How a transaction runs its frames.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// All together: the fast path.
    Whole,
    /// Each frame in a savepoint, to find the ones the database refuses.
    EachFrame,
}

/// The result of trying a set of frames in one transaction.
enum Attempt {
    /// Committed, with the frames the database refused (by index, with the reason); only
    /// [`Mode::EachFrame`] commits with refusals.
    Committed(Outcome, Vec<(usize, String)>),
    Refused(tokio_postgres::Error),
}

/// A frame the database refuses, on its way to the dead-letter queue.
struct Poisoned {
    request: Request,
    error: String,
}

impl ShardWorker {
    /// Opens channels, consumes the shard and handles batches until shutdown (`Ok`) or a
    /// failure that needs new channels (`Err`).
    async fn session(&mut self) -> anyhow::Result<()> {
        let config = &self.shared.config;
        let queue = self.shared.topology.inbound_queue(self.shard);
        // Bounded: after a broker restart, a quorum queue that is still recovering can
        // leave `basic.consume` unanswered; trying again on fresh channels gets through.
        let (channels, mut consumer) = tokio::time::timeout(SETUP_TIMEOUT, self.open(&queue))
            .await
            .with_context(|| format!("the broker did not let {queue} be consumed in time"))??;
        tracing::info!(shard = self.shard, queue, "consuming");
        self.backoff.reset();
        self.consumed = true;
        if !std::mem::replace(&mut self.counted, true) {
            self.shared.consuming.send_modify(|n| *n += 1);
        }
        let (batch_size, batch_wait) = (config.batch_size, config.batch_wait);
        let mut unsettled = FuturesOrdered::new();
        loop {
            let first = tokio::select! {
                biased;
                _ = self.shared.shutdown.cancelled() => {
                    // What is persisted and published is acknowledged before the channels
                    // close; unhandled prefetched deliveries go back to the queue with them.
                    while let Some(settled) = unsettled.next().await {
                        Self::acknowledge(&channels, settled).await?;
                    }
                    for channel in [&channels.consume, &channels.publish] {
                        if let Err(error) = channel.close(200, "shutting down".into()).await {
                            tracing::debug!(%error, "closing a channel");
                        }
                    }
                    return Ok(());
                }
                Some(settled) = unsettled.next(), if !unsettled.is_empty() => {
                    Self::acknowledge(&channels, settled).await?;
                    continue;
                }
                next = consumer.next(), if unsettled.len() < MAX_UNSETTLED_BATCHES => next,
            };
            // A delivery holds one frame or a gateway's batch of them: the batch is counted
            // in frames, and a delivery is never split.
            let mut batch = Batch::default();
            self.take(&channels, &mut batch, delivery(first, &queue)?)
                .await?;
            let deadline = Instant::now() + batch_wait;
            while batch.requests.len() < batch_size {
                // `timeout_at` polls the stream before looking at the clock, so deliveries
                // that are already here join the batch even with a zero wait.
                match tokio::time::timeout_at(deadline, consumer.next()).await {
                    Ok(next) => {
                        self.take(&channels, &mut batch, delivery(next, &queue)?)
                            .await?
                    }
                    Err(_) => break,
                }
            }
            if let Some(settling) = self.handle_batch(&channels, batch).await? {
                unsettled.push_back(settling);
            }
            self.backoff.reset();
        }
    }

    /// Acknowledges a batch whose deliveries the broker confirmed: every delivery up to its
    /// last valid one (the invalid ones are settled already).
    async fn acknowledge(channels: &Channels, settled: Settled) -> anyhow::Result<()> {
        let Settled { last_tag, confirms } = settled;
        confirms?;
        if let Some(last) = last_tag {
            channels
                .consume
                .basic_ack(last, BasicAckOptions { multiple: true })
                .await
                .context("acknowledging a batch")?;
        }
        Ok(())
    }

    /// Opens the session's channels and starts consuming `queue`.
    async fn open(&self, queue: &str) -> anyhow::Result<(Channels, Consumer)> {
        let config = &self.shared.config;
        let connection = self.shared.amqp.get().await?;
        let consume = connection
            .create_channel()
            .await
            .context("opening the consume channel")?;
        consume
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .context("setting the prefetch window")?;
        let publish = connection
            .create_channel()
            .await
            .context("opening the publish channel")?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        let consumer = consume
            .basic_consume(
                queue.into(),
                format!("{}.{}", config.name, self.shard).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {queue}"))?;
        Ok((Channels { consume, publish }, consumer))
    }

    /// Decodes a delivery into the batch; an invalid one is dead-lettered at once.
    async fn take(
        &self,
        channels: &Channels,
        batch: &mut Batch,
        delivery: Delivery,
    ) -> anyhow::Result<()> {
        let tag = delivery.delivery_tag;
        match request::decode(tag, redelivered(&delivery), &delivery.data) {
            Ok(requests) => {
                batch.requests.extend(requests);
                batch.last_tag = Some(tag);
            }
            Err(error) => {
                tracing::warn!(
                    shard = self.shard,
                    tag,
                    bytes = delivery.data.len(),
                    %error,
                    "dead-lettering an invalid inbound envelope"
                );
                reject(&channels.consume, tag).await?;
                Stats::add(&self.shared.stats.invalid, 1);
            }
        }
        Ok(())
    }

    /// Persists a batch and queues its deliveries; returns what settles it once the broker
    /// confirmed them (`None` for a batch with no valid delivery).
    async fn handle_batch(
        &mut self,
        channels: &Channels,
        batch: Batch,
    ) -> anyhow::Result<Option<Settling>> {
        let Batch { requests, last_tag } = batch;
        if requests.is_empty() {
            return Ok(None);
        }
        let now_us = now_us();
        let started = Instant::now();
        let (outcome, poisoned) = self.persist(&requests, now_us).await?;
        let persisted = started.elapsed();
        let directory = self.look_up(&outcome.outputs, &requests).await?;
        let looked_up = started.elapsed();
        let stats = &self.shared.stats;
        Stats::add(&stats.stored, outcome.stored);
        Stats::add(&stats.duplicates, outcome.duplicates);
        Stats::add(&stats.republished, outcome.republished);
        Stats::add(&stats.refused, outcome.refused);
        Stats::add(&stats.poisoned, poisoned.len() as u64);
        let form = if self.shared.config.outbound_batches {
            route::Form::Batch
        } else {
            route::Form::Single
        };
        let (envelopes, dropped) = route::route(outcome.outputs, &directory, now_us, form);
        if dropped > 0 {
            tracing::error!(
                shard = self.shard,
                dropped,
                "outputs dropped because they do not encode"
            );
        }
        let published = envelopes.len() as u64;
        let confirms = self.publish(&channels.publish, envelopes, poisoned).await?;
        Stats::add(&self.shared.stats.published, published);
        let queued = started.elapsed();
        self.shared.stats.record_batch(requests.len() as u64);
        // How long the batch's oldest message took from the gateway's read to this batch: the
        // gateway's bridge, the broker's inbound queue and the wait for this shard. Sends
        // only: an ack's time is the start of the gateway's window that folded it.
        let queued_us = requests
            .iter()
            .filter(|r| matches!(r.frame, wire::ClientFrame::Send(_)))
            .map(|r| r.received_at_us)
            .min()
            .map_or(0, |oldest| now_us.saturating_sub(oldest));
        tracing::debug!(
            shard = self.shard,
            frames = requests.len(),
            queued_us,
            envelopes = published,
            persist_us = persisted.as_micros(),
            lookup_us = (looked_up - persisted).as_micros(),
            publish_us = (queued - looked_up).as_micros(),
            "batch persisted and published"
        );
        let shard = self.shard;
        Ok(Some(Box::pin(async move {
            let confirms = confirms.await;
            tracing::debug!(
                shard,
                confirm_us = (started.elapsed() - queued).as_micros(),
                "batch confirmed"
            );
            Settled { last_tag, confirms }
        })))
    }

    /// Commits the batch in one transaction. If the database refuses it, tries it once more
    /// with every frame in a savepoint of its own, commits what the database takes, answers
    /// each refused frame with an error, and returns those frames to be dead-lettered.
    async fn persist(
        &mut self,
        requests: &[Request],
        now_us: u64,
    ) -> anyhow::Result<(Outcome, Vec<Poisoned>)> {
        let all: Vec<&Request> = requests.iter().collect();
        let error = match self.attempt(&all, now_us, Mode::Whole).await? {
            Attempt::Committed(outcome, _) => return Ok((outcome, Vec::new())),
            Attempt::Refused(error) => error,
        };
        tracing::warn!(
            shard = self.shard,
            frames = all.len(),
            error = describe(&error),
            "the database refused a batch; trying it once more with each frame isolated"
        );
        let (mut outcome, refused) = match self.attempt(&all, now_us, Mode::EachFrame).await? {
            Attempt::Committed(outcome, refused) => (outcome, refused),
            // Not a frame's fault after all (a conflict that outlasted its retries): the
            // whole batch is refused, every frame answered and dead-lettered.
            Attempt::Refused(error) => (
                Outcome::default(),
                (0..all.len()).map(|i| (i, describe(&error))).collect(),
            ),
        };
        let mut poisoned = Vec::with_capacity(refused.len());
        for (index, error) in refused {
            let request = all[index];
            tracing::error!(
                shard = self.shard,
                tag = request.tag,
                user = request.origin.user_id,
                kind = request.frame.kind().name(),
                error,
                "dead-lettering a frame the database refuses"
            );
            // The client would otherwise wait for an answer that never comes.
            outcome.outputs.push(Output::new(
                wire::ServerFrame::Error(ErrorFrame::new(
                    ErrorCode::Internal,
                    "the server could not store this request",
                    request.client_msg_id(),
                )),
                Recipients::Connection {
                    node_id: request.origin.node_id,
                    connection_id: request.origin.connection_id,
                },
            ));
            poisoned.push(Poisoned {
                request: request.clone(),
                error,
            });
        }
        Ok((outcome, poisoned))
    }

    /// Runs frames in one transaction, reconnecting and retrying for as long as the failure
    /// is the connection's, and a few times if it is a conflict with another transaction.
    async fn attempt(
        &mut self,
        requests: &[&Request],
        now_us: u64,
        mode: Mode,
    ) -> anyhow::Result<Attempt> {
        let mut conflicts = 0;
        loop {
            let db = self.database().await?;
            let result = match mode {
                Mode::Whole => db.apply(requests, now_us).await.map(|o| (o, Vec::new())),
                Mode::EachFrame => db.apply_each(requests, now_us).await.map(|(o, refused)| {
                    let refused = refused.into_iter().map(|(i, e)| (i, describe(&e)));
                    (o, refused.collect())
                }),
            };
            let error = match result {
                Ok((outcome, refused)) => return Ok(Attempt::Committed(outcome, refused)),
                Err(error) => error,
            };
            match classify(&error) {
                Failure::Connection => {
                    tracing::warn!(
                        shard = self.shard,
                        error = describe(&error),
                        "database connection failed; reconnecting"
                    );
                    self.db = None;
                }
                Failure::Conflict if conflicts < MAX_CONFLICT_RETRIES => {
                    conflicts += 1;
                    tracing::info!(
                        shard = self.shard,
                        error = describe(&error),
                        "transaction conflict; retrying the batch"
                    );
                }
                Failure::Conflict | Failure::Permanent => return Ok(Attempt::Refused(error)),
            }
            Stats::add(&self.shared.stats.retries, 1);
            self.pause().await?;
        }
    }

    /// The database connection, connecting (with backoff, until shutdown) if there is none.
    async fn database(&mut self) -> anyhow::Result<&mut Db> {
        while self.db.is_none() {
            let config = &self.shared.config;
            let connecting = Db::connect(
                &config.database_url,
                &config.pg_schema,
                config.max_chats_per_user,
            );
            match connecting.await {
                Ok(db) => self.db = Some(db),
                Err(error) => {
                    tracing::warn!(
                        shard = self.shard,
                        error = format!("{error:#}"),
                        "cannot reach the database"
                    );
                    self.pause().await?;
                }
            }
        }
        self.db.as_mut().context("the database connection vanished")
    }

    /// The nodes of every recipient, in one Redis round trip (retried until Redis answers),
    /// plus what the batch itself shows: each sender is on the node its frame came from.
    async fn look_up(
        &mut self,
        outputs: &[Output],
        requests: &[Request],
    ) -> anyhow::Result<Directory> {
        let (users, seen) = route::lookups(outputs);
        loop {
            match self.shared.registry.lookup(&users, &seen).await {
                Ok(mut directory) => {
                    for request in requests {
                        directory.add(request.origin.user_id, request.origin.node_id);
                    }
                    return Ok(directory);
                }
                Err(error) => {
                    tracing::warn!(shard = self.shard, %error, "registry lookup failed; retrying");
                    Stats::add(&self.shared.stats.retries, 1);
                    self.pause().await?;
                }
            }
        }
    }

    /// Publishes every envelope in order, then each poisoned frame to the dead-letter
    /// exchange, with at most `max_unconfirmed` of this batch awaiting their confirms, and
    /// returns once the last of them is queued on the channel, with what resolves when the
    /// broker has confirmed them all.
    ///
    /// Each publish is queued on the channel as it is made ([`broker::queue_publish`]), in
    /// envelope order, and the writes and confirms are awaited together afterwards.
    async fn publish(
        &self,
        channel: &Channel,
        envelopes: Vec<Envelope>,
        poisoned: Vec<Poisoned>,
    ) -> anyhow::Result<impl Future<Output = anyhow::Result<()>> + Send + 'static> {
        let topology = &self.shared.topology;
        let (outbound, dead) = (
            topology.outbound_exchange(),
            topology.dead_letter_exchange(),
        );
        let mut publications: Vec<(&str, String, Vec<u8>, BasicProperties)> = envelopes
            .into_iter()
            .map(|e| {
                let key = Topology::node_routing_key(e.node_id);
                (outbound.as_str(), key, e.body, properties(e.republish))
            })
            .collect();
        for poison in poisoned {
            match dead_letter(&poison) {
                Ok(body) => publications.push((
                    dead.as_str(),
                    Topology::shard_routing_key(self.shard),
                    body,
                    dead_letter_properties(&poison.error),
                )),
                Err(error) => tracing::error!(%error, "a refused frame does not encode; dropped"),
            }
        }
        let window = self.shared.config.max_unconfirmed;
        let mut writes = Vec::with_capacity(window.min(publications.len()));
        for (exchange, key, body, properties) in publications {
            if writes.len() >= window {
                settle(&mut writes).await?;
            }
            writes.push(
                broker::queue_publish(channel, exchange.to_owned(), key, body, properties).await,
            );
        }
        Ok(async move { settle(&mut writes).await })
    }

    /// Waits the next backoff step; fails if shutdown comes first.
    async fn pause(&mut self) -> anyhow::Result<()> {
        let delay = self.backoff.next();
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.shared.shutdown.cancelled() => bail!("shutting down"),
        }
    }
}

fn delivery(next: Option<Result<Delivery, lapin::Error>>, queue: &str) -> anyhow::Result<Delivery> {
    match next {
        Some(Ok(delivery)) => Ok(delivery),
        Some(Err(error)) => Err(error).with_context(|| format!("consuming {queue}")),
        None => bail!("the broker ended the consumer of {queue}"),
    }
}

async fn reject(channel: &Channel, tag: u64) -> anyhow::Result<()> {
    channel
        .basic_reject(tag, BasicRejectOptions { requeue: false })
        .await
        .context("dead-lettering a delivery")
}

/// A batch on its way to being acknowledged: resolves when the broker has confirmed its
/// deliveries.
type Settling = Pin<Box<dyn Future<Output = Settled> + Send>>;

/// A batch whose deliveries are confirmed (or failed to be), to acknowledge up to
/// `last_tag`.
struct Settled {
    last_tag: Option<u64>,
    confirms: anyhow::Result<()>,
}

/// Waits until every queued publish is written and confirmed.
async fn settle(writes: &mut Vec<QueuedPublish>) -> anyhow::Result<()> {
    let mut confirms = Vec::with_capacity(writes.len());
    for write in writes.drain(..) {
        confirms.push(write.await.context("publishing a delivery")?);
    }
    for confirm in confirms {
        let confirmation = confirm.await.context("waiting for a publisher confirm")?;
        if confirmation.is_nack() {
            bail!("the broker refused an outbound delivery (nack)");
        }
    }
    Ok(())
}

/// Transient: node queues carry deliveries that clients recover with sync, in memory (see
/// `broker`'s topology); a republish is marked for whoever wants to tell it from a bug.
fn properties(republish: bool) -> BasicProperties {
    let properties = BasicProperties::default().with_delivery_mode(1);
    if republish {
        let mut headers = FieldTable::default();
        headers.insert(REPUBLISH_HEADER.into(), AMQPValue::Boolean(true));
        properties.with_headers(headers)
    } else {
        properties
    }
}

/// A refused frame as the single-frame inbound envelope it would have come in, so that an
/// operator can inspect it and replay it to its shard.
fn dead_letter(poison: &Poisoned) -> Result<Vec<u8>, wire::WireError> {
    let request = &poison.request;
    let frame = request.frame.encode()?;
    Inbound {
        user_id: request.origin.user_id,
        node_id: request.origin.node_id,
        core: 0,
        connection_id: request.origin.connection_id,
        received_at_us: 0,
        frame: &frame,
    }
    .encode()
}

/// Persistent (the dead-letter queue is durable), with the database's reason.
fn dead_letter_properties(error: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        DEAD_LETTER_REASON_HEADER.into(),
        AMQPValue::LongString(error.into()),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers)
}

/// Whether the broker handed this delivery out before. Quorum queues also count returns in
/// `x-delivery-count`, which survives a broker restart.
fn redelivered(delivery: &Delivery) -> bool {
    let count = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned());
    let returned_before = match count {
        Some(AMQPValue::LongLongInt(n)) => n > 0,
        Some(AMQPValue::LongInt(n)) => n > 0,
        _ => false,
    };
    delivery.redelivered || returned_before
}

/// A database error with the server's message, which `Display` alone leaves out.
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Exponential backoff between 50 ms and 1 s: a dependency that comes back is used again
/// within a second (the operations target for a broker restart is under 5 s).
struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(1);

    fn next(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { next: Self::MIN }
    }
}
