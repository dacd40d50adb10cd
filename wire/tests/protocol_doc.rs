//! PROTOCOL.md is checked against the code: every JSON example is what `to_json` writes for
//! that frame (and parses back), the binary examples are what `encode` writes, and the
//! tables of kinds, limits, error codes and close codes quote the constants.

use wire::client::{self, ClientFrameRef};
use wire::limits::{
    DEFAULT_MAX_CHATS_PER_USER, MAX_BODY_BYTES, MAX_CHAT_LIST_PAGE, MAX_EMOJI_BYTES,
    MAX_FRAME_BYTES, MAX_MEMBERS_PER_CHAT, MAX_PRESENCE_QUERY, MAX_REACTIONS_PER_USER,
    MAX_REASON_BYTES, MAX_SERVER_FRAME_BYTES, MAX_SYNC_PAGE, MAX_TITLE_BYTES,
};
use wire::server::{self, ServerFrameRef};
use wire::{
    ChatKind, ClientFrame, ClientKind, CloseCode, EntryKind, ErrorCode, ReceiptKind, ServerFrame,
    ServerKind,
};

const DOC: &str = include_str!("../PROTOCOL.md");

/// 2026-01-01T00:00:00.123456Z in microseconds since the Unix epoch.
const T: u64 = 1_767_225_600_123_456;

fn client_examples() -> Vec<(ClientFrame, &'static str)> {
    vec![
        (
            ClientFrame::CreateChat(client::CreateChat {
                client_msg_id: 1,
                kind: ChatKind::Group,
                title: "Weekend plans".into(),
                members: vec![43, 44],
            }),
            r#"{"type":"create_chat","client_msg_id":1,"kind":"group","title":"Weekend plans","members":[43,44]}"#,
        ),
        (
            ClientFrame::Join(client::Membership {
                client_msg_id: 2,
                chat_id: 7,
            }),
            r#"{"type":"join","client_msg_id":2,"chat_id":7}"#,
        ),
        (
            ClientFrame::Leave(client::Membership {
                client_msg_id: 3,
                chat_id: 7,
            }),
            r#"{"type":"leave","client_msg_id":3,"chat_id":7}"#,
        ),
        (
            ClientFrame::Send(client::SendMessage {
                chat_id: 7,
                client_msg_id: 4,
                body: "See you at 10?".into(),
            }),
            r#"{"type":"send","chat_id":7,"client_msg_id":4,"body":"See you at 10?"}"#,
        ),
        (
            ClientFrame::AckDelivered(client::Ack {
                chat_id: 7,
                seq: 18,
            }),
            r#"{"type":"ack_delivered","chat_id":7,"seq":18}"#,
        ),
        (
            ClientFrame::AckRead(client::Ack {
                chat_id: 7,
                seq: 17,
            }),
            r#"{"type":"ack_read","chat_id":7,"seq":17}"#,
        ),
        (
            ClientFrame::Sync(client::SyncRequest {
                client_msg_id: 5,
                chat_id: 7,
                after_seq: 12,
                limit: 50,
                before_seq: None,
            }),
            r#"{"type":"sync","client_msg_id":5,"chat_id":7,"after_seq":12,"limit":50}"#,
        ),
        (
            ClientFrame::Sync(client::SyncRequest {
                client_msg_id: 5,
                chat_id: 7,
                after_seq: 0,
                limit: 50,
                before_seq: Some(19),
            }),
            r#"{"type":"sync","client_msg_id":5,"chat_id":7,"after_seq":0,"limit":50,"before_seq":19}"#,
        ),
        (
            ClientFrame::Typing(client::Typing { chat_id: 7 }),
            r#"{"type":"typing","chat_id":7}"#,
        ),
        (
            ClientFrame::PresenceQuery(client::PresenceQuery {
                client_msg_id: 6,
                users: vec![43, 44],
            }),
            r#"{"type":"presence_query","client_msg_id":6,"users":[43,44]}"#,
        ),
        (
            ClientFrame::Ping(client::Ping { nonce: 99 }),
            r#"{"type":"ping","nonce":99}"#,
        ),
        (
            ClientFrame::AddMembers(client::MemberChange {
                client_msg_id: 7,
                chat_id: 7,
                users: vec![45],
            }),
            r#"{"type":"add_members","client_msg_id":7,"chat_id":7,"users":[45]}"#,
        ),
        (
            ClientFrame::RemoveMembers(client::MemberChange {
                client_msg_id: 8,
                chat_id: 7,
                users: vec![44],
            }),
            r#"{"type":"remove_members","client_msg_id":8,"chat_id":7,"users":[44]}"#,
        ),
        (
            ClientFrame::ListChats(client::ListChats {
                client_msg_id: 9,
                limit: 20,
                before_activity_us: None,
                before_chat_id: None,
            }),
            r#"{"type":"list_chats","client_msg_id":9,"limit":20}"#,
        ),
        (
            ClientFrame::ListChats(client::ListChats {
                client_msg_id: 10,
                limit: 20,
                before_activity_us: Some(T),
                before_chat_id: Some(7),
            }),
            r#"{"type":"list_chats","client_msg_id":10,"limit":20,"before_activity_us":1767225600123456,"before_chat_id":7}"#,
        ),
        (
            ClientFrame::Edit(client::EditMessage {
                chat_id: 7,
                client_msg_id: 11,
                target_seq: 18,
                body: "See you at 11?".into(),
            }),
            r#"{"type":"edit","chat_id":7,"client_msg_id":11,"target_seq":18,"body":"See you at 11?"}"#,
        ),
        (
            ClientFrame::Delete(client::DeleteMessage {
                chat_id: 7,
                client_msg_id: 12,
                target_seq: 18,
            }),
            r#"{"type":"delete","chat_id":7,"client_msg_id":12,"target_seq":18}"#,
        ),
        (
            ClientFrame::React(client::Reaction {
                chat_id: 7,
                client_msg_id: 13,
                target_seq: 18,
                emoji: "👍".into(),
            }),
            r#"{"type":"react","chat_id":7,"client_msg_id":13,"target_seq":18,"emoji":"👍"}"#,
        ),
        (
            ClientFrame::Unreact(client::Reaction {
                chat_id: 7,
                client_msg_id: 14,
                target_seq: 18,
                emoji: "👍".into(),
            }),
            r#"{"type":"unreact","chat_id":7,"client_msg_id":14,"target_seq":18,"emoji":"👍"}"#,
        ),
    ]
}

fn message() -> server::Message {
    server::Message {
        chat_id: 7,
        seq: 18,
        sender: 42,
        client_msg_id: 4,
        server_time_us: T,
        body: "See you at 10?".into(),
        kind: EntryKind::Message,
        target_seq: 0,
    }
}

fn server_examples() -> Vec<(ServerFrame, &'static str)> {
    vec![
        (
            ServerFrame::Welcome(server::Welcome {
                user_id: 42,
                connection_id: 9001,
                node_id: 1,
                server_time_us: T,
                heartbeat_ms: 25000,
                max_frame_bytes: 16384,
            }),
            r#"{"type":"welcome","user_id":42,"connection_id":9001,"node_id":1,"server_time_us":1767225600123456,"heartbeat_ms":25000,"max_frame_bytes":16384}"#,
        ),
        (
            ServerFrame::Message(message()),
            r#"{"type":"message","chat_id":7,"seq":18,"sender":42,"client_msg_id":4,"server_time_us":1767225600123456,"body":"See you at 10?"}"#,
        ),
        (
            ServerFrame::Message(server::Message {
                seq: 21,
                client_msg_id: 11,
                body: "See you at 11?".into(),
                kind: EntryKind::Edit,
                target_seq: 18,
                ..message()
            }),
            r#"{"type":"message","chat_id":7,"seq":21,"sender":42,"client_msg_id":11,"server_time_us":1767225600123456,"body":"See you at 11?","kind":"edit","target_seq":18}"#,
        ),
        (
            ServerFrame::Receipt(server::Receipt {
                chat_id: 7,
                kind: ReceiptKind::Sent,
                seq: 18,
                user_id: 42,
                client_msg_id: Some(4),
            }),
            r#"{"type":"receipt","chat_id":7,"kind":"sent","seq":18,"user_id":42,"client_msg_id":4}"#,
        ),
        (
            ServerFrame::Receipt(server::Receipt {
                chat_id: 7,
                kind: ReceiptKind::Read,
                seq: 18,
                user_id: 43,
                client_msg_id: None,
            }),
            r#"{"type":"receipt","chat_id":7,"kind":"read","seq":18,"user_id":43,"client_msg_id":null}"#,
        ),
        (
            ServerFrame::ChatCreated(server::ChatCreated {
                client_msg_id: 1,
                chat_id: 7,
                kind: ChatKind::Group,
                title: "Weekend plans".into(),
                creator: 42,
                members: vec![42, 43, 44],
            }),
            r#"{"type":"chat_created","client_msg_id":1,"chat_id":7,"kind":"group","title":"Weekend plans","creator":42,"members":[42,43,44]}"#,
        ),
        (
            ServerFrame::Joined(server::ChatEvent {
                client_msg_id: 2,
                chat_id: 7,
                user_id: 45,
            }),
            r#"{"type":"joined","client_msg_id":2,"chat_id":7,"user_id":45}"#,
        ),
        (
            ServerFrame::Left(server::ChatEvent {
                client_msg_id: 3,
                chat_id: 7,
                user_id: 45,
            }),
            r#"{"type":"left","client_msg_id":3,"chat_id":7,"user_id":45}"#,
        ),
        (
            ServerFrame::SyncBatch(server::SyncBatch {
                client_msg_id: 5,
                chat_id: 7,
                messages: vec![message()],
                has_more: false,
            }),
            r#"{"type":"sync_batch","client_msg_id":5,"chat_id":7,"messages":[{"chat_id":7,"seq":18,"sender":42,"client_msg_id":4,"server_time_us":1767225600123456,"body":"See you at 10?"}],"has_more":false}"#,
        ),
        (
            ServerFrame::Presence(server::Presence {
                client_msg_id: 6,
                users: vec![
                    server::PresenceEntry {
                        user_id: 43,
                        online: true,
                        last_seen_us: T,
                    },
                    server::PresenceEntry {
                        user_id: 44,
                        online: false,
                        last_seen_us: 0,
                    },
                ],
            }),
            r#"{"type":"presence","client_msg_id":6,"users":[{"user_id":43,"online":true,"last_seen_us":1767225600123456},{"user_id":44,"online":false,"last_seen_us":0}]}"#,
        ),
        (
            ServerFrame::Typing(server::TypingEvent {
                chat_id: 7,
                user_id: 43,
            }),
            r#"{"type":"typing","chat_id":7,"user_id":43}"#,
        ),
        (
            ServerFrame::Error(server::ErrorFrame::new(
                ErrorCode::NotMember,
                "user 42 is not a member of chat 8",
                Some(4),
            )),
            r#"{"type":"error","code":4030,"reason":"user 42 is not a member of chat 8","client_msg_id":4}"#,
        ),
        (
            ServerFrame::Pong(server::Pong {
                nonce: 99,
                server_time_us: T,
            }),
            r#"{"type":"pong","nonce":99,"server_time_us":1767225600123456}"#,
        ),
        (
            ServerFrame::MembersAdded(server::MembersChanged {
                client_msg_id: 7,
                chat_id: 7,
                by: 42,
                users: vec![45],
            }),
            r#"{"type":"members_added","client_msg_id":7,"chat_id":7,"by":42,"users":[45]}"#,
        ),
        (
            ServerFrame::MembersRemoved(server::MembersChanged {
                client_msg_id: 8,
                chat_id: 7,
                by: 42,
                users: vec![44],
            }),
            r#"{"type":"members_removed","client_msg_id":8,"chat_id":7,"by":42,"users":[44]}"#,
        ),
        (
            ServerFrame::ChatList(server::ChatList {
                client_msg_id: 9,
                chats: vec![server::ChatSummary {
                    chat_id: 7,
                    kind: ChatKind::Group,
                    title: "Weekend plans".into(),
                    member_count: 3,
                    last_seq: 18,
                    last_activity_us: T,
                    delivered_seq: 18,
                    read_seq: 17,
                    unread: 1,
                }],
                has_more: true,
            }),
            r#"{"type":"chat_list","client_msg_id":9,"chats":[{"chat_id":7,"kind":"group","title":"Weekend plans","member_count":3,"last_seq":18,"last_activity_us":1767225600123456,"delivered_seq":18,"read_seq":17,"unread":1}],"has_more":true}"#,
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The doc's text with line breaks as spaces, so that a hex dump may wrap.
fn flat_doc() -> String {
    DOC.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn json_examples_are_exact_and_in_the_document() {
    for (frame, json) in client_examples() {
        assert_eq!(frame.to_json(), json);
        assert_eq!(ClientFrame::from_json(json).unwrap(), frame);
        assert!(DOC.contains(json), "PROTOCOL.md lacks the example {json}");
    }
    for (frame, json) in server_examples() {
        assert_eq!(frame.to_json(), json);
        assert_eq!(ServerFrame::from_json(json).unwrap(), frame);
        assert!(DOC.contains(json), "PROTOCOL.md lacks the example {json}");
    }
    // Each kind has an example.
    let mut client: Vec<ClientKind> = client_examples().iter().map(|(f, _)| f.kind()).collect();
    client.dedup();
    assert_eq!(client, ClientKind::ALL);
    let mut server: Vec<ServerKind> = server_examples().iter().map(|(f, _)| f.kind()).collect();
    server.dedup();
    assert_eq!(server, ServerKind::ALL);
}

#[test]
fn binary_examples_are_exact_and_in_the_document() {
    let doc = flat_doc();
    let ping = ClientFrame::Ping(client::Ping { nonce: 99 })
        .encode()
        .unwrap();
    assert_eq!(hex(&ping), "01 0a 63 00 00 00 00 00 00 00");
    let send = client_examples()[3].0.encode().unwrap();
    assert_eq!(
        hex(&send),
        "01 04 53 65 65 20 79 6f 75 20 61 74 20 31 30 3f 07 00 00 00 00 00 00 00 04 00 00 00 00 00 00 00 8e 00 00 00 e2 ff ff ff"
    );
    let receipt = server_examples()[4].0.encode().unwrap();
    assert_eq!(
        hex(&receipt),
        "01 03 07 00 00 00 00 00 00 00 02 12 00 00 00 00 00 00 00 2b 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"
    );
    let query = client_examples()[9].0.encode().unwrap();
    assert_eq!(
        hex(&query),
        "01 09 2b 00 00 00 00 00 00 00 2c 00 00 00 00 00 00 00 06 00 00 00 00 00 00 00 e8 ff ff ff 02 00 00 00"
    );
    for bytes in [&ping, &send, &receipt, &query] {
        assert!(
            doc.contains(&hex(bytes)),
            "PROTOCOL.md lacks the dump {}",
            hex(bytes)
        );
    }
    assert!(ClientFrameRef::access(&send).is_ok());
    assert!(ServerFrameRef::access(&receipt).is_ok());

    // The out-of-line string length word, as the document describes it.
    let body = "x".repeat(MAX_BODY_BYTES);
    let bytes = ClientFrame::Send(client::SendMessage {
        chat_id: 0,
        client_msg_id: 0,
        body,
    })
    .encode()
    .unwrap();
    let word = u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap());
    let len = MAX_BODY_BYTES as u32;
    assert_eq!(word, (len & 0x3f) | 0x80 | ((len >> 6) << 8));
    assert_eq!(word, 0x4080);
    let offset = i32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap());
    assert_eq!(offset, -((bytes.len() - 8 - 2) as i32));
    // A short string is inline, padded with 0xff.
    let bytes = ClientFrame::Send(client::SendMessage {
        chat_id: 0,
        client_msg_id: 0,
        body: "hi".into(),
    })
    .encode()
    .unwrap();
    assert_eq!(hex(&bytes[bytes.len() - 8..]), "68 69 ff ff ff ff ff ff");
}

#[test]
fn tables_quote_the_code() {
    let doc = flat_doc();
    for kind in ClientKind::ALL {
        let row = format!("| {} | `{}` |", *kind as u8, kind.name());
        assert!(doc.contains(&row), "PROTOCOL.md lacks the row {row}");
    }
    for kind in ServerKind::ALL {
        let row = format!("| {} | `{}` |", *kind as u8, kind.name());
        assert!(doc.contains(&row), "PROTOCOL.md lacks the row {row}");
    }
    let limits = [
        ("MAX_FRAME_BYTES", MAX_FRAME_BYTES),
        ("MAX_BODY_BYTES", MAX_BODY_BYTES),
        ("MAX_TITLE_BYTES", MAX_TITLE_BYTES),
        ("MAX_EMOJI_BYTES", MAX_EMOJI_BYTES),
        ("MAX_REACTIONS_PER_USER", MAX_REACTIONS_PER_USER),
        ("MAX_MEMBERS_PER_CHAT", MAX_MEMBERS_PER_CHAT),
        ("MAX_SYNC_PAGE", MAX_SYNC_PAGE as usize),
        ("MAX_CHAT_LIST_PAGE", MAX_CHAT_LIST_PAGE as usize),
        ("MAX_PRESENCE_QUERY", MAX_PRESENCE_QUERY),
        ("MAX_REASON_BYTES", MAX_REASON_BYTES),
        ("MAX_SERVER_FRAME_BYTES", MAX_SERVER_FRAME_BYTES),
        ("DEFAULT_MAX_CHATS_PER_USER", DEFAULT_MAX_CHATS_PER_USER),
    ];
    for (name, value) in limits {
        let row = format!("| `{name}` | {value} |");
        assert!(doc.contains(&row), "PROTOCOL.md lacks the row {row}");
    }
    for code in ErrorCode::ALL {
        let row = format!("| {} | `{}` |", code.as_u16(), code.name());
        assert!(doc.contains(&row), "PROTOCOL.md lacks the row {row}");
    }
    let closes = [
        (CloseCode::NORMAL, "NORMAL"),
        (CloseCode::GOING_AWAY, "GOING_AWAY"),
        (CloseCode::PROTOCOL_ERROR, "PROTOCOL_ERROR"),
        (CloseCode::INVALID_PAYLOAD, "INVALID_PAYLOAD"),
        (CloseCode::POLICY_VIOLATION, "POLICY_VIOLATION"),
        (CloseCode::MESSAGE_TOO_BIG, "MESSAGE_TOO_BIG"),
        (CloseCode::INTERNAL_ERROR, "INTERNAL_ERROR"),
        (CloseCode::SLOW_CONSUMER, "SLOW_CONSUMER"),
        (CloseCode::IDLE_TIMEOUT, "IDLE_TIMEOUT"),
        (CloseCode::TOKEN_EXPIRED, "TOKEN_EXPIRED"),
    ];
    for (code, name) in closes {
        let row = format!("| {} | `{name}` |", code.0);
        assert!(doc.contains(&row), "PROTOCOL.md lacks the row {row}");
    }
}
