//! The wire protocol of the edge gateway: frame types, their binary (rkyv) and text (JSON)
//! codecs, the envelopes between gateway and backend, and the protocol's limits. No I/O.
//!
//! A binary frame is a two-byte header (version, kind) followed by an rkyv archive, read
//! in place after validation: see [`codec`]. A text frame is the same message as a JSON
//! object tagged by `type`. `PROTOCOL.md` beside this crate is the client developer's
//! reference.

pub mod client;
pub mod codec;
pub mod entries;
pub mod envelope;
mod error;
pub mod limits;
pub mod server;

pub use client::{ClientFrame, ClientFrameRef, ClientKind, Refusal};
pub use error::{CloseCode, ErrorCode, WireError};
pub use server::{ServerFrame, ServerFrameRef, ServerKind};

/// The protocol version this build speaks, the first byte of every binary frame.
pub const PROTOCOL_VERSION: u8 = 1;

/// A user, as the `sub` claim of the user's token names it (a decimal u64).
pub type UserId = u64;
/// A chat, assigned by the server.
pub type ChatId = u64;
/// A message's place in its chat: gap-free, starting at 1.
pub type Seq = u64;
/// Chosen by the client, unique per sender; it makes resends idempotent.
pub type ClientMsgId = u64;

/// Declares a frame body with the derives every body shares: rkyv (validated archive),
/// serde (JSON) and, for property tests, proptest's `Arbitrary`.
#[macro_export]
#[doc(hidden)]
macro_rules! wire_struct {
    ($(#[$meta:meta])* pub struct $Name:ident { $($body:tt)* }) => {
        #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize, serde::Deserialize)]
        #[cfg_attr(any(test, feature = "arbitrary"), derive(proptest_derive::Arbitrary))]
        // After the derives, so that a body's own attributes may be their helpers.
        $(#[$meta])*
        #[rkyv(derive(Debug))]
        #[allow(missing_docs)]
        pub struct $Name { $($body)* }
    };
}

/// Direct chats have exactly two members; group chats up to
/// [`limits::MAX_MEMBERS_PER_CHAT`]. A group is invite-only (members add members) unless it
/// was created public, which anyone may also join.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(proptest_derive::Arbitrary))]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[serde(rename_all = "snake_case")]
pub enum ChatKind {
    /// Two members.
    Direct,
    /// Any number of members up to the limit; invite-only.
    Group,
    /// A group that anyone may join as well.
    PublicGroup,
}

/// What a receipt reports.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(proptest_derive::Arbitrary))]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// The server stored the message and gave it `seq`.
    Sent,
    /// The member's device received everything up to `seq`.
    Delivered,
    /// The member read everything up to `seq`.
    Read,
}

/// What a chat entry (a `message` frame) is: a message, or an event about the earlier
/// message at its `target_seq`. Every entry takes the chat's next seq, so a client detects
/// a missed edit the way it detects a missed message.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(proptest_derive::Arbitrary))]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A message; `target_seq` is 0.
    #[default]
    Message,
    /// The sender replaced the target's body with `body`.
    Edit,
    /// The sender deleted the target; `body` is empty.
    Delete,
    /// The sender reacted to the target with the emoji in `body`.
    React,
    /// The sender took back its reaction `body` to the target.
    Unreact,
}

impl EntryKind {
    /// Whether this is a plain message (JSON leaves `kind` out then).
    pub fn is_message(&self) -> bool {
        *self == EntryKind::Message
    }
}
