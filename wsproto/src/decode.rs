//! The receiving side: a per-connection state machine that turns frames into messages.

use crate::header::{self, FrameHeader};
use crate::mask::apply_mask;
use crate::{OpCode, ProtocolError, Role, is_valid_close_code};

/// A whole message, borrowing either the caller's buffer or the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A binary message.
    Binary(&'a [u8]),
    /// A text message, UTF-8 checked.
    Text(&'a str),
    /// A ping; the peer expects a pong with the same payload.
    Ping(&'a [u8]),
    /// A pong (solicited or not).
    Pong(&'a [u8]),
    /// A close frame. `code` is `None` when the frame had no payload; a code is always valid
    /// for a close frame and the reason always UTF-8.
    Close {
        /// The peer's close code.
        code: Option<u16>,
        /// The peer's reason, possibly empty.
        reason: &'a str,
    },
}

/// What one [`Decoder::decode`] call produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// The next message, or `None` when the bytes after `consumed` are less than a frame.
    pub message: Option<Message<'a>>,
    /// Bytes eaten from the front of the buffer (the message's frames and any fragments before
    /// it): the caller drops them before the next call, whether or not a message came out.
    pub consumed: usize,
}

/// The per-connection decoding state. It lives in every connection, so it holds only what
/// fragmentation needs; the bytes themselves belong to the I/O layer.
#[derive(Debug)]
pub struct Decoder {
    /// The fragmented message being reassembled, or the last one delivered; `None` when no
    /// fragmented message is pending (from the next `decode` call on), so a connection that
    /// once sent a large message does not keep its memory. Boxed, since most connections
    /// never fragment: the decoder is 16 bytes instead of 32.
    #[expect(
        clippy::box_collection,
        reason = "one pointer keeps an idle decoder at 16 bytes; a Vec's three words would make it 32"
    )]
    fragments: Option<Box<Vec<u8>>>,
    /// Largest message (single frame or reassembled) accepted, in bytes.
    max_message_bytes: u32,
    role: Role,
    /// Text or Binary while a fragmented message is pending.
    pending: Option<OpCode>,
}

impl Decoder {
    /// A decoder for the `role` this side plays, refusing messages over `max_message_bytes`
    /// (capped at `u32::MAX`, which keeps the decoder small).
    pub fn new(role: Role, max_message_bytes: usize) -> Self {
        Self {
            fragments: None,
            max_message_bytes: u32::try_from(max_message_bytes).unwrap_or(u32::MAX),
            role,
            pending: None,
        }
    }

    /// Decodes frames from the front of `buf` (the bytes read and not yet consumed) until one
    /// message is complete or the rest of `buf` is less than a frame. Payloads are unmasked in
    /// place. A single-frame data message and every control message borrow `buf`; a
    /// fragmented message borrows the decoder. A control frame between fragments comes out on
    /// its own and reassembly goes on. See the module docs for the caller's loop.
    pub fn decode<'a>(&'a mut self, buf: &'a mut [u8]) -> Result<Decoded<'a>, ProtocolError> {
        if self.pending.is_none() {
            // The previous call may have delivered a reassembled message from here: release it.
            self.fragments = None;
        }
        let mut pos = 0;
        loop {
            let Some(header) = header::parse(&buf[pos..], self.role)? else {
                return Ok(Decoded {
                    message: None,
                    consumed: pos,
                });
            };
            let (message_opcode, payload_len) = self.admit(&header)?;
            let start = pos + header.header_len;
            let Some(end) = start
                .checked_add(payload_len)
                .filter(|&end| end <= buf.len())
            else {
                return Ok(Decoded {
                    message: None,
                    consumed: pos,
                });
            };
            if let Some(mask) = header.mask {
                apply_mask(&mut buf[start..end], mask);
            }
            pos = end;
            let single = |message| Decoded {
                message: Some(message),
                consumed: end,
            };
            match header.opcode {
                OpCode::Text | OpCode::Binary if header.fin => {
                    let payload = &buf[start..end];
                    return data_message(header.opcode, payload).map(single);
                }
                OpCode::Text | OpCode::Binary => {
                    self.pending = Some(header.opcode);
                    self.append(&buf[start..end]);
                }
                OpCode::Continuation => {
                    self.append(&buf[start..end]);
                    if header.fin {
                        self.pending = None;
                        let message = self.fragments.as_deref().map_or(&[][..], Vec::as_slice);
                        return data_message(message_opcode, message).map(single);
                    }
                }
                OpCode::Ping => return Ok(single(Message::Ping(&buf[start..end]))),
                OpCode::Pong => return Ok(single(Message::Pong(&buf[start..end]))),
                OpCode::Close => return close_message(&buf[start..end]).map(single),
            }
        }
    }

    /// Checks a frame against the fragmentation state and the size limit before its payload
    /// is awaited, so a peer cannot make the I/O layer buffer what will be refused. Returns
    /// the opcode of the message the frame belongs to and the payload length.
    fn admit(&self, header: &FrameHeader) -> Result<(OpCode, usize), ProtocolError> {
        let (message_opcode, already) = match (header.opcode, self.pending) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Continuation, Some(pending)) => (pending, self.fragments_len()),
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(ProtocolError::InterleavedDataFrame(header.opcode));
            }
            // The header parser bounded control payloads to 125 bytes.
            (opcode, _) => (opcode, 0),
        };
        let len = header.payload_len.saturating_add(already as u64);
        if len > u64::from(self.max_message_bytes) && !header.opcode.is_control() {
            return Err(ProtocolError::MessageTooBig {
                len,
                max: self.max_message_bytes,
            });
        }
        let payload_len =
            usize::try_from(header.payload_len).map_err(|_| ProtocolError::MessageTooBig {
                len,
                max: self.max_message_bytes,
            })?;
        Ok((message_opcode, payload_len))
    }

    /// Adds a fragment, growing the buffer by doubling but never past the message limit, so
    /// reassembly holds at most `max_message_bytes` whatever the fragment sizes.
    fn append(&mut self, fragment: &[u8]) {
        let max = self.max_message_bytes as usize;
        let fragments = self.fragments.get_or_insert_default();
        let needed = fragments.len() + fragment.len();
        if needed > fragments.capacity() {
            let target = (fragments.capacity() * 2).min(max).max(needed);
            fragments.reserve_exact(target - fragments.len());
        }
        fragments.extend_from_slice(fragment);
    }

    /// Bytes of the fragmented message reassembled so far.
    fn fragments_len(&self) -> usize {
        self.fragments
            .as_ref()
            .map_or(0, |fragments| fragments.len())
    }

    /// Bytes reserved for reassembly.
    #[cfg(test)]
    fn fragments_capacity(&self) -> usize {
        self.fragments
            .as_ref()
            .map_or(0, |fragments| fragments.capacity())
    }
}

fn data_message(opcode: OpCode, payload: &[u8]) -> Result<Message<'_>, ProtocolError> {
    if opcode == OpCode::Text {
        std::str::from_utf8(payload)
            .map(Message::Text)
            .map_err(|_| ProtocolError::InvalidUtf8)
    } else {
        Ok(Message::Binary(payload))
    }
}

/// Reads a close payload: nothing, or a valid 2-byte code and a UTF-8 reason (RFC 6455
/// section 5.5.1).
fn close_message(payload: &[u8]) -> Result<Message<'_>, ProtocolError> {
    match payload {
        [] => Ok(Message::Close {
            code: None,
            reason: "",
        }),
        [_] => Err(ProtocolError::CloseTooShort),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !is_valid_close_code(code) {
                return Err(ProtocolError::InvalidCloseCode(code));
            }
            let reason =
                std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidCloseReason)?;
            Ok(Message::Close {
                code: Some(code),
                reason,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode_frame;

    fn client_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(Role::Client, opcode, fin, payload, &mut out);
        out
    }

    #[test]
    fn decoder_is_small() {
        assert!(std::mem::size_of::<Decoder>() <= 16);
    }

    #[test]
    fn reassembly_memory_is_released_after_delivery() {
        let mut decoder = Decoder::new(Role::Server, 1 << 20);
        let mut bytes = client_frame(OpCode::Binary, false, &[1; 40_000]);
        bytes.extend(client_frame(OpCode::Continuation, true, &[2; 40_000]));
        let decoded = decoder.decode(&mut bytes).unwrap();
        assert!(matches!(decoded.message, Some(Message::Binary(b)) if b.len() == 80_000));
        assert!(decoder.fragments_capacity() >= 80_000);
        let decoded = decoder.decode(&mut []).unwrap();
        assert_eq!(decoded.message, None);
        assert_eq!(decoder.fragments_capacity(), 0);
    }

    #[test]
    fn reassembly_never_reserves_past_the_limit() {
        let mut decoder = Decoder::new(Role::Server, 1000);
        for (opcode, fin) in [(OpCode::Text, false), (OpCode::Continuation, false)] {
            let mut frame = client_frame(opcode, fin, &[b'a'; 300]);
            decoder.decode(&mut frame).unwrap();
        }
        let mut last = client_frame(OpCode::Continuation, true, &[b'a'; 400]);
        let decoded = decoder.decode(&mut last).unwrap();
        assert!(matches!(decoded.message, Some(Message::Text(t)) if t.len() == 1000));
        assert_eq!(decoder.fragments_capacity(), 1000);
    }

    #[test]
    fn pending_fragments_keep_their_memory_between_calls() {
        let mut decoder = Decoder::new(Role::Server, 1 << 20);
        let mut first = client_frame(OpCode::Binary, false, &[1; 100]);
        assert_eq!(decoder.decode(&mut first).unwrap().message, None);
        assert_eq!(decoder.decode(&mut []).unwrap().message, None);
        assert_eq!(decoder.fragments.as_deref(), Some(&vec![1; 100]));
    }
}
