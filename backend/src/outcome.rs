//! What handling a batch produces: server frames and who receives them, before anyone's
//! nodes are known.

use wire::{ClientMsgId, ServerFrame, UserId};

/// A frame to send, or one that still needs the registry to be filled in.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Body {
    /// A complete server frame.
    Frame(ServerFrame),
    /// A presence answer: online state and last-seen times come from the registry lookup,
    /// for the users the asker may see (the flag); the others are answered as never seen.
    Presence {
        client_msg_id: ClientMsgId,
        users: Vec<(UserId, bool)>,
    },
}

/// Who receives a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Recipients {
    /// Every connection of each user, on every node where the user is online.
    Users(Vec<UserId>),
    /// One connection: the answer to a request made on it.
    Connection { node_id: u32, connection_id: u64 },
    /// Every connection of each user but one: a user's own entry or read watermark goes to
    /// the user's other sessions, not to the session that sent it.
    UsersBut {
        users: Vec<UserId>,
        node_id: u32,
        connection_id: u64,
    },
}

/// One body for its recipients.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Output {
    pub body: Body,
    pub to: Recipients,
    /// Sent again for a message stored earlier whose first publish was never confirmed.
    pub republish: bool,
}

impl Output {
    pub(crate) fn new(frame: ServerFrame, to: Recipients) -> Output {
        Output {
            body: Body::Frame(frame),
            to,
            republish: false,
        }
    }
}

/// Everything a committed batch must still do, and what it counted.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// In the order of the frames that caused them (per chat, seq order).
    pub outputs: Vec<Output>,
    /// Messages stored by this batch.
    pub stored: u64,
    /// Sends that were already stored and only got their sent receipt again.
    pub duplicates: u64,
    /// Stored messages found unpublished and published again.
    pub republished: u64,
    /// Requests answered with an error frame.
    pub refused: u64,
}

impl Outcome {
    /// Appends another outcome (of a later part of the same batch).
    pub(crate) fn merge(&mut self, other: Outcome) {
        self.outputs.extend(other.outputs);
        self.stored += other.stored;
        self.duplicates += other.duplicates;
        self.republished += other.republished;
        self.refused += other.refused;
    }
}
