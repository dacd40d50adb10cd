//! The memory engine: one node, no persistence. Chats live on the core that `chat_id %
//! cores` names, which assigns their gap-free seq and keeps a bounded recent history for
//! sync (like Centrifugo's memory engine). Presence is replicated to every core, so a query
//! is answered where it arrives.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use wire::client::{
    ArchivedAck, ArchivedCreateChat, ArchivedMembership, ArchivedPresenceQuery,
    ArchivedSendMessage, ArchivedSyncRequest,
};
use wire::envelope::Target;
use wire::limits::MAX_MEMBERS_PER_CHAT;
use wire::server::{
    ChatCreated, ChatEvent, ErrorFrame, Message, Presence, PresenceEntry, Receipt, SyncBatch,
    TypingEvent,
};
use wire::{
    ArchivedChatKind, ChatId, ChatKind, ClientFrameRef, ErrorCode, ReceiptKind, Seq, ServerFrame,
    UserId,
};

use super::{Engine, EngineMsg};
use crate::core::Core;
use crate::router::Origin;

/// Traffic between the memory engine's shards.
#[derive(Debug)]
pub enum Msg {
    /// A client frame for the chat's owning core.
    Frame {
        /// Who sent it.
        origin: Origin,
        /// The validated binary frame.
        frame: Bytes,
        /// When the origin core read it.
        received_at: Instant,
    },
    /// A user's session count on some core went up or down.
    Presence {
        /// The user.
        user_id: UserId,
        /// Up or down.
        online: bool,
        /// When, in microseconds since the Unix epoch.
        at_us: u64,
    },
}

#[derive(Debug)]
struct Chat {
    kind: ChatKind,
    members: Vec<UserId>,
    /// Every member as a delivery target, rebuilt when membership changes.
    targets: Arc<[Target]>,
    next_seq: Seq,
    history: VecDeque<Message>,
    /// Delivered and read watermarks per member.
    watermarks: HashMap<UserId, (Seq, Seq)>,
}

impl Chat {
    fn new(kind: ChatKind, members: Vec<UserId>) -> Chat {
        let mut chat = Chat {
            kind,
            members,
            targets: Arc::from([]),
            next_seq: 1,
            history: VecDeque::new(),
            watermarks: HashMap::new(),
        };
        chat.members_changed();
        chat
    }

    fn is_member(&self, user: UserId) -> bool {
        self.members.binary_search(&user).is_ok()
    }

    fn members_changed(&mut self) {
        self.members.sort_unstable();
        self.members.dedup();
        self.targets = self.members.iter().map(|&u| Target::User(u)).collect();
    }

    /// The stored message a resend of `(sender, client_msg_id)` refers to, if still in history.
    fn find_sent(&self, sender: UserId, client_msg_id: u64) -> Option<&Message> {
        self.history
            .iter()
            .rev()
            .find(|m| m.sender == sender && m.client_msg_id == client_msg_id)
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct PresenceState {
    sessions: u32,
    last_seen_us: u64,
}

/// One core's shard of the memory engine.
#[derive(Debug)]
pub struct MemoryEngine {
    chats: HashMap<ChatId, Chat>,
    chats_created: u64,
    presence: HashMap<UserId, PresenceState>,
    history_limit: usize,
}

impl MemoryEngine {
    /// A shard keeping `history_limit` messages per chat.
    pub fn new(history_limit: usize) -> MemoryEngine {
        MemoryEngine {
            chats: HashMap::new(),
            chats_created: 0,
            presence: HashMap::new(),
            history_limit,
        }
    }

    fn owner(core: &Core, chat_id: ChatId) -> usize {
        (chat_id % core.cores() as u64) as usize
    }

    fn presence_changed(&mut self, user_id: UserId, online: bool, at_us: u64) {
        let state = self.presence.entry(user_id).or_default();
        if online {
            state.sessions += 1;
        } else {
            state.sessions = state.sessions.saturating_sub(1);
        }
        state.last_seen_us = at_us;
    }

    fn broadcast_presence(&mut self, core: &Core, origin: Origin, online: bool) {
        let at_us = core.now_us();
        self.presence_changed(origin.user_id, online, at_us);
        core.to_other_cores(|| {
            EngineMsg::Memory(Msg::Presence {
                user_id: origin.user_id,
                online,
                at_us,
            })
        });
    }

    fn create_chat(
        &mut self,
        core: &Core,
        origin: Origin,
        req: &ArchivedCreateChat,
        received_at: Instant,
    ) {
        let client_msg_id = req.client_msg_id.to_native();
        let mut members: Vec<UserId> = req.members.iter().map(|m| m.to_native()).collect();
        members.push(origin.user_id);
        members.sort_unstable();
        members.dedup();
        let kind = match req.kind {
            ArchivedChatKind::Direct => ChatKind::Direct,
            ArchivedChatKind::Group => ChatKind::Group,
        };
        if kind == ChatKind::Direct && members.len() != 2 {
            let reason = "a direct chat has exactly two members: the creator and one other user";
            return reply_error(
                core,
                origin,
                ErrorCode::InvalidRequest,
                reason,
                Some(client_msg_id),
                received_at,
            );
        }
        if members.len() > MAX_MEMBERS_PER_CHAT {
            let reason = format!("a chat has at most {MAX_MEMBERS_PER_CHAT} members");
            return reply_error(
                core,
                origin,
                ErrorCode::LimitExceeded,
                reason,
                Some(client_msg_id),
                received_at,
            );
        }
        self.chats_created += 1;
        // Chat ids are chosen so that `chat_id % cores` is this core: the chat lives here.
        let chat_id = self.chats_created * core.cores() as u64 + core.index() as u64;
        let chat = Chat::new(kind, members);
        let frame = ServerFrame::ChatCreated(ChatCreated {
            client_msg_id,
            chat_id,
            kind,
            title: req.title.as_str().to_owned(),
            creator: origin.user_id,
            members: chat.members.clone(),
        });
        core.deliver_frame(&frame, chat.targets.clone(), None, received_at);
        self.chats.insert(chat_id, chat);
    }

    /// Work on a chat this core owns.
    fn chat_frame(
        &mut self,
        core: &Core,
        origin: Origin,
        frame: ClientFrameRef<'_>,
        received_at: Instant,
    ) {
        let Some(chat_id) = frame.chat_id() else {
            return;
        };
        let client_msg_id = frame.client_msg_id();
        let Some(chat) = self.chats.get_mut(&chat_id) else {
            let reason = format!("chat {chat_id} does not exist");
            return reply_error(
                core,
                origin,
                ErrorCode::UnknownChat,
                reason,
                client_msg_id,
                received_at,
            );
        };
        // Joining is the one thing a non-member may do.
        if !matches!(frame, ClientFrameRef::Join(_)) && !chat.is_member(origin.user_id) {
            let reason = format!("user {} is not a member of chat {chat_id}", origin.user_id);
            return reply_error(
                core,
                origin,
                ErrorCode::NotMember,
                reason,
                client_msg_id,
                received_at,
            );
        }
        match frame {
            ClientFrameRef::Send(send) => send_message(
                core,
                origin,
                chat_id,
                chat,
                send,
                self.history_limit,
                received_at,
            ),
            ClientFrameRef::AckDelivered(ack) => acknowledge(
                core,
                origin,
                chat_id,
                chat,
                ack,
                ReceiptKind::Delivered,
                received_at,
            ),
            ClientFrameRef::AckRead(ack) => acknowledge(
                core,
                origin,
                chat_id,
                chat,
                ack,
                ReceiptKind::Read,
                received_at,
            ),
            ClientFrameRef::Sync(sync) => sync_page(core, origin, chat_id, chat, sync, received_at),
            ClientFrameRef::Typing(_) => {
                let frame = ServerFrame::Typing(TypingEvent {
                    chat_id,
                    user_id: origin.user_id,
                });
                core.deliver_frame(
                    &frame,
                    chat.targets.clone(),
                    Some(origin.user_id),
                    received_at,
                );
            }
            ClientFrameRef::Join(join) => {
                change_membership(core, origin, chat_id, chat, join, true, received_at)
            }
            ClientFrameRef::Leave(leave) => {
                change_membership(core, origin, chat_id, chat, leave, false, received_at)
            }
            ClientFrameRef::CreateChat(_)
            | ClientFrameRef::PresenceQuery(_)
            | ClientFrameRef::Ping(_) => {}
        }
    }

    fn presence_query(
        &self,
        core: &Core,
        origin: Origin,
        query: &ArchivedPresenceQuery,
        received_at: Instant,
    ) {
        let client_msg_id = query.client_msg_id.to_native();
        let users = query
            .users
            .iter()
            .map(|u| {
                let user_id = u.to_native();
                let state = self.presence.get(&user_id).copied().unwrap_or_default();
                PresenceEntry {
                    user_id,
                    online: state.sessions > 0,
                    last_seen_us: state.last_seen_us,
                }
            })
            .collect();
        let frame = ServerFrame::Presence(Presence {
            client_msg_id,
            users,
        });
        core.deliver_frame(&frame, reply_to(origin), None, received_at);
    }
}

fn reply_to(origin: Origin) -> Arc<[Target]> {
    Arc::from([Target::Connection(origin.connection_id)])
}

fn reply_error(
    core: &Core,
    origin: Origin,
    code: ErrorCode,
    reason: impl Into<String>,
    client_msg_id: Option<u64>,
    received_at: Instant,
) {
    core.metrics.error(code);
    let frame = ServerFrame::Error(ErrorFrame::new(code, reason, client_msg_id));
    core.deliver_frame(&frame, reply_to(origin), None, received_at);
}

fn send_message(
    core: &Core,
    origin: Origin,
    chat_id: ChatId,
    chat: &mut Chat,
    send: &ArchivedSendMessage,
    history_limit: usize,
    received_at: Instant,
) {
    let client_msg_id = send.client_msg_id.to_native();
    let sent = |seq| {
        ServerFrame::Receipt(Receipt {
            chat_id,
            kind: ReceiptKind::Sent,
            seq,
            user_id: origin.user_id,
            client_msg_id: Some(client_msg_id),
        })
    };
    // A resend of a message still in history is answered, not stored again.
    if let Some(stored) = chat.find_sent(origin.user_id, client_msg_id) {
        core.deliver_frame(
            &sent(stored.seq),
            Arc::from([Target::User(origin.user_id)]),
            None,
            received_at,
        );
        return;
    }
    let message = Message {
        chat_id,
        seq: chat.next_seq,
        sender: origin.user_id,
        client_msg_id,
        server_time_us: core.now_us(),
        body: send.body.as_str().to_owned(),
    };
    chat.next_seq += 1;
    let seq = message.seq;
    let frame = ServerFrame::Message(message.clone());
    if chat.history.len() == history_limit {
        chat.history.pop_front();
    }
    chat.history.push_back(message);
    core.deliver_frame(
        &frame,
        chat.targets.clone(),
        Some(origin.user_id),
        received_at,
    );
    core.deliver_frame(
        &sent(seq),
        Arc::from([Target::User(origin.user_id)]),
        None,
        received_at,
    );
}

fn acknowledge(
    core: &Core,
    origin: Origin,
    chat_id: ChatId,
    chat: &mut Chat,
    ack: &ArchivedAck,
    kind: ReceiptKind,
    received_at: Instant,
) {
    // A watermark never moves back, and never past what exists.
    let seq = ack.seq.to_native().min(chat.next_seq - 1);
    let marks = chat.watermarks.entry(origin.user_id).or_default();
    let mark = if kind == ReceiptKind::Read {
        &mut marks.1
    } else {
        &mut marks.0
    };
    if seq <= *mark {
        return;
    }
    let previous = std::mem::replace(mark, seq);
    let mut senders: Vec<UserId> = chat
        .history
        .iter()
        .filter(|m| m.seq > previous && m.seq <= seq && m.sender != origin.user_id)
        .map(|m| m.sender)
        .collect();
    senders.sort_unstable();
    senders.dedup();
    if senders.is_empty() {
        return;
    }
    let targets: Arc<[Target]> = senders.into_iter().map(Target::User).collect();
    let frame = ServerFrame::Receipt(Receipt {
        chat_id,
        kind,
        seq,
        user_id: origin.user_id,
        client_msg_id: None,
    });
    core.deliver_frame(&frame, targets, None, received_at);
}

fn sync_page(
    core: &Core,
    origin: Origin,
    chat_id: ChatId,
    chat: &Chat,
    sync: &ArchivedSyncRequest,
    received_at: Instant,
) {
    let after = sync.after_seq.to_native();
    let limit = sync.limit.to_native() as usize;
    let mut newer = chat.history.iter().filter(|m| m.seq > after);
    let messages: Vec<Message> = newer.by_ref().take(limit).cloned().collect();
    let has_more = newer.next().is_some();
    let frame = ServerFrame::SyncBatch(SyncBatch {
        client_msg_id: sync.client_msg_id.to_native(),
        chat_id,
        messages,
        has_more,
    });
    core.deliver_frame(&frame, reply_to(origin), None, received_at);
}

fn change_membership(
    core: &Core,
    origin: Origin,
    chat_id: ChatId,
    chat: &mut Chat,
    req: &ArchivedMembership,
    join: bool,
    received_at: Instant,
) {
    let client_msg_id = req.client_msg_id.to_native();
    if chat.kind == ChatKind::Direct {
        let reason = "members of a direct chat cannot change";
        return reply_error(
            core,
            origin,
            ErrorCode::InvalidRequest,
            reason,
            Some(client_msg_id),
            received_at,
        );
    }
    let event = ChatEvent {
        client_msg_id,
        chat_id,
        user_id: origin.user_id,
    };
    if join {
        if chat.members.len() >= MAX_MEMBERS_PER_CHAT {
            let reason = format!("a chat has at most {MAX_MEMBERS_PER_CHAT} members");
            return reply_error(
                core,
                origin,
                ErrorCode::LimitExceeded,
                reason,
                Some(client_msg_id),
                received_at,
            );
        }
        chat.members.push(origin.user_id);
        chat.members_changed();
        core.deliver_frame(
            &ServerFrame::Joined(event),
            chat.targets.clone(),
            None,
            received_at,
        );
    } else {
        // The leaver hears its own leave, then stops hearing the chat.
        let targets = chat.targets.clone();
        chat.members.retain(|&m| m != origin.user_id);
        chat.watermarks.remove(&origin.user_id);
        chat.members_changed();
        core.deliver_frame(&ServerFrame::Left(event), targets, None, received_at);
    }
}

impl Engine for MemoryEngine {
    fn connected(&mut self, core: &Core, origin: Origin) {
        self.broadcast_presence(core, origin, true);
    }

    fn disconnected(&mut self, core: &Core, origin: Origin) {
        self.broadcast_presence(core, origin, false);
    }

    fn client_frame(
        &mut self,
        core: &Core,
        origin: Origin,
        frame: ClientFrameRef<'_>,
        raw: &[u8],
        received_at: Instant,
    ) {
        match frame {
            ClientFrameRef::CreateChat(req) => self.create_chat(core, origin, req, received_at),
            ClientFrameRef::PresenceQuery(query) => {
                self.presence_query(core, origin, query, received_at)
            }
            ClientFrameRef::Ping(_) => {}
            _ => {
                let Some(chat_id) = frame.chat_id() else {
                    return;
                };
                let owner = Self::owner(core, chat_id);
                if owner == core.index() {
                    self.chat_frame(core, origin, frame, received_at);
                } else {
                    let frame = Bytes::copy_from_slice(raw);
                    core.send_to_core(
                        owner,
                        crate::router::CoreMsg::Engine(EngineMsg::Memory(Msg::Frame {
                            origin,
                            frame,
                            received_at,
                        })),
                    );
                }
            }
        }
    }

    fn message(&mut self, core: &Core, msg: EngineMsg) {
        let EngineMsg::Memory(msg) = msg;
        match msg {
            Msg::Presence {
                user_id,
                online,
                at_us,
            } => self.presence_changed(user_id, online, at_us),
            Msg::Frame {
                origin,
                frame,
                received_at,
            } => match ClientFrameRef::access(&frame) {
                Ok(frame) => self.chat_frame(core, origin, frame, received_at),
                // The origin core validated these bytes; failing now means memory corruption
                // or a bug, never client input, so say so loudly.
                Err(error) => {
                    tracing::error!(%error, "a frame forwarded between cores failed validation")
                }
            },
        }
    }
}
