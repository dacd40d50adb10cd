//! Protobuf twins of the wire frames the codec benchmarks use, as the Go peers would
//! speak them. Written by hand with prost's derives (what `prost-build` would generate), so
//! the workspace needs neither protoc nor a build script. The schema:
//!
//! ```protobuf
//! syntax = "proto3";
//!
//! message SendMessage { uint64 chat_id = 1; uint64 client_msg_id = 2; string body = 3; }
//! message Ack         { uint64 chat_id = 1; uint64 seq = 2; }
//! message Typing      { uint64 chat_id = 1; }
//! message Ping        { uint64 nonce = 1; }
//!
//! // The oneof's field numbers are wire's kind bytes.
//! message ClientFrame {
//!   oneof frame {
//!     SendMessage send = 4; Ack ack_delivered = 5; Ack ack_read = 6;
//!     Typing typing = 8; Ping ping = 10;
//!   }
//! }
//!
//! message Message {
//!   uint64 chat_id = 1; uint64 seq = 2; uint64 sender = 3;
//!   uint64 client_msg_id = 4; uint64 server_time_us = 5; string body = 6;
//! }
//! message TypingEvent { uint64 chat_id = 1; uint64 user_id = 2; }
//! message Pong        { uint64 nonce = 1; uint64 server_time_us = 2; }
//!
//! message ServerFrame {
//!   oneof frame { Message message = 2; TypingEvent typing = 9; Pong pong = 11; }
//! }
//! ```
//!
//! Only the kinds needed to make the frame a real tagged union are declared; the others
//! would add oneof arms, not cost to these messages. Integers are `uint64` (varints), the
//! usual choice in Go services.

use wire::limits::{MAX_BODY_BYTES, MAX_FRAME_BYTES, MAX_SERVER_FRAME_BYTES};

/// Client to server: send a message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SendMessage {
    #[prost(uint64, tag = "1")]
    pub chat_id: u64,
    #[prost(uint64, tag = "2")]
    pub client_msg_id: u64,
    #[prost(string, tag = "3")]
    pub body: String,
}

/// Client to server: a delivered or read watermark.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    #[prost(uint64, tag = "1")]
    pub chat_id: u64,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
}

/// Client to server: typing indicator.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Typing {
    #[prost(uint64, tag = "1")]
    pub chat_id: u64,
}

/// Client to server: ping.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ping {
    #[prost(uint64, tag = "1")]
    pub nonce: u64,
}

/// A frame from a client: one of the kinds, like [`wire::ClientFrame`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClientFrame {
    #[prost(oneof = "client_frame::Frame", tags = "4, 5, 6, 8, 10")]
    pub frame: Option<client_frame::Frame>,
}

/// The oneof of [`ClientFrame`].
pub mod client_frame {
    /// The kinds of client frame.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Frame {
        /// Send a message.
        #[prost(message, tag = "4")]
        Send(super::SendMessage),
        /// Delivered watermark.
        #[prost(message, tag = "5")]
        AckDelivered(super::Ack),
        /// Read watermark.
        #[prost(message, tag = "6")]
        AckRead(super::Ack),
        /// Typing indicator.
        #[prost(message, tag = "8")]
        Typing(super::Typing),
        /// Ping.
        #[prost(message, tag = "10")]
        Ping(super::Ping),
    }
}

/// Server to client: a chat message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    #[prost(uint64, tag = "1")]
    pub chat_id: u64,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    #[prost(uint64, tag = "3")]
    pub sender: u64,
    #[prost(uint64, tag = "4")]
    pub client_msg_id: u64,
    #[prost(uint64, tag = "5")]
    pub server_time_us: u64,
    #[prost(string, tag = "6")]
    pub body: String,
}

/// Server to client: typing indicator.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypingEvent {
    #[prost(uint64, tag = "1")]
    pub chat_id: u64,
    #[prost(uint64, tag = "2")]
    pub user_id: u64,
}

/// Server to client: the answer to a ping.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Pong {
    #[prost(uint64, tag = "1")]
    pub nonce: u64,
    #[prost(uint64, tag = "2")]
    pub server_time_us: u64,
}

/// A frame from the server: one of the kinds, like [`wire::ServerFrame`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerFrame {
    #[prost(oneof = "server_frame::Frame", tags = "2, 9, 11")]
    pub frame: Option<server_frame::Frame>,
}

/// The oneof of [`ServerFrame`].
pub mod server_frame {
    /// The kinds of server frame.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Frame {
        /// A live message.
        #[prost(message, tag = "2")]
        Message(super::Message),
        /// Typing indicator.
        #[prost(message, tag = "9")]
        Typing(super::TypingEvent),
        /// Ping answer.
        #[prost(message, tag = "11")]
        Pong(super::Pong),
    }
}

/// Why a protobuf frame was refused.
#[derive(Debug)]
pub enum ProtoError {
    /// Larger than the protocol's frame limit.
    TooLarge(usize),
    /// Not a valid encoding of the message.
    Decode(prost::DecodeError),
    /// The oneof was absent (protobuf allows it; the protocol does not).
    NoFrame,
    /// A body over the protocol's limit.
    BodyTooLong(usize),
}

/// Decodes a client frame and applies the same checks wire's codecs apply to these kinds
/// (frame size, a kind present, body length), so the comparison is like for like.
pub fn decode_client(bytes: &[u8]) -> Result<ClientFrame, ProtoError> {
    use prost::Message as _;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(ProtoError::TooLarge(bytes.len()));
    }
    let frame = ClientFrame::decode(bytes).map_err(ProtoError::Decode)?;
    match &frame.frame {
        None => Err(ProtoError::NoFrame),
        Some(client_frame::Frame::Send(m)) if m.body.len() > MAX_BODY_BYTES => {
            Err(ProtoError::BodyTooLong(m.body.len()))
        }
        Some(_) => Ok(frame),
    }
}

/// Decodes a server frame with the same checks as [`decode_client`].
pub fn decode_server(bytes: &[u8]) -> Result<ServerFrame, ProtoError> {
    use prost::Message as _;
    if bytes.len() > MAX_SERVER_FRAME_BYTES {
        return Err(ProtoError::TooLarge(bytes.len()));
    }
    let frame = ServerFrame::decode(bytes).map_err(ProtoError::Decode)?;
    match &frame.frame {
        None => Err(ProtoError::NoFrame),
        Some(server_frame::Frame::Message(m)) if m.body.len() > MAX_BODY_BYTES => {
            Err(ProtoError::BodyTooLong(m.body.len()))
        }
        Some(_) => Ok(frame),
    }
}

impl From<&wire::client::SendMessage> for SendMessage {
    fn from(m: &wire::client::SendMessage) -> Self {
        SendMessage {
            chat_id: m.chat_id,
            client_msg_id: m.client_msg_id,
            body: m.body.clone(),
        }
    }
}

impl From<&wire::server::Message> for Message {
    fn from(m: &wire::server::Message) -> Self {
        Message {
            chat_id: m.chat_id,
            seq: m.seq,
            sender: m.sender,
            client_msg_id: m.client_msg_id,
            server_time_us: m.server_time_us,
            body: m.body.clone(),
        }
    }
}

impl ClientFrame {
    /// The protobuf twin of a wire client frame, for the kinds declared here.
    pub fn from_wire(frame: &wire::ClientFrame) -> Option<ClientFrame> {
        use client_frame::Frame;
        let frame = match frame {
            wire::ClientFrame::Send(m) => Frame::Send(m.into()),
            wire::ClientFrame::AckDelivered(a) => Frame::AckDelivered(Ack {
                chat_id: a.chat_id,
                seq: a.seq,
            }),
            wire::ClientFrame::AckRead(a) => Frame::AckRead(Ack {
                chat_id: a.chat_id,
                seq: a.seq,
            }),
            wire::ClientFrame::Typing(t) => Frame::Typing(Typing { chat_id: t.chat_id }),
            wire::ClientFrame::Ping(p) => Frame::Ping(Ping { nonce: p.nonce }),
            _ => return None,
        };
        Some(ClientFrame { frame: Some(frame) })
    }
}

impl ServerFrame {
    /// The protobuf twin of a wire server frame, for the kinds declared here.
    pub fn from_wire(frame: &wire::ServerFrame) -> Option<ServerFrame> {
        use server_frame::Frame;
        let frame = match frame {
            wire::ServerFrame::Message(m) => Frame::Message(m.into()),
            wire::ServerFrame::Typing(t) => Frame::Typing(TypingEvent {
                chat_id: t.chat_id,
                user_id: t.user_id,
            }),
            wire::ServerFrame::Pong(p) => Frame::Pong(Pong {
                nonce: p.nonce,
                server_time_us: p.server_time_us,
            }),
            _ => return None,
        };
        Some(ServerFrame { frame: Some(frame) })
    }
}
