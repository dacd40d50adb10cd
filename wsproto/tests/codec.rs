//! The WebSocket codec against RFC 6455: its examples, every protocol error with its close
//! code, frames cut at every byte, fragmentation, limits, role roundtrips, properties, and
//! interop with tungstenite in both directions.

// One module named for the codec, so `cargo test ws` selects these tests by name.
mod ws {
    use proptest::prelude::*;
    use wsproto::{
        Decoded, Decoder, MAX_HEADER_LEN, Message, OpCode, ProtocolError, Role, binary_frame,
        close_frame, encode_frame, frame_len_hint, header_len, ping_frame, pong_frame,
        server_header, text_frame,
    };

    /// A message that outlives the buffer it was decoded from.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, String),
    }

    impl From<Message<'_>> for Owned {
        fn from(message: Message<'_>) -> Self {
            match message {
                Message::Text(text) => Self::Text(text.to_owned()),
                Message::Binary(bytes) => Self::Binary(bytes.to_vec()),
                Message::Ping(bytes) => Self::Ping(bytes.to_vec()),
                Message::Pong(bytes) => Self::Pong(bytes.to_vec()),
                Message::Close { code, reason } => Self::Close(code, reason.to_owned()),
            }
        }
    }

    /// Plays the I/O layer: appends one read to `buf`, then decodes and drains until the decoder
    /// wants more, checking that what is left is indeed less than a frame.
    fn drive(
        decoder: &mut Decoder,
        buf: &mut Vec<u8>,
        read: &[u8],
    ) -> Result<Vec<Owned>, ProtocolError> {
        buf.extend_from_slice(read);
        let mut messages = Vec::new();
        loop {
            let Decoded { message, consumed } = decoder.decode(buf)?;
            let message = message.map(Owned::from);
            buf.drain(..consumed);
            match message {
                Some(message) => messages.push(message),
                None => {
                    assert!(frame_len_hint(buf).is_none_or(|len| len > buf.len()));
                    return Ok(messages);
                }
            }
        }
    }

    /// Feeds `bytes` in reads of `chunk` bytes and returns every message; all bytes must be eaten.
    fn feed(
        decoder: &mut Decoder,
        bytes: &[u8],
        chunk: usize,
    ) -> Result<Vec<Owned>, ProtocolError> {
        let mut buf = Vec::new();
        let mut messages = Vec::new();
        for read in bytes.chunks(chunk.max(1)) {
            messages.extend(drive(decoder, &mut buf, read)?);
        }
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        Ok(messages)
    }

    fn decode_all(role: Role, max: usize, bytes: &[u8]) -> Result<Vec<Owned>, ProtocolError> {
        feed(&mut Decoder::new(role, max), bytes, bytes.len())
    }

    /// The close code a server decoder fails `bytes` with.
    fn server_error(bytes: &[u8]) -> u16 {
        server_error_with_max(1 << 20, bytes)
    }

    fn server_error_with_max(max: usize, bytes: &[u8]) -> u16 {
        match decode_all(Role::Server, max, bytes) {
            Err(error) => error.close_code(),
            Ok(messages) => panic!("decoded {messages:?} from bytes that break the protocol"),
        }
    }

    fn client_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(Role::Client, opcode, fin, payload, &mut out);
        out
    }

    /// A masked frame header with any first byte and length code, mask key zero.
    fn raw_masked(first: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() <= 125);
        let mut out = vec![first, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        out.extend_from_slice(payload);
        out
    }

    const MASKED_HELLO: [u8; 11] = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];

    // RFC 6455 section 5.7 examples.

    #[test]
    fn rfc_single_frame_unmasked_text() {
        let bytes = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let messages = decode_all(Role::Client, 1024, &bytes).unwrap();
        assert_eq!(messages, [Owned::Text("Hello".into())]);
        assert_eq!(text_frame("Hello"), bytes);
    }

    #[test]
    fn rfc_single_frame_masked_text() {
        let mut bytes = MASKED_HELLO;
        let mut decoder = Decoder::new(Role::Server, 1024);
        let decoded = decoder.decode(&mut bytes).unwrap();
        assert_eq!(decoded.message, Some(Message::Text("Hello")));
        assert_eq!(decoded.consumed, 11);
        // Unmasked in place: the payload now reads in the caller's buffer.
        assert_eq!(&bytes[6..], b"Hello");
    }

    #[test]
    fn rfc_fragmented_unmasked_text() {
        let bytes = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
        let mut decoder = Decoder::new(Role::Client, 1024);
        let mut first = bytes[..5].to_vec();
        let decoded = decoder.decode(&mut first).unwrap();
        assert_eq!((decoded.message, decoded.consumed), (None, 5));
        let mut second = bytes[5..].to_vec();
        let decoded = decoder.decode(&mut second).unwrap();
        assert_eq!(decoded.message, Some(Message::Text("Hello")));
        assert_eq!(decoded.consumed, 4);
        assert_eq!(
            decode_all(Role::Client, 1024, &bytes).unwrap(),
            [Owned::Text("Hello".into())]
        );
    }

    #[test]
    fn rfc_unmasked_ping_and_masked_pong() {
        let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(
            decode_all(Role::Client, 1024, &ping).unwrap(),
            [Owned::Ping(b"Hello".to_vec())]
        );
        assert_eq!(ping_frame(b"Hello"), ping);
        let pong = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            decode_all(Role::Server, 1024, &pong).unwrap(),
            [Owned::Pong(b"Hello".to_vec())]
        );
        assert_eq!(pong_frame(b"Hello")[..2], [0x8a, 0x05]);
    }

    #[test]
    fn rfc_256_byte_binary_frame() {
        let payload: Vec<u8> = (0..=255).collect();
        let mut bytes = vec![0x82, 0x7E, 0x01, 0x00];
        bytes.extend_from_slice(&payload);
        assert_eq!(
            decode_all(Role::Client, 1024, &bytes).unwrap(),
            [Owned::Binary(payload.clone())]
        );
        assert_eq!(binary_frame(&payload), bytes);
        assert_eq!(frame_len_hint(&bytes[..4]), Some(260));
    }

    #[test]
    fn rfc_64_kib_binary_frame() {
        let payload: Vec<u8> = (0..65_536u32).map(|i| i as u8).collect();
        let mut bytes = vec![0x82, 0x7F, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00];
        bytes.extend_from_slice(&payload);
        assert_eq!(
            decode_all(Role::Client, 1 << 20, &bytes).unwrap(),
            [Owned::Binary(payload.clone())]
        );
        assert_eq!(binary_frame(&payload), bytes);
        assert_eq!(header_len(payload.len()), 10);
        assert_eq!(
            server_header(OpCode::Binary, true, payload.len()).as_bytes(),
            &bytes[..10]
        );
    }

    // Every protocol error, with its close code.

    #[test]
    fn reserved_bits_are_refused() {
        for rsv in [0x40, 0x20, 0x10, 0x70] {
            assert_eq!(server_error(&raw_masked(0x81 | rsv, b"x")), 1002);
            // Fails on the first byte, before the rest arrives.
            assert_eq!(server_error(&[0x81 | rsv]), 1002);
        }
    }

    #[test]
    fn unknown_opcodes_are_refused() {
        for opcode in (0x3..=0x7).chain(0xB..=0xF) {
            assert_eq!(server_error(&raw_masked(0x80 | opcode, b"")), 1002);
        }
    }

    #[test]
    fn server_refuses_unmasked_frames_and_client_refuses_masked_ones() {
        assert_eq!(server_error(&text_frame("hi")), 1002);
        let error = decode_all(Role::Client, 1024, &client_frame(OpCode::Text, true, b"hi"));
        assert_eq!(error, Err(ProtocolError::MaskedFrame));
        assert_eq!(ProtocolError::MaskedFrame.close_code(), 1002);
    }

    #[test]
    fn long_control_frames_are_refused_from_the_header() {
        for opcode in [0x88, 0x89, 0x8A] {
            // Length code 126 announces an extended length: refused on two bytes.
            assert_eq!(server_error(&[opcode, 0x80 | 126]), 1002);
            assert_eq!(server_error(&[opcode, 0x80 | 127]), 1002);
        }
        let mut ok = client_frame(OpCode::Ping, true, &[7; 125]);
        assert_eq!(
            decode_all(Role::Server, 16, &ok).unwrap(),
            [Owned::Ping(vec![7; 125])]
        );
        // Control frames are bounded by 125, not by the (smaller) message limit.
        ok[1] = 0x80 | 126;
        assert_eq!(server_error(&ok[..2]), 1002);
    }

    #[test]
    fn fragmented_control_frames_are_refused() {
        for opcode in [0x08, 0x09, 0x0A] {
            assert_eq!(server_error(&raw_masked(opcode, b"")), 1002);
        }
    }

    #[test]
    fn continuation_without_a_start_is_refused() {
        assert_eq!(
            server_error(&client_frame(OpCode::Continuation, true, b"x")),
            1002
        );
        assert_eq!(
            server_error(&client_frame(OpCode::Continuation, false, b"x")),
            1002
        );
        // Also after a finished fragmented message.
        let mut bytes = client_frame(OpCode::Text, false, b"a");
        bytes.extend(client_frame(OpCode::Continuation, true, b"b"));
        bytes.extend(client_frame(OpCode::Continuation, true, b"c"));
        assert_eq!(server_error(&bytes), 1002);
    }

    #[test]
    fn new_data_frame_inside_a_fragmented_message_is_refused() {
        for opcode in [OpCode::Text, OpCode::Binary] {
            for fin in [false, true] {
                let mut bytes = client_frame(OpCode::Binary, false, b"a");
                bytes.extend(client_frame(opcode, fin, b"b"));
                assert_eq!(server_error(&bytes), 1002);
            }
        }
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header() {
        let max = 1000;
        let exact = client_frame(OpCode::Binary, true, &vec![1; max]);
        assert_eq!(
            decode_all(Role::Server, max, &exact).unwrap(),
            [Owned::Binary(vec![1; max])]
        );
        let over = client_frame(OpCode::Binary, true, &vec![1; max + 1]);
        // Only the header is present: the limit is enforced before any payload is buffered.
        let header = &over[..frame_len_hint(&over).unwrap() - (max + 1)];
        assert_eq!(header.len(), 8);
        assert_eq!(server_error_with_max(max, header), 1009);
        let huge = [0x82, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(server_error_with_max(max, &huge), 1009);
    }

    #[test]
    fn oversized_fragmented_message_is_refused_from_the_header() {
        let max = 100;
        let mut exact = client_frame(OpCode::Text, false, &[b'a'; 60]);
        exact.extend(client_frame(OpCode::Continuation, true, &[b'b'; 40]));
        let expected = format!("{}{}", "a".repeat(60), "b".repeat(40));
        assert_eq!(
            decode_all(Role::Server, max, &exact).unwrap(),
            [Owned::Text(expected)]
        );
        let mut over = client_frame(OpCode::Text, false, &[b'a'; 60]);
        let second = client_frame(OpCode::Continuation, true, &[b'b'; 41]);
        over.extend_from_slice(&second[..6]);
        let mut decoder = Decoder::new(Role::Server, max);
        let error = decoder.decode(&mut over).unwrap_err();
        assert_eq!(error, ProtocolError::MessageTooBig { len: 101, max: 100 });
        assert_eq!(error.close_code(), 1009);
    }

    #[test]
    fn length_with_the_high_bit_set_is_refused() {
        let bytes = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(server_error(&bytes), 1002);
        assert_eq!(
            decode_all(Role::Server, usize::MAX, &bytes),
            Err(ProtocolError::InvalidLength)
        );
    }

    #[test]
    fn invalid_utf8_text_is_refused() {
        assert_eq!(
            server_error(&client_frame(OpCode::Text, true, &[0xC3, 0x28])),
            1007
        );
        let mut fragmented = client_frame(OpCode::Text, false, b"ok");
        fragmented.extend(client_frame(OpCode::Continuation, true, &[0xFF]));
        assert_eq!(server_error(&fragmented), 1007);
        // Binary carries anything.
        assert!(
            decode_all(
                Role::Server,
                64,
                &client_frame(OpCode::Binary, true, &[0xFF])
            )
            .is_ok()
        );
    }

    #[test]
    fn utf8_sequence_split_across_fragments_is_accepted() {
        let text = "héllo wörld €";
        let bytes = text.as_bytes();
        for cut in 1..bytes.len() {
            let mut frames = client_frame(OpCode::Text, false, &bytes[..cut]);
            frames.extend(client_frame(OpCode::Continuation, true, &bytes[cut..]));
            assert_eq!(
                decode_all(Role::Server, 64, &frames).unwrap(),
                [Owned::Text(text.into())]
            );
        }
    }

    #[test]
    fn close_frames_are_checked() {
        let close = |payload: &[u8]| client_frame(OpCode::Close, true, payload);
        assert_eq!(
            decode_all(Role::Server, 64, &close(b"")).unwrap(),
            [Owned::Close(None, String::new())]
        );
        assert_eq!(
            decode_all(Role::Server, 64, &close(&[0x03, 0xE8, b'b', b'y', b'e'])).unwrap(),
            [Owned::Close(Some(1000), "bye".into())]
        );
        assert_eq!(server_error(&close(&[0x03])), 1002);
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000] {
            assert_eq!(server_error(&close(&code.to_be_bytes())), 1002, "{code}");
        }
        for code in [1000u16, 1001, 1003, 1011, 3000, 4999] {
            assert!(decode_all(Role::Server, 64, &close(&code.to_be_bytes())).is_ok());
        }
        assert_eq!(server_error(&close(&[0x03, 0xE8, 0xC3, 0x28])), 1007);
    }

    #[test]
    fn close_frame_helper_roundtrips() {
        assert_eq!(
            decode_all(Role::Client, 64, &close_frame(4001, "idle")).unwrap(),
            [Owned::Close(Some(4001), "idle".into())]
        );
    }

    // Frames cut at every byte.

    #[test]
    fn every_proper_prefix_of_a_frame_decodes_to_nothing() {
        let frames = [
            MASKED_HELLO.to_vec(),
            client_frame(OpCode::Binary, true, &[5; 256]),
            client_frame(OpCode::Binary, true, &[6; 70_000]),
            client_frame(OpCode::Close, true, &[0x03, 0xE8, b'x']),
            client_frame(OpCode::Ping, true, b""),
        ];
        for frame in frames {
            for end in 0..frame.len() {
                let mut prefix = frame[..end].to_vec();
                let mut decoder = Decoder::new(Role::Server, 1 << 20);
                let decoded = decoder.decode(&mut prefix).unwrap();
                assert_eq!(
                    (decoded.message, decoded.consumed),
                    (None, 0),
                    "prefix {end}"
                );
                // A prefix is never touched: unmasking waits for the whole frame.
                assert_eq!(prefix, frame[..end]);
            }
            let mut whole = frame.clone();
            let mut decoder = Decoder::new(Role::Server, 1 << 20);
            let decoded = decoder.decode(&mut whole).unwrap();
            assert!(decoded.message.is_some());
            assert_eq!(decoded.consumed, frame.len());
        }
    }

    fn interleaved_stream() -> (Vec<u8>, Vec<Owned>) {
        let mut bytes = client_frame(OpCode::Text, false, "Hé".as_bytes());
        bytes.extend(client_frame(OpCode::Ping, true, b"p1"));
        bytes.extend(client_frame(OpCode::Continuation, false, b""));
        bytes.extend(client_frame(OpCode::Pong, true, b""));
        bytes.extend(client_frame(OpCode::Continuation, false, &[b'l'; 300]));
        bytes.extend(client_frame(OpCode::Continuation, true, b"o"));
        bytes.extend(client_frame(OpCode::Binary, true, &[9; 200]));
        bytes.extend(client_frame(OpCode::Close, true, &[0x03, 0xE9]));
        let text = format!("Hé{}o", "l".repeat(300));
        let messages = vec![
            Owned::Ping(b"p1".to_vec()),
            Owned::Pong(Vec::new()),
            Owned::Text(text),
            Owned::Binary(vec![9; 200]),
            Owned::Close(Some(1001), String::new()),
        ];
        (bytes, messages)
    }

    #[test]
    fn a_stream_split_at_every_byte_decodes_the_same() {
        let (bytes, expected) = interleaved_stream();
        for cut in 0..=bytes.len() {
            let mut decoder = Decoder::new(Role::Server, 4096);
            let mut buf = Vec::new();
            let mut messages = drive(&mut decoder, &mut buf, &bytes[..cut]).unwrap();
            messages.extend(drive(&mut decoder, &mut buf, &bytes[cut..]).unwrap());
            assert!(buf.is_empty());
            assert_eq!(messages, expected, "cut at {cut}");
        }
        for chunk in [1, 2, 3, 7, 64] {
            let mut decoder = Decoder::new(Role::Server, 4096);
            assert_eq!(feed(&mut decoder, &bytes, chunk).unwrap(), expected);
        }
    }

    #[test]
    fn control_frames_inside_a_fragmented_message_come_out_alone() {
        let mut bytes = client_frame(OpCode::Binary, false, b"ab");
        let first_len = bytes.len();
        bytes.extend(client_frame(OpCode::Ping, true, b"?"));
        let ping_end = bytes.len();
        bytes.extend(client_frame(OpCode::Continuation, true, b"cd"));
        let mut decoder = Decoder::new(Role::Server, 64);
        let decoded = decoder.decode(&mut bytes).unwrap();
        assert_eq!(decoded.message, Some(Message::Ping(b"?")));
        // The fragment before the ping is eaten with it.
        assert_eq!(decoded.consumed, ping_end);
        assert!(ping_end > first_len);
        let mut rest = bytes[ping_end..].to_vec();
        let decoded = decoder.decode(&mut rest).unwrap();
        assert_eq!(decoded.message, Some(Message::Binary(b"abcd")));
        assert_eq!(decoded.consumed, rest.len());
    }

    #[test]
    fn decoder_stays_usable_across_many_messages() {
        let mut decoder = Decoder::new(Role::Server, 1 << 16);
        for round in 0..50u8 {
            let (bytes, expected) = interleaved_stream();
            assert_eq!(
                feed(&mut decoder, &bytes, 13 + usize::from(round)).unwrap(),
                expected
            );
        }
    }

    // Roundtrips between the roles.

    fn all_kinds() -> Vec<(OpCode, Vec<u8>, Owned)> {
        let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        vec![
            (OpCode::Text, b"".to_vec(), Owned::Text(String::new())),
            (
                OpCode::Text,
                "ünïcødé".as_bytes().to_vec(),
                Owned::Text("ünïcødé".into()),
            ),
            (OpCode::Binary, big.clone(), Owned::Binary(big)),
            (OpCode::Binary, vec![0; 126], Owned::Binary(vec![0; 126])),
            (
                OpCode::Ping,
                b"ping".to_vec(),
                Owned::Ping(b"ping".to_vec()),
            ),
            (OpCode::Pong, vec![1; 125], Owned::Pong(vec![1; 125])),
            (
                OpCode::Close,
                vec![0x0F, 0xA0, b'b'],
                Owned::Close(Some(4000), "b".into()),
            ),
        ]
    }

    #[test]
    fn client_frames_roundtrip_through_a_server_decoder() {
        for (opcode, payload, expected) in all_kinds() {
            let frame = client_frame(opcode, true, &payload);
            assert_eq!(frame.len(), header_len(payload.len()) + 4 + payload.len());
            assert!(frame.len() <= MAX_HEADER_LEN + payload.len());
            assert_eq!(
                decode_all(Role::Server, 1 << 20, &frame).unwrap(),
                [expected]
            );
        }
    }

    #[test]
    fn server_frames_roundtrip_through_a_client_decoder() {
        for (opcode, payload, expected) in all_kinds() {
            let mut frame = Vec::new();
            encode_frame(Role::Server, opcode, true, &payload, &mut frame);
            assert_eq!(
                decode_all(Role::Client, 1 << 20, &frame).unwrap(),
                [expected]
            );
        }
    }

    #[test]
    fn client_frames_are_masked() {
        let payload = [0u8; 64];
        let frame = client_frame(OpCode::Binary, true, &payload);
        assert_eq!(frame[1] & 0x80, 0x80);
        let mask = &frame[2..6];
        for (i, byte) in frame[6..].iter().enumerate() {
            assert_eq!(*byte, mask[i % 4]);
        }
    }

    // Properties.

    fn opcode_strategy() -> impl Strategy<Value = OpCode> {
        prop_oneof![Just(OpCode::Text), Just(OpCode::Binary)]
    }

    proptest! {
        #[test]
        fn arbitrary_payloads_roundtrip(
            opcode in opcode_strategy(),
            text in ".{0,300}",
            binary in proptest::collection::vec(any::<u8>(), 0..3000),
            cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..5),
            chunk in 1usize..600,
            client in any::<bool>(),
        ) {
            let payload = if opcode == OpCode::Text { text.as_bytes().to_vec() } else { binary };
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(payload.len() + 1)).collect();
            cuts.sort_unstable();
            cuts.push(payload.len());
            let (sender, receiver) = if client {
                (Role::Client, Role::Server)
            } else {
                (Role::Server, Role::Client)
            };
            let mut bytes = Vec::new();
            let mut start = 0;
            let mut sent_pings = 0;
            for (i, &end) in cuts.iter().enumerate() {
                let frame_opcode = if i == 0 { opcode } else { OpCode::Continuation };
                let fin = i + 1 == cuts.len();
                encode_frame(sender, frame_opcode, fin, &payload[start..end], &mut bytes);
                // Pings between some fragments must not disturb reassembly.
                if i % 2 == 1 && !fin {
                    encode_frame(sender, OpCode::Ping, true, &[i as u8], &mut bytes);
                    sent_pings += 1;
                }
                start = end;
            }
            let messages = feed(&mut Decoder::new(receiver, 1 << 16), &bytes, chunk).unwrap();
            let (message, pings) = messages.split_last().unwrap();
            let expected = if opcode == OpCode::Text {
                Owned::Text(String::from_utf8(payload).unwrap())
            } else {
                Owned::Binary(payload)
            };
            prop_assert_eq!(message, &expected);
            prop_assert!(pings.iter().all(|m| matches!(m, Owned::Ping(_))));
            prop_assert_eq!(pings.len(), sent_pings);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            chunk in 1usize..64,
            max in 0usize..300,
            server in any::<bool>(),
        ) {
            let role = if server { Role::Server } else { Role::Client };
            let mut decoder = Decoder::new(role, max);
            let mut buf = Vec::new();
            for read in bytes.chunks(chunk) {
                if drive(&mut decoder, &mut buf, read).is_err() {
                    break;
                }
            }
            let _ = frame_len_hint(&bytes);
        }

        #[test]
        fn corrupted_frames_never_panic(
            flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..4),
            chunk in 1usize..64,
        ) {
            let (mut bytes, _) = interleaved_stream();
            for (index, value) in flips {
                let at = index.index(bytes.len());
                bytes[at] ^= value;
            }
            let mut decoder = Decoder::new(Role::Server, 4096);
            let mut buf = Vec::new();
            for read in bytes.chunks(chunk) {
                if drive(&mut decoder, &mut buf, read).is_err() {
                    break;
                }
            }
        }
    }

    // Interop with tungstenite, over an in-memory duplex pipe: the frame layer is what this codec
    // owns, so no HTTP handshake is needed to prove it.

    mod interop {
        use futures_util::{SinkExt, StreamExt};
        use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, duplex};
        use tokio_tungstenite::WebSocketStream;
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role as TRole};
        use tokio_tungstenite::tungstenite::{Bytes, Message as TMessage};

        use super::Owned;
        use wsproto::{Decoded, Decoder, Role};

        /// Reads from `io` until the decoder yields a message.
        async fn next_message(
            io: &mut (impl AsyncRead + Unpin),
            decoder: &mut Decoder,
            buf: &mut Vec<u8>,
        ) -> Owned {
            loop {
                let Decoded { message, consumed } =
                    decoder.decode(buf).expect("tungstenite sends valid frames");
                let message = message.map(Owned::from);
                buf.drain(..consumed);
                if let Some(message) = message {
                    return message;
                }
                let mut chunk = [0; 4096];
                let n = io.read(&mut chunk).await.unwrap();
                assert!(n > 0, "peer closed the pipe mid-message");
                buf.extend_from_slice(&chunk[..n]);
            }
        }

        #[tokio::test]
        async fn tungstenite_client_talks_to_our_server_codec() {
            let (client_io, mut server_io) = duplex(1 << 16);
            let server = tokio::spawn(async move {
                let mut decoder = Decoder::new(Role::Server, 1 << 20);
                let mut buf = Vec::new();
                let mut seen = Vec::new();
                loop {
                    let message = next_message(&mut server_io, &mut decoder, &mut buf).await;
                    let reply = match &message {
                        Owned::Text(text) => wsproto::text_frame(text),
                        Owned::Binary(bytes) => wsproto::binary_frame(bytes),
                        Owned::Ping(bytes) => wsproto::pong_frame(bytes),
                        Owned::Pong(_) => Vec::new(),
                        Owned::Close(code, _) => wsproto::close_frame(code.unwrap_or(1000), "bye"),
                    };
                    server_io.write_all(&reply).await.unwrap();
                    let done = matches!(message, Owned::Close(..));
                    seen.push(message);
                    if done {
                        return seen;
                    }
                }
            });

            let mut client = WebSocketStream::from_raw_socket(client_io, TRole::Client, None).await;
            let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            client.send(TMessage::text("héllo")).await.unwrap();
            assert_eq!(
                client.next().await.unwrap().unwrap(),
                TMessage::text("héllo")
            );
            client.send(TMessage::binary(big.clone())).await.unwrap();
            assert_eq!(
                client.next().await.unwrap().unwrap(),
                TMessage::binary(big.clone())
            );
            client
                .send(TMessage::Ping(Bytes::from_static(b"are you there")))
                .await
                .unwrap();
            assert_eq!(
                client.next().await.unwrap().unwrap(),
                TMessage::Pong(Bytes::from_static(b"are you there"))
            );
            // A fragmented text message with a ping in the middle, as raw frames.
            let fragments = [
                TMessage::Frame(Frame::message("frag", OpCode::Data(Data::Text), false)),
                TMessage::Ping(Bytes::from_static(b"mid")),
                TMessage::Frame(Frame::message("ment", OpCode::Data(Data::Continue), true)),
            ];
            for fragment in fragments {
                client.send(fragment).await.unwrap();
            }
            assert_eq!(
                client.next().await.unwrap().unwrap(),
                TMessage::Pong(Bytes::from_static(b"mid"))
            );
            assert_eq!(
                client.next().await.unwrap().unwrap(),
                TMessage::text("fragment")
            );
            client
                .close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "done".into(),
                }))
                .await
                .unwrap();
            let reply = client.next().await.unwrap().unwrap();
            assert_eq!(
                reply,
                TMessage::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "bye".into(),
                }))
            );

            let seen = server.await.unwrap();
            assert_eq!(
                seen,
                [
                    Owned::Text("héllo".into()),
                    Owned::Binary(big),
                    Owned::Ping(b"are you there".to_vec()),
                    Owned::Ping(b"mid".to_vec()),
                    Owned::Text("fragment".into()),
                    Owned::Close(Some(1000), "done".into()),
                ]
            );
        }

        #[tokio::test]
        async fn our_client_codec_talks_to_a_tungstenite_server() {
            let (client_io, server_io) = duplex(1 << 16);
            let server = tokio::spawn(async move {
                let mut server =
                    WebSocketStream::from_raw_socket(server_io, TRole::Server, None).await;
                while let Some(message) = server.next().await {
                    let message = message.unwrap();
                    // Pings are answered by tungstenite itself, closes by the handshake.
                    if message.is_text() || message.is_binary() {
                        server.send(message).await.unwrap();
                    }
                }
            });

            let big: Vec<u8> = (0..150_000u32).map(|i| (i % 253) as u8).collect();
            let mut out = Vec::new();
            wsproto::encode_frame(
                Role::Client,
                wsproto::OpCode::Text,
                true,
                "héllo".as_bytes(),
                &mut out,
            );
            wsproto::encode_frame(
                Role::Client,
                wsproto::OpCode::Binary,
                false,
                &big[..100_000],
                &mut out,
            );
            wsproto::encode_frame(Role::Client, wsproto::OpCode::Ping, true, b"mid", &mut out);
            wsproto::encode_frame(
                Role::Client,
                wsproto::OpCode::Continuation,
                true,
                &big[100_000..],
                &mut out,
            );
            wsproto::encode_frame(
                Role::Client,
                wsproto::OpCode::Close,
                true,
                &[0x03, 0xE8],
                &mut out,
            );
            let (mut read_half, mut write_half) = tokio::io::split(client_io);
            let writer = tokio::spawn(async move {
                write_half.write_all(&out).await.unwrap();
            });

            let mut decoder = Decoder::new(Role::Client, 1 << 20);
            let mut buf = Vec::new();
            let mut received = Vec::new();
            loop {
                let message = next_message(&mut read_half, &mut decoder, &mut buf).await;
                let done = matches!(message, Owned::Close(..));
                received.push(message);
                if done {
                    break;
                }
            }
            let pongs = received
                .iter()
                .filter(|m| **m == Owned::Pong(b"mid".to_vec()))
                .count();
            assert_eq!(pongs, 1, "{received:?}");
            received.retain(|m| !matches!(m, Owned::Pong(_)));
            assert_eq!(
                received,
                [
                    Owned::Text("héllo".into()),
                    Owned::Binary(big),
                    Owned::Close(Some(1000), String::new()),
                ]
            );
            writer.await.unwrap();
            server.await.unwrap();
        }
    }
}
