//! One shard's worker: consume the shard queue in batches, persist each batch in one
//! transaction, publish what it produced with confirms, then acknowledge it.
//!
//! The order of the steps is the delivery guarantee. Nothing is acknowledged before its
//! transaction commits and its deliveries are confirmed; a failure anywhere before the ack
//! leaves the frames with the broker (held by this worker while it retries, or returned to
//! the queue when the channel goes), and doing them again is safe because the database side
//! is idempotent: see `persist`.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use broker::{REPUBLISH_HEADER, Topology};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, PublisherConfirm};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wire::ErrorCode;
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

/// What every shard task of the worker shares.
pub(crate) struct Shared {
    pub config: Config,
    pub topology: Topology,
    pub amqp: Amqp,
    pub registry: Registry,
    pub stats: Arc<Stats>,
    pub shutdown: CancellationToken,
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
    };
    loop {
        match worker.session().await {
            Ok(()) => return,
            Err(_) if worker.shared.shutdown.is_cancelled() => return,
            Err(error) => {
                Stats::add(&worker.shared.stats.retries, 1);
                tracing::warn!(
                    shard,
                    error = format!("{error:#}"),
                    "shard session failed; starting again"
                );
                if worker.pause().await.is_err() {
                    return;
                }
            }
        }
    }
}

struct ShardWorker {
    shared: Arc<Shared>,
    shard: u16,
    db: Option<Db>,
    backoff: Backoff,
}

/// The two channels of a session: deliveries come in and are settled on one, outbound
/// envelopes go out with confirms on the other.
struct Channels {
    consume: Channel,
    publish: Channel,
}

/// The result of trying a set of frames in one transaction.
enum Attempt {
    Committed(Outcome),
    Refused(tokio_postgres::Error),
}

impl ShardWorker {
    /// Opens channels, consumes the shard and handles batches until shutdown (`Ok`) or a
    /// failure that needs new channels (`Err`).
    async fn session(&mut self) -> anyhow::Result<()> {
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
        let queue = self.shared.topology.inbound_queue(self.shard);
        let mut consumer = consume
            .basic_consume(
                queue.as_str().into(),
                format!("{}.{}", config.name, self.shard).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {queue}"))?;
        tracing::info!(shard = self.shard, queue, "consuming");
        let channels = Channels { consume, publish };
        let (batch_size, batch_wait) = (config.batch_size, config.batch_wait);
        loop {
            let first = tokio::select! {
                biased;
                _ = self.shared.shutdown.cancelled() => {
                    // Unhandled prefetched deliveries go back to the queue with the channel.
                    for channel in [&channels.consume, &channels.publish] {
                        if let Err(error) = channel.close(200, "shutting down".into()).await {
                            tracing::debug!(%error, "closing a channel");
                        }
                    }
                    return Ok(());
                }
                next = consumer.next() => next,
            };
            let mut batch = vec![delivery(first, &queue)?];
            let deadline = Instant::now() + batch_wait;
            while batch.len() < batch_size {
                // `timeout_at` polls the stream before looking at the clock, so deliveries
                // that are already here join the batch even with a zero wait.
                match tokio::time::timeout_at(deadline, consumer.next()).await {
                    Ok(next) => batch.push(delivery(next, &queue)?),
                    Err(_) => break,
                }
            }
            self.handle_batch(&channels, batch).await?;
            self.backoff.reset();
        }
    }

    async fn handle_batch(
        &mut self,
        channels: &Channels,
        deliveries: Vec<Delivery>,
    ) -> anyhow::Result<()> {
        let mut requests = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match request::decode(delivery.delivery_tag, &delivery.data) {
                Ok(request) => requests.push(request),
                Err(error) => {
                    tracing::warn!(
                        shard = self.shard,
                        tag = delivery.delivery_tag,
                        bytes = delivery.data.len(),
                        %error,
                        "dead-lettering an invalid inbound envelope"
                    );
                    reject(&channels.consume, delivery.delivery_tag).await?;
                    Stats::add(&self.shared.stats.invalid, 1);
                }
            }
        }
        if requests.is_empty() {
            return Ok(());
        }
        let now_us = now_us();
        let started = Instant::now();
        let (outcome, poisoned) = self.persist(&requests, now_us).await?;
        let persisted = started.elapsed();
        for &tag in &poisoned {
            reject(&channels.consume, tag).await?;
        }
        let directory = self.look_up(&outcome.outputs, &requests).await?;
        let looked_up = started.elapsed();
        let stats = &self.shared.stats;
        Stats::add(&stats.stored, outcome.stored);
        Stats::add(&stats.duplicates, outcome.duplicates);
        Stats::add(&stats.republished, outcome.republished);
        Stats::add(&stats.refused, outcome.refused);
        Stats::add(&stats.poisoned, poisoned.len() as u64);
        let (envelopes, dropped) = route::route(outcome.outputs, &directory, now_us);
        if dropped > 0 {
            tracing::error!(
                shard = self.shard,
                dropped,
                "outputs dropped because they do not encode"
            );
        }
        let published = envelopes.len() as u64;
        self.publish(&channels.publish, envelopes).await?;
        Stats::add(&self.shared.stats.published, published);
        let confirmed = started.elapsed();
        self.mark_published(&outcome.unpublished).await?;
        // Every delivery up to the last handled one: the rejected ones are settled already.
        let last = requests
            .iter()
            .map(|r| r.tag)
            .filter(|tag| !poisoned.contains(tag))
            .max();
        if let Some(last) = last {
            channels
                .consume
                .basic_ack(last, BasicAckOptions { multiple: true })
                .await
                .context("acknowledging a batch")?;
        }
        self.shared
            .stats
            .record_batch((requests.len() - poisoned.len()) as u64);
        tracing::debug!(
            shard = self.shard,
            frames = requests.len(),
            envelopes = published,
            persist_us = persisted.as_micros(),
            lookup_us = (looked_up - persisted).as_micros(),
            publish_us = (confirmed - looked_up).as_micros(),
            mark_and_ack_us = (started.elapsed() - confirmed).as_micros(),
            "batch done"
        );
        Ok(())
    }

    /// Commits the batch in one transaction; if the database refuses it, commits its frames
    /// one at a time and returns the tags of the ones it still refuses (each answered with
    /// an error frame), to be dead-lettered.
    async fn persist(
        &mut self,
        requests: &[Request],
        now_us: u64,
    ) -> anyhow::Result<(Outcome, Vec<u64>)> {
        let all: Vec<&Request> = requests.iter().collect();
        let error = match self.attempt(&all, now_us).await? {
            Attempt::Committed(outcome) => return Ok((outcome, Vec::new())),
            Attempt::Refused(error) => error,
        };
        let mut outcome = Outcome::default();
        let mut poisoned = Vec::new();
        if all.len() > 1 {
            tracing::warn!(
                shard = self.shard,
                frames = all.len(),
                error = describe(&error),
                "the database refused a batch; retrying it one frame at a time"
            );
        }
        for &request in &all {
            let refused = if all.len() == 1 {
                Some(describe(&error))
            } else {
                match self.attempt(&[request], now_us).await? {
                    Attempt::Committed(one) => {
                        outcome.merge(one);
                        None
                    }
                    Attempt::Refused(error) => Some(describe(&error)),
                }
            };
            if let Some(error) = refused {
                tracing::error!(
                    shard = self.shard,
                    tag = request.tag,
                    user = request.origin.user_id,
                    kind = request.frame.kind().name(),
                    error,
                    "dead-lettering a frame the database refuses"
                );
                poisoned.push(request.tag);
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
            }
        }
        Ok((outcome, poisoned))
    }

    /// Runs frames in one transaction, reconnecting and retrying for as long as the failure
    /// is the connection's, and a few times if it is a conflict with another transaction.
    async fn attempt(&mut self, requests: &[&Request], now_us: u64) -> anyhow::Result<Attempt> {
        let mut conflicts = 0;
        loop {
            let db = self.database().await?;
            let error = match db.apply(requests, now_us).await {
                Ok(outcome) => return Ok(Attempt::Committed(outcome)),
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
            match Db::connect(&config.database_url, &config.pg_schema).await {
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

    async fn mark_published(&mut self, messages: &[(i64, i64)]) -> anyhow::Result<()> {
        loop {
            let db = self.database().await?;
            let Err(error) = db.mark_published(messages).await else {
                return Ok(());
            };
            // Whatever failed, the session may be left inside the failed transaction.
            self.db = None;
            if classify(&error) != Failure::Connection {
                // The flag only decides whether a later resend republishes in full; leaving
                // it false costs a duplicate delivery at worst, never a lost one.
                tracing::error!(
                    shard = self.shard,
                    error = describe(&error),
                    "could not mark messages published"
                );
                return Ok(());
            }
            self.pause().await?;
        }
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

    /// Publishes every envelope in order, with at most `max_unconfirmed` awaiting their
    /// confirms, and returns once the broker confirmed them all.
    ///
    /// lapin's `basic_publish` resolves only once its I/O loop has written the frames, so
    /// awaiting each publish in turn costs a loop turn per envelope. Instead each publish is
    /// polled once as soon as it is made, which queues its frames (and numbers its confirm)
    /// right then, in envelope order, and the writes are awaited together afterwards.
    async fn publish(&self, channel: &Channel, envelopes: Vec<Envelope>) -> anyhow::Result<()> {
        let exchange = self.shared.topology.outbound_exchange();
        let window = self.shared.config.max_unconfirmed;
        let mut writes = Vec::with_capacity(window.min(envelopes.len()));
        let mut confirms: Vec<PublisherConfirm> = Vec::with_capacity(writes.capacity());
        for envelope in &envelopes {
            if writes.len() + confirms.len() >= window {
                settle(&mut writes, &mut confirms).await?;
            }
            let mut write = Box::pin(channel.basic_publish(
                exchange.as_str().into(),
                Topology::node_routing_key(envelope.node_id).into(),
                BasicPublishOptions::default(),
                &envelope.body,
                properties(envelope.republish),
            ));
            match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
                Poll::Ready(result) => confirms.push(result.context("publishing a delivery")?),
                Poll::Pending => writes.push(write),
            }
        }
        settle(&mut writes, &mut confirms).await
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

/// Waits until every pending write is written and every publish confirmed.
async fn settle<W>(writes: &mut Vec<W>, confirms: &mut Vec<PublisherConfirm>) -> anyhow::Result<()>
where
    W: Future<Output = lapin::Result<PublisherConfirm>> + Unpin,
{
    for write in writes.drain(..) {
        confirms.push(write.await.context("publishing a delivery")?);
    }
    for confirm in confirms.drain(..) {
        let confirmation = confirm.await.context("waiting for a publisher confirm")?;
        if confirmation.is_nack() {
            bail!("the broker refused an outbound delivery (nack)");
        }
    }
    Ok(())
}

/// Persistent, so that a durable node queue keeps deliveries across a broker restart within
/// their TTL; a republish is marked for whoever wants to tell it from a bug.
fn properties(republish: bool) -> BasicProperties {
    let properties = BasicProperties::default().with_delivery_mode(2);
    if republish {
        let mut headers = FieldTable::default();
        headers.insert(REPUBLISH_HEADER.into(), AMQPValue::Boolean(true));
        properties.with_headers(headers)
    } else {
        properties
    }
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

/// Exponential backoff between 50 ms and 5 s.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(5);

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
