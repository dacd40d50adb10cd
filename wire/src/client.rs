//! Frames a client sends to the gateway.

use crate::codec::{frame_set, limits};
use crate::limits::{
    MAX_BODY_BYTES, MAX_FRAME_BYTES, MAX_MEMBERS_PER_CHAT, MAX_PRESENCE_QUERY, MAX_TITLE_BYTES,
};
use crate::{ChatId, ChatKind, ClientMsgId, Seq, UserId, wire_struct};

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
    /// A watermark: everything in `chat_id` up to and including `seq` was delivered (or read).
    pub struct Ack {
        pub chat_id: ChatId,
        pub seq: Seq,
    }
}

wire_struct! {
    /// Ask for up to `limit` messages of `chat_id` after `after_seq`, oldest first.
    pub struct SyncRequest {
        pub client_msg_id: ClientMsgId,
        pub chat_id: ChatId,
        pub after_seq: Seq,
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "1..=crate::limits::MAX_SYNC_PAGE"))]
        pub limit: u32,
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
limits!(Ack, ArchivedAck);
limits!(SyncRequest, ArchivedSyncRequest; sync_page limit);
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
            ClientFrameRef::Sync(f) => Some(f.client_msg_id.to_native()),
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
            ClientFrameRef::AckDelivered(f) | ClientFrameRef::AckRead(f) => {
                Some(f.chat_id.to_native())
            }
            ClientFrameRef::Sync(f) => Some(f.chat_id.to_native()),
            ClientFrameRef::Typing(f) => Some(f.chat_id.to_native()),
            ClientFrameRef::CreateChat(_)
            | ClientFrameRef::PresenceQuery(_)
            | ClientFrameRef::Ping(_) => None,
        }
    }
}
