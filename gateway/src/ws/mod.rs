//! A sans-IO RFC 6455 codec: frames in, messages out, and frames built for writing.
//!
//! The gateway does not use fastwebsockets' connection object because it keeps an 8 KiB read
//! buffer per connection for the connection's whole life, and an idle socket here must cost
//! under 2 KiB. This codec holds no read buffer at all: the I/O layer owns the bytes (a buffer
//! from a per-core pool, taken only while a socket has something to read) and drives a small
//! [`Decoder`] with them. fastwebsockets still supplies the parts that fit: its [`OpCode`] and
//! its [`unmask`](fastwebsockets::unmask).
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
//! use gateway::ws::{Decoded, Decoder, Message, Role, frame_len_hint, pong_frame};
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
//! # Ok::<(), gateway::ws::ProtocolError>(())
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
//! gateway can put header and payload in one refcounted buffer and write it to many sockets.

mod decode;
mod encode;
mod error;
mod header;

pub use decode::{Decoded, Decoder, Message};
pub use encode::{
    ServerHeader, binary_frame, close_frame, encode_frame, header_len, ping_frame, pong_frame,
    server_header, text_frame,
};
pub use error::ProtocolError;
pub use fastwebsockets::OpCode;
pub use header::{MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, MAX_SERVER_HEADER_LEN, frame_len_hint};

/// Which end of the connection this side is; it decides masking in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Receives masked frames and sends unmasked ones (the gateway).
    Server,
    /// Receives unmasked frames and sends masked ones (tests and load tools).
    Client,
}

/// Whether a close frame may carry `code` (RFC 6455 section 7.4 and the IANA registry).
///
/// 1004 is reserved, 1005, 1006 and 1015 describe closes that had no close frame, and the rest
/// of 1000-2999 is reserved for future revisions; 3000-4999 belong to libraries and
/// applications.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::is_valid_close_code;

    #[test]
    fn close_codes_follow_rfc_6455_section_7_4() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
        ] {
            assert!(is_valid_close_code(code), "{code}");
        }
        for code in [3000, 3999, 4000, 4999] {
            assert!(is_valid_close_code(code), "{code}");
        }
        for code in [
            0,
            999,
            1004,
            1005,
            1006,
            1015,
            1016,
            1100,
            2000,
            2999,
            5000,
            u16::MAX,
        ] {
            assert!(!is_valid_close_code(code), "{code}");
        }
    }
}
