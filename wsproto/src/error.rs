//! What a peer can do wrong at the WebSocket layer, and the close code each answer carries.

use crate::{OpCode, close_code};

/// A frame or message that breaks RFC 6455 or this side's limits. The connection is failed
/// with a close frame carrying [`ProtocolError::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// RSV1-3 set while no extension was negotiated.
    #[error("reserved header bits {0:#04x} set without a negotiated extension")]
    ReservedBits(u8),
    /// An opcode RFC 6455 does not define.
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// A client frame without the mask bit (RFC 6455 section 5.1).
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// A server frame with the mask bit.
    #[error("server frame is masked")]
    MaskedFrame,
    /// A control frame whose payload exceeds 125 bytes.
    #[error("{opcode:?} frame payload exceeds 125 bytes")]
    ControlFrameTooLong {
        /// The control frame's opcode.
        opcode: OpCode,
    },
    /// A control frame without FIN.
    #[error("{0:?} frame is fragmented")]
    FragmentedControlFrame(OpCode),
    /// A continuation frame with no fragmented message to continue.
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is still pending.
    #[error("{0:?} frame starts a message while a fragmented one is pending")]
    InterleavedDataFrame(OpCode),
    /// A frame or reassembled message longer than the decoder's limit, caught from the
    /// declared length before its payload is buffered.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooBig {
        /// Bytes the message would reach with this frame.
        len: u64,
        /// The decoder's limit.
        max: u32,
    },
    /// A 64-bit payload length with the most significant bit set.
    #[error("64-bit payload length has its most significant bit set")]
    InvalidLength,
    /// A text message that is not UTF-8.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// A close frame with a 1-byte payload: too long to be empty, too short for a code.
    #[error("close frame payload of 1 byte")]
    CloseTooShort,
    /// A close code no endpoint may send (see [`crate::is_valid_close_code`]).
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// A close reason that is not UTF-8.
    #[error("close reason is not valid UTF-8")]
    InvalidCloseReason,
}

impl ProtocolError {
    /// The close code to fail the connection with (RFC 6455 section 7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            Self::InvalidUtf8 | Self::InvalidCloseReason => close_code::INVALID_PAYLOAD,
            Self::MessageTooBig { .. } => close_code::MESSAGE_TOO_BIG,
            Self::ReservedBits(_)
            | Self::UnknownOpcode(_)
            | Self::UnmaskedFrame
            | Self::MaskedFrame
            | Self::ControlFrameTooLong { .. }
            | Self::FragmentedControlFrame(_)
            | Self::UnexpectedContinuation
            | Self::InterleavedDataFrame(_)
            | Self::InvalidLength
            | Self::CloseTooShort
            | Self::InvalidCloseCode(_) => close_code::PROTOCOL_ERROR,
        }
    }
}
