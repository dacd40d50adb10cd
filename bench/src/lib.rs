//! Fixtures shared by the benchmarks and the `wire_sizes` binary: one send frame and one
//! delivery frame carrying the same message, their protobuf twins, and the "validate and
//! read two fields" operation written once per encoding.

pub mod compare;
pub mod cpu;
pub mod peer;
pub mod proto;

use std::hint::black_box;

use wire::client::SendMessage;
use wire::server::Message;
use wire::{ChatId, ClientFrame, ClientFrameRef, ServerFrame, ServerFrameRef};

/// A chat message body: 101 bytes of UTF-8 (96 chars, two of them multi-byte).
pub const BODY: &str = "Running ten minutes late — grab the table by the window at the café? I'll bring the spare keys ☕";
/// A chat id as a database sequence hands them out after a while.
pub const CHAT_ID: u64 = 48_213_557;
/// A client message id from a millisecond clock times 1000 plus a counter.
pub const CLIENT_MSG_ID: u64 = 1_763_896_512_345_007;
/// The message's place in its chat.
pub const SEQ: u64 = 18_342;
/// The sender's user id.
pub const SENDER: u64 = 1_000_482_913;
/// When the server accepted it, microseconds since the Unix epoch (November 2025).
pub const SERVER_TIME_US: u64 = 1_763_896_512_401_233;

/// The client's send frame.
pub fn send_frame() -> ClientFrame {
    ClientFrame::Send(SendMessage {
        chat_id: CHAT_ID,
        client_msg_id: CLIENT_MSG_ID,
        body: BODY.to_owned(),
    })
}

/// The server's delivery of the same message.
pub fn delivery_frame() -> ServerFrame {
    ServerFrame::Message(Message {
        chat_id: CHAT_ID,
        seq: SEQ,
        sender: SENDER,
        client_msg_id: CLIENT_MSG_ID,
        server_time_us: SERVER_TIME_US,
        body: BODY.to_owned(),
        kind: wire::EntryKind::Message,
        target_seq: 0,
    })
}

/// The send frame as protobuf.
pub fn send_proto() -> proto::ClientFrame {
    proto::ClientFrame::from_wire(&send_frame()).expect("send has a protobuf twin")
}

/// The delivery frame as protobuf.
pub fn delivery_proto() -> proto::ServerFrame {
    proto::ServerFrame::from_wire(&delivery_frame()).expect("message has a protobuf twin")
}

/// Validates an rkyv send frame in place and reads its chat id and body without copying.
/// Returns the chat id and the body's length.
pub fn rkyv_send_fields(bytes: &[u8]) -> Option<(ChatId, usize)> {
    match ClientFrameRef::access(bytes).ok()? {
        ClientFrameRef::Send(m) => Some((m.chat_id.to_native(), black_box(m.body.as_str()).len())),
        _ => None,
    }
}

/// The same for JSON, which has no in-place access: a full parse into the owned frame.
pub fn json_send_fields(text: &str) -> Option<(ChatId, usize)> {
    match ClientFrame::from_json(text).ok()? {
        ClientFrame::Send(m) => Some((m.chat_id, black_box(m.body.as_str()).len())),
        _ => None,
    }
}

/// The same for protobuf, which has no in-place access either: a full decode.
pub fn prost_send_fields(bytes: &[u8]) -> Option<(ChatId, usize)> {
    match proto::decode_client(bytes).ok()?.frame? {
        proto::client_frame::Frame::Send(m) => Some((m.chat_id, black_box(m.body.as_str()).len())),
        _ => None,
    }
}

/// Validates an rkyv delivery frame in place and reads its chat id and body.
pub fn rkyv_delivery_fields(bytes: &[u8]) -> Option<(ChatId, usize)> {
    match ServerFrameRef::access(bytes).ok()? {
        ServerFrameRef::Message(m) => {
            Some((m.chat_id.to_native(), black_box(m.body.as_str()).len()))
        }
        _ => None,
    }
}

/// The same for a JSON delivery: a full parse.
pub fn json_delivery_fields(text: &str) -> Option<(ChatId, usize)> {
    match ServerFrame::from_json(text).ok()? {
        ServerFrame::Message(m) => Some((m.chat_id, black_box(m.body.as_str()).len())),
        _ => None,
    }
}

/// The same for a protobuf delivery: a full decode.
pub fn prost_delivery_fields(bytes: &[u8]) -> Option<(ChatId, usize)> {
    match proto::decode_server(bytes).ok()?.frame? {
        proto::server_frame::Frame::Message(m) => {
            Some((m.chat_id, black_box(m.body.as_str()).len()))
        }
        _ => None,
    }
}

/// Bytes on the wire of one frame in each encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireSizes {
    /// Header and rkyv archive (a binary WebSocket message).
    pub rkyv: usize,
    /// The JSON text (a text WebSocket message).
    pub json: usize,
    /// The protobuf encoding.
    pub protobuf: usize,
}

/// The sizes of the send frame.
pub fn send_sizes() -> WireSizes {
    use prost::Message as _;
    let frame = send_frame();
    WireSizes {
        rkyv: frame.encode().expect("the sample is within limits").len(),
        json: frame.to_json().len(),
        protobuf: send_proto().encoded_len(),
    }
}

/// The sizes of the delivery frame.
pub fn delivery_sizes() -> WireSizes {
    use prost::Message as _;
    let frame = delivery_frame();
    WireSizes {
        rkyv: frame.encode().expect("the sample is within limits").len(),
        json: frame.to_json().len(),
        protobuf: delivery_proto().encoded_len(),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn body_is_about_a_hundred_bytes() {
        assert_eq!(BODY.len(), 101);
        assert!(!BODY.is_ascii());
    }

    #[test]
    fn every_encoding_round_trips_the_send_frame() {
        let frame = send_frame();
        let bin = frame.encode().unwrap();
        assert_eq!(ClientFrame::decode(&bin).unwrap(), frame);
        assert_eq!(ClientFrame::from_json(&frame.to_json()).unwrap(), frame);
        let pb = send_proto().encode_to_vec();
        assert_eq!(proto::decode_client(&pb).unwrap(), send_proto());
    }

    #[test]
    fn every_encoding_round_trips_the_delivery_frame() {
        let frame = delivery_frame();
        let bin = frame.encode().unwrap();
        assert_eq!(ServerFrame::decode(&bin).unwrap(), frame);
        assert_eq!(ServerFrame::from_json(&frame.to_json()).unwrap(), frame);
        let pb = delivery_proto().encode_to_vec();
        assert_eq!(proto::decode_server(&pb).unwrap(), delivery_proto());
    }

    #[test]
    fn every_encoding_reads_the_same_fields() {
        let want = Some((CHAT_ID, BODY.len()));
        let send = send_frame();
        assert_eq!(rkyv_send_fields(&send.encode().unwrap()), want);
        assert_eq!(json_send_fields(&send.to_json()), want);
        assert_eq!(prost_send_fields(&send_proto().encode_to_vec()), want);
        let delivery = delivery_frame();
        assert_eq!(rkyv_delivery_fields(&delivery.encode().unwrap()), want);
        assert_eq!(json_delivery_fields(&delivery.to_json()), want);
        assert_eq!(
            prost_delivery_fields(&delivery_proto().encode_to_vec()),
            want
        );
    }

    #[test]
    fn the_wrong_kind_reads_nothing() {
        let ping = ClientFrame::Ping(wire::client::Ping { nonce: 7 });
        assert_eq!(rkyv_send_fields(&ping.encode().unwrap()), None);
        assert_eq!(json_send_fields(&ping.to_json()), None);
        let pb = proto::ClientFrame::from_wire(&ping)
            .unwrap()
            .encode_to_vec();
        assert_eq!(prost_send_fields(&pb), None);
    }

    #[test]
    fn protobuf_refuses_what_the_protocol_refuses() {
        assert!(matches!(
            proto::decode_client(&[]),
            Err(proto::ProtoError::NoFrame)
        ));
        let long = proto::ClientFrame {
            frame: Some(proto::client_frame::Frame::Send(proto::SendMessage {
                chat_id: 1,
                client_msg_id: 1,
                body: "x".repeat(wire::limits::MAX_BODY_BYTES + 1),
            })),
        };
        assert!(matches!(
            proto::decode_client(&long.encode_to_vec()),
            Err(proto::ProtoError::BodyTooLong(_))
        ));
        assert!(matches!(
            proto::decode_client(&[0xff; 3]),
            Err(proto::ProtoError::Decode(_))
        ));
    }
}
