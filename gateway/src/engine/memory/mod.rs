//! The memory engine: one node, no persistence. Chats live on the core that `chat_id %
//! cores` names, which applies their rules ([`chat`]), assigns their gap-free seq and keeps
//! a bounded recent history for sync (like Centrifugo's memory engine). Creates are decided
//! on one core for the node ([`directory`]). Presence is replicated to every core (less what
//! each core's own registry shows, [`presence`]), with who shares a chat with whom
//! ([`contacts`]), so a query is answered where it arrives.

mod chat;
mod chat_list;
mod contacts;
mod directory;
mod presence;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use wire::client::{ArchivedCreateChat, ArchivedListChats, ArchivedPresenceQuery};
use wire::envelope::Target;
use wire::server::{ChatSummary, Presence};
use wire::{
    ArchivedChatKind, ChatId, ChatKind, ClientFrameRef, ClientMsgId, ErrorCode, ServerFrame, UserId,
};

use self::chat::{Chat, Refusal, Reply};
pub use self::chat_list::Cursor;
use self::chat_list::Gather;
use self::contacts::Contacts;
use self::directory::{DIRECTORY_CORE, Decision, Directory};
use self::presence::PresenceReplica;
use super::{Engine, EngineMsg};
use crate::core::Core;
use crate::router::{CoreMsg, Origin};

/// Traffic between the memory engine's shards.
#[derive(Debug)]
pub enum Msg {
    /// A client frame for the core that decides it: the owner of its chat, or the
    /// directory core for a create.
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
    /// The directory core made a chat: the core that owns it keeps it and announces it.
    Host(Box<NewChat>),
    /// The directory core found the chat a create names (a resend, or the direct chat of
    /// the pair): the core that owns it announces it again.
    Announce {
        /// The chat.
        chat_id: ChatId,
        /// Who asked, for the error should the chat be gone meanwhile.
        origin: Origin,
        /// The create's client message id, which the announcement answers.
        client_msg_id: ClientMsgId,
        /// When the origin core read the create.
        received_at: Instant,
    },
    /// A chat lost its last member and is gone: the directory core forgets it.
    Freed {
        /// Who created it.
        creator: UserId,
        /// The id of the create that made it.
        client_msg_id: ClientMsgId,
    },
    /// A chat list wants the summaries, for `user`, of these chats this core owns.
    ListPart {
        /// The user asking.
        user: UserId,
        /// The chats of the user this core owns, as the asking core knows them.
        chat_ids: Vec<ChatId>,
        /// Where the page starts.
        cursor: Cursor,
        /// The page size.
        limit: usize,
        /// The core that gathers the parts, and its id for the request.
        reply_core: usize,
        gather_id: u64,
    },
    /// One core's part of a chat list, for the core that gathers it.
    ListFound {
        /// The gathering core's id for the request.
        gather_id: u64,
        /// At most `limit + 1` summaries, after the cursor.
        chats: Vec<ChatSummary>,
    },
    /// The members of a chat changed on the core that owns it: every other core's copy of
    /// who shares a chat follows.
    Members {
        /// The chat.
        chat_id: ChatId,
        /// Users who became members.
        added: Vec<UserId>,
        /// Users who stopped being members.
        removed: Vec<UserId>,
    },
}

/// A chat the directory core decided to make.
#[derive(Debug)]
pub struct NewChat {
    chat_id: ChatId,
    kind: ChatKind,
    title: String,
    creator: UserId,
    client_msg_id: ClientMsgId,
    /// Sorted, the creator included.
    members: Vec<UserId>,
    received_at: Instant,
}

/// Most chat lists one core gathers at once; more are answered `unavailable`. Each one
/// waits only for the other cores' mailboxes, so this is reached only by a flood.
const MAX_PENDING_LISTS: usize = 1024;

/// One core's shard of the memory engine.
#[derive(Debug)]
pub struct MemoryEngine {
    chats: HashMap<ChatId, Chat>,
    /// Chat lists waiting for other cores' parts, by gather id.
    gathers: HashMap<u64, Gather>,
    next_gather_id: u64,
    presence: PresenceReplica,
    contacts: Contacts,
    /// Consulted on [`DIRECTORY_CORE`] only.
    directory: Directory,
    history_limit: usize,
}

impl MemoryEngine {
    /// A shard keeping `history_limit` messages per chat, where one user may have created
    /// at most `max_chats_per_user` chats that exist.
    pub fn new(history_limit: usize, max_chats_per_user: usize) -> MemoryEngine {
        MemoryEngine {
            chats: HashMap::new(),
            gathers: HashMap::new(),
            next_gather_id: 0,
            presence: PresenceReplica::default(),
            contacts: Contacts::default(),
            directory: Directory::new(max_chats_per_user),
            history_limit,
        }
    }

    fn owner(core: &Core, chat_id: ChatId) -> usize {
        (chat_id % core.cores() as u64) as usize
    }

    /// Handles `msg` here if `to` is this core, or sends it there.
    fn dispatch(&mut self, core: &Core, to: usize, msg: Msg) {
        if to == core.index() {
            self.handle(core, msg);
        } else {
            core.send_to_core(to, CoreMsg::Engine(EngineMsg::Memory(msg)));
        }
    }

    /// Hands a client frame to the core that decides it.
    fn forward(&self, core: &Core, to: usize, origin: Origin, raw: &[u8], received_at: Instant) {
        let msg = Msg::Frame {
            origin,
            frame: Bytes::copy_from_slice(raw),
            received_at,
        };
        core.send_to_core(to, CoreMsg::Engine(EngineMsg::Memory(msg)));
    }

    fn handle(&mut self, core: &Core, msg: Msg) {
        match msg {
            Msg::Presence {
                user_id,
                online,
                at_us,
            } => self.presence.changed_elsewhere(user_id, online, at_us),
            Msg::Frame {
                origin,
                frame,
                received_at,
            } => match ClientFrameRef::access(&frame) {
                Ok(ClientFrameRef::CreateChat(req)) => {
                    self.create_chat(core, origin, req, received_at)
                }
                Ok(frame) => self.chat_frame(core, origin, frame, received_at),
                // The origin core validated these bytes; failing now means memory corruption
                // or a bug, never client input, so say so loudly.
                Err(error) => {
                    tracing::error!(%error, "a frame forwarded between cores failed validation")
                }
            },
            Msg::Host(new) => self.host(core, *new),
            Msg::Announce {
                chat_id,
                origin,
                client_msg_id,
                received_at,
            } => match self.chats.get(&chat_id) {
                Some(chat) => perform(core, chat.announce(client_msg_id).replies, received_at),
                // Freed between the directory's answer and this: as if it never existed.
                None => reply_error(
                    core,
                    origin,
                    unknown_chat(chat_id),
                    Some(client_msg_id),
                    received_at,
                ),
            },
            Msg::Freed {
                creator,
                client_msg_id,
            } => self.directory.freed(creator, client_msg_id),
            Msg::Members {
                chat_id,
                added,
                removed,
            } => self.contacts.changed(chat_id, &added, &removed),
            Msg::ListPart {
                user,
                chat_ids,
                cursor,
                limit,
                reply_core,
                gather_id,
            } => {
                let chats = self.list_part(user, &chat_ids, cursor, limit);
                let found = Msg::ListFound { gather_id, chats };
                self.dispatch(core, reply_core, found);
            }
            Msg::ListFound { gather_id, chats } => {
                let done = self
                    .gathers
                    .get_mut(&gather_id)
                    .is_some_and(|gather| gather.add(chats));
                if let Some(gather) = done.then(|| self.gathers.remove(&gather_id)).flatten() {
                    answer_list(core, gather);
                }
            }
        }
    }

    /// The summaries of those of `chat_ids` this core owns and `user` is a member of, cut
    /// to the page.
    fn list_part(
        &self,
        user: UserId,
        chat_ids: &[ChatId],
        cursor: Cursor,
        limit: usize,
    ) -> Vec<ChatSummary> {
        let chats = chat_ids
            .iter()
            .filter_map(|id| self.chats.get(id)?.summary(user))
            .collect();
        chat_list::select(chats, cursor, limit)
    }

    /// Lists the asker's chats: asks every core that owns some of them for its part, and
    /// answers once all are in.
    fn list_chats(
        &mut self,
        core: &Core,
        origin: Origin,
        request: &ArchivedListChats,
        received_at: Instant,
    ) {
        let client_msg_id = request.client_msg_id.to_native();
        if self.gathers.len() >= MAX_PENDING_LISTS {
            let refusal = Refusal::new(ErrorCode::Unavailable, "too many chat lists under way");
            return reply_error(core, origin, refusal, Some(client_msg_id), received_at);
        }
        let cursor = Cursor::of(request);
        let limit = request.limit.to_native() as usize;
        let mut by_core: Vec<Vec<ChatId>> = vec![Vec::new(); core.cores()];
        for chat_id in self.contacts.chats_of(origin.user_id) {
            by_core[Self::owner(core, chat_id)].push(chat_id);
        }
        let gather_id = self.next_gather_id;
        self.next_gather_id += 1;
        let mut gather = Gather {
            origin,
            client_msg_id,
            cursor,
            limit,
            received_at,
            waiting: by_core.iter().filter(|ids| !ids.is_empty()).count(),
            found: Vec::new(),
        };
        let here = std::mem::take(&mut by_core[core.index()]);
        if !here.is_empty() {
            let part = self.list_part(origin.user_id, &here, cursor, limit);
            gather.add(part);
        }
        if gather.waiting == 0 {
            return answer_list(core, gather);
        }
        self.gathers.insert(gather_id, gather);
        for (owner, chat_ids) in by_core.into_iter().enumerate() {
            if chat_ids.is_empty() {
                continue;
            }
            let part = Msg::ListPart {
                user: origin.user_id,
                chat_ids,
                cursor,
                limit,
                reply_core: core.index(),
                gather_id,
            };
            core.send_to_core(owner, CoreMsg::Engine(EngineMsg::Memory(part)));
        }
    }

    /// Tells the other cores that a session of `origin`'s user opened or closed here; this
    /// core's own sessions are in its registry.
    fn broadcast_presence(&mut self, core: &Core, origin: Origin, online: bool) {
        let user_id = origin.user_id;
        let at_us = core.now_us();
        if online {
            self.presence.connected_here(user_id);
        } else {
            let still_here = core.has_sessions_of(user_id);
            self.presence.disconnected_here(user_id, still_here, at_us);
        }
        core.to_other_cores(|| {
            EngineMsg::Memory(Msg::Presence {
                user_id,
                online,
                at_us,
            })
        });
    }

    /// Records a membership change here and on every other core, before anything about
    /// it is delivered.
    fn members_changed(
        &mut self,
        core: &Core,
        chat_id: ChatId,
        added: &[UserId],
        removed: &[UserId],
    ) {
        if added.is_empty() && removed.is_empty() {
            return;
        }
        self.contacts.changed(chat_id, added, removed);
        core.to_other_cores(|| {
            EngineMsg::Memory(Msg::Members {
                chat_id,
                added: added.to_vec(),
                removed: removed.to_vec(),
            })
        });
    }

    /// On the directory core: decides a create and hands the chat to its owner core.
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
            ArchivedChatKind::PublicGroup => ChatKind::PublicGroup,
        };
        let decision = self
            .directory
            .decide(origin.user_id, client_msg_id, kind, &members);
        match decision {
            Err(refusal) => reply_error(core, origin, refusal, Some(client_msg_id), received_at),
            Ok(Decision::Create(chat_id)) => {
                let new = NewChat {
                    chat_id,
                    kind,
                    title: req.title.as_str().to_owned(),
                    creator: origin.user_id,
                    client_msg_id,
                    members,
                    received_at,
                };
                self.dispatch(core, Self::owner(core, chat_id), Msg::Host(Box::new(new)));
            }
            Ok(Decision::Existing(chat_id)) => {
                let announce = Msg::Announce {
                    chat_id,
                    origin,
                    client_msg_id,
                    received_at,
                };
                self.dispatch(core, Self::owner(core, chat_id), announce);
            }
        }
    }

    /// On the chat's owner core: keeps a chat the directory made and announces it.
    fn host(&mut self, core: &Core, new: NewChat) {
        let chat = Chat::new(
            new.chat_id,
            new.kind,
            new.title,
            new.creator,
            new.client_msg_id,
            new.members,
            core.now_us(),
        );
        let announcement = chat.announce(new.client_msg_id);
        self.members_changed(core, new.chat_id, chat.members(), &[]);
        self.chats.insert(new.chat_id, chat);
        perform(core, announcement.replies, new.received_at);
    }

    /// On the chat's owner core: a request about the chat.
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
            return reply_error(
                core,
                origin,
                unknown_chat(chat_id),
                client_msg_id,
                received_at,
            );
        };
        let user = origin.user_id;
        let answer = match frame {
            ClientFrameRef::Send(_)
            | ClientFrameRef::Edit(_)
            | ClientFrameRef::Delete(_)
            | ClientFrameRef::React(_)
            | ClientFrameRef::Unreact(_) => match frame.entry_request() {
                Some(entry) => chat.append(origin, entry, core.now_us(), self.history_limit),
                None => return,
            },
            ClientFrameRef::AckDelivered(ack) => chat.acknowledge(origin, ack, false),
            ClientFrameRef::AckRead(ack) => chat.acknowledge(origin, ack, true),
            ClientFrameRef::Sync(sync) => chat.sync_page(origin, sync),
            ClientFrameRef::Typing(_) => chat.typing(user),
            ClientFrameRef::Join(req) => chat.join(user, req.client_msg_id.to_native()),
            ClientFrameRef::Leave(req) => chat.leave(user, req.client_msg_id.to_native()),
            ClientFrameRef::AddMembers(req) => {
                let users: Vec<UserId> = req.users.iter().map(|u| u.to_native()).collect();
                chat.add_members(user, req.client_msg_id.to_native(), &users)
            }
            ClientFrameRef::RemoveMembers(req) => {
                let users: Vec<UserId> = req.users.iter().map(|u| u.to_native()).collect();
                chat.remove_members(user, req.client_msg_id.to_native(), &users)
            }
            ClientFrameRef::CreateChat(_)
            | ClientFrameRef::ListChats(_)
            | ClientFrameRef::PresenceQuery(_)
            | ClientFrameRef::Ping(_) => return,
        };
        let emptied = chat.is_empty().then(|| chat.creator());
        let outcome = match answer {
            Ok(outcome) => outcome,
            Err(refusal) => return reply_error(core, origin, refusal, client_msg_id, received_at),
        };
        // Every core's copy of the members, and the directory, learn of the change before
        // anyone hears of it: a client that heard finds them up to date (mailboxes keep
        // order).
        self.members_changed(core, chat_id, &outcome.added, &outcome.removed);
        // Nobody can reach a chat without members again: it goes, and frees its place.
        if let Some((creator, client_msg_id)) = emptied {
            self.chats.remove(&chat_id);
            let freed = Msg::Freed {
                creator,
                client_msg_id,
            };
            self.dispatch(core, DIRECTORY_CORE, freed);
        }
        perform(core, outcome.replies, received_at);
    }

    /// Presence as this core knows it, of the users who share a chat with the asker; the
    /// others are answered as never seen, like users who do not exist.
    fn presence_query(
        &self,
        core: &Core,
        origin: Origin,
        query: &ArchivedPresenceQuery,
        received_at: Instant,
    ) {
        let client_msg_id = query.client_msg_id.to_native();
        let now_us = core.now_us();
        let users = query
            .users
            .iter()
            .map(|u| {
                let user_id = u.to_native();
                if self.contacts.may_see(origin.user_id, user_id) {
                    let here = core.has_sessions_of(user_id);
                    self.presence.entry(user_id, here, now_us)
                } else {
                    PresenceReplica::never_seen(user_id)
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

fn unknown_chat(chat_id: ChatId) -> Refusal {
    Refusal::new(
        ErrorCode::UnknownChat,
        format!("chat {chat_id} does not exist"),
    )
}

fn reply_to(origin: Origin) -> Arc<[Target]> {
    Arc::from([Target::Connection(origin.connection_id)])
}

fn answer_list(core: &Core, gather: Gather) {
    let (origin, received_at) = (gather.origin, gather.received_at);
    let frame = ServerFrame::ChatList(gather.page());
    core.deliver_frame(&frame, reply_to(origin), None, received_at);
}

/// Delivers what a request produced, in order.
fn perform(core: &Core, replies: Vec<Reply>, received_at: Instant) {
    for reply in replies {
        core.deliver_frame(&reply.frame, reply.to, reply.except, received_at);
    }
}

fn reply_error(
    core: &Core,
    origin: Origin,
    refusal: Refusal,
    client_msg_id: Option<ClientMsgId>,
    received_at: Instant,
) {
    core.reply_error(
        origin,
        refusal.code,
        refusal.reason,
        client_msg_id,
        received_at,
    );
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
            ClientFrameRef::CreateChat(req) => {
                if core.index() == DIRECTORY_CORE {
                    self.create_chat(core, origin, req, received_at);
                } else {
                    self.forward(core, DIRECTORY_CORE, origin, raw, received_at);
                }
            }
            ClientFrameRef::PresenceQuery(query) => {
                self.presence_query(core, origin, query, received_at)
            }
            ClientFrameRef::ListChats(request) => {
                self.list_chats(core, origin, request, received_at)
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
                    self.forward(core, owner, origin, raw, received_at);
                }
            }
        }
    }

    fn message(&mut self, core: &Core, msg: EngineMsg) {
        let EngineMsg::Memory(msg) = msg;
        self.handle(core, msg);
    }
}
