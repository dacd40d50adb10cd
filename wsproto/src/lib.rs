//! Sans-IO WebSocket (RFC 6455): a frame codec (frames in, messages out, and frames built for
//! writing) and the server side of the HTTP/1.1 upgrade ([`handshake`]). Nothing here reads a
//! socket, spawns a task or knows a runtime, so the gateway (monoio), the load tester and
//! tests on tokio all drive the same code with bytes; it is to them what tungstenite is to
//! tokio-tungstenite.
//!
//! The codec holds no read buffer: connection objects such as fastwebsockets' keep an 8 KiB
//! one for the connection's whole life, and an idle gateway socket must cost far less. The
//! I/O layer owns the bytes (a buffer from a per-core pool, taken only while a socket has
//! something to read) and drives a small [`Decoder`] with them.
//!
//! # Decoding
//!
//! [`Decoder::decode`] takes the bytes read so far and eats every complete frame at their
//! front until it has a whole message, then returns it with the number of bytes it ate
//! ([`Decoded`]). A single-frame data message borrows the caller's buffer (unmasked in
//! place); a fragmented one is reassembled inside the decoder. The caller's loop:
//!
//! 1. call `decode` on the unread bytes;
//! 2. if it returned a message, act on it;
//! 3. drop `consumed` bytes from the front of the buffer;
//! 4. with a message, go to 1 (more frames may follow); without one, the rest of the buffer
//!    is less than a frame: read more ([`frame_len_hint`] says how much the frame needs).
//!
//! ```
//! use wsproto::{Decoded, Decoder, Message, Role, frame_len_hint, pong_frame};
//!
//! let mut decoder = Decoder::new(Role::Server, 16 * 1024);
//! // One read brought a masked ping ("hi") and the first 2 bytes of the next frame.
//! let mut buf = vec![0x89, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2, 0x82, 0x85];
//! let mut replies = Vec::new();
//! loop {
//!     let Decoded { message, consumed } = decoder.decode(&mut buf)?;
//!     let done = message.is_none();
//!     if let Some(Message::Ping(payload)) = message {
//!         replies.push(pong_frame(payload));
//!     }
//!     // The message borrows `buf`: act on it first, then drain.
//!     buf.drain(..consumed);
//!     if done {
//!         break;
//!     }
//! }
//! assert_eq!(replies, [pong_frame(b"hi")]);
//! // The next frame's header is not complete yet: read at least 4 more bytes (mask key).
//! assert_eq!(buf, [0x82, 0x85]);
//! assert_eq!(frame_len_hint(&buf), None);
//! # Ok::<(), wsproto::ProtocolError>(())
//! ```
//!
//! An error means the peer broke the protocol: send a close frame with
//! [`ProtocolError::close_code`] and drop the connection; the decoder is not meant to be used
//! after it.
//!
//! # Encoding
//!
//! [`encode_frame`] appends a whole frame for either role. The server helpers
//! ([`binary_frame`], [`text_frame`], [`close_frame`], [`ping_frame`], [`pong_frame`]) return
//! one in its own `Vec`. For fan-out, [`server_header`] builds the header on the stack so the
//! a server can put header and payload in one refcounted buffer and write it to many sockets.

pub mod close_code;
mod decode;
mod encode;
mod error;
pub mod handshake;
mod header;
mod mask;
mod opcode;

pub use close_code::is_valid_close_code;
pub use decode::{Decoded, Decoder, Message};
pub use encode::{
    ServerHeader, binary_frame, close_frame, encode_frame, header_len, ping_frame, pong_frame,
    server_header, text_frame,
};
pub use error::ProtocolError;
pub use header::{MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, MAX_SERVER_HEADER_LEN, frame_len_hint};
pub use opcode::OpCode;

/// Which end of the connection this side is; it decides masking in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Receives masked frames and sends unmasked ones (the gateway).
    Server,
    /// Receives unmasked frames and sends masked ones (tests and load tools).
    Client,
}
