//! Frames to the broker: what the cores queued since the last turn, grouped by shard, goes
//! out as one inbound batch per shard (more when a shard's frames outgrow a batch), with
//! publisher confirms. Publishes are pipelined: each is queued on the channel at once, in
//! order, and its write and confirm complete in the background, so one slow publish holds
//! up neither the next publishes nor the deliveries.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use broker::Topology;
use futures_util::stream::FuturesUnordered;
use lapin::{BasicProperties, Channel, Confirmation};
use wire::envelope::{Inbound, InboundBatch};

use super::{BridgeInbox, BridgeSettings, InboundFrame};

/// Most frames in one batch. The backend runs a batch's frames in one transaction; this
/// keeps one envelope a modest part of it.
pub(super) const MAX_BATCH_FRAMES: usize = 256;

/// Frame bytes a batch grows to before the next frame starts another one (a client frame is
/// at most 16 KiB, so a batch holds at least eight).
pub(super) const MAX_BATCH_BYTES: usize = 128 * 1024;

/// Most frames one turn takes from the inbox, so a turn stays short and confirms and
/// deliveries get their turn too.
const MAX_FRAMES_PER_TURN: usize = 8 * MAX_BATCH_FRAMES;

/// Frames in a round from which the node counts as busy, and a publish linger, if set,
/// holds the next frames to gather more. Under light load a round carries one or two frames
/// and the next frame leaves at once; at a few hundred messages a second what arrives
/// within one confirm's round trip already passes this.
const BUSY_ROUND_FRAMES: usize = 16;

/// When the frames queued now go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NextRound {
    /// At once.
    Now,
    /// After the linger, with whatever else arrives meanwhile.
    After(Duration),
    /// When the round in flight is confirmed (its confirm wakes the bridge).
    OnConfirm,
}

/// A publish on its way: its id and, once written and confirmed, the broker's answer.
pub(super) type InFlight = Pin<Box<dyn Future<Output = (u64, lapin::Result<Confirmation>)>>>;

/// Publishes not yet confirmed, in publish order, kept for a republish after a reconnect.
pub(super) struct Publisher {
    node_id: u32,
    topology: Topology,
    max_unconfirmed: usize,
    linger: Duration,
    /// Frames the last round took from the inbox.
    last_round_frames: usize,
    next_id: u64,
    pending: BTreeMap<u64, (u16, Arc<[u8]>)>,
}

impl Publisher {
    pub(super) fn new(settings: &BridgeSettings) -> Publisher {
        Publisher {
            node_id: settings.node_id,
            topology: settings.topology.clone(),
            max_unconfirmed: settings.max_unconfirmed.max(1),
            linger: settings.publish_linger,
            last_round_frames: 0,
            next_id: 0,
            pending: BTreeMap::new(),
        }
    }

    /// Publishes awaiting their confirm.
    pub(super) fn unconfirmed(&self) -> usize {
        self.pending.len()
    }

    /// When frames queued now (`queued` of them) go out.
    ///
    /// At once when they fill a batch. Otherwise, while the node is busy (the last round
    /// carried [`BUSY_ROUND_FRAMES`] or more) and a linger is set, after the linger: larger
    /// rounds cost the broker and the backend less per frame near capacity. Otherwise at
    /// once when no publish awaits its confirm, and else when the round in flight is
    /// confirmed (Nagle's rule, with the confirm as the acknowledgement). So under light
    /// load a frame leaves at once and waits for no company, linger or not; under load, what
    /// arrives during one confirm's round trip (the quorum queue's fsync), or during the
    /// linger, travels together, so batches grow with the load by themselves.
    pub(super) fn next_round(&self, queued: usize) -> NextRound {
        if queued >= MAX_BATCH_FRAMES {
            NextRound::Now
        } else if !self.linger.is_zero() && self.last_round_frames >= BUSY_ROUND_FRAMES {
            NextRound::After(self.linger)
        } else if self.pending.is_empty() {
            NextRound::Now
        } else {
            NextRound::OnConfirm
        }
    }

    /// Whether the node must stop taking frames until confirms come back.
    pub(super) fn is_full(&self) -> bool {
        self.pending.len() >= self.max_unconfirmed
    }

    /// Publishes on a new connection what the last one left unconfirmed, in its original
    /// order.
    pub(super) async fn republish(&self, channel: &Channel) -> FuturesUnordered<InFlight> {
        let in_flight = FuturesUnordered::new();
        if !self.pending.is_empty() {
            tracing::info!(
                count = self.pending.len(),
                "republishing what the broker had not confirmed"
            );
        }
        for (&id, (shard, body)) in &self.pending {
            in_flight.push(start(channel, &self.topology, id, *shard, body.clone()).await);
        }
        in_flight
    }

    /// Takes what the cores queued (up to a turn's worth), batches it per shard and
    /// publishes the batches. If more waits than the turn took, the inbox is told to come
    /// back for it.
    pub(super) async fn publish_queued(
        &mut self,
        channel: &Channel,
        inbox: &BridgeInbox,
    ) -> Result<Vec<InFlight>> {
        let mut per_shard: HashMap<u16, Vec<InboundFrame>> = HashMap::new();
        let mut taken = 0;
        while taken < MAX_FRAMES_PER_TURN {
            let Some((shard, frame)) = inbox.publishes.pop() else {
                break;
            };
            per_shard.entry(shard).or_default().push(frame);
            taken += 1;
        }
        self.last_round_frames = taken;
        let mut started = Vec::new();
        for (shard, frames) in per_shard {
            for batch in cut(&frames) {
                let body: Arc<[u8]> = self.encode(batch)?.into();
                let id = self.next_id;
                self.next_id += 1;
                self.pending.insert(id, (shard, body.clone()));
                started.push(start(channel, &self.topology, id, shard, body).await);
            }
        }
        if !inbox.publishes.is_empty() {
            inbox.publish_ready.notify_one();
        }
        Ok(started)
    }

    /// Settles publish `id`: forgets it once the broker has it, publishes it again if the
    /// broker refused it (the returned publish), and fails the session if the channel did.
    pub(super) async fn confirmed(
        &mut self,
        channel: &Channel,
        id: u64,
        confirmation: lapin::Result<Confirmation>,
    ) -> Result<Option<InFlight>> {
        match confirmation {
            Ok(Confirmation::Ack(_)) | Ok(Confirmation::NotRequested) => {
                self.pending.remove(&id);
                Ok(None)
            }
            Ok(Confirmation::Nack(_)) => {
                let Some((shard, body)) = self.pending.get(&id).cloned() else {
                    return Ok(None);
                };
                tracing::warn!(shard, "the broker refused a publish; retrying");
                Ok(Some(start(channel, &self.topology, id, shard, body).await))
            }
            Err(error) => {
                bail!("publishing or waiting for a publisher confirm: {error}")
            }
        }
    }

    fn encode(&self, frames: &[InboundFrame]) -> Result<Vec<u8>> {
        let items: Vec<Inbound> = frames
            .iter()
            .map(|f| Inbound {
                user_id: f.user_id,
                node_id: self.node_id,
                core: f.core,
                connection_id: f.connection_id,
                received_at_us: f.received_at_us,
                frame: &f.frame,
            })
            .collect();
        Ok(InboundBatch { items: &items }.encode()?)
    }
}

/// Cuts one shard's frames, in order, into batches of at most [`MAX_BATCH_FRAMES`] frames
/// and about [`MAX_BATCH_BYTES`] bytes.
pub(super) fn cut(frames: &[InboundFrame]) -> Vec<&[InboundFrame]> {
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, frame) in frames.iter().enumerate() {
        let full = i - start >= MAX_BATCH_FRAMES || bytes + frame.frame.len() > MAX_BATCH_BYTES;
        if i > start && full {
            batches.push(&frames[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += frame.frame.len();
    }
    if start < frames.len() {
        batches.push(&frames[start..]);
    }
    batches
}

/// Starts one publish: its frames are queued on the channel now, which fixes the order of
/// publishes (and of their confirms) now, not when the returned future is next polled.
async fn start(
    channel: &Channel,
    topology: &Topology,
    id: u64,
    shard: u16,
    body: Arc<[u8]>,
) -> InFlight {
    let written = broker::queue_publish(
        channel,
        topology.inbound_exchange(),
        Topology::shard_routing_key(shard),
        body,
        BasicProperties::default().with_delivery_mode(2),
    )
    .await;
    Box::pin(async move {
        match written.await {
            Ok(confirm) => (id, confirm.await),
            Err(error) => (id, Err(error)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> InboundFrame {
        InboundFrame {
            user_id: 1,
            core: 0,
            connection_id: 2,
            received_at_us: 3,
            frame: vec![0; len],
        }
    }

    fn settings(publish_linger: Duration) -> BridgeSettings {
        BridgeSettings {
            node_id: 1,
            topology: Topology {
                prefix: "edge".into(),
                shards: 2,
            },
            amqp_url: String::new(),
            redis_url: String::new(),
            redis_prefix: String::new(),
            max_unconfirmed: 1000,
            prefetch: 1,
            registry_ttl: Duration::from_secs(90),
            publish_linger,
        }
    }

    #[test]
    fn queued_frames_wait_for_the_round_in_flight_unless_they_fill_a_batch() {
        let mut publisher = Publisher::new(&settings(Duration::ZERO));
        // Nothing in flight: a lone frame leaves at once.
        assert_eq!(publisher.next_round(1), NextRound::Now);
        publisher.pending.insert(0, (0, Arc::from(Vec::new())));
        // A round awaits its confirm: frames gather, until they fill a batch.
        assert_eq!(publisher.next_round(1), NextRound::OnConfirm);
        assert_eq!(
            publisher.next_round(MAX_BATCH_FRAMES - 1),
            NextRound::OnConfirm
        );
        assert_eq!(publisher.next_round(MAX_BATCH_FRAMES), NextRound::Now);
        // Without a linger, a busy node still sends at once when nothing is in flight.
        publisher.last_round_frames = MAX_BATCH_FRAMES;
        publisher.pending.clear();
        assert_eq!(publisher.next_round(1), NextRound::Now);
    }

    #[test]
    fn a_linger_holds_frames_only_while_the_node_is_busy() {
        let linger = Duration::from_millis(5);
        let mut publisher = Publisher::new(&settings(linger));
        // Light load: small rounds, so a frame leaves at once or on the confirm, as without
        // a linger.
        publisher.last_round_frames = 1;
        assert_eq!(publisher.next_round(1), NextRound::Now);
        publisher.pending.insert(0, (0, Arc::from(Vec::new())));
        assert_eq!(publisher.next_round(1), NextRound::OnConfirm);
        // Busy: the next frames gather for the linger, whether a round is in flight or not.
        publisher.last_round_frames = BUSY_ROUND_FRAMES;
        assert_eq!(publisher.next_round(1), NextRound::After(linger));
        publisher.pending.clear();
        assert_eq!(publisher.next_round(1), NextRound::After(linger));
        // A full batch never waits.
        assert_eq!(publisher.next_round(MAX_BATCH_FRAMES), NextRound::Now);
    }

    #[test]
    fn batches_are_cut_by_count_and_by_bytes_in_order() {
        let frames: Vec<InboundFrame> = (0..MAX_BATCH_FRAMES * 2 + 1).map(|_| frame(10)).collect();
        let sizes: Vec<usize> = cut(&frames).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [MAX_BATCH_FRAMES, MAX_BATCH_FRAMES, 1]);

        let frames: Vec<InboundFrame> = (0..20).map(|_| frame(16 * 1024)).collect();
        let sizes: Vec<usize> = cut(&frames).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [8, 8, 4]);

        // A frame over the byte budget still travels, alone.
        let frames = vec![frame(10), frame(MAX_BATCH_BYTES + 1), frame(10)];
        let sizes: Vec<usize> = cut(&frames).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [1, 1, 1]);
        assert!(cut(&[]).is_empty());
    }
}
