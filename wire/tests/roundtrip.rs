//! Every frame survives both encodings unchanged, and the in-place view of a binary frame
//! reads the same fields as the owned value it was encoded from.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use rkyv::Archived;
use rkyv::option::ArchivedOption;
use wire::client::ClientFrameRef;
use wire::server::{self, ServerFrameRef};
use wire::{
    ArchivedChatKind, ArchivedEntryKind, ArchivedReceiptKind, ChatKind, ClientFrame, EntryKind,
    ReceiptKind, ServerFrame, codec,
};

fn natives(ids: &[Archived<u64>]) -> Vec<u64> {
    ids.iter().map(|id| id.to_native()).collect()
}

fn option(value: &ArchivedOption<Archived<u64>>) -> Option<u64> {
    match value {
        ArchivedOption::None => None,
        ArchivedOption::Some(v) => Some(v.to_native()),
    }
}

fn chat_kind(kind: &ArchivedChatKind) -> ChatKind {
    match kind {
        ArchivedChatKind::Direct => ChatKind::Direct,
        ArchivedChatKind::Group => ChatKind::Group,
        ArchivedChatKind::PublicGroup => ChatKind::PublicGroup,
    }
}

fn receipt_kind(kind: &ArchivedReceiptKind) -> ReceiptKind {
    match kind {
        ArchivedReceiptKind::Sent => ReceiptKind::Sent,
        ArchivedReceiptKind::Delivered => ReceiptKind::Delivered,
        ArchivedReceiptKind::Read => ReceiptKind::Read,
    }
}

/// Reads every field through the archive and compares it with the owned frame.
fn assert_client_view(view: ClientFrameRef<'_>, frame: &ClientFrame) {
    assert_eq!(view.kind(), frame.kind());
    match (view, frame) {
        (ClientFrameRef::CreateChat(a), ClientFrame::CreateChat(b)) => {
            assert_eq!(a.client_msg_id.to_native(), b.client_msg_id);
            assert_eq!(chat_kind(&a.kind), b.kind);
            assert_eq!(a.title.as_str(), b.title);
            assert_eq!(natives(&a.members), b.members);
            assert_eq!(view.client_msg_id(), Some(b.client_msg_id));
            assert_eq!(view.chat_id(), None);
        }
        (ClientFrameRef::Join(a), ClientFrame::Join(b))
        | (ClientFrameRef::Leave(a), ClientFrame::Leave(b)) => {
            assert_eq!(a.client_msg_id.to_native(), b.client_msg_id);
            assert_eq!(a.chat_id.to_native(), b.chat_id);
            assert_eq!(view.client_msg_id(), Some(b.client_msg_id));
            assert_eq!(view.chat_id(), Some(b.chat_id));
        }
        (ClientFrameRef::AddMembers(a), ClientFrame::AddMembers(b))
        | (ClientFrameRef::RemoveMembers(a), ClientFrame::RemoveMembers(b)) => {
            assert_eq!(a.client_msg_id.to_native(), b.client_msg_id);
            assert_eq!(a.chat_id.to_native(), b.chat_id);
            assert_eq!(natives(&a.users), b.users);
            assert_eq!(view.client_msg_id(), Some(b.client_msg_id));
            assert_eq!(view.chat_id(), Some(b.chat_id));
        }
        (ClientFrameRef::Send(a), ClientFrame::Send(b)) => {
            assert_eq!(a.chat_id.to_native(), b.chat_id);
            assert_eq!(a.client_msg_id.to_native(), b.client_msg_id);
            assert_eq!(a.body.as_str(), b.body);
            assert_eq!(view.client_msg_id(), Some(b.client_msg_id));
            assert_eq!(view.chat_id(), Some(b.chat_id));
        }
        (ClientFrameRef::Edit(a), ClientFrame::Edit(b)) => {
            assert_eq!(a.chat_id.to_native(), b.chat_id);
            assert_eq!(a.client_msg_id.to_native(), b.client_msg_id);
            assert_eq!(a.target_seq.to_native(), b.target_seq);
            assert_eq!(a.body.as_str(), b.body);
            assert_eq!(view.client_msg_id(), Some(b.client_msg_id));
            assert_eq!(view.chat_id(), Some(b.chat_id));
        }
        (ClientFrameRef::Delete(a), ClientFrame::Delete(b)) => {
            assert_eq!(a.chat_id.to_native(), b.chat_id);
            assert_eq!(a.client_msg_id.to_native(), b.client_msg_id);
            assert_eq!(a.target_seq.to_native(), b.target_seq);
            assert_eq!(view.client_msg_id(), Some(b.client_msg_id));
            assert_eq!(view.chat_id(), Some(b.chat_id));
        }
        (ClientFrameRef::React(a), ClientFrame::React(b))
        | (ClientFrameRef::Unreact(a), ClientFrame::Unreact(b)) => {
            assert_eq!(a.chat_id.to_native(), b.chat_id);
            assert_eq!(a.client_msg_id.to_native(), b.client_msg_id);
            assert_eq!(a.target_seq.to_native(), b.target_seq);
            assert_eq!(a.emoji.as_str(), b.emoji);
            assert_eq!(view.client_msg_id(), Some(b.client_msg_id));
            assert_eq!(view.chat_id(), Some(b.chat_id));
        }
        (ClientFrameRef::AckDelivered(a), ClientFrame::AckDelivered(b))
        | (ClientFrameRef::AckRead(a), ClientFrame::AckRead(b)) => {
            assert_eq!(a.chat_id.to_native(), b.chat_id);
            assert_eq!(a.seq.to_native(), b.seq);
            assert_eq!(view.client_msg_id(), None);
            assert_eq!(view.chat_id(), Some(b.chat_id));
        }
        (ClientFrameRef::Sync(a), ClientFrame::Sync(b)) => {
            assert_eq!(a.client_msg_id.to_native(), b.client_msg_id);
            assert_eq!(a.chat_id.to_native(), b.chat_id);
            assert_eq!(a.after_seq.to_native(), b.after_seq);
            assert_eq!(a.limit.to_native(), b.limit);
            assert_eq!(option(&a.before_seq), b.before_seq);
            assert_eq!(view.client_msg_id(), Some(b.client_msg_id));
            assert_eq!(view.chat_id(), Some(b.chat_id));
        }
        (ClientFrameRef::ListChats(a), ClientFrame::ListChats(b)) => {
            assert_eq!(a.client_msg_id.to_native(), b.client_msg_id);
            assert_eq!(a.limit.to_native(), b.limit);
            assert_eq!(option(&a.before_activity_us), b.before_activity_us);
            assert_eq!(option(&a.before_chat_id), b.before_chat_id);
            assert_eq!(view.client_msg_id(), Some(b.client_msg_id));
            assert_eq!(view.chat_id(), None);
        }
        (ClientFrameRef::Typing(a), ClientFrame::Typing(b)) => {
            assert_eq!(a.chat_id.to_native(), b.chat_id);
            assert_eq!(view.client_msg_id(), None);
            assert_eq!(view.chat_id(), Some(b.chat_id));
        }
        (ClientFrameRef::PresenceQuery(a), ClientFrame::PresenceQuery(b)) => {
            assert_eq!(a.client_msg_id.to_native(), b.client_msg_id);
            assert_eq!(natives(&a.users), b.users);
            assert_eq!(view.client_msg_id(), Some(b.client_msg_id));
            assert_eq!(view.chat_id(), None);
        }
        (ClientFrameRef::Ping(a), ClientFrame::Ping(b)) => {
            assert_eq!(a.nonce.to_native(), b.nonce);
            assert_eq!(view.client_msg_id(), None);
            assert_eq!(view.chat_id(), None);
        }
        (view, frame) => panic!("view {:?} is not frame {:?}", view.kind(), frame.kind()),
    }
}

fn assert_message(a: &Archived<server::Message>, b: &server::Message) {
    assert_eq!(a.chat_id.to_native(), b.chat_id);
    assert_eq!(a.seq.to_native(), b.seq);
    assert_eq!(a.sender.to_native(), b.sender);
    assert_eq!(a.client_msg_id.to_native(), b.client_msg_id);
    assert_eq!(a.server_time_us.to_native(), b.server_time_us);
    assert_eq!(a.body.as_str(), b.body);
    let kind = match a.kind {
        ArchivedEntryKind::Message => EntryKind::Message,
        ArchivedEntryKind::Edit => EntryKind::Edit,
        ArchivedEntryKind::Delete => EntryKind::Delete,
        ArchivedEntryKind::React => EntryKind::React,
        ArchivedEntryKind::Unreact => EntryKind::Unreact,
    };
    assert_eq!(kind, b.kind);
    assert_eq!(a.target_seq.to_native(), b.target_seq);
}

/// Reads every field through the archive and compares it with the owned frame.
fn assert_server_view(view: ServerFrameRef<'_>, frame: &ServerFrame) {
    assert_eq!(view.kind(), frame.kind());
    match (view, frame) {
        (ServerFrameRef::Welcome(a), ServerFrame::Welcome(b)) => {
            assert_eq!(a.user_id.to_native(), b.user_id);
            assert_eq!(a.connection_id.to_native(), b.connection_id);
            assert_eq!(a.node_id.to_native(), b.node_id);
            assert_eq!(a.server_time_us.to_native(), b.server_time_us);
            assert_eq!(a.heartbeat_ms.to_native(), b.heartbeat_ms);
            assert_eq!(a.max_frame_bytes.to_native(), b.max_frame_bytes);
        }
        (ServerFrameRef::Message(a), ServerFrame::Message(b)) => assert_message(a, b),
        (ServerFrameRef::Receipt(a), ServerFrame::Receipt(b)) => {
            assert_eq!(a.chat_id.to_native(), b.chat_id);
            assert_eq!(receipt_kind(&a.kind), b.kind);
            assert_eq!(a.seq.to_native(), b.seq);
            assert_eq!(a.user_id.to_native(), b.user_id);
            assert_eq!(option(&a.client_msg_id), b.client_msg_id);
        }
        (ServerFrameRef::ChatCreated(a), ServerFrame::ChatCreated(b)) => {
            assert_eq!(a.client_msg_id.to_native(), b.client_msg_id);
            assert_eq!(a.chat_id.to_native(), b.chat_id);
            assert_eq!(chat_kind(&a.kind), b.kind);
            assert_eq!(a.title.as_str(), b.title);
            assert_eq!(a.creator.to_native(), b.creator);
            assert_eq!(natives(&a.members), b.members);
        }
        (ServerFrameRef::Joined(a), ServerFrame::Joined(b))
        | (ServerFrameRef::Left(a), ServerFrame::Left(b)) => {
            assert_eq!(a.client_msg_id.to_native(), b.client_msg_id);
            assert_eq!(a.chat_id.to_native(), b.chat_id);
            assert_eq!(a.user_id.to_native(), b.user_id);
        }
        (ServerFrameRef::MembersAdded(a), ServerFrame::MembersAdded(b))
        | (ServerFrameRef::MembersRemoved(a), ServerFrame::MembersRemoved(b)) => {
            assert_eq!(a.client_msg_id.to_native(), b.client_msg_id);
            assert_eq!(a.chat_id.to_native(), b.chat_id);
            assert_eq!(a.by.to_native(), b.by);
            assert_eq!(natives(&a.users), b.users);
        }
        (ServerFrameRef::SyncBatch(a), ServerFrame::SyncBatch(b)) => {
            assert_eq!(a.client_msg_id.to_native(), b.client_msg_id);
            assert_eq!(a.chat_id.to_native(), b.chat_id);
            assert_eq!(a.has_more, b.has_more);
            assert_eq!(a.messages.len(), b.messages.len());
            for (a, b) in a.messages.iter().zip(&b.messages) {
                assert_message(a, b);
            }
        }
        (ServerFrameRef::Presence(a), ServerFrame::Presence(b)) => {
            assert_eq!(a.client_msg_id.to_native(), b.client_msg_id);
            assert_eq!(a.users.len(), b.users.len());
            for (a, b) in a.users.iter().zip(&b.users) {
                assert_eq!(a.user_id.to_native(), b.user_id);
                assert_eq!(a.online, b.online);
                assert_eq!(a.last_seen_us.to_native(), b.last_seen_us);
            }
        }
        (ServerFrameRef::Typing(a), ServerFrame::Typing(b)) => {
            assert_eq!(a.chat_id.to_native(), b.chat_id);
            assert_eq!(a.user_id.to_native(), b.user_id);
        }
        (ServerFrameRef::Error(a), ServerFrame::Error(b)) => {
            assert_eq!(a.code.to_native(), b.code);
            assert_eq!(a.reason.as_str(), b.reason);
            assert_eq!(option(&a.client_msg_id), b.client_msg_id);
        }
        (ServerFrameRef::Pong(a), ServerFrame::Pong(b)) => {
            assert_eq!(a.nonce.to_native(), b.nonce);
            assert_eq!(a.server_time_us.to_native(), b.server_time_us);
        }
        (ServerFrameRef::ChatList(a), ServerFrame::ChatList(b)) => {
            assert_eq!(a.client_msg_id.to_native(), b.client_msg_id);
            assert_eq!(a.has_more, b.has_more);
            assert_eq!(a.chats.len(), b.chats.len());
            for (a, b) in a.chats.iter().zip(&b.chats) {
                assert_eq!(a.chat_id.to_native(), b.chat_id);
                assert_eq!(chat_kind(&a.kind), b.kind);
                assert_eq!(a.title.as_str(), b.title);
                assert_eq!(a.member_count.to_native(), b.member_count);
                assert_eq!(a.last_seq.to_native(), b.last_seq);
                assert_eq!(a.last_activity_us.to_native(), b.last_activity_us);
                assert_eq!(a.delivered_seq.to_native(), b.delivered_seq);
                assert_eq!(a.read_seq.to_native(), b.read_seq);
                assert_eq!(a.unread.to_native(), b.unread);
            }
        }
        (view, frame) => panic!("view {:?} is not frame {:?}", view.kind(), frame.kind()),
    }
}

/// Copies `bytes` into a larger buffer at an odd address, surrounded by junk, and returns
/// the buffer and the range the copy occupies.
fn at_odd_address(bytes: &[u8]) -> (Vec<u8>, std::ops::Range<usize>) {
    let mut buf = vec![0xA5u8; bytes.len() + 32];
    let start = if (buf.as_ptr() as usize + 1) % 2 == 1 {
        1
    } else {
        2
    };
    buf[start..start + bytes.len()].copy_from_slice(bytes);
    assert_eq!((buf[start..].as_ptr() as usize) % 2, 1);
    (buf, start..start + bytes.len())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn client_frames_round_trip_binary(frame in any::<ClientFrame>()) {
        let bytes = frame.encode().unwrap();
        prop_assert_eq!(bytes[0], wire::PROTOCOL_VERSION);
        prop_assert_eq!(bytes[1], frame.kind() as u8);
        prop_assert!(bytes.len() <= wire::limits::MAX_FRAME_BYTES);
        let view = ClientFrameRef::access(&bytes).unwrap();
        assert_client_view(view, &frame);
        prop_assert_eq!(view.to_owned().unwrap(), frame.clone());
        prop_assert_eq!(ClientFrame::decode(&bytes).unwrap(), frame.clone());
        // The encoding is deterministic: the decoded frame encodes to the same bytes.
        prop_assert_eq!(ClientFrame::decode(&bytes).unwrap().encode().unwrap(), bytes);
    }

    #[test]
    fn client_frames_round_trip_json(frame in any::<ClientFrame>()) {
        let text = frame.to_json();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(value["type"].as_str(), Some(frame.kind().name()));
        prop_assert_eq!(ClientFrame::from_json(&text).unwrap(), frame);
    }

    #[test]
    fn server_frames_round_trip_binary(frame in any::<ServerFrame>()) {
        let bytes = frame.encode().unwrap();
        prop_assert_eq!(bytes[0], wire::PROTOCOL_VERSION);
        prop_assert_eq!(bytes[1], frame.kind() as u8);
        let view = ServerFrameRef::access(&bytes).unwrap();
        assert_server_view(view, &frame);
        prop_assert_eq!(view.to_owned().unwrap(), frame.clone());
        prop_assert_eq!(ServerFrame::decode(&bytes).unwrap(), frame.clone());
        prop_assert_eq!(ServerFrame::decode(&bytes).unwrap().encode().unwrap(), bytes.clone());
        // The gateway's one-off conversion for text sockets gives the frame's own JSON.
        prop_assert_eq!(server::binary_to_json(&bytes).unwrap(), frame.to_json());
    }

    #[test]
    fn server_frames_round_trip_json(frame in any::<ServerFrame>()) {
        let text = frame.to_json();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(value["type"].as_str(), Some(frame.kind().name()));
        prop_assert_eq!(ServerFrame::from_json(&text).unwrap(), frame);
    }

    #[test]
    fn frames_validate_at_odd_addresses(client in any::<ClientFrame>(), server in any::<ServerFrame>()) {
        let bytes = client.encode().unwrap();
        let (buf, range) = at_odd_address(&bytes);
        let view = ClientFrameRef::access(&buf[range]).unwrap();
        assert_client_view(view, &client);

        let bytes = server.encode().unwrap();
        let (buf, range) = at_odd_address(&bytes);
        let view = ServerFrameRef::access(&buf[range]).unwrap();
        assert_server_view(view, &server);
    }

    #[test]
    fn frames_validate_at_every_offset(frame in any::<ClientFrame>()) {
        let bytes = frame.encode().unwrap();
        let mut buf = vec![0u8; bytes.len() + 16];
        for start in 0..16 {
            buf.fill(0xFF);
            buf[start..start + bytes.len()].copy_from_slice(&bytes);
            let view = ClientFrameRef::access(&buf[start..start + bytes.len()]).unwrap();
            assert_client_view(view, &frame);
        }
    }
}

#[test]
fn every_kind_is_generated_and_named_uniquely() {
    let client: Vec<&str> = wire::ClientKind::ALL.iter().map(|k| k.name()).collect();
    let server: Vec<&str> = wire::ServerKind::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(
        client,
        [
            "create_chat",
            "join",
            "leave",
            "send",
            "ack_delivered",
            "ack_read",
            "sync",
            "typing",
            "presence_query",
            "ping",
            "add_members",
            "remove_members",
            "list_chats",
            "edit",
            "delete",
            "react",
            "unreact"
        ]
    );
    assert_eq!(
        server,
        [
            "welcome",
            "message",
            "receipt",
            "chat_created",
            "joined",
            "left",
            "sync_batch",
            "presence",
            "typing",
            "error",
            "pong",
            "members_added",
            "members_removed",
            "chat_list"
        ]
    );
    for (i, kind) in wire::ClientKind::ALL.iter().enumerate() {
        assert_eq!(*kind as u8 as usize, i + 1);
        assert_eq!(wire::ClientKind::from_u8(*kind as u8), Some(*kind));
    }
    for (i, kind) in wire::ServerKind::ALL.iter().enumerate() {
        assert_eq!(*kind as u8 as usize, i + 1);
        assert_eq!(wire::ServerKind::from_u8(*kind as u8), Some(*kind));
    }
    assert_eq!(wire::ClientKind::from_u8(0), None);
    assert_eq!(wire::ClientKind::from_u8(18), None);
    assert_eq!(wire::ServerKind::from_u8(0), None);
    assert_eq!(wire::ServerKind::from_u8(15), None);
    assert_eq!(codec::HEADER_LEN, 2);

    // The generator reaches every kind, so the properties above cover all of them.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut seen_client = std::collections::HashSet::new();
    let mut seen_server = std::collections::HashSet::new();
    for _ in 0..2000 {
        seen_client.insert(
            any::<ClientFrame>()
                .new_tree(&mut runner)
                .unwrap()
                .current()
                .kind(),
        );
        seen_server.insert(
            any::<ServerFrame>()
                .new_tree(&mut runner)
                .unwrap()
                .current()
                .kind(),
        );
    }
    assert_eq!(seen_client.len(), wire::ClientKind::ALL.len());
    assert_eq!(seen_server.len(), wire::ServerKind::ALL.len());
}
