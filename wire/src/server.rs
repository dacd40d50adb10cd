//! Frames the gateway sends to a client.

use crate::codec::{frame_set, limits};
use crate::limits::{
    MAX_BODY_BYTES, MAX_CHAT_LIST_PAGE, MAX_MEMBERS_PER_CHAT, MAX_PRESENCE_QUERY, MAX_REASON_BYTES,
    MAX_SERVER_FRAME_BYTES, MAX_SYNC_PAGE, MAX_TITLE_BYTES,
};
use crate::{
    ChatId, ChatKind, ClientMsgId, EntryKind, ErrorCode, ReceiptKind, Seq, UserId, wire_struct,
};

wire_struct! {
    /// The first frame of every session.
    pub struct Welcome {
        /// The authenticated user, from the token.
        pub user_id: UserId,
        /// This connection's id on the gateway.
        pub connection_id: u64,
        /// The gateway node that holds the connection.
        pub node_id: u32,
        pub server_time_us: u64,
        /// The server pings a connection from which nothing arrived for this long; a
        /// client that answers pings (WebSocket libraries do) needs to send nothing else.
        pub heartbeat_ms: u32,
        /// The largest frame the gateway accepts.
        pub max_frame_bytes: u32,
    }
}

wire_struct! {
    /// A chat entry, live or in a sync batch: a message, or an edit, delete or reaction of
    /// the earlier message at `target_seq` (see [`EntryKind`]).
    pub struct Message {
        pub chat_id: ChatId,
        /// Gap-free per chat, starting at 1.
        pub seq: Seq,
        pub sender: UserId,
        pub client_msg_id: ClientMsgId,
        /// When the server accepted the entry, microseconds since the Unix epoch.
        pub server_time_us: u64,
        /// The message's text; an edit's new text; a reaction's emoji; empty for a delete.
        pub body: String,
        /// JSON leaves it out for a plain message, so a message reads as it did before
        /// entries had kinds.
        #[serde(default, skip_serializing_if = "EntryKind::is_message")]
        pub kind: EntryKind,
        /// The message an event is about; 0 for a plain message (left out of JSON then).
        #[serde(default, skip_serializing_if = "is_zero")]
        pub target_seq: Seq,
    }
}

wire_struct! {
    /// Sent (to the sender, with its client message id), delivered or read (watermarks of
    /// the member `user_id`, to the senders of the messages they cover).
    pub struct Receipt {
        pub chat_id: ChatId,
        pub kind: ReceiptKind,
        pub seq: Seq,
        /// The member the receipt is about: the sender for `sent`, the reader otherwise.
        pub user_id: UserId,
        /// Present on `sent` receipts.
        pub client_msg_id: Option<ClientMsgId>,
    }
}

wire_struct! {
    /// A chat was created; sent to every member.
    pub struct ChatCreated {
        pub client_msg_id: ClientMsgId,
        pub chat_id: ChatId,
        pub kind: ChatKind,
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(regex = "\\PC{0,40}"))]
        pub title: String,
        pub creator: UserId,
        pub members: Vec<UserId>,
    }
}

wire_struct! {
    /// `user_id` joined or left `chat_id`; sent to the members.
    pub struct ChatEvent {
        pub client_msg_id: ClientMsgId,
        pub chat_id: ChatId,
        pub user_id: UserId,
    }
}

wire_struct! {
    /// `by` added `users` to `chat_id`, or removed them from it; sent to the members.
    pub struct MembersChanged {
        pub client_msg_id: ClientMsgId,
        pub chat_id: ChatId,
        pub by: UserId,
        pub users: Vec<UserId>,
    }
}

wire_struct! {
    /// A page of history, oldest first. `has_more` says whether another page follows.
    pub struct SyncBatch {
        pub client_msg_id: ClientMsgId,
        pub chat_id: ChatId,
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "proptest::collection::vec(proptest::arbitrary::any::<Message>(), 0..8)"))]
        pub messages: Vec<Message>,
        pub has_more: bool,
    }
}

wire_struct! {
    /// One chat of a `chat_list`, as the asker sees it.
    pub struct ChatSummary {
        pub chat_id: ChatId,
        pub kind: ChatKind,
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(regex = "\\PC{0,40}"))]
        pub title: String,
        pub member_count: u32,
        /// The seq of the chat's newest message; 0 if it has none.
        pub last_seq: Seq,
        /// When the newest message was accepted, or the chat created if it has none,
        /// microseconds since the Unix epoch.
        pub last_activity_us: u64,
        /// The asker's watermarks.
        pub delivered_seq: Seq,
        pub read_seq: Seq,
        /// `last_seq - read_seq`: messages the asker has not read, its own included.
        pub unread: u64,
    }
}

wire_struct! {
    /// A page of the asker's chats, most recent activity first. `has_more` says whether
    /// another page follows: ask again with the last chat as the cursor.
    pub struct ChatList {
        pub client_msg_id: ClientMsgId,
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "proptest::collection::vec(proptest::arbitrary::any::<ChatSummary>(), 0..8)"))]
        pub chats: Vec<ChatSummary>,
        pub has_more: bool,
    }
}

wire_struct! {
    /// One user's presence.
    pub struct PresenceEntry {
        pub user_id: UserId,
        pub online: bool,
        /// Last time seen online, microseconds since the Unix epoch; 0 if never.
        pub last_seen_us: u64,
    }
}

wire_struct! {
    /// The answer to a presence query.
    pub struct Presence {
        pub client_msg_id: ClientMsgId,
        pub users: Vec<PresenceEntry>,
    }
}

wire_struct! {
    /// `user_id` is typing in `chat_id`.
    pub struct TypingEvent {
        pub chat_id: ChatId,
        pub user_id: UserId,
    }
}

wire_struct! {
    /// A request failed. `code` is an [`ErrorCode`] number.
    pub struct ErrorFrame {
        pub code: u16,
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(regex = "\\PC{0,40}"))]
        pub reason: String,
        /// The client message id of the frame this answers, when it had one.
        pub client_msg_id: Option<ClientMsgId>,
    }
}

wire_struct! {
    /// The answer to a ping.
    pub struct Pong {
        pub nonce: u64,
        pub server_time_us: u64,
    }
}

fn is_zero(seq: &Seq) -> bool {
    *seq == 0
}

impl ErrorFrame {
    /// An error frame body, with the reason cut to the protocol's limit at a char boundary.
    pub fn new(
        code: ErrorCode,
        reason: impl Into<String>,
        client_msg_id: Option<ClientMsgId>,
    ) -> ErrorFrame {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON_BYTES {
            let mut end = MAX_REASON_BYTES;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        ErrorFrame {
            code: code.as_u16(),
            reason,
            client_msg_id,
        }
    }
}

limits!(Welcome, ArchivedWelcome);
limits!(Message, ArchivedMessage, body <= MAX_BODY_BYTES);
limits!(Receipt, ArchivedReceipt);
limits!(
    ChatCreated,
    ArchivedChatCreated,
    title <= MAX_TITLE_BYTES,
    members <= MAX_MEMBERS_PER_CHAT
);
limits!(ChatEvent, ArchivedChatEvent);
limits!(
    MembersChanged,
    ArchivedMembersChanged,
    users <= MAX_MEMBERS_PER_CHAT
);
limits!(
    SyncBatch,
    ArchivedSyncBatch,
    messages <= MAX_SYNC_PAGE as usize
);
limits!(Presence, ArchivedPresence, users <= MAX_PRESENCE_QUERY);
limits!(
    ChatList,
    ArchivedChatList,
    chats <= MAX_CHAT_LIST_PAGE as usize
);
limits!(TypingEvent, ArchivedTypingEvent);
limits!(ErrorFrame, ArchivedErrorFrame, reason <= MAX_REASON_BYTES);
limits!(Pong, ArchivedPong);

frame_set! {
    /// A frame from the server.
    ServerFrame, ServerFrameRef, ServerKind, limit = MAX_SERVER_FRAME_BYTES;
    /// Session information.
    Welcome(Welcome) = 1, "welcome";
    /// A live message.
    Message(Message) = 2, "message";
    /// A sent, delivered or read receipt.
    Receipt(Receipt) = 3, "receipt";
    /// A chat was created.
    ChatCreated(ChatCreated) = 4, "chat_created";
    /// A member joined.
    Joined(ChatEvent) = 5, "joined";
    /// A member left.
    Left(ChatEvent) = 6, "left";
    /// A page of history.
    SyncBatch(SyncBatch) = 7, "sync_batch";
    /// Presence answer.
    Presence(Presence) = 8, "presence";
    /// Typing indicator.
    Typing(TypingEvent) = 9, "typing";
    /// A request failed.
    Error(ErrorFrame) = 10, "error";
    /// Ping answer.
    Pong(Pong) = 11, "pong";
    /// Members were added.
    MembersAdded(MembersChanged) = 12, "members_added";
    /// Members were removed.
    MembersRemoved(MembersChanged) = 13, "members_removed";
    /// A page of the asker's chats.
    ChatList(ChatList) = 14, "chat_list";
}

/// Converts a binary server frame to its JSON text, once per frame (not per recipient).
pub fn binary_to_json(bytes: &[u8]) -> Result<String, crate::WireError> {
    Ok(ServerFrameRef::access(bytes)?.to_owned()?.to_json())
}
