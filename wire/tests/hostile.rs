//! Hostile input: random bytes, cut frames, flipped bits, bad headers and broken JSON give
//! a typed error (or, where the format cannot tell, another valid frame), never a panic.

use proptest::prelude::*;
use rkyv::Archived;
use wire::client::{self, ClientFrameRef};
use wire::server::{self, ServerFrameRef};
use wire::{ClientFrame, ClientKind, PROTOCOL_VERSION, ServerFrame, ServerKind, WireError};

/// Whatever a client frame view yields must be a frame the codec accepts again as itself.
fn assert_client_stable(view: ClientFrameRef<'_>) {
    let owned = view.to_owned().expect("a validated archive deserialises");
    let again = owned
        .encode()
        .expect("a validated frame is within its limits");
    assert_eq!(ClientFrame::decode(&again).unwrap(), owned);
    // The JSON of a valid binary frame can outgrow the text limit (escapes, long ids).
    let json = owned.to_json();
    if json.len() <= wire::limits::MAX_FRAME_BYTES {
        assert_eq!(ClientFrame::from_json(&json).unwrap(), owned);
    } else {
        assert!(matches!(
            ClientFrame::from_json(&json),
            Err(WireError::TooLarge { .. })
        ));
    }
}

fn assert_server_stable(view: ServerFrameRef<'_>) {
    let owned = view.to_owned().expect("a validated archive deserialises");
    let again = owned
        .encode()
        .expect("a validated frame is within its limits");
    assert_eq!(ServerFrame::decode(&again).unwrap(), owned);
}

/// Feeds `bytes` to every binary entry point; returns whether either direction accepted it.
fn poke(bytes: &[u8]) -> (bool, bool) {
    let client = ClientFrameRef::access(bytes);
    if let Ok(view) = client {
        assert_eq!(bytes[0], PROTOCOL_VERSION);
        assert_eq!(ClientKind::from_u8(bytes[1]), Some(view.kind()));
        assert_client_stable(view);
    }
    let server = ServerFrameRef::access(bytes);
    if let Ok(view) = server {
        assert_eq!(bytes[0], PROTOCOL_VERSION);
        assert_eq!(ServerKind::from_u8(bytes[1]), Some(view.kind()));
        assert_server_stable(view);
    }
    // decode agrees with access.
    assert_eq!(ClientFrame::decode(bytes).is_ok(), client.is_ok());
    assert_eq!(ServerFrame::decode(bytes).is_ok(), server.is_ok());
    (client.is_ok(), server.is_ok())
}

/// Size of the archived root of a client frame's body: an archive shorter than this cannot
/// hold the root, whatever its bytes.
fn client_root_size(kind: ClientKind) -> usize {
    use std::mem::size_of;
    match kind {
        ClientKind::CreateChat => size_of::<Archived<client::CreateChat>>(),
        ClientKind::Join | ClientKind::Leave => size_of::<Archived<client::Membership>>(),
        ClientKind::AddMembers | ClientKind::RemoveMembers => {
            size_of::<Archived<client::MemberChange>>()
        }
        ClientKind::Send => size_of::<Archived<client::SendMessage>>(),
        ClientKind::AckDelivered | ClientKind::AckRead => size_of::<Archived<client::Ack>>(),
        ClientKind::Sync => size_of::<Archived<client::SyncRequest>>(),
        ClientKind::Typing => size_of::<Archived<client::Typing>>(),
        ClientKind::PresenceQuery => size_of::<Archived<client::PresenceQuery>>(),
        ClientKind::Ping => size_of::<Archived<client::Ping>>(),
        ClientKind::ListChats => size_of::<Archived<client::ListChats>>(),
        ClientKind::Edit => size_of::<Archived<client::EditMessage>>(),
        ClientKind::Delete => size_of::<Archived<client::DeleteMessage>>(),
        ClientKind::React | ClientKind::Unreact => size_of::<Archived<client::Reaction>>(),
    }
}

fn server_root_size(kind: ServerKind) -> usize {
    use std::mem::size_of;
    match kind {
        ServerKind::Welcome => size_of::<Archived<server::Welcome>>(),
        ServerKind::Message => size_of::<Archived<server::Message>>(),
        ServerKind::Receipt => size_of::<Archived<server::Receipt>>(),
        ServerKind::ChatCreated => size_of::<Archived<server::ChatCreated>>(),
        ServerKind::Joined | ServerKind::Left => size_of::<Archived<server::ChatEvent>>(),
        ServerKind::MembersAdded | ServerKind::MembersRemoved => {
            size_of::<Archived<server::MembersChanged>>()
        }
        ServerKind::SyncBatch => size_of::<Archived<server::SyncBatch>>(),
        ServerKind::Presence => size_of::<Archived<server::Presence>>(),
        ServerKind::Typing => size_of::<Archived<server::TypingEvent>>(),
        ServerKind::Error => size_of::<Archived<server::ErrorFrame>>(),
        ServerKind::Pong => size_of::<Archived<server::Pong>>(),
        ServerKind::ChatList => size_of::<Archived<server::ChatList>>(),
    }
}

/// Kinds whose archive is only the root (no strings or lists): any cut is detectable.
fn client_fixed_size(kind: ClientKind) -> bool {
    !matches!(
        kind,
        ClientKind::CreateChat
            | ClientKind::Send
            | ClientKind::Edit
            | ClientKind::React
            | ClientKind::Unreact
            | ClientKind::PresenceQuery
            | ClientKind::AddMembers
            | ClientKind::RemoveMembers
    )
}

fn server_fixed_size(kind: ServerKind) -> bool {
    matches!(
        kind,
        ServerKind::Welcome
            | ServerKind::Receipt
            | ServerKind::Joined
            | ServerKind::Left
            | ServerKind::Typing
            | ServerKind::Pong
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        poke(&bytes);
    }

    /// Random archives behind a valid header: the validator, not the header, has to refuse
    /// them or prove them sound.
    #[test]
    fn arbitrary_archives_behind_a_valid_header_never_panic(
        kind in 1u8..=11,
        archive in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = vec![PROTOCOL_VERSION, kind];
        bytes.extend_from_slice(&archive);
        poke(&bytes);
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}") {
        if let Ok(frame) = ClientFrame::from_json(&text) {
            prop_assert_eq!(ClientFrame::from_json(&frame.to_json()).unwrap(), frame);
        }
        if let Ok(frame) = ServerFrame::from_json(&text) {
            prop_assert_eq!(ServerFrame::from_json(&frame.to_json()).unwrap(), frame);
        }
    }

    #[test]
    fn unknown_versions_are_typed_errors(
        version in any::<u8>().prop_filter("not ours", |v| *v != PROTOCOL_VERSION),
        rest in proptest::collection::vec(any::<u8>(), 1..200),
    ) {
        let mut bytes = vec![version];
        bytes.extend_from_slice(&rest);
        prop_assert_eq!(ClientFrameRef::access(&bytes).unwrap_err(), WireError::UnsupportedVersion(version));
        prop_assert_eq!(ServerFrameRef::access(&bytes).unwrap_err(), WireError::UnsupportedVersion(version));
        prop_assert_eq!(WireError::UnsupportedVersion(version).code(), wire::ErrorCode::UnsupportedVersion);
    }

    #[test]
    fn unknown_kinds_are_typed_errors(kind in any::<u8>(), rest in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut bytes = vec![PROTOCOL_VERSION, kind];
        bytes.extend_from_slice(&rest);
        if ClientKind::from_u8(kind).is_none() {
            prop_assert_eq!(ClientFrameRef::access(&bytes).unwrap_err(), WireError::UnknownKind(kind));
        }
        if ServerKind::from_u8(kind).is_none() {
            prop_assert_eq!(ServerFrameRef::access(&bytes).unwrap_err(), WireError::UnknownKind(kind));
        }
    }
}

/// Checks a valid frame with one bit flipped at `byte`. `full` also round-trips whatever
/// valid frame comes out; otherwise it only has to deserialise within its limits.
fn check_flipped_client(flipped: &[u8], byte: usize, full: bool) {
    let result = ClientFrameRef::access(flipped);
    match byte {
        0 => assert_eq!(
            result.unwrap_err(),
            WireError::UnsupportedVersion(flipped[0])
        ),
        1 if ClientKind::from_u8(flipped[1]).is_none() => {
            assert_eq!(result.unwrap_err(), WireError::UnknownKind(flipped[1]))
        }
        _ => match result {
            Ok(view) if full => assert_client_stable(view),
            Ok(view) => assert!(view.to_owned().unwrap().encode().is_ok()),
            Err(e) => assert!(
                matches!(
                    e,
                    WireError::Malformed(_)
                        | WireError::Limit(_)
                        | WireError::NulInText { .. }
                        | WireError::BothDirections { .. }
                ),
                "{e:?}"
            ),
        },
    }
}

fn check_flipped_server(flipped: &[u8], byte: usize, full: bool) {
    let result = ServerFrameRef::access(flipped);
    match byte {
        0 => assert_eq!(
            result.unwrap_err(),
            WireError::UnsupportedVersion(flipped[0])
        ),
        1 if ServerKind::from_u8(flipped[1]).is_none() => {
            assert_eq!(result.unwrap_err(), WireError::UnknownKind(flipped[1]))
        }
        _ => match result {
            Ok(view) if full => assert_server_stable(view),
            Ok(view) => assert!(view.to_owned().unwrap().encode().is_ok()),
            Err(e) => assert!(
                matches!(
                    e,
                    WireError::Malformed(_) | WireError::Limit(_) | WireError::NulInText { .. }
                ),
                "{e:?}"
            ),
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Every prefix of a valid frame is checked. A binary frame carries no length of its own
    /// (the WebSocket message delimits it), so a cut that leaves a well-formed archive of
    /// the same kind is another valid frame; every other cut is an error.
    #[test]
    fn truncated_client_frames(frame in any::<ClientFrame>()) {
        let bytes = frame.encode().unwrap();
        let root = client_root_size(frame.kind());
        for len in 0..bytes.len() {
            let prefix = &bytes[..len];
            let result = ClientFrameRef::access(prefix);
            if len < 2 {
                prop_assert_eq!(result.unwrap_err(), WireError::Truncated(len));
            } else if len - 2 < root || client_fixed_size(frame.kind()) {
                prop_assert!(matches!(result, Err(WireError::Malformed(_))), "prefix {} of {}", len, bytes.len());
            } else if let Ok(view) = result {
                prop_assert_eq!(view.kind(), frame.kind());
                assert_client_stable(view);
            }
        }
    }

    #[test]
    fn truncated_server_frames(frame in any::<ServerFrame>()) {
        let bytes = frame.encode().unwrap();
        let root = server_root_size(frame.kind());
        for len in 0..bytes.len() {
            let prefix = &bytes[..len];
            let result = ServerFrameRef::access(prefix);
            if len < 2 {
                prop_assert_eq!(result.unwrap_err(), WireError::Truncated(len));
            } else if len - 2 < root || server_fixed_size(frame.kind()) {
                prop_assert!(matches!(result, Err(WireError::Malformed(_))), "prefix {} of {}", len, bytes.len());
            } else if let Ok(view) = result {
                prop_assert_eq!(view.kind(), frame.kind());
                assert_server_stable(view);
            }
        }
    }

    /// Cutting or corrupting the JSON of a valid frame never panics; a cut is always an error.
    #[test]
    fn damaged_json_frames(frame in any::<ClientFrame>(), at in any::<proptest::sample::Index>(), byte in any::<u8>()) {
        let text = frame.to_json();
        let cut = at.index(text.len());
        if text.is_char_boundary(cut) {
            prop_assert!(matches!(ClientFrame::from_json(&text[..cut]), Err(WireError::Json(_))));
        }
        let mut damaged = text.into_bytes();
        damaged[cut] = byte;
        if let Ok(text) = std::str::from_utf8(&damaged)
            && let Ok(frame) = ClientFrame::from_json(text)
        {
            prop_assert_eq!(ClientFrame::from_json(&frame.to_json()).unwrap(), frame);
        }
    }
}

proptest! {
    // Each case decodes the frame once per bit, tens of thousands of decodes for a large one.
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every single-bit flip of a valid frame: a flipped version byte is refused by number,
    /// a flipped kind byte names an unknown kind or another kind's archive, and anything
    /// else either fails validation or is another valid frame, never a panic.
    #[test]
    fn bit_flipped_client_frames(frame in any::<ClientFrame>()) {
        let bytes = frame.encode().unwrap();
        let mut flipped = bytes.clone();
        for bit in 0..bytes.len() * 8 {
            flipped.copy_from_slice(&bytes);
            flipped[bit / 8] ^= 1 << (bit % 8);
            check_flipped_client(&flipped, bit / 8, false);
        }
    }

    #[test]
    fn bit_flipped_server_frames(frame in any::<ServerFrame>()) {
        let bytes = frame.encode().unwrap();
        let mut flipped = bytes.clone();
        for bit in 0..bytes.len() * 8 {
            flipped.copy_from_slice(&bytes);
            flipped[bit / 8] ^= 1 << (bit % 8);
            check_flipped_server(&flipped, bit / 8, false);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    /// One random bit of a valid frame flipped, with the full round trip of whatever comes
    /// out (the exhaustive flips above check less per flip).
    #[test]
    fn random_bit_flips(client in any::<ClientFrame>(), server in any::<ServerFrame>(), at in any::<proptest::sample::Index>(), bit in 0u8..8) {
        let mut bytes = client.encode().unwrap();
        let byte = at.index(bytes.len());
        bytes[byte] ^= 1 << bit;
        check_flipped_client(&bytes, byte, true);

        let mut bytes = server.encode().unwrap();
        let byte = at.index(bytes.len());
        bytes[byte] ^= 1 << bit;
        check_flipped_server(&bytes, byte, true);
    }
}

#[test]
fn short_frames_are_truncated() {
    assert_eq!(
        ClientFrameRef::access(&[]).unwrap_err(),
        WireError::Truncated(0)
    );
    assert_eq!(
        ClientFrameRef::access(&[PROTOCOL_VERSION]).unwrap_err(),
        WireError::Truncated(1)
    );
    assert_eq!(
        ServerFrameRef::access(&[]).unwrap_err(),
        WireError::Truncated(0)
    );
    assert_eq!(
        ServerFrameRef::access(&[PROTOCOL_VERSION]).unwrap_err(),
        WireError::Truncated(1)
    );
    // A header with no archive: the version and kind are fine, the body is missing.
    for kind in ClientKind::ALL {
        assert!(matches!(
            ClientFrameRef::access(&[PROTOCOL_VERSION, *kind as u8]),
            Err(WireError::Malformed(_))
        ));
    }
    for kind in ServerKind::ALL {
        assert!(matches!(
            ServerFrameRef::access(&[PROTOCOL_VERSION, *kind as u8]),
            Err(WireError::Malformed(_))
        ));
    }
    // The version is judged before the kind, and the kind before the archive.
    assert_eq!(
        ClientFrameRef::access(&[2, 200]).unwrap_err(),
        WireError::UnsupportedVersion(2)
    );
    assert_eq!(
        ClientFrameRef::access(&[0, 1, 0, 0]).unwrap_err(),
        WireError::UnsupportedVersion(0)
    );
    assert_eq!(
        ClientFrameRef::access(&[PROTOCOL_VERSION, 0]).unwrap_err(),
        WireError::UnknownKind(0)
    );
    assert_eq!(
        ClientFrameRef::access(&[PROTOCOL_VERSION, 18, 1, 2, 3]).unwrap_err(),
        WireError::UnknownKind(18)
    );
    assert_eq!(
        ServerFrameRef::access(&[PROTOCOL_VERSION, 15]).unwrap_err(),
        WireError::UnknownKind(15)
    );
}

/// The limit of the format itself, pinned so that a change to it is deliberate: cutting the
/// last 8 bytes of a send frame with a long body leaves a well-formed archive of a shorter
/// send frame whose fields are the old bytes shifted. Only the WebSocket message boundary
/// tells the two apart, which is why a frame must travel as one whole WebSocket message.
/// This one is refused all the same, because the shifted body holds U+0000.
#[test]
fn a_cut_send_frame_can_be_another_send_frame() {
    let frame = ClientFrame::Send(client::SendMessage {
        chat_id: 7,
        client_msg_id: 3,
        body: "hello world, this is long".into(),
    });
    let bytes = frame.encode().unwrap();
    assert_eq!(
        ClientFrame::decode(&bytes[..bytes.len() - 8]).unwrap_err(),
        WireError::NulInText {
            field: "body",
            offset: 1
        }
    );
}

/// PostgreSQL's `text` cannot hold U+0000, so no text field may: both encodings refuse it
/// before anything acts on the frame, and the error code is the malformed-frame one.
#[test]
fn text_fields_with_nul_are_refused_in_both_encodings() {
    let send = ClientFrame::Send(client::SendMessage {
        chat_id: 7,
        client_msg_id: 3,
        body: "a\0b".into(),
    });
    let refused = WireError::NulInText {
        field: "body",
        offset: 1,
    };
    assert_eq!(send.encode().unwrap_err(), refused);
    assert_eq!(refused.code(), wire::ErrorCode::MalformedFrame);
    assert_eq!(
        ClientFrame::from_json(
            r#"{"type":"send","chat_id":7,"client_msg_id":3,"body":"a\u0000b"}"#
        )
        .unwrap_err(),
        refused
    );
    let create =
        r#"{"type":"create_chat","client_msg_id":1,"kind":"group","title":"\u0000","members":[]}"#;
    assert_eq!(
        ClientFrame::from_json(create).unwrap_err(),
        WireError::NulInText {
            field: "title",
            offset: 0
        }
    );
}

/// A refused frame names its request whenever its id can be read: a valid archive with
/// U+0000 in a text field, or JSON whose `type` carries an id and whose id is a u64, even
/// when another field is wrong. Frames that cannot be read, and kinds without an id, name
/// none.
#[test]
fn refusals_name_the_request_when_its_id_is_readable() {
    let send = client::SendMessage {
        chat_id: 7,
        client_msg_id: 3,
        body: "a\0b".into(),
    };
    let mut bytes = vec![PROTOCOL_VERSION, ClientKind::Send as u8];
    bytes.extend_from_slice(&rkyv::to_bytes::<rkyv::rancor::Error>(&send).unwrap());
    assert_eq!(
        ClientFrameRef::check(&bytes).unwrap_err().client_msg_id,
        Some(3)
    );
    let cut = &bytes[..bytes.len() - 1];
    assert_eq!(ClientFrameRef::check(cut).unwrap_err().client_msg_id, None);
    assert_eq!(
        ClientFrameRef::check(&[PROTOCOL_VERSION, 99, 0])
            .unwrap_err()
            .client_msg_id,
        None
    );
    for (text, id) in [
        (
            r#"{"type":"send","chat_id":7,"client_msg_id":3,"body":"a\u0000b"}"#,
            Some(3),
        ),
        (
            r#"{"type":"send","chat_id":-7,"client_msg_id":4,"body":"x"}"#,
            Some(4),
        ),
        (r#"{"client_msg_id":5,"type":"join"}"#, Some(5)),
        (
            r#"{"type":"presence_query","client_msg_id":6,"users":"all"}"#,
            Some(6),
        ),
        (
            r#"{"type":"send","chat_id":7,"client_msg_id":-4,"body":"x"}"#,
            None,
        ),
        (r#"{"type":"ping","client_msg_id":8}"#, None),
        (r#"{"type":"ack_read","client_msg_id":9}"#, None),
        (r#"{"type":"welcome","client_msg_id":10}"#, None),
        (r#"{"client_msg_id":11}"#, None),
        (r#"[1,2]"#, None),
        ("not json", None),
    ] {
        let refusal = ClientFrame::binary_from_json(text).unwrap_err();
        assert_eq!(refusal.client_msg_id, id, "{text}");
    }
}

proptest! {
    /// Whatever a frame is, `carries_client_msg_id` says whether it has an id, and the owned
    /// and the borrowed frame report the same id.
    #[test]
    fn client_msg_id_is_reported_alike(frame in any::<ClientFrame>()) {
        let bytes = frame.encode().unwrap();
        let view = ClientFrameRef::check(&bytes).unwrap();
        prop_assert_eq!(view.client_msg_id(), frame.client_msg_id());
        prop_assert_eq!(frame.kind().carries_client_msg_id(), frame.client_msg_id().is_some());
        prop_assert_eq!(ClientKind::from_name(frame.kind().name()), Some(frame.kind()));
    }
}

#[test]
fn json_type_errors_are_json_errors() {
    let cases = [
        "",
        "null",
        "[]",
        "{}",
        r#"{"type":"nope"}"#,
        r#"{"type":"ping"}"#,
        r#"{"type":"ping","nonce":-1}"#,
        r#"{"type":"ping","nonce":18446744073709551616}"#,
        r#"{"type":"ping","nonce":"1"}"#,
        r#"{"type":"ping","nonce":1.5}"#,
        r#"{"type":"send","chat_id":1,"client_msg_id":2}"#,
        r#"{"type":"create_chat","client_msg_id":1,"kind":"channel","title":"","members":[]}"#,
        r#"{"type":"welcome","user_id":1,"connection_id":1,"node_id":1,"server_time_us":1,"heartbeat_ms":1,"max_frame_bytes":1}"#,
    ];
    for text in cases {
        assert!(
            matches!(ClientFrame::from_json(text), Err(WireError::Json(_))),
            "{text}"
        );
    }
    // A server frame's tag is not a client frame and the reverse.
    assert!(matches!(
        ServerFrame::from_json(r#"{"type":"ping","nonce":1}"#),
        Err(WireError::Json(_))
    ));
}

#[test]
fn json_accepts_what_the_protocol_says_it_does() {
    // Fields in any order, unknown fields ignored, the largest u64 exact.
    assert_eq!(
        ClientFrame::from_json(r#"{"nonce":18446744073709551615,"extra":[1,2],"type":"ping"}"#)
            .unwrap(),
        ClientFrame::Ping(client::Ping { nonce: u64::MAX })
    );
    // An optional field may be left out or be null.
    let expected = ServerFrame::Error(server::ErrorFrame {
        code: 4000,
        reason: "x".into(),
        client_msg_id: None,
    });
    assert_eq!(
        ServerFrame::from_json(r#"{"type":"error","code":4000,"reason":"x"}"#).unwrap(),
        expected
    );
    assert_eq!(
        ServerFrame::from_json(r#"{"type":"error","code":4000,"reason":"x","client_msg_id":null}"#)
            .unwrap(),
        expected
    );
}
