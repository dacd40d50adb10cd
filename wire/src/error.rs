//! Errors of decoding, and the numeric codes the protocol gives them on the wire.

use crate::limits::LimitExceeded;

/// Why bytes or text could not become a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than the frame header.
    #[error("frame is {0} bytes, shorter than its 2-byte header")]
    Truncated(usize),
    /// The header names a protocol version this build does not speak.
    #[error("protocol version {0} is not supported (this side speaks {PROTOCOL_VERSION})", PROTOCOL_VERSION = crate::PROTOCOL_VERSION)]
    UnsupportedVersion(u8),
    /// The header names a frame kind that does not exist in this direction.
    #[error("frame kind {0} is unknown")]
    UnknownKind(u8),
    /// The frame is larger than the protocol allows.
    #[error("frame is {size} bytes, the limit is {limit}")]
    TooLarge {
        /// Size of the frame.
        size: usize,
        /// The bound.
        limit: usize,
    },
    /// The archive failed validation (bad offsets, bad UTF-8, bad enum tag, ...).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A text frame that is not a valid JSON frame.
    #[error("malformed JSON frame: {0}")]
    Json(String),
    /// A field broke a protocol limit.
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
    /// A text field holds U+0000, which no text field may hold.
    #[error("{field} holds U+0000 at byte {offset}; text fields may not contain it")]
    NulInText {
        /// The field, as named in PROTOCOL.md.
        field: &'static str,
        /// Where the first one is, in bytes.
        offset: usize,
    },
    /// A sync asked for a page after `after_seq` and before `before_seq` at once.
    #[error(
        "sync has after_seq {after_seq} and before_seq: a page goes one way, so one of them must be left out (after_seq 0)"
    )]
    BothDirections {
        /// The non-zero `after_seq` it carried.
        after_seq: u64,
    },
    /// A value could not be archived (an offset overflowed the 32-bit format).
    #[error("could not encode frame: {0}")]
    Encode(String),
}

impl WireError {
    /// The error code an error frame carries for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            WireError::UnknownKind(_) => ErrorCode::UnknownKind,
            WireError::TooLarge { .. } => ErrorCode::TooLarge,
            WireError::Limit(_) => ErrorCode::LimitExceeded,
            WireError::Truncated(_)
            | WireError::Malformed(_)
            | WireError::Json(_)
            | WireError::NulInText { .. } => ErrorCode::MalformedFrame,
            WireError::BothDirections { .. } => ErrorCode::InvalidRequest,
            WireError::Encode(_) => ErrorCode::Internal,
        }
    }
}

/// Codes carried by error frames. The numbers are part of the protocol and never change
/// meaning; clients must treat a code they do not know by its class (4xxx: the request was
/// wrong, 5xxx: the server failed, retry later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The bytes or text are not a valid frame.
    MalformedFrame = 4000,
    /// The header's version is not spoken here.
    UnsupportedVersion = 4001,
    /// The header's kind is unknown.
    UnknownKind = 4002,
    /// The frame is larger than the protocol allows. The gateway never sends it to clients:
    /// a client message over the limit closes the connection with
    /// [`CloseCode::MESSAGE_TOO_BIG`] before it is decoded.
    TooLarge = 4003,
    /// A field broke a limit (body, members, sync page, ...).
    LimitExceeded = 4004,
    /// Too many frames per second: this frame was dropped.
    RateLimited = 4029,
    /// The sender is not a member of the chat (and the chat does not let it in).
    NotMember = 4030,
    /// The sender is a member, but its role in the chat does not allow the request.
    Forbidden = 4031,
    /// The chat does not exist.
    UnknownChat = 4040,
    /// The request contradicts the chat's rules (a direct chat needs exactly two members, ...).
    InvalidRequest = 4090,
    /// The server failed; the request may be retried with the same client message id.
    Internal = 5000,
    /// The server is overloaded or a dependency is down; retry later.
    Unavailable = 5030,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::MalformedFrame,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownKind,
        ErrorCode::TooLarge,
        ErrorCode::LimitExceeded,
        ErrorCode::RateLimited,
        ErrorCode::NotMember,
        ErrorCode::Forbidden,
        ErrorCode::UnknownChat,
        ErrorCode::InvalidRequest,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
    ];

    /// The number on the wire.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code for a number, if it is one of ours.
    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_u16() == code)
    }

    /// A short snake_case name, for metrics labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownKind => "unknown_kind",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotMember => "not_member",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UnknownChat => "unknown_chat",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// WebSocket close codes the gateway uses (RFC 6455 section 7.4, plus 4xxx of our own).
///
/// A number space of its own: 4000-4002 here are not the [`ErrorCode`]s of the same
/// numbers, which only ever arrive in error frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// Normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// The server is shutting down or restarting: reconnect (to another node if there is one).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// A WebSocket protocol violation (unmasked client frame, bad opcode, bad fragmentation).
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// A text frame with invalid UTF-8.
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// Policy: more than a burst's worth of the connection's frames were refused by the rate
    /// limit within its window.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// A message larger than [`crate::limits::MAX_FRAME_BYTES`].
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// The server failed. Reserved: this version never sends it.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// The client read too slowly and its outbound queue filled: reconnect and sync.
    pub const SLOW_CONSUMER: CloseCode = CloseCode(4000);
    /// No frame (not even a pong) arrived within the idle timeout.
    pub const IDLE_TIMEOUT: CloseCode = CloseCode(4001);
    /// The token expired while the connection was open: reconnect with a fresh token.
    pub const TOKEN_EXPIRED: CloseCode = CloseCode(4002);
}
