//! The amqp engine: every frame a session sends goes, with what the gateway asserts about
//! it, to the broker bridge, which batches it into the backend's shard for its chat;
//! deliveries come back through the bridge. Delivered and read acks are watermarks: they are
//! folded per user and chat (whichever of the user's sessions on this core sent them) to
//! the highest seq for a short window, so a client acking every message costs the backend
//! one ack per window.
//!
//! While the bridge has had no broker connection for longer than a reconnection takes
//! (`Node::broker_unreachable`), the engine keeps the sessions' reads going instead of
//! queueing: a frame that needs the backend is answered 5030 (`unavailable`,
//! resend later) with its client message id, typing is dropped, and acks stay folded here
//! (one entry per user, chat and kind) until the broker is back. Pausing reads instead
//! would leave the clients' pings unread, and every healthy client would be closed for
//! idleness during a long outage.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use broker::Topology;
use wire::client::Ack;
use wire::{ChatId, ClientFrame, ClientFrameRef, ErrorCode, UserId};

use super::{Engine, EngineMsg};
use crate::bridge::{BridgeInbox, BridgeMsg, InboundFrame};
use crate::core::Core;
use crate::node::Node;
use crate::router::Origin;

/// A folded watermark waiting for its window to end.
#[derive(Debug, Clone, Copy)]
struct PendingAck {
    seq: u64,
    /// The session that acked last: an error answering the ack goes to it.
    connection_id: u64,
    since: Instant,
}

/// One core's shard of the amqp engine.
#[derive(Debug)]
pub struct AmqpEngine {
    bridge: Arc<BridgeInbox>,
    /// Whose `broker_connected` flag tells whether frames can go out.
    node: Arc<Node>,
    topology: Topology,
    ack_window: Duration,
    /// Keyed by (user, chat, is read).
    acks: HashMap<(UserId, ChatId, bool), PendingAck>,
}

impl AmqpEngine {
    /// A shard publishing through `bridge`, for `node`.
    pub fn new(
        bridge: Arc<BridgeInbox>,
        node: Arc<Node>,
        topology: Topology,
        ack_window: Duration,
    ) -> AmqpEngine {
        AmqpEngine {
            bridge,
            node,
            topology,
            ack_window,
            acks: HashMap::new(),
        }
    }

    fn broker_connected(&self) -> bool {
        self.node.broker_connected.load(Ordering::Acquire)
    }

    fn publish(
        &self,
        core: &Core,
        origin: Origin,
        chat_or_user_shard: u16,
        frame: &[u8],
        received_at: Instant,
    ) {
        let frame = InboundFrame {
            user_id: origin.user_id,
            core: core.index() as u16,
            connection_id: origin.connection_id,
            received_at_us: core
                .now_us()
                .saturating_sub(received_at.elapsed().as_micros() as u64),
            frame: frame.to_vec(),
        };
        core.send_to_bridge(
            &self.bridge,
            BridgeMsg::Publish {
                shard: chat_or_user_shard,
                frame,
            },
        );
    }
}

impl Engine for AmqpEngine {
    fn connected(&mut self, core: &Core, origin: Origin) {
        core.send_to_bridge(
            &self.bridge,
            BridgeMsg::Online {
                user: origin.user_id,
                core: core.index() as u16,
            },
        );
    }

    fn disconnected(&mut self, core: &Core, origin: Origin) {
        // What the session acked before leaving still counts.
        let pending: Vec<_> = self
            .acks
            .iter()
            .filter(|(_, ack)| ack.connection_id == origin.connection_id)
            .map(|(key, _)| *key)
            .collect();
        for key in pending {
            if let Some(ack) = self.acks.remove(&key) {
                self.flush_ack(core, key, ack);
            }
        }
        core.send_to_bridge(
            &self.bridge,
            BridgeMsg::Offline {
                user: origin.user_id,
                core: core.index() as u16,
                at_us: core.now_us(),
            },
        );
    }

    fn client_frame(
        &mut self,
        core: &Core,
        origin: Origin,
        frame: ClientFrameRef<'_>,
        raw: &[u8],
        received_at: Instant,
    ) {
        let read = match frame {
            ClientFrameRef::AckDelivered(_) => Some(false),
            ClientFrameRef::AckRead(_) => Some(true),
            _ => None,
        };
        if let (Some(read), Some(chat_id)) = (read, frame.chat_id()) {
            let seq = match frame {
                ClientFrameRef::AckDelivered(ack) | ClientFrameRef::AckRead(ack) => {
                    ack.seq.to_native()
                }
                _ => 0,
            };
            let entry = self
                .acks
                .entry((origin.user_id, chat_id, read))
                .or_insert(PendingAck {
                    seq,
                    connection_id: origin.connection_id,
                    since: received_at,
                });
            entry.seq = entry.seq.max(seq);
            entry.connection_id = origin.connection_id;
            core.need_timer();
            return;
        }
        if self.node.broker_unreachable() {
            if let Some(client_msg_id) = frame.client_msg_id() {
                core.reply_error(
                    origin,
                    ErrorCode::Unavailable,
                    "the message broker is unreachable; resend later",
                    Some(client_msg_id),
                    received_at,
                );
            }
            return;
        }
        let shard = match frame.chat_id() {
            Some(chat_id) => self.topology.shard_of_chat(chat_id),
            None => self.topology.shard_of_user(origin.user_id),
        };
        self.publish(core, origin, shard, raw, received_at);
    }

    fn message(&mut self, _core: &Core, _msg: EngineMsg) {}

    fn wants_tick(&self) -> bool {
        // Acks wait for the broker without a timer; the first frame after it returns, or
        // the next ack, starts the timer again.
        !self.acks.is_empty() && self.broker_connected()
    }

    fn tick(&mut self, core: &Core) {
        if !self.broker_connected() {
            return;
        }
        let now = Instant::now();
        let due: Vec<_> = self
            .acks
            .iter()
            .filter(|(_, ack)| now.duration_since(ack.since) >= self.ack_window)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            if let Some(ack) = self.acks.remove(&key) {
                self.flush_ack(core, key, ack);
            }
        }
    }
}

impl AmqpEngine {
    fn flush_ack(
        &self,
        core: &Core,
        (user_id, chat_id, read): (UserId, ChatId, bool),
        ack: PendingAck,
    ) {
        let body = Ack {
            chat_id,
            seq: ack.seq,
        };
        let frame = if read {
            ClientFrame::AckRead(body)
        } else {
            ClientFrame::AckDelivered(body)
        };
        match frame.encode() {
            Ok(bytes) => {
                let origin = Origin {
                    user_id,
                    connection_id: ack.connection_id,
                };
                self.publish(
                    core,
                    origin,
                    self.topology.shard_of_chat(chat_id),
                    &bytes,
                    ack.since,
                );
            }
            Err(error) => tracing::error!(%error, "could not encode a coalesced ack"),
        }
    }
}
