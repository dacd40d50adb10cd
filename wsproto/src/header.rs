//! Reading a frame header (RFC 6455 section 5.2) from the front of a byte buffer.

use crate::{OpCode, ProtocolError, Role};

/// Largest payload of a control frame (close, ping, pong).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Longest frame header: 2 bytes, an 8-byte extended length and a 4-byte mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// Longest header of a frame the server sends (never masked).
pub const MAX_SERVER_HEADER_LEN: usize = 10;

const FIN: u8 = 0x80;
const RSV: u8 = 0x70;
const OPCODE: u8 = 0x0F;
const MASK: u8 = 0x80;
const LEN: u8 = 0x7F;
const LEN_16: u8 = 126;
const LEN_64: u8 = 127;

/// A header read and checked against everything that needs no decoder state.
#[derive(Debug, Clone, Copy)]
pub(super) struct FrameHeader {
    pub fin: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    /// Bytes of the header itself, extended length and mask key included.
    pub header_len: usize,
    /// The payload length the header declares (not yet known to be in the buffer).
    pub payload_len: u64,
}

/// The header and payload lengths of the frame at the front of `buf`, once the header is
/// complete; no validation, so the I/O layer can size its buffer before decoding.
fn lengths(buf: &[u8]) -> Option<(usize, u64)> {
    let second = *buf.get(1)?;
    let (extended, short) = match second & LEN {
        LEN_16 => (2, None),
        LEN_64 => (8, None),
        len => (0, Some(u64::from(len))),
    };
    let header_len = 2 + extended + if second & MASK != 0 { 4 } else { 0 };
    if buf.len() < header_len {
        return None;
    }
    let payload_len = short.unwrap_or_else(|| {
        buf[2..2 + extended]
            .iter()
            .fold(0, |len, &byte| (len << 8) | u64::from(byte))
    });
    Some((header_len, payload_len))
}

/// Total bytes (header and payload) of the frame at the front of `buf`, or `None` while its
/// header is incomplete (a header needs at most [`MAX_HEADER_LEN`] bytes). Lengths beyond
/// `usize` saturate; the decoder rejects such frames anyway.
pub fn frame_len_hint(buf: &[u8]) -> Option<usize> {
    let (header_len, payload_len) = lengths(buf)?;
    let payload_len = usize::try_from(payload_len).unwrap_or(usize::MAX);
    Some(header_len.saturating_add(payload_len))
}

/// Reads the header at the front of `buf`: `Ok(None)` while it is incomplete.
///
/// Checks that fail fast do so on the first two bytes, before the rest of the header arrives.
pub(super) fn parse(buf: &[u8], role: Role) -> Result<Option<FrameHeader>, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first & RSV != 0 {
        // No extension is negotiated, so no reserved bit may be set.
        return Err(ProtocolError::ReservedBits(first & RSV));
    }
    let opcode =
        OpCode::from_bits(first & OPCODE).ok_or(ProtocolError::UnknownOpcode(first & OPCODE))?;
    let fin = first & FIN != 0;
    let control = opcode.is_control();
    if control && !fin {
        return Err(ProtocolError::FragmentedControlFrame(opcode));
    }
    let Some(&second) = buf.get(1) else {
        return Ok(None);
    };
    let masked = second & MASK != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
        (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
        _ => {}
    }
    if control && second & LEN > MAX_CONTROL_PAYLOAD as u8 {
        // An extended length is 126 or more, or a non-minimal encoding of a short one: both
        // are refused, so there is no need to wait for the extended bytes.
        return Err(ProtocolError::ControlFrameTooLong { opcode });
    }
    let Some((header_len, payload_len)) = lengths(buf) else {
        return Ok(None);
    };
    if payload_len >> 63 != 0 {
        return Err(ProtocolError::InvalidLength);
    }
    let mask = masked.then(|| {
        let key = &buf[header_len - 4..header_len];
        [key[0], key[1], key[2], key[3]]
    });
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask,
        header_len,
        payload_len,
    }))
}

/// Writes the header of an unmasked (`masked == false`) or masked frame without its mask key
/// into `out`, returning its length. `out` has room for the longest one.
pub(super) fn write(
    opcode: OpCode,
    fin: bool,
    masked: bool,
    payload_len: usize,
    out: &mut [u8; MAX_SERVER_HEADER_LEN],
) -> usize {
    out[0] = if fin { FIN } else { 0 } | opcode as u8;
    let mask_bit = if masked { MASK } else { 0 };
    if payload_len <= MAX_CONTROL_PAYLOAD {
        out[1] = mask_bit | payload_len as u8;
        2
    } else if let Ok(len) = u16::try_from(payload_len) {
        out[1] = mask_bit | LEN_16;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = mask_bit | LEN_64;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_need_the_whole_header() {
        let frame = [0x82, 0xFE, 0x01, 0x00, 1, 2, 3, 4];
        for end in 0..frame.len() {
            assert_eq!(frame_len_hint(&frame[..end]), None, "prefix of {end}");
        }
        assert_eq!(frame_len_hint(&frame), Some(8 + 256));
        assert_eq!(frame_len_hint(&[0x81, 0x05]), Some(7));
    }

    #[test]
    fn hint_saturates_on_huge_lengths() {
        let frame = [0x82, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(frame_len_hint(&frame), Some(usize::MAX));
    }

    #[test]
    fn written_headers_parse_back() {
        for len in [0, 1, 125, 126, 65_535, 65_536, 1 << 20] {
            for masked in [false, true] {
                let mut out = [0; MAX_SERVER_HEADER_LEN];
                let n = write(OpCode::Binary, true, masked, len, &mut out);
                let mut bytes = out[..n].to_vec();
                if masked {
                    bytes.extend_from_slice(&[9, 8, 7, 6]);
                }
                let role = if masked { Role::Server } else { Role::Client };
                let header = parse(&bytes, role).unwrap().unwrap();
                assert_eq!(header.payload_len, len as u64);
                assert_eq!(header.header_len, bytes.len());
                assert_eq!(header.mask, masked.then_some([9, 8, 7, 6]));
                assert!(header.fin);
                assert_eq!(header.opcode, OpCode::Binary);
            }
        }
    }
}
