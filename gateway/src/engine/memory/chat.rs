//! One chat of the memory engine and its rules: who may do what in it, and what each
//! request answers to whom. No I/O: a request returns the frames to send with their
//! targets and the membership changes, and the engine carries them out. PROTOCOL.md
//! ("Chats and who may do what") states the rules; the backend applies the same ones.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use wire::client::{ArchivedAck, ArchivedSyncRequest, EntryRequest};
use wire::entries;
use wire::envelope::Target;
use wire::limits::{MAX_MEMBERS_PER_CHAT, sync_page_admits};
use wire::server::{
    ChatCreated, ChatEvent, ChatSummary, MembersChanged, Message, Receipt, SyncBatch, TypingEvent,
};
use wire::{
    ChatId, ChatKind, ClientMsgId, EntryKind, ErrorCode, ReceiptKind, Seq, ServerFrame, UserId,
};

use crate::router::{Origin, Skip};

/// How many leaves a chat remembers, to answer their resends: as many as it has members at
/// most, so a chat's memory stays bounded however many users come and go.
const DEPARTURES_KEPT: usize = MAX_MEMBERS_PER_CHAT;

/// Why a request is refused: the error frame its sender gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub code: ErrorCode,
    pub reason: String,
}

impl Refusal {
    pub(super) fn new(code: ErrorCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            code,
            reason: reason.into(),
        }
    }

    fn not_member(chat_id: ChatId, user: UserId) -> Refusal {
        Refusal::new(
            ErrorCode::NotMember,
            format!("user {user} is not a member of chat {chat_id}"),
        )
    }

    fn direct(action: &str) -> Refusal {
        Refusal::new(
            ErrorCode::InvalidRequest,
            format!("the members of a direct chat cannot change: it cannot be {action}"),
        )
    }

    fn full(chat_id: ChatId) -> Refusal {
        Refusal::new(
            ErrorCode::LimitExceeded,
            format!("chat {chat_id} would have more than {MAX_MEMBERS_PER_CHAT} members"),
        )
    }
}

/// One frame and who receives it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Reply {
    pub frame: ServerFrame,
    pub to: Arc<[Target]>,
    /// Who among the targets does not receive it (the session that sent a message).
    pub except: Option<Skip>,
}

impl Reply {
    fn to(frame: ServerFrame, to: Arc<[Target]>) -> Reply {
        Reply {
            frame,
            to,
            except: None,
        }
    }

    /// A frame for the connection that made the request.
    fn to_origin(frame: ServerFrame, origin: Origin) -> Reply {
        Reply::to(frame, Arc::from([Target::Connection(origin.connection_id)]))
    }
}

/// What an accepted request does: frames to send, and who became or stopped being a member.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Outcome {
    pub replies: Vec<Reply>,
    pub added: Vec<UserId>,
    pub removed: Vec<UserId>,
}

impl Outcome {
    fn replies(replies: Vec<Reply>) -> Outcome {
        Outcome {
            replies,
            ..Outcome::default()
        }
    }
}

/// A request's answer: its outcome, or the refusal its sender gets.
pub(super) type Answer = Result<Outcome, Refusal>;

/// What later entries did to one message.
#[derive(Debug, Default)]
struct Marks {
    deleted: bool,
    /// (user, emoji), at most `MAX_REACTIONS_PER_USER` per user.
    reactions: Vec<(UserId, String)>,
}

/// A chat as the core that owns it keeps it.
#[derive(Debug)]
pub(super) struct Chat {
    id: ChatId,
    kind: ChatKind,
    title: String,
    creator: UserId,
    /// The creator's id for the `create_chat`, which the directory keys the chat by.
    creator_client_msg_id: ClientMsgId,
    /// Sorted.
    members: Vec<UserId>,
    /// Members who may remove members: the creator while a member.
    admins: Vec<UserId>,
    /// Every member as a delivery target, rebuilt when membership changes.
    targets: Arc<[Target]>,
    next_seq: Seq,
    /// When the newest message was accepted, or the chat made if it has none.
    last_activity_us: u64,
    /// The newest entries, with gap-free seqs.
    history: VecDeque<Message>,
    /// What later entries did to the messages in `history`: only those deleted or reacted
    /// to have one, and it goes when its message leaves `history`.
    marks: HashMap<Seq, Marks>,
    /// Delivered and read watermarks per member.
    watermarks: HashMap<UserId, (Seq, Seq)>,
    /// The latest leave of each user who left, oldest first, to answer its resend.
    departures: VecDeque<(UserId, ClientMsgId)>,
}

impl Chat {
    /// A new chat; `members` includes the creator, who becomes its admin.
    pub(super) fn new(
        id: ChatId,
        kind: ChatKind,
        title: String,
        creator: UserId,
        creator_client_msg_id: ClientMsgId,
        mut members: Vec<UserId>,
        created_us: u64,
    ) -> Chat {
        members.sort_unstable();
        members.dedup();
        let mut chat = Chat {
            id,
            kind,
            title,
            creator,
            creator_client_msg_id,
            members,
            admins: vec![creator],
            targets: Arc::from([]),
            next_seq: 1,
            last_activity_us: created_us,
            history: VecDeque::new(),
            marks: HashMap::new(),
            watermarks: HashMap::new(),
            departures: VecDeque::new(),
        };
        chat.members_changed();
        chat
    }

    pub(super) fn creator(&self) -> (UserId, ClientMsgId) {
        (self.creator, self.creator_client_msg_id)
    }

    pub(super) fn members(&self) -> &[UserId] {
        &self.members
    }

    pub(super) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn is_member(&self, user: UserId) -> bool {
        self.members.binary_search(&user).is_ok()
    }

    fn require_member(&self, user: UserId) -> Result<(), Refusal> {
        if self.is_member(user) {
            Ok(())
        } else {
            Err(Refusal::not_member(self.id, user))
        }
    }

    fn members_changed(&mut self) {
        self.members.sort_unstable();
        self.members.dedup();
        self.admins
            .retain(|a| self.members.binary_search(a).is_ok());
        self.targets = self.members.iter().map(|&u| Target::User(u)).collect();
    }

    /// `chat_created` with the chat as it is now, answering `client_msg_id`.
    fn snapshot(&self, client_msg_id: ClientMsgId) -> ServerFrame {
        ServerFrame::ChatCreated(ChatCreated {
            client_msg_id,
            chat_id: self.id,
            kind: self.kind,
            title: self.title.clone(),
            creator: self.creator,
            members: self.members.clone(),
        })
    }

    /// The chat announced to its members: at creation, and again for a resent create or a
    /// create of a direct chat that exists.
    pub(super) fn announce(&self, client_msg_id: ClientMsgId) -> Outcome {
        Outcome::replies(vec![Reply::to(
            self.snapshot(client_msg_id),
            self.targets.clone(),
        )])
    }

    /// A new chat entry from `origin` (a message, or an event about the message at
    /// `entry.target_seq`), or the receipt again for a resend still in history. The entry
    /// goes to every member's sessions but the one that sent it, which gets the receipt.
    pub(super) fn append(
        &mut self,
        origin: Origin,
        entry: EntryRequest<'_>,
        now_us: u64,
        history_limit: usize,
    ) -> Answer {
        let sender = origin.user_id;
        self.require_member(sender)?;
        let client_msg_id = entry.client_msg_id;
        let sent = |chat_id, seq| {
            let receipt = ServerFrame::Receipt(Receipt {
                chat_id,
                kind: ReceiptKind::Sent,
                seq,
                user_id: sender,
                client_msg_id: Some(client_msg_id),
            });
            Reply::to(receipt, Arc::from([Target::User(sender)]))
        };
        if let Some(stored) = self.find_sent(sender, client_msg_id) {
            return Ok(Outcome::replies(vec![sent(self.id, stored.seq)]));
        }
        self.check_event(sender, &entry)?;
        let message = Message {
            chat_id: self.id,
            seq: self.next_seq,
            sender,
            client_msg_id,
            server_time_us: now_us,
            body: entry.body.to_owned(),
            kind: entry.kind,
            target_seq: entry.target_seq,
        };
        self.apply_event(sender, &entry);
        self.next_seq += 1;
        self.last_activity_us = now_us;
        let seq = message.seq;
        let delivery = Reply {
            frame: ServerFrame::Message(message.clone()),
            to: self.targets.clone(),
            except: Some(Skip::Connection(origin.connection_id)),
        };
        if self.history.len() >= history_limit
            && let Some(gone) = self.history.pop_front()
        {
            self.marks.remove(&gone.seq);
        }
        if history_limit > 0 {
            self.history.push_back(message);
        }
        Ok(Outcome::replies(vec![delivery, sent(self.id, seq)]))
    }

    /// Whether `user` may add this event (the rules are `wire::entries`'), from the
    /// target as history holds it.
    fn check_event(&self, user: UserId, entry: &EntryRequest<'_>) -> Result<(), Refusal> {
        if entry.kind == EntryKind::Message {
            return Ok(());
        }
        let seq = entry.target_seq;
        let first = self.history.front().map_or(0, |m| m.seq);
        let found = seq
            .checked_sub(first)
            .and_then(|index| self.history.get(usize::try_from(index).ok()?));
        let marks = self.marks.get(&seq);
        let held: Vec<&str> = marks
            .into_iter()
            .flat_map(|m| &m.reactions)
            .filter(|(u, _)| *u == user)
            .map(|(_, emoji)| emoji.as_str())
            .collect();
        let target = found.map(|message| entries::Target {
            sender: message.sender,
            is_message: message.kind == EntryKind::Message,
            deleted: marks.is_some_and(|m| m.deleted),
            reactions_of_user: &held,
        });
        entries::check_event(entry.kind, user, self.id, seq, entry.body, target)
            .map_err(|(code, reason)| Refusal::new(code, reason))
    }

    /// Records what an accepted event does to its target.
    fn apply_event(&mut self, user: UserId, entry: &EntryRequest<'_>) {
        if matches!(entry.kind, EntryKind::Message | EntryKind::Edit) {
            return;
        }
        let marks = self.marks.entry(entry.target_seq).or_default();
        match entry.kind {
            EntryKind::Delete => marks.deleted = true,
            EntryKind::React => marks.reactions.push((user, entry.body.to_owned())),
            EntryKind::Unreact => marks
                .reactions
                .retain(|(u, e)| !(*u == user && e == entry.body)),
            EntryKind::Message | EntryKind::Edit => {}
        }
    }

    /// The stored entry a resend of `(sender, client_msg_id)` refers to, if still in history.
    fn find_sent(&self, sender: UserId, client_msg_id: ClientMsgId) -> Option<&Message> {
        self.history
            .iter()
            .rev()
            .find(|m| m.sender == sender && m.client_msg_id == client_msg_id)
    }

    /// Moves a member's watermark and tells the senders it passed; a read watermark also
    /// reaches the member's other sessions.
    pub(super) fn acknowledge(&mut self, origin: Origin, ack: &ArchivedAck, read: bool) -> Answer {
        let user = origin.user_id;
        self.require_member(user)?;
        // A watermark never moves back, and never past what exists.
        let seq = ack.seq.to_native().min(self.next_seq - 1);
        let marks = self.watermarks.entry(user).or_default();
        let mark = if read { &mut marks.1 } else { &mut marks.0 };
        if seq <= *mark {
            return Ok(Outcome::default());
        }
        let previous = std::mem::replace(mark, seq);
        let mut senders: Vec<UserId> = self
            .history
            .iter()
            .filter(|m| m.seq > previous && m.seq <= seq && m.sender != user)
            .map(|m| m.sender)
            .collect();
        senders.sort_unstable();
        senders.dedup();
        let receipt = ServerFrame::Receipt(Receipt {
            chat_id: self.id,
            kind: if read {
                ReceiptKind::Read
            } else {
                ReceiptKind::Delivered
            },
            seq,
            user_id: user,
            client_msg_id: None,
        });
        let mut replies = Vec::new();
        if read {
            replies.push(Reply {
                frame: receipt.clone(),
                to: Arc::from([Target::User(user)]),
                except: Some(Skip::Connection(origin.connection_id)),
            });
        }
        if !senders.is_empty() {
            let targets = senders.into_iter().map(Target::User).collect();
            replies.push(Reply::to(receipt, targets));
        }
        Ok(Outcome::replies(replies))
    }

    /// The chat as `user` sees it in a chat list, if `user` is a member.
    pub(super) fn summary(&self, user: UserId) -> Option<ChatSummary> {
        if !self.is_member(user) {
            return None;
        }
        let (delivered_seq, read_seq) = self.watermarks.get(&user).copied().unwrap_or_default();
        let last_seq = self.next_seq - 1;
        Some(ChatSummary {
            chat_id: self.id,
            kind: self.kind,
            title: self.title.clone(),
            member_count: self.members.len() as u32,
            last_seq,
            last_activity_us: self.last_activity_us,
            delivered_seq,
            read_seq,
            unread: last_seq.saturating_sub(read_seq),
        })
    }

    /// A page of the history this engine keeps: after `after_seq` oldest first, or before
    /// `before_seq` newest first.
    pub(super) fn sync_page(&self, origin: Origin, sync: &ArchivedSyncRequest) -> Answer {
        self.require_member(origin.user_id)?;
        let limit = sync.limit.to_native() as usize;
        let (messages, has_more) = match sync.before_seq.as_ref() {
            Some(before) => {
                let before = before.to_native();
                page(self.history.iter().rev().filter(|m| m.seq < before), limit)
            }
            None => {
                let after = sync.after_seq.to_native();
                page(self.history.iter().filter(|m| m.seq > after), limit)
            }
        };
        let page = ServerFrame::SyncBatch(SyncBatch {
            client_msg_id: sync.client_msg_id.to_native(),
            chat_id: self.id,
            messages,
            has_more,
        });
        Ok(Outcome::replies(vec![Reply::to_origin(page, origin)]))
    }

    pub(super) fn typing(&self, user: UserId) -> Answer {
        self.require_member(user)?;
        let frame = ServerFrame::Typing(TypingEvent {
            chat_id: self.id,
            user_id: user,
        });
        Ok(Outcome::replies(vec![Reply {
            frame,
            to: self.targets.clone(),
            except: Some(Skip::User(user)),
        }]))
    }

    /// Joins a public group; a member joining again hears `joined` again.
    pub(super) fn join(&mut self, user: UserId, client_msg_id: ClientMsgId) -> Answer {
        if self.kind == ChatKind::Direct {
            return Err(Refusal::direct("joined"));
        }
        let event = |chat_id| {
            ServerFrame::Joined(ChatEvent {
                client_msg_id,
                chat_id,
                user_id: user,
            })
        };
        if self.is_member(user) {
            return Ok(Outcome::replies(vec![Reply::to(
                event(self.id),
                self.targets.clone(),
            )]));
        }
        if self.kind != ChatKind::PublicGroup {
            return Err(Refusal::new(
                ErrorCode::NotMember,
                format!(
                    "chat {} is invite-only: a member must add user {user}",
                    self.id
                ),
            ));
        }
        if self.members.len() >= MAX_MEMBERS_PER_CHAT {
            return Err(Refusal::full(self.id));
        }
        self.members.push(user);
        self.members_changed();
        Ok(Outcome {
            replies: vec![Reply::to(event(self.id), self.targets.clone())],
            added: vec![user],
            removed: Vec::new(),
        })
    }

    /// Leaves the chat; the leaver hears its own leave, and so does a resend of it.
    pub(super) fn leave(&mut self, user: UserId, client_msg_id: ClientMsgId) -> Answer {
        let event = ServerFrame::Left(ChatEvent {
            client_msg_id,
            chat_id: self.id,
            user_id: user,
        });
        if !self.is_member(user) {
            return if self.departures.contains(&(user, client_msg_id)) {
                Ok(Outcome::replies(vec![Reply::to(
                    event,
                    Arc::from([Target::User(user)]),
                )]))
            } else {
                Err(Refusal::not_member(self.id, user))
            };
        }
        if self.kind == ChatKind::Direct {
            return Err(Refusal::direct("left"));
        }
        let before = self.targets.clone();
        self.members.retain(|&m| m != user);
        self.watermarks.remove(&user);
        self.members_changed();
        self.departures.retain(|&(u, _)| u != user);
        if self.departures.len() >= DEPARTURES_KEPT {
            self.departures.pop_front();
        }
        self.departures.push_back((user, client_msg_id));
        Ok(Outcome {
            replies: vec![Reply::to(event, before)],
            added: Vec::new(),
            removed: vec![user],
        })
    }

    /// Any member adds users: the members before hear `members_added`, the users who
    /// become members get the chat as `chat_created`.
    pub(super) fn add_members(
        &mut self,
        by: UserId,
        client_msg_id: ClientMsgId,
        users: &[UserId],
    ) -> Answer {
        self.require_member(by)?;
        if self.kind == ChatKind::Direct {
            return Err(Refusal::direct("added to"));
        }
        let named = sorted(users);
        let new: Vec<UserId> = named
            .iter()
            .copied()
            .filter(|&u| !self.is_member(u))
            .collect();
        if self.members.len() + new.len() > MAX_MEMBERS_PER_CHAT {
            return Err(Refusal::full(self.id));
        }
        let before = self.targets.clone();
        self.members.extend_from_slice(&new);
        self.members_changed();
        let added = ServerFrame::MembersAdded(MembersChanged {
            client_msg_id,
            chat_id: self.id,
            by,
            users: named,
        });
        let mut replies = vec![Reply::to(added, before)];
        if !new.is_empty() {
            let newcomers = new.iter().map(|&u| Target::User(u)).collect();
            replies.push(Reply::to(self.snapshot(client_msg_id), newcomers));
        }
        Ok(Outcome {
            replies,
            added: new,
            removed: Vec::new(),
        })
    }

    /// An admin removes users; everyone who was a member hears it, the removed included.
    pub(super) fn remove_members(
        &mut self,
        by: UserId,
        client_msg_id: ClientMsgId,
        users: &[UserId],
    ) -> Answer {
        self.require_member(by)?;
        if self.kind == ChatKind::Direct {
            return Err(Refusal::direct("removed from"));
        }
        if !self.admins.contains(&by) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!(
                    "user {by} is not an admin of chat {}: only admins remove members",
                    self.id
                ),
            ));
        }
        let named = sorted(users);
        let gone: Vec<UserId> = named
            .iter()
            .copied()
            .filter(|&u| self.is_member(u))
            .collect();
        let before = self.targets.clone();
        self.members.retain(|m| gone.binary_search(m).is_err());
        for user in &gone {
            self.watermarks.remove(user);
        }
        self.members_changed();
        let removed = ServerFrame::MembersRemoved(MembersChanged {
            client_msg_id,
            chat_id: self.id,
            by,
            users: named,
        });
        Ok(Outcome {
            replies: vec![Reply::to(removed, before)],
            added: Vec::new(),
            removed: gone,
        })
    }
}

/// A request's user list as every answer names it: sorted, without repeats.
/// Up to `limit` messages of `candidates`, in their order, and whether more follow.
/// Up to `limit` of `candidates`, in their order, stopping early at the page's byte bound
/// (`sync_page_admits`); whether more were left.
fn page<'a>(candidates: impl Iterator<Item = &'a Message>, limit: usize) -> (Vec<Message>, bool) {
    let mut candidates = candidates.peekable();
    let mut messages: Vec<Message> = Vec::new();
    let mut body_bytes = 0;
    while let Some(next) = candidates.next_if(|m| {
        messages.len() < limit && sync_page_admits(messages.len(), body_bytes, m.body.len())
    }) {
        body_bytes += next.body.len();
        messages.push(next.clone());
    }
    (messages, candidates.peek().is_some())
}

fn sorted(users: &[UserId]) -> Vec<UserId> {
    let mut users = users.to_vec();
    users.sort_unstable();
    users.dedup();
    users
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: Origin = Origin {
        user_id: 1,
        connection_id: 10,
    };

    fn group(kind: ChatKind) -> Chat {
        Chat::new(7, kind, "g".into(), 1, 100, vec![2, 1], 0)
    }

    fn targets(users: &[UserId]) -> Arc<[Target]> {
        users.iter().map(|&u| Target::User(u)).collect()
    }

    #[test]
    fn invite_only_groups_refuse_joins_and_public_ones_take_them() {
        let mut chat = group(ChatKind::Group);
        let refusal = chat.join(3, 5).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::NotMember);
        let mut chat = group(ChatKind::PublicGroup);
        let outcome = chat.join(3, 5).unwrap();
        assert_eq!(outcome.added, [3]);
        assert_eq!(outcome.replies[0].to, targets(&[1, 2, 3]));
        // Joining again changes nothing and answers the same.
        let again = chat.join(3, 5).unwrap();
        assert!(again.added.is_empty());
        assert_eq!(again.replies, outcome.replies);
    }

    #[test]
    fn members_add_and_only_admins_remove() {
        let mut chat = group(ChatKind::Group);
        let outcome = chat.add_members(2, 6, &[4, 3, 4]).unwrap();
        assert_eq!(outcome.added, [3, 4]);
        assert_eq!(outcome.replies[0].to, targets(&[1, 2]));
        assert!(
            matches!(&outcome.replies[1].frame, ServerFrame::ChatCreated(c) if c.members == [1, 2, 3, 4] && c.client_msg_id == 6)
        );
        assert_eq!(outcome.replies[1].to, targets(&[3, 4]));
        assert_eq!(
            chat.remove_members(2, 7, &[3]).unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert_eq!(
            chat.remove_members(9, 7, &[3]).unwrap_err().code,
            ErrorCode::NotMember
        );
        let outcome = chat.remove_members(1, 8, &[3, 9]).unwrap();
        assert_eq!(outcome.removed, [3]);
        assert_eq!(outcome.replies[0].to, targets(&[1, 2, 3, 4]));
        assert_eq!(chat.members(), [1, 2, 4]);
    }

    #[test]
    fn a_leave_is_refused_to_non_members_but_its_resend_is_answered() {
        let mut chat = group(ChatKind::Group);
        assert_eq!(chat.leave(3, 1).unwrap_err().code, ErrorCode::NotMember);
        let outcome = chat.leave(2, 4).unwrap();
        assert_eq!(outcome.removed, [2]);
        assert_eq!(outcome.replies[0].to, targets(&[1, 2]));
        let resend = chat.leave(2, 4).unwrap();
        assert!(resend.removed.is_empty());
        assert_eq!(resend.replies[0].to, targets(&[2]));
        assert_eq!(chat.leave(2, 5).unwrap_err().code, ErrorCode::NotMember);
        // The admin leaves last: the chat is empty, and nobody is admin any more.
        chat.leave(1, 6).unwrap();
        assert!(chat.is_empty());
    }

    #[test]
    fn direct_chats_never_change_members() {
        let mut chat = Chat::new(8, ChatKind::Direct, String::new(), 1, 1, vec![1, 2], 0);
        for refusal in [
            chat.join(3, 1).unwrap_err(),
            chat.leave(1, 2).unwrap_err(),
            chat.add_members(1, 3, &[3]).unwrap_err(),
            chat.remove_members(1, 4, &[2]).unwrap_err(),
        ] {
            assert_eq!(refusal.code, ErrorCode::InvalidRequest);
        }
        // A non-member learns only that it is not a member.
        assert_eq!(chat.leave(3, 5).unwrap_err().code, ErrorCode::NotMember);
    }

    #[test]
    fn departures_stay_bounded() {
        let mut chat = group(ChatKind::PublicGroup);
        for user in 10..10 + 2 * DEPARTURES_KEPT as u64 {
            chat.join(user, 1).unwrap();
            chat.leave(user, 2).unwrap();
        }
        assert_eq!(chat.departures.len(), DEPARTURES_KEPT);
    }

    #[test]
    fn only_members_sync() {
        let chat = group(ChatKind::PublicGroup);
        let frame = wire::ClientFrame::Sync(wire::client::SyncRequest {
            client_msg_id: 3,
            chat_id: 7,
            after_seq: 0,
            limit: 10,
            before_seq: None,
        })
        .encode()
        .unwrap();
        let wire::ClientFrameRef::Sync(sync) = wire::ClientFrameRef::access(&frame).unwrap() else {
            unreachable!("a sync frame")
        };
        assert!(chat.sync_page(ORIGIN, sync).is_ok());
        let stranger = Origin {
            user_id: 3,
            connection_id: 30,
        };
        assert_eq!(
            chat.sync_page(stranger, sync).unwrap_err().code,
            ErrorCode::NotMember
        );
    }

    /// Appends the entry `frame` asks for, as `ORIGIN`, in a chat keeping `history` entries.
    fn append(chat: &mut Chat, frame: wire::ClientFrame, history: usize) -> Answer {
        let bytes = frame.encode().unwrap();
        let view = wire::ClientFrameRef::access(&bytes).unwrap();
        chat.append(ORIGIN, view.entry_request().unwrap(), 0, history)
    }

    #[test]
    fn events_need_their_message_in_history_and_what_they_did_leaves_with_it() {
        const HISTORY: usize = 3;
        let mut chat = group(ChatKind::Group);
        let send = |client_msg_id| {
            wire::ClientFrame::Send(wire::client::SendMessage {
                chat_id: 7,
                client_msg_id,
                body: "hi".into(),
            })
        };
        let react = |client_msg_id, target_seq| {
            wire::ClientFrame::React(wire::client::Reaction {
                chat_id: 7,
                client_msg_id,
                target_seq,
                emoji: "👍".into(),
            })
        };
        for id in 1..=3 {
            append(&mut chat, send(id), HISTORY).unwrap();
        }
        let outcome = append(&mut chat, react(10, 3), HISTORY).unwrap();
        // The entry reaches every member's sessions but the one that sent it.
        assert_eq!(
            outcome.replies[0].except,
            Some(Skip::Connection(ORIGIN.connection_id))
        );
        assert_eq!(chat.marks.len(), 1);
        // Seq 1 left the history (four entries, three kept): it cannot be found.
        let gone = append(&mut chat, react(11, 1), HISTORY).unwrap_err();
        assert_eq!(gone.code, ErrorCode::InvalidRequest);
        for id in 20..23 {
            append(&mut chat, send(id), HISTORY).unwrap();
        }
        assert!(
            chat.marks.is_empty(),
            "seq 3 left the history, and its reaction with it"
        );
    }

    #[test]
    fn a_sync_page_stops_at_its_byte_bound_and_says_more_follow() {
        let mut chat = group(ChatKind::Group);
        let body = "x".repeat(wire::limits::MAX_BODY_BYTES);
        for client_msg_id in 0..100 {
            let frame = wire::ClientFrame::Send(wire::client::SendMessage {
                chat_id: 7,
                client_msg_id,
                body: body.clone(),
            })
            .encode()
            .unwrap();
            let wire::ClientFrameRef::Send(send) = wire::ClientFrameRef::access(&frame).unwrap()
            else {
                unreachable!("a send frame")
            };
            let entry = wire::ClientFrameRef::Send(send).entry_request().unwrap();
            chat.append(ORIGIN, entry, 0, 1000).unwrap();
        }
        let page = |after_seq| {
            let frame = wire::ClientFrame::Sync(wire::client::SyncRequest {
                client_msg_id: 3,
                chat_id: 7,
                after_seq,
                limit: wire::limits::MAX_SYNC_PAGE,
                before_seq: None,
            })
            .encode()
            .unwrap();
            let wire::ClientFrameRef::Sync(sync) = wire::ClientFrameRef::access(&frame).unwrap()
            else {
                unreachable!("a sync frame")
            };
            let mut outcome = chat.sync_page(ORIGIN, sync).unwrap();
            match outcome.replies.remove(0).frame {
                ServerFrame::SyncBatch(batch) => batch,
                other => panic!("a sync batch, not {other:?}"),
            }
        };
        let first = page(0);
        let fitting = wire::limits::MAX_SYNC_PAGE_BYTES / body.len();
        assert_eq!(first.messages.len(), fitting);
        assert!(first.has_more);
        let rest = page(first.messages.last().unwrap().seq);
        assert_eq!(rest.messages.len(), 100 - fitting);
        assert!(!rest.has_more);
    }
}
