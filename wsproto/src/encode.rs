//! The sending side: whole frames for either role, and server headers for shared buffers.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher, RandomState};

use crate::header::{self, MAX_CONTROL_PAYLOAD, MAX_SERVER_HEADER_LEN};
use crate::mask::apply_mask;
use crate::{OpCode, Role};

/// Bytes of a close payload left for the reason after the 2-byte code.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// The header of an unmasked (server) frame, built on the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerHeader {
    bytes: [u8; MAX_SERVER_HEADER_LEN],
    len: u8,
}

impl ServerHeader {
    /// The header's bytes, to put in front of the payload.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl AsRef<[u8]> for ServerHeader {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// The header of a server frame carrying `payload_len` bytes, so a frame can be laid out in
/// one buffer (header, then payload) and that buffer written to many sockets.
pub fn server_header(opcode: OpCode, fin: bool, payload_len: usize) -> ServerHeader {
    let mut bytes = [0; MAX_SERVER_HEADER_LEN];
    let len = header::write(opcode, fin, false, payload_len, &mut bytes);
    ServerHeader {
        bytes,
        len: len as u8,
    }
}

/// Length of the header of a server (unmasked) frame carrying `payload_len` bytes: 2, 4 or 10.
/// A client frame's header is 4 bytes longer (the mask key).
pub fn header_len(payload_len: usize) -> usize {
    match payload_len {
        0..=MAX_CONTROL_PAYLOAD => 2,
        126..=0xFFFF => 4,
        _ => MAX_SERVER_HEADER_LEN,
    }
}

/// Appends one complete frame to `out`: unmasked for [`Role::Server`], masked with a fresh
/// key for [`Role::Client`]. The caller keeps control frames final and within 125 bytes.
pub fn encode_frame(role: Role, opcode: OpCode, fin: bool, payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(
        !opcode.is_control() || (fin && payload.len() <= MAX_CONTROL_PAYLOAD),
        "invalid control frame"
    );
    let masked = role == Role::Client;
    let mut head = [0; MAX_SERVER_HEADER_LEN];
    let head_len = header::write(opcode, fin, masked, payload.len(), &mut head);
    out.reserve(head_len + if masked { 4 } else { 0 } + payload.len());
    out.extend_from_slice(&head[..head_len]);
    if masked {
        let mask = next_mask();
        out.extend_from_slice(&mask);
        let start = out.len();
        out.extend_from_slice(payload);
        apply_mask(&mut out[start..], mask);
    } else {
        out.extend_from_slice(payload);
    }
}

fn server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_len(payload.len()) + payload.len());
    encode_frame(Role::Server, opcode, true, payload, &mut out);
    out
}

/// A server binary message in one frame.
pub fn binary_frame(payload: &[u8]) -> Vec<u8> {
    server_frame(OpCode::Binary, payload)
}

/// A server text message in one frame.
pub fn text_frame(text: &str) -> Vec<u8> {
    server_frame(OpCode::Text, text.as_bytes())
}

/// A server close frame. A reason longer than the 123 bytes a control frame leaves for it is
/// cut at a character boundary, since the peer only logs it.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    server_frame(OpCode::Close, &payload[..2 + end])
}

/// A server ping; a payload over 125 bytes is cut to fit a control frame.
pub fn ping_frame(payload: &[u8]) -> Vec<u8> {
    server_frame(OpCode::Ping, control_payload(payload))
}

/// A server pong, normally echoing a ping's payload (which the decoder bounded to 125
/// bytes); a longer payload is cut to fit a control frame.
pub fn pong_frame(payload: &[u8]) -> Vec<u8> {
    server_frame(OpCode::Pong, control_payload(payload))
}

fn control_payload(payload: &[u8]) -> &[u8] {
    &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)]
}

/// A mask key from a per-thread xorshift64* generator seeded from std's random hasher keys.
///
/// Masking exists to stop a hostile page's payloads from looking like HTTP to proxies on the
/// path (RFC 6455 section 10.3); only the client role masks, and here that is tests and load
/// tools, so an unpredictable-enough key at no cost beats a CSPRNG dependency.
fn next_mask() -> [u8; 4] {
    thread_local! {
        // Xorshift must never hold zero; `| 1` rules it out.
        static STATE: Cell<u64> = Cell::new(RandomState::new().build_hasher().finish() | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        // The high half of the multiplied state is the well-mixed part.
        ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32).to_ne_bytes()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths_switch_at_126_and_65536() {
        assert_eq!(header_len(0), 2);
        assert_eq!(header_len(125), 2);
        assert_eq!(header_len(126), 4);
        assert_eq!(header_len(65_535), 4);
        assert_eq!(header_len(65_536), 10);
        for len in [0, 125, 126, 65_535, 65_536] {
            assert_eq!(
                header_len(len),
                server_header(OpCode::Ping, true, len).as_bytes().len()
            );
        }
    }

    #[test]
    fn server_header_matches_encode_frame() {
        for len in [0, 5, 200, 70_000] {
            let payload = vec![7; len];
            let mut whole = server_header(OpCode::Text, true, len).as_bytes().to_vec();
            whole.extend_from_slice(&payload);
            let mut encoded = Vec::new();
            encode_frame(Role::Server, OpCode::Text, true, &payload, &mut encoded);
            assert_eq!(whole, encoded);
        }
    }

    #[test]
    fn masks_vary() {
        let masks: std::collections::HashSet<[u8; 4]> = (0..64).map(|_| next_mask()).collect();
        assert!(masks.len() > 60);
    }

    #[test]
    fn close_reason_is_cut_at_a_char_boundary() {
        let reason = "é".repeat(100);
        let frame = close_frame(1000, &reason);
        assert_eq!(frame[1] as usize, frame.len() - 2);
        assert!(frame.len() - 2 <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
        assert_eq!(frame.len() - 4, 122);
    }

    #[test]
    fn control_helpers_cut_long_payloads() {
        assert_eq!(ping_frame(&[1; 300]).len(), 2 + MAX_CONTROL_PAYLOAD);
        assert_eq!(pong_frame(&[1; 3]), [0x8A, 3, 1, 1, 1]);
    }
}
