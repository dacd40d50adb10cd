//! Frames a client sends to the gateway.

use crate::codec::{frame_set, limits};
use crate::limits::{
    MAX_BODY_BYTES, MAX_EMOJI_BYTES, MAX_FRAME_BYTES, MAX_MEMBERS_PER_CHAT, MAX_PRESENCE_QUERY,
    MAX_TITLE_BYTES,
};
use crate::{ChatId, ChatKind, ClientMsgId, EntryKind, Seq, UserId, WireError, wire_struct};

wire_struct! {
    /// Create a chat. The creator is always a member, whether listed or not.
    pub struct CreateChat {
        pub client_msg_id: ClientMsgId,
        pub kind: ChatKind,
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(regex = "\\PC{0,40}"))]
        pub title: String,
        pub members: Vec<UserId>,
    }
}

wire_struct! {
    /// Join or leave a chat (group chats only).
    pub struct Membership {
        pub client_msg_id: ClientMsgId,
        pub chat_id: ChatId,
    }
}

wire_struct! {
    /// Add users to a group chat, or remove them from it.
    pub struct MemberChange {
        pub client_msg_id: ClientMsgId,
        pub chat_id: ChatId,
        pub users: Vec<UserId>,
    }
}

wire_struct! {
    /// Send a message. `(sender, client_msg_id)` is unique: a resend with the same id is
    /// stored once and answered with the stored result.
    pub struct SendMessage {
        pub chat_id: ChatId,
        pub client_msg_id: ClientMsgId,
        pub body: String,
    }
}

wire_struct! {
    /// Replace the body of one's own message at `target_seq`. An edit is a chat entry of its
    /// own (the chat's next seq), idempotent by `(sender, client_msg_id)` like a send.
    pub struct EditMessage {
        pub chat_id: ChatId,
        pub client_msg_id: ClientMsgId,
        pub target_seq: Seq,
        pub body: String,
    }
}

wire_struct! {
    /// Delete one's own message at `target_seq` (a chat entry of its own, like an edit).
    pub struct DeleteMessage {
        pub chat_id: ChatId,
        pub client_msg_id: ClientMsgId,
        pub target_seq: Seq,
    }
}

wire_struct! {
    /// React to any message at `target_seq` with `emoji`, or take the reaction back (a chat
    /// entry of its own, like an edit).
    pub struct Reaction {
        pub chat_id: ChatId,
        pub client_msg_id: ClientMsgId,
        pub target_seq: Seq,
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(regex = "\\PC{1,8}"))]
        pub emoji: String,
    }
}

wire_struct! {
    /// A watermark: everything in `chat_id` up to and including `seq` was delivered (or read).
    pub struct Ack {
        pub chat_id: ChatId,
        pub seq: Seq,
    }
}

wire_struct! {
    /// Ask for up to `limit` messages of `chat_id`: after `after_seq`, oldest first, or, when
    /// `before_seq` is set (and `after_seq` is 0), before `before_seq`, newest first.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(filter = "|s| s.before_seq.is_none() || s.after_seq == 0"))]
    pub struct SyncRequest {
        pub client_msg_id: ClientMsgId,
        pub chat_id: ChatId,
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "proptest::prop_oneof![proptest::strategy::Just(0), proptest::arbitrary::any::<u64>()]"))]
        pub after_seq: Seq,
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "1..=crate::limits::MAX_SYNC_PAGE"))]
        pub limit: u32,
        /// Backward history: JSON may leave it out, and writes it only when set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "proptest::option::of(1..=u64::MAX)"))]
        pub before_seq: Option<Seq>,
    }
}

wire_struct! {
    /// Ask for the chats the sender is a member of, most recent activity first: up to `limit`
    /// of them, those after the cursor when one is given. The cursor is the last chat of the
    /// previous page: its `last_activity_us` and `chat_id` (left out: no bound).
    pub struct ListChats {
        pub client_msg_id: ClientMsgId,
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "1..=crate::limits::MAX_CHAT_LIST_PAGE"))]
        pub limit: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub before_activity_us: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub before_chat_id: Option<ChatId>,
    }
}

wire_struct! {
    /// The sender is typing in `chat_id` (ephemeral, never stored).
    pub struct Typing {
        pub chat_id: ChatId,
    }
}

wire_struct! {
    /// Ask which of `users` are online.
    pub struct PresenceQuery {
        pub client_msg_id: ClientMsgId,
        pub users: Vec<UserId>,
    }
}

wire_struct! {
    /// Application-level ping; answered by a pong with the same nonce.
    pub struct Ping {
        pub nonce: u64,
    }
}

limits!(
    CreateChat,
    ArchivedCreateChat,
    title <= MAX_TITLE_BYTES,
    members <= MAX_MEMBERS_PER_CHAT;
    text title
);
limits!(Membership, ArchivedMembership);
limits!(
    MemberChange,
    ArchivedMemberChange,
    users <= MAX_MEMBERS_PER_CHAT
);
limits!(SendMessage, ArchivedSendMessage, body <= MAX_BODY_BYTES; text body);
limits!(EditMessage, ArchivedEditMessage, body <= MAX_BODY_BYTES; text body);
limits!(DeleteMessage, ArchivedDeleteMessage);
limits!(
    Reaction,
    ArchivedReaction,
    emoji <= MAX_EMOJI_BYTES;
    not_empty emoji <= MAX_EMOJI_BYTES;
    text emoji
);
limits!(Ack, ArchivedAck);
limits!(SyncRequest, ArchivedSyncRequest; sync_page limit; one_direction after_seq before_seq);
limits!(ListChats, ArchivedListChats; chat_list_page limit);
limits!(Typing, ArchivedTyping);
limits!(
    PresenceQuery,
    ArchivedPresenceQuery,
    users <= MAX_PRESENCE_QUERY
);
limits!(Ping, ArchivedPing);

frame_set! {
    /// A frame from a client.
    ClientFrame, ClientFrameRef, ClientKind, limit = MAX_FRAME_BYTES;
    /// Create a direct or group chat.
    CreateChat(CreateChat) = 1, "create_chat";
    /// Join a group chat.
    Join(Membership) = 2, "join";
    /// Leave a group chat.
    Leave(Membership) = 3, "leave";
    /// Send a message.
    Send(SendMessage) = 4, "send";
    /// Delivered watermark.
    AckDelivered(Ack) = 5, "ack_delivered";
    /// Read watermark.
    AckRead(Ack) = 6, "ack_read";
    /// History page.
    Sync(SyncRequest) = 7, "sync";
    /// Typing indicator.
    Typing(Typing) = 8, "typing";
    /// Presence query.
    PresenceQuery(PresenceQuery) = 9, "presence_query";
    /// Ping.
    Ping(Ping) = 10, "ping";
    /// Add members to a group chat.
    AddMembers(MemberChange) = 11, "add_members";
    /// Remove members from a group chat (admins only).
    RemoveMembers(MemberChange) = 12, "remove_members";
    /// The sender's chats.
    ListChats(ListChats) = 13, "list_chats";
    /// Edit one's own message.
    Edit(EditMessage) = 14, "edit";
    /// Delete one's own message.
    Delete(DeleteMessage) = 15, "delete";
    /// React to a message.
    React(Reaction) = 16, "react";
    /// Take a reaction back.
    Unreact(Reaction) = 17, "unreact";
}

/// A client frame that cannot be accepted, and the id of the request it carried when that
/// could be read: the error frame answering it echoes the id, so the client can tell which
/// of its requests failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct Refusal {
    /// Why the frame was refused.
    pub error: WireError,
    /// The frame's `client_msg_id`, when the frame was readable and its kind carries one.
    pub client_msg_id: Option<ClientMsgId>,
}

impl Refusal {
    fn new(error: WireError, client_msg_id: Option<ClientMsgId>) -> Refusal {
        Refusal {
            error,
            client_msg_id,
        }
    }
}

impl ClientKind {
    /// Whether frames of this kind carry a `client_msg_id`.
    pub fn carries_client_msg_id(self) -> bool {
        match self {
            ClientKind::CreateChat
            | ClientKind::Join
            | ClientKind::Leave
            | ClientKind::AddMembers
            | ClientKind::RemoveMembers
            | ClientKind::Send
            | ClientKind::Edit
            | ClientKind::Delete
            | ClientKind::React
            | ClientKind::Unreact
            | ClientKind::Sync
            | ClientKind::ListChats
            | ClientKind::PresenceQuery => true,
            ClientKind::AckDelivered
            | ClientKind::AckRead
            | ClientKind::Typing
            | ClientKind::Ping => false,
        }
    }
}

impl ClientFrame {
    /// The binary form of a text frame: parsed from JSON, checked and encoded once. A
    /// refusal names the request whenever the text was JSON with a readable `client_msg_id`
    /// for its `type`, even if another field was wrong.
    pub fn binary_from_json(text: &str) -> Result<Vec<u8>, Refusal> {
        let frame = ClientFrame::parse_json(text).map_err(|error| {
            let id = match error {
                WireError::Json(_) => client_msg_id_of_json(text),
                _ => None,
            };
            Refusal::new(error, id)
        })?;
        frame
            .encode()
            .map_err(|error| Refusal::new(error, frame.client_msg_id()))
    }

    /// The client message id the frame carries.
    pub fn client_msg_id(&self) -> Option<ClientMsgId> {
        match self {
            ClientFrame::CreateChat(f) => Some(f.client_msg_id),
            ClientFrame::Join(f) | ClientFrame::Leave(f) => Some(f.client_msg_id),
            ClientFrame::AddMembers(f) | ClientFrame::RemoveMembers(f) => Some(f.client_msg_id),
            ClientFrame::Send(f) => Some(f.client_msg_id),
            ClientFrame::Edit(f) => Some(f.client_msg_id),
            ClientFrame::Delete(f) => Some(f.client_msg_id),
            ClientFrame::React(f) | ClientFrame::Unreact(f) => Some(f.client_msg_id),
            ClientFrame::Sync(f) => Some(f.client_msg_id),
            ClientFrame::ListChats(f) => Some(f.client_msg_id),
            ClientFrame::PresenceQuery(f) => Some(f.client_msg_id),
            ClientFrame::AckDelivered(_)
            | ClientFrame::AckRead(_)
            | ClientFrame::Typing(_)
            | ClientFrame::Ping(_) => None,
        }
    }
}

/// The chat entry a send, edit, delete, react or unreact asks for, read from either form of
/// the frame, so that both engines see the same request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRequest<'a> {
    pub chat_id: ChatId,
    pub client_msg_id: ClientMsgId,
    pub kind: EntryKind,
    /// The message an event is about; 0 for a message.
    pub target_seq: Seq,
    /// The text, the new text, the emoji; empty for a delete.
    pub body: &'a str,
}

impl ClientFrame {
    /// The entry the frame asks for, if it is a send, edit, delete, react or unreact.
    pub fn entry_request(&self) -> Option<EntryRequest<'_>> {
        let (chat_id, client_msg_id, kind, target_seq, body) = match self {
            ClientFrame::Send(f) => (
                f.chat_id,
                f.client_msg_id,
                EntryKind::Message,
                0,
                &f.body[..],
            ),
            ClientFrame::Edit(f) => (
                f.chat_id,
                f.client_msg_id,
                EntryKind::Edit,
                f.target_seq,
                &f.body[..],
            ),
            ClientFrame::Delete(f) => (
                f.chat_id,
                f.client_msg_id,
                EntryKind::Delete,
                f.target_seq,
                "",
            ),
            ClientFrame::React(f) => (
                f.chat_id,
                f.client_msg_id,
                EntryKind::React,
                f.target_seq,
                &f.emoji[..],
            ),
            ClientFrame::Unreact(f) => (
                f.chat_id,
                f.client_msg_id,
                EntryKind::Unreact,
                f.target_seq,
                &f.emoji[..],
            ),
            _ => return None,
        };
        Some(EntryRequest {
            chat_id,
            client_msg_id,
            kind,
            target_seq,
            body,
        })
    }
}

impl<'a> ClientFrameRef<'a> {
    /// The entry the frame asks for, read in place, as [`ClientFrame::entry_request`].
    pub fn entry_request(&self) -> Option<EntryRequest<'a>> {
        let (chat_id, client_msg_id, kind, target_seq, body) = match *self {
            ClientFrameRef::Send(f) => (
                f.chat_id,
                f.client_msg_id,
                EntryKind::Message,
                0,
                f.body.as_str(),
            ),
            ClientFrameRef::Edit(f) => (
                f.chat_id,
                f.client_msg_id,
                EntryKind::Edit,
                f.target_seq.to_native(),
                f.body.as_str(),
            ),
            ClientFrameRef::Delete(f) => (
                f.chat_id,
                f.client_msg_id,
                EntryKind::Delete,
                f.target_seq.to_native(),
                "",
            ),
            ClientFrameRef::React(f) => (
                f.chat_id,
                f.client_msg_id,
                EntryKind::React,
                f.target_seq.to_native(),
                f.emoji.as_str(),
            ),
            ClientFrameRef::Unreact(f) => (
                f.chat_id,
                f.client_msg_id,
                EntryKind::Unreact,
                f.target_seq.to_native(),
                f.emoji.as_str(),
            ),
            _ => return None,
        };
        Some(EntryRequest {
            chat_id: chat_id.to_native(),
            client_msg_id: client_msg_id.to_native(),
            kind,
            target_seq,
            body,
        })
    }
}

/// The `client_msg_id` of JSON text that is not a valid frame, read on its own: the
/// object's `type` must name a kind that carries one, and the id must be a u64.
fn client_msg_id_of_json(text: &str) -> Option<ClientMsgId> {
    #[derive(serde::Deserialize)]
    struct Named {
        #[serde(rename = "type")]
        kind: String,
        client_msg_id: ClientMsgId,
    }
    let named: Named = serde_json::from_str(text).ok()?;
    ClientKind::from_name(&named.kind)
        .filter(|kind| kind.carries_client_msg_id())
        .map(|_| named.client_msg_id)
}

impl<'a> ClientFrameRef<'a> {
    /// Validates `bytes` like [`ClientFrameRef::access`]; a frame that is a valid archive
    /// and breaks only a limit (or holds U+0000) still names its request in the refusal.
    pub fn check(bytes: &'a [u8]) -> Result<Self, Refusal> {
        let frame = Self::access_archive(bytes).map_err(|error| Refusal::new(error, None))?;
        frame
            .check_limits()
            .map_err(|error| Refusal::new(error, frame.client_msg_id()))?;
        Ok(frame)
    }
}

impl ClientFrameRef<'_> {
    /// The client message id the frame carries, echoed by error frames that answer it.
    pub fn client_msg_id(&self) -> Option<ClientMsgId> {
        match self {
            ClientFrameRef::CreateChat(f) => Some(f.client_msg_id.to_native()),
            ClientFrameRef::Join(f) | ClientFrameRef::Leave(f) => Some(f.client_msg_id.to_native()),
            ClientFrameRef::AddMembers(f) | ClientFrameRef::RemoveMembers(f) => {
                Some(f.client_msg_id.to_native())
            }
            ClientFrameRef::Send(f) => Some(f.client_msg_id.to_native()),
            ClientFrameRef::Edit(f) => Some(f.client_msg_id.to_native()),
            ClientFrameRef::Delete(f) => Some(f.client_msg_id.to_native()),
            ClientFrameRef::React(f) | ClientFrameRef::Unreact(f) => {
                Some(f.client_msg_id.to_native())
            }
            ClientFrameRef::Sync(f) => Some(f.client_msg_id.to_native()),
            ClientFrameRef::ListChats(f) => Some(f.client_msg_id.to_native()),
            ClientFrameRef::PresenceQuery(f) => Some(f.client_msg_id.to_native()),
            ClientFrameRef::AckDelivered(_)
            | ClientFrameRef::AckRead(_)
            | ClientFrameRef::Typing(_)
            | ClientFrameRef::Ping(_) => None,
        }
    }

    /// The chat the frame acts on, if it acts on one.
    pub fn chat_id(&self) -> Option<ChatId> {
        match self {
            ClientFrameRef::Join(f) | ClientFrameRef::Leave(f) => Some(f.chat_id.to_native()),
            ClientFrameRef::AddMembers(f) | ClientFrameRef::RemoveMembers(f) => {
                Some(f.chat_id.to_native())
            }
            ClientFrameRef::Send(f) => Some(f.chat_id.to_native()),
            ClientFrameRef::Edit(f) => Some(f.chat_id.to_native()),
            ClientFrameRef::Delete(f) => Some(f.chat_id.to_native()),
            ClientFrameRef::React(f) | ClientFrameRef::Unreact(f) => Some(f.chat_id.to_native()),
            ClientFrameRef::AckDelivered(f) | ClientFrameRef::AckRead(f) => {
                Some(f.chat_id.to_native())
            }
            ClientFrameRef::Sync(f) => Some(f.chat_id.to_native()),
            ClientFrameRef::Typing(f) => Some(f.chat_id.to_native()),
            ClientFrameRef::CreateChat(_)
            | ClientFrameRef::ListChats(_)
            | ClientFrameRef::PresenceQuery(_)
            | ClientFrameRef::Ping(_) => None,
        }
    }
}
