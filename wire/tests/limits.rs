//! Every limit holds at its bound and fails one past it, in both encodings, with the typed
//! error and the error code the protocol promises.

use rkyv::api::high::HighSerializer;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use wire::client::{self, ClientFrameRef};
use wire::limits::{
    LimitExceeded, MAX_BODY_BYTES, MAX_CHAT_LIST_PAGE, MAX_EMOJI_BYTES, MAX_FRAME_BYTES,
    MAX_MEMBERS_PER_CHAT, MAX_PRESENCE_QUERY, MAX_REASON_BYTES, MAX_SERVER_FRAME_BYTES,
    MAX_SYNC_PAGE, MAX_TITLE_BYTES,
};
use wire::server::{self, ServerFrameRef};
use wire::{
    ChatKind, ClientFrame, ClientKind, CloseCode, ErrorCode, PROTOCOL_VERSION, Refusal,
    ServerFrame, ServerKind, WireError,
};

/// A binary frame built straight from rkyv, bypassing the limit checks of `encode`: what a
/// hostile or buggy peer could send.
fn raw<T>(kind: u8, body: &T) -> Vec<u8>
where
    T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    let mut bytes = vec![PROTOCOL_VERSION, kind];
    bytes.extend_from_slice(&rkyv::to_bytes::<rancor::Error>(body).unwrap());
    bytes
}

fn limit(field: &'static str, actual: usize, limit: usize) -> WireError {
    WireError::Limit(LimitExceeded {
        field,
        actual,
        limit,
    })
}

/// A client frame within its limits passes every path; `broken` (the same frame one past a
/// limit) fails every path with `expected`.
fn client_limit(ok: ClientFrame, broken: ClientFrame, expected: WireError) {
    let bytes = ok.encode().unwrap();
    assert_eq!(ClientFrame::decode(&bytes).unwrap(), ok);
    assert_eq!(ClientFrame::from_json(&ok.to_json()).unwrap(), ok);

    assert_eq!(broken.encode().unwrap_err(), expected, "encode");
    assert_eq!(
        ClientFrame::from_json(&broken.to_json()).unwrap_err(),
        expected,
        "from_json"
    );
    let bytes = match &broken {
        ClientFrame::CreateChat(b) => raw(ClientKind::CreateChat as u8, b),
        ClientFrame::Send(b) => raw(ClientKind::Send as u8, b),
        ClientFrame::Sync(b) => raw(ClientKind::Sync as u8, b),
        ClientFrame::ListChats(b) => raw(ClientKind::ListChats as u8, b),
        ClientFrame::PresenceQuery(b) => raw(ClientKind::PresenceQuery as u8, b),
        ClientFrame::AddMembers(b) => raw(ClientKind::AddMembers as u8, b),
        ClientFrame::RemoveMembers(b) => raw(ClientKind::RemoveMembers as u8, b),
        ClientFrame::Edit(b) => raw(ClientKind::Edit as u8, b),
        ClientFrame::React(b) => raw(ClientKind::React as u8, b),
        other => panic!("{:?} has no limit", other.kind()),
    };
    assert_eq!(
        ClientFrameRef::access(&bytes).unwrap_err(),
        expected,
        "access"
    );
    assert_eq!(ClientFrame::decode(&bytes).unwrap_err(), expected, "decode");
    assert_eq!(expected.code(), ErrorCode::LimitExceeded);

    // The gateway's entry points refuse the same frames and name the request they refuse.
    let refusal = Refusal {
        error: expected,
        client_msg_id: broken.client_msg_id(),
    };
    assert!(refusal.client_msg_id.is_some());
    assert_eq!(ClientFrameRef::check(&bytes).unwrap_err(), refusal, "check");
    assert_eq!(
        ClientFrame::binary_from_json(&broken.to_json()).unwrap_err(),
        refusal,
        "binary_from_json"
    );
    let valid = ok.encode().unwrap();
    assert!(ClientFrameRef::check(&valid).is_ok());
    assert_eq!(ClientFrame::binary_from_json(&ok.to_json()).unwrap(), valid);
}

fn server_limit(ok: ServerFrame, broken: ServerFrame, expected: WireError) {
    let bytes = ok.encode().unwrap();
    assert_eq!(ServerFrame::decode(&bytes).unwrap(), ok);
    assert_eq!(ServerFrame::from_json(&ok.to_json()).unwrap(), ok);

    assert_eq!(broken.encode().unwrap_err(), expected, "encode");
    assert_eq!(
        ServerFrame::from_json(&broken.to_json()).unwrap_err(),
        expected,
        "from_json"
    );
    let bytes = match &broken {
        ServerFrame::Message(b) => raw(ServerKind::Message as u8, b),
        ServerFrame::ChatCreated(b) => raw(ServerKind::ChatCreated as u8, b),
        ServerFrame::SyncBatch(b) => raw(ServerKind::SyncBatch as u8, b),
        ServerFrame::ChatList(b) => raw(ServerKind::ChatList as u8, b),
        ServerFrame::Presence(b) => raw(ServerKind::Presence as u8, b),
        ServerFrame::Error(b) => raw(ServerKind::Error as u8, b),
        ServerFrame::MembersAdded(b) => raw(ServerKind::MembersAdded as u8, b),
        ServerFrame::MembersRemoved(b) => raw(ServerKind::MembersRemoved as u8, b),
        other => panic!("{:?} has no limit", other.kind()),
    };
    assert_eq!(
        ServerFrameRef::access(&bytes).unwrap_err(),
        expected,
        "access"
    );
    assert_eq!(ServerFrame::decode(&bytes).unwrap_err(), expected, "decode");
}

fn send(body: String) -> ClientFrame {
    ClientFrame::Send(client::SendMessage {
        chat_id: 1,
        client_msg_id: 2,
        body,
    })
}

fn create(title: String, members: Vec<u64>) -> ClientFrame {
    ClientFrame::CreateChat(client::CreateChat {
        client_msg_id: 1,
        kind: ChatKind::Group,
        title,
        members,
    })
}

fn sync(limit: u32) -> ClientFrame {
    ClientFrame::Sync(client::SyncRequest {
        client_msg_id: 1,
        chat_id: 2,
        after_seq: 3,
        limit,
        before_seq: None,
    })
}

fn message(body: String) -> server::Message {
    server::Message {
        chat_id: 1,
        seq: 2,
        sender: 3,
        client_msg_id: 4,
        server_time_us: 5,
        body,
        kind: wire::EntryKind::Message,
        target_seq: 0,
    }
}

#[test]
fn constants_are_what_the_protocol_document_quotes() {
    assert_eq!(MAX_FRAME_BYTES, 16_384);
    assert_eq!(MAX_BODY_BYTES, 4096);
    assert_eq!(MAX_TITLE_BYTES, 256);
    assert_eq!(MAX_MEMBERS_PER_CHAT, 1000);
    assert_eq!(MAX_SYNC_PAGE, 200);
    assert_eq!(wire::limits::MAX_SYNC_PAGE_BYTES, 262_144);
    assert_eq!(MAX_PRESENCE_QUERY, 200);
    assert_eq!(MAX_REASON_BYTES, 256);
    assert_eq!(MAX_SERVER_FRAME_BYTES, 1_048_576);
    assert_eq!(wire::envelope::MAX_ENVELOPE_BYTES, 1_048_576 + 65_536);
}

#[test]
fn a_sync_page_takes_messages_up_to_its_byte_bound_and_always_one() {
    use wire::limits::{MAX_SYNC_PAGE_BYTES, sync_page_admits};
    assert!(sync_page_admits(0, 0, MAX_SYNC_PAGE_BYTES + 1));
    assert!(sync_page_admits(3, MAX_SYNC_PAGE_BYTES - 10, 10));
    assert!(!sync_page_admits(3, MAX_SYNC_PAGE_BYTES - 10, 11));
}

#[test]
fn body_limit() {
    client_limit(
        send("a".repeat(MAX_BODY_BYTES)),
        send("a".repeat(MAX_BODY_BYTES + 1)),
        limit("body", MAX_BODY_BYTES + 1, MAX_BODY_BYTES),
    );
    // Bytes of UTF-8, not characters: 2049 two-byte characters are 4098 bytes.
    client_limit(
        send("é".repeat(2048)),
        send("é".repeat(2049)),
        limit("body", 4098, MAX_BODY_BYTES),
    );
    server_limit(
        ServerFrame::Message(message("a".repeat(MAX_BODY_BYTES))),
        ServerFrame::Message(message("a".repeat(MAX_BODY_BYTES + 1))),
        limit("body", MAX_BODY_BYTES + 1, MAX_BODY_BYTES),
    );
}

fn react(emoji: &str) -> ClientFrame {
    ClientFrame::React(client::Reaction {
        chat_id: 1,
        client_msg_id: 2,
        target_seq: 3,
        emoji: emoji.to_owned(),
    })
}

#[test]
fn an_edit_body_has_the_send_limit() {
    let edit = |body: String| {
        ClientFrame::Edit(client::EditMessage {
            chat_id: 1,
            client_msg_id: 2,
            target_seq: 3,
            body,
        })
    };
    client_limit(
        edit("a".repeat(MAX_BODY_BYTES)),
        edit("a".repeat(MAX_BODY_BYTES + 1)),
        limit("body", MAX_BODY_BYTES + 1, MAX_BODY_BYTES),
    );
}

#[test]
fn a_reaction_is_one_to_max_emoji_bytes() {
    client_limit(
        react(&"a".repeat(MAX_EMOJI_BYTES)),
        react(&"a".repeat(MAX_EMOJI_BYTES + 1)),
        limit("emoji", MAX_EMOJI_BYTES + 1, MAX_EMOJI_BYTES),
    );
    client_limit(react("👍"), react(""), limit("emoji", 0, MAX_EMOJI_BYTES));
}

#[test]
fn title_limit() {
    client_limit(
        create("t".repeat(MAX_TITLE_BYTES), vec![2]),
        create("t".repeat(MAX_TITLE_BYTES + 1), vec![2]),
        limit("title", MAX_TITLE_BYTES + 1, MAX_TITLE_BYTES),
    );
    client_limit(
        create("€".repeat(85), vec![]),
        create("€".repeat(86), vec![]),
        limit("title", 258, MAX_TITLE_BYTES),
    );
}

#[test]
fn members_limit() {
    let members = |n: u64| (1..=n).collect::<Vec<u64>>();
    client_limit(
        create(String::new(), members(MAX_MEMBERS_PER_CHAT as u64)),
        create(String::new(), members(MAX_MEMBERS_PER_CHAT as u64 + 1)),
        limit("members", MAX_MEMBERS_PER_CHAT + 1, MAX_MEMBERS_PER_CHAT),
    );
    let created = |n: u64| {
        ServerFrame::ChatCreated(server::ChatCreated {
            client_msg_id: 1,
            chat_id: 2,
            kind: ChatKind::Group,
            title: "t".into(),
            creator: 1,
            members: members(n),
        })
    };
    server_limit(
        created(MAX_MEMBERS_PER_CHAT as u64),
        created(MAX_MEMBERS_PER_CHAT as u64 + 1),
        limit("members", MAX_MEMBERS_PER_CHAT + 1, MAX_MEMBERS_PER_CHAT),
    );
    let change = |n: u64| client::MemberChange {
        client_msg_id: 1,
        chat_id: 2,
        users: members(n),
    };
    for frame in [ClientFrame::AddMembers, ClientFrame::RemoveMembers] {
        client_limit(
            frame(change(MAX_MEMBERS_PER_CHAT as u64)),
            frame(change(MAX_MEMBERS_PER_CHAT as u64 + 1)),
            limit("users", MAX_MEMBERS_PER_CHAT + 1, MAX_MEMBERS_PER_CHAT),
        );
    }
    let changed = |n: u64| server::MembersChanged {
        client_msg_id: 1,
        chat_id: 2,
        by: 3,
        users: members(n),
    };
    for frame in [ServerFrame::MembersAdded, ServerFrame::MembersRemoved] {
        server_limit(
            frame(changed(MAX_MEMBERS_PER_CHAT as u64)),
            frame(changed(MAX_MEMBERS_PER_CHAT as u64 + 1)),
            limit("users", MAX_MEMBERS_PER_CHAT + 1, MAX_MEMBERS_PER_CHAT),
        );
    }
}

#[test]
fn sync_page_limit() {
    let max = MAX_SYNC_PAGE as usize;
    client_limit(sync(1), sync(0), limit("limit", 0, max));
    client_limit(
        sync(MAX_SYNC_PAGE),
        sync(MAX_SYNC_PAGE + 1),
        limit("limit", max + 1, max),
    );
    client_limit(
        sync(MAX_SYNC_PAGE),
        sync(u32::MAX),
        limit("limit", u32::MAX as usize, max),
    );

    let batch = |n: usize| {
        ServerFrame::SyncBatch(server::SyncBatch {
            client_msg_id: 1,
            chat_id: 2,
            messages: vec![message("hi".into()); n],
            has_more: true,
        })
    };
    server_limit(batch(max), batch(max + 1), limit("messages", max + 1, max));
}

#[test]
fn chat_list_page_limit() {
    let max = MAX_CHAT_LIST_PAGE as usize;
    let list = |limit| {
        ClientFrame::ListChats(client::ListChats {
            client_msg_id: 1,
            limit,
            before_activity_us: Some(2),
            before_chat_id: None,
        })
    };
    client_limit(list(1), list(0), limit("limit", 0, max));
    client_limit(
        list(MAX_CHAT_LIST_PAGE),
        list(MAX_CHAT_LIST_PAGE + 1),
        limit("limit", max + 1, max),
    );

    let summary = server::ChatSummary {
        chat_id: 1,
        kind: ChatKind::Group,
        title: "t".repeat(MAX_TITLE_BYTES),
        member_count: 2,
        last_seq: 3,
        last_activity_us: 4,
        delivered_seq: 3,
        read_seq: 2,
        unread: 1,
    };
    let page = |n: usize| {
        ServerFrame::ChatList(server::ChatList {
            client_msg_id: 1,
            chats: vec![summary.clone(); n],
            has_more: true,
        })
    };
    server_limit(page(max), page(max + 1), limit("chats", max + 1, max));
    // A full page of the longest titles stays under 40 KiB, as PROTOCOL.md says.
    assert!(page(max).encode().unwrap().len() < 40 * 1024);
}

#[test]
fn a_sync_goes_one_way() {
    let with = |after_seq, before_seq| {
        ClientFrame::Sync(client::SyncRequest {
            client_msg_id: 1,
            chat_id: 2,
            after_seq,
            limit: 10,
            before_seq,
        })
    };
    for ok in [with(0, Some(5)), with(3, None), with(0, None)] {
        let bytes = ok.encode().unwrap();
        assert_eq!(ClientFrame::decode(&bytes).unwrap(), ok);
        assert_eq!(ClientFrame::from_json(&ok.to_json()).unwrap(), ok);
    }
    let both = with(3, Some(5));
    let expected = WireError::BothDirections { after_seq: 3 };
    assert_eq!(expected.code(), ErrorCode::InvalidRequest);
    assert_eq!(both.encode().unwrap_err(), expected);
    let ClientFrame::Sync(body) = &both else {
        unreachable!("a sync")
    };
    let bytes = raw(ClientKind::Sync as u8, body);
    let refusal = Refusal {
        error: expected,
        client_msg_id: Some(1),
    };
    assert_eq!(ClientFrameRef::check(&bytes).unwrap_err(), refusal);
    assert_eq!(
        ClientFrame::binary_from_json(&both.to_json()).unwrap_err(),
        refusal
    );
    // JSON may leave `before_seq` out, and writes it only when set.
    let forward = r#"{"type":"sync","client_msg_id":1,"chat_id":2,"after_seq":3,"limit":10}"#;
    assert_eq!(ClientFrame::from_json(forward).unwrap(), with(3, None));
    assert_eq!(with(3, None).to_json(), forward);
}

#[test]
fn presence_limit() {
    let query = |n: u64| {
        ClientFrame::PresenceQuery(client::PresenceQuery {
            client_msg_id: 1,
            users: (1..=n).collect(),
        })
    };
    client_limit(
        query(MAX_PRESENCE_QUERY as u64),
        query(MAX_PRESENCE_QUERY as u64 + 1),
        limit("users", MAX_PRESENCE_QUERY + 1, MAX_PRESENCE_QUERY),
    );
    let answer = |n: u64| {
        ServerFrame::Presence(server::Presence {
            client_msg_id: 1,
            users: (1..=n)
                .map(|user_id| server::PresenceEntry {
                    user_id,
                    online: true,
                    last_seen_us: 9,
                })
                .collect(),
        })
    };
    server_limit(
        answer(MAX_PRESENCE_QUERY as u64),
        answer(MAX_PRESENCE_QUERY as u64 + 1),
        limit("users", MAX_PRESENCE_QUERY + 1, MAX_PRESENCE_QUERY),
    );
}

#[test]
fn reason_limit() {
    let error = |reason: String| {
        ServerFrame::Error(server::ErrorFrame {
            code: 5000,
            reason,
            client_msg_id: None,
        })
    };
    server_limit(
        error("r".repeat(MAX_REASON_BYTES)),
        error("r".repeat(MAX_REASON_BYTES + 1)),
        limit("reason", MAX_REASON_BYTES + 1, MAX_REASON_BYTES),
    );
    // ErrorFrame::new cuts a long reason at a character boundary within the limit.
    let frame = server::ErrorFrame::new(ErrorCode::InvalidRequest, "ü".repeat(200), Some(9));
    assert_eq!(frame.reason, "ü".repeat(128));
    assert_eq!(frame.code, 4090);
    assert_eq!(frame.client_msg_id, Some(9));
    let frame = server::ErrorFrame::new(
        ErrorCode::InvalidRequest,
        format!("x{}", "ü".repeat(200)),
        None,
    );
    assert_eq!(frame.reason, format!("x{}", "ü".repeat(127)));
    assert!(ServerFrame::Error(frame).encode().is_ok());
}

#[test]
fn client_frame_size_limit() {
    let too_large = WireError::TooLarge {
        size: MAX_FRAME_BYTES + 1,
        limit: MAX_FRAME_BYTES,
    };
    // Binary: the size is judged before anything else, even a valid header.
    let mut bytes = vec![0u8; MAX_FRAME_BYTES + 1];
    bytes[0] = PROTOCOL_VERSION;
    bytes[1] = ClientKind::Ping as u8;
    assert_eq!(ClientFrameRef::access(&bytes).unwrap_err(), too_large);
    assert_eq!(ClientFrame::decode(&bytes).unwrap_err(), too_large);
    assert_eq!(too_large.code(), ErrorCode::TooLarge);

    // Exactly at the limit the size passes and the archive is judged: a ping whose root
    // sits at the end of 16 KiB of padding is valid.
    let mut bytes = vec![0u8; MAX_FRAME_BYTES];
    bytes[0] = PROTOCOL_VERSION;
    bytes[1] = ClientKind::Ping as u8;
    bytes[MAX_FRAME_BYTES - 8..].copy_from_slice(&42u64.to_le_bytes());
    assert_eq!(
        ClientFrame::decode(&bytes).unwrap(),
        ClientFrame::Ping(client::Ping { nonce: 42 })
    );

    // Text: the limit is on the JSON as sent, escapes included, so a body within its own
    // limit can still make a text frame too large.
    let body = "\u{1}".repeat(MAX_BODY_BYTES);
    let text = send(body.clone()).to_json();
    assert_eq!(
        text.len(),
        6 * MAX_BODY_BYTES + r#"{"type":"send","chat_id":1,"client_msg_id":2,"body":""}"#.len()
    );
    assert_eq!(
        ClientFrame::from_json(&text).unwrap_err(),
        WireError::TooLarge {
            size: text.len(),
            limit: MAX_FRAME_BYTES
        }
    );
    assert!(send(body).encode().unwrap().len() <= MAX_FRAME_BYTES);

    let padded = format!(
        "{{\"type\":\"ping\",\"nonce\":1}}{}",
        " ".repeat(MAX_FRAME_BYTES)
    );
    assert_eq!(
        ClientFrame::from_json(&padded).unwrap_err(),
        WireError::TooLarge {
            size: padded.len(),
            limit: MAX_FRAME_BYTES
        }
    );
    let padded = &padded[..MAX_FRAME_BYTES];
    assert_eq!(
        ClientFrame::from_json(padded).unwrap(),
        ClientFrame::Ping(client::Ping { nonce: 1 })
    );
}

#[test]
fn largest_valid_client_frames_fit_the_binary_frame_limit() {
    let members: Vec<u64> = (0..MAX_MEMBERS_PER_CHAT as u64)
        .map(|i| u64::MAX - i)
        .collect();
    let frame = create("€".repeat(MAX_TITLE_BYTES / 3), members);
    let bytes = frame.encode().unwrap();
    assert!(bytes.len() <= MAX_FRAME_BYTES, "{}", bytes.len());
    assert_eq!(ClientFrame::decode(&bytes).unwrap(), frame);
    // Its JSON does not fit: 1000 twenty-digit ids are over 16 KiB of text.
    let text = frame.to_json();
    assert!(text.len() > MAX_FRAME_BYTES);
    assert!(matches!(
        ClientFrame::from_json(&text),
        Err(WireError::TooLarge { .. })
    ));
}

#[test]
fn server_frame_size_limit() {
    let bytes = vec![PROTOCOL_VERSION; MAX_SERVER_FRAME_BYTES + 1];
    let too_large = WireError::TooLarge {
        size: MAX_SERVER_FRAME_BYTES + 1,
        limit: MAX_SERVER_FRAME_BYTES,
    };
    assert_eq!(ServerFrameRef::access(&bytes).unwrap_err(), too_large);

    // A full page of maximal bodies fits, as the limit's documentation promises.
    let page = |body_bytes: usize| {
        ServerFrame::SyncBatch(server::SyncBatch {
            client_msg_id: 1,
            chat_id: 2,
            messages: vec![message("m".repeat(body_bytes)); MAX_SYNC_PAGE as usize],
            has_more: false,
        })
    };
    let bytes = page(MAX_BODY_BYTES).encode().unwrap();
    assert!(bytes.len() <= MAX_SERVER_FRAME_BYTES);
    assert_eq!(ServerFrame::decode(&bytes).unwrap(), page(MAX_BODY_BYTES));

    // Bodies inside a sync batch are not checked one by one; the frame size still is.
    match page(2 * MAX_BODY_BYTES).encode() {
        Err(WireError::TooLarge { size, limit }) => {
            assert!(size > MAX_SERVER_FRAME_BYTES);
            assert_eq!(limit, MAX_SERVER_FRAME_BYTES);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let text = page(2 * MAX_BODY_BYTES).to_json();
    assert_eq!(
        ServerFrame::from_json(&text).unwrap_err(),
        WireError::TooLarge {
            size: text.len(),
            limit: MAX_SERVER_FRAME_BYTES
        }
    );
}

#[test]
fn error_codes_map_as_documented() {
    let cases = [
        (WireError::Truncated(1), ErrorCode::MalformedFrame),
        (WireError::Malformed("x".into()), ErrorCode::MalformedFrame),
        (WireError::Json("x".into()), ErrorCode::MalformedFrame),
        (
            WireError::UnsupportedVersion(2),
            ErrorCode::UnsupportedVersion,
        ),
        (WireError::UnknownKind(99), ErrorCode::UnknownKind),
        (
            WireError::TooLarge { size: 2, limit: 1 },
            ErrorCode::TooLarge,
        ),
        (limit("body", 2, 1), ErrorCode::LimitExceeded),
        (WireError::Encode("x".into()), ErrorCode::Internal),
    ];
    for (error, code) in cases {
        assert_eq!(error.code(), code, "{error}");
    }
    // And from real failures of each path.
    assert_eq!(
        ClientFrame::decode(&[PROTOCOL_VERSION]).unwrap_err().code(),
        ErrorCode::MalformedFrame
    );
    assert_eq!(
        ClientFrame::decode(&[PROTOCOL_VERSION, 4, 0])
            .unwrap_err()
            .code(),
        ErrorCode::MalformedFrame
    );
    assert_eq!(
        ClientFrame::from_json("{").unwrap_err().code(),
        ErrorCode::MalformedFrame
    );
    assert_eq!(
        ClientFrame::decode(&[7, 4]).unwrap_err().code(),
        ErrorCode::UnsupportedVersion
    );
    assert_eq!(
        ClientFrame::decode(&[PROTOCOL_VERSION, 99])
            .unwrap_err()
            .code(),
        ErrorCode::UnknownKind
    );
    assert_eq!(
        sync(0).encode().unwrap_err().code(),
        ErrorCode::LimitExceeded
    );
    assert_eq!(
        ClientFrame::decode(&vec![0; MAX_FRAME_BYTES + 1])
            .unwrap_err()
            .code(),
        ErrorCode::TooLarge
    );
}

#[test]
fn error_code_numbers_are_stable() {
    let table: Vec<(u16, &str)> = ErrorCode::ALL
        .iter()
        .map(|c| (c.as_u16(), c.name()))
        .collect();
    assert_eq!(
        table,
        [
            (4000, "malformed_frame"),
            (4001, "unsupported_version"),
            (4002, "unknown_kind"),
            (4003, "too_large"),
            (4004, "limit_exceeded"),
            (4029, "rate_limited"),
            (4030, "not_member"),
            (4031, "forbidden"),
            (4040, "unknown_chat"),
            (4090, "invalid_request"),
            (5000, "internal"),
            (5030, "unavailable"),
        ]
    );
    for code in ErrorCode::ALL {
        assert_eq!(ErrorCode::from_u16(code.as_u16()), Some(code));
    }
    for n in 0..=u16::MAX {
        if ErrorCode::from_u16(n).is_some() {
            assert!(table.iter().any(|(m, _)| *m == n));
        }
    }
    assert_eq!(ErrorCode::from_u16(4005), None);
}

#[test]
fn close_codes_are_stable() {
    let codes = [
        (CloseCode::NORMAL, 1000),
        (CloseCode::GOING_AWAY, 1001),
        (CloseCode::PROTOCOL_ERROR, 1002),
        (CloseCode::INVALID_PAYLOAD, 1007),
        (CloseCode::POLICY_VIOLATION, 1008),
        (CloseCode::MESSAGE_TOO_BIG, 1009),
        (CloseCode::INTERNAL_ERROR, 1011),
        (CloseCode::SLOW_CONSUMER, 4000),
        (CloseCode::IDLE_TIMEOUT, 4001),
        (CloseCode::TOKEN_EXPIRED, 4002),
    ];
    for (code, number) in codes {
        assert_eq!(code.0, number);
    }
}
