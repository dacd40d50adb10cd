//! The frame opcodes RFC 6455 defines (section 5.2).

/// What a frame carries. The other ten values of the 4-bit field are reserved and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    /// The next fragment of a fragmented text or binary message.
    Continuation = 0x0,
    /// A UTF-8 text message, or its first fragment.
    Text = 0x1,
    /// A binary message, or its first fragment.
    Binary = 0x2,
    /// The closing handshake.
    Close = 0x8,
    /// A keep-alive probe the peer must answer with a pong.
    Ping = 0x9,
    /// The answer to a ping, or an unsolicited heartbeat.
    Pong = 0xA,
}

impl OpCode {
    /// The opcode with this 4-bit value, `None` for the reserved ones.
    pub fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0x0 => Some(Self::Continuation),
            0x1 => Some(Self::Text),
            0x2 => Some(Self::Binary),
            0x8 => Some(Self::Close),
            0x9 => Some(Self::Ping),
            0xA => Some(Self::Pong),
            _ => None,
        }
    }

    /// Whether this is a control frame (close, ping, pong): at most 125 bytes, never
    /// fragmented, and allowed between the fragments of a data message.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

#[cfg(test)]
mod tests {
    use super::OpCode;

    #[test]
    fn every_defined_value_roundtrips_and_the_reserved_ones_are_refused() {
        for bits in 0..=0xF_u8 {
            match OpCode::from_bits(bits) {
                Some(opcode) => assert_eq!(opcode as u8, bits),
                None => assert!(matches!(bits, 0x3..=0x7 | 0xB..=0xF), "{bits:#x}"),
            }
        }
    }
}
