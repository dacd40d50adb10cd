//! Envelopes between the gateway and the backend. They carry frames as opaque, already
//! validated bytes, so nothing is re-encoded on the way:
//!
//! * inbound (gateway to backend): what only the gateway may assert (the authenticated user,
//!   where the connection lives, when the frame arrived) and the client's frame verbatim;
//! * outbound (backend to gateway): the targets on one node and one server frame that every
//!   target receives as the same bytes.
//!
//! Each direction has two forms: one frame ([`Inbound`], [`Outbound`]), and a batch of them
//! ([`InboundBatch`], [`OutboundBatch`]) that travels as one broker message, so the broker's
//! cost (a message, a confirm, a queue entry, an ack) is paid per batch instead of per frame.
//! Receivers accept both forms: a gateway or backend of the previous release sends the single
//! form, and a rolling upgrade mixes them.
//!
//! Layout: one version byte that names the form, then an rkyv archive (same unaligned format
//! as the frames). The serialising side borrows the frame bytes, so building an envelope is
//! one copy.

use rkyv::with::InlineAsBox;

use crate::client::ClientFrameRef;
use crate::server::ServerFrameRef;
use crate::{UserId, WireError, codec};

/// Version byte of the single-frame form.
pub const ENVELOPE_VERSION: u8 = 1;

/// Version byte of the batch form.
pub const BATCH_ENVELOPE_VERSION: u8 = 2;

/// Largest envelope either side accepts: a maximal server frame plus a maximal target list.
pub const MAX_ENVELOPE_BYTES: usize = crate::limits::MAX_SERVER_FRAME_BYTES + 64 * 1024;

/// A client frame with what the gateway asserts about it.
#[derive(Debug, rkyv::Archive, rkyv::Serialize)]
#[rkyv(archived = ArchivedInbound)]
pub struct Inbound<'a> {
    /// The user the connection authenticated as (from the verified token, never the frame).
    pub user_id: UserId,
    /// The gateway node that holds the connection.
    pub node_id: u32,
    /// The core on that node.
    pub core: u16,
    /// The connection, unique on its node.
    pub connection_id: u64,
    /// When the gateway read the frame, microseconds since the Unix epoch.
    pub received_at_us: u64,
    /// The client's binary frame, byte for byte.
    #[rkyv(with = InlineAsBox)]
    pub frame: &'a [u8],
}

/// Who receives an outbound frame on the node the envelope is routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum Target {
    /// Every connection of this user on the node.
    User(UserId),
    /// One connection (the answer to a request made on it).
    Connection(u64),
    /// None of the list's user targets reaches this connection: a message goes to its
    /// sender's other sessions, not to the one that sent it.
    NotConnection(u64),
}

impl ArchivedTarget {
    /// The target as a native value; both variants are plain integers, so this cannot fail.
    pub fn to_native(&self) -> Target {
        match self {
            ArchivedTarget::User(user) => Target::User(user.to_native()),
            ArchivedTarget::Connection(id) => Target::Connection(id.to_native()),
            ArchivedTarget::NotConnection(id) => Target::NotConnection(id.to_native()),
        }
    }
}

/// One server frame for a list of targets on one node.
#[derive(Debug, rkyv::Archive, rkyv::Serialize)]
#[rkyv(archived = ArchivedOutbound)]
pub struct Outbound<'a> {
    /// Everyone on the node who receives the frame.
    #[rkyv(with = InlineAsBox)]
    pub targets: &'a [Target],
    /// The binary server frame, written to every target as these same bytes.
    #[rkyv(with = InlineAsBox)]
    pub frame: &'a [u8],
}

/// Client frames, in the order they were read, bound for one shard.
#[derive(Debug, rkyv::Archive, rkyv::Serialize)]
#[rkyv(archived = ArchivedInboundBatch)]
pub struct InboundBatch<'a> {
    /// The frames.
    #[rkyv(with = InlineAsBox)]
    pub items: &'a [Inbound<'a>],
}

/// Server frames, in the order they must be written, for one node.
#[derive(Debug, rkyv::Archive, rkyv::Serialize)]
#[rkyv(archived = ArchivedOutboundBatch)]
pub struct OutboundBatch<'a> {
    /// The frames with their targets.
    #[rkyv(with = InlineAsBox)]
    pub items: &'a [Outbound<'a>],
}

impl Inbound<'_> {
    /// The envelope's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode_envelope(ENVELOPE_VERSION, self)
    }
}

impl Outbound<'_> {
    /// The envelope's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode_envelope(ENVELOPE_VERSION, self)
    }
}

impl InboundBatch<'_> {
    /// The envelope's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode_envelope(BATCH_ENVELOPE_VERSION, self)
    }
}

impl OutboundBatch<'_> {
    /// The envelope's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode_envelope(BATCH_ENVELOPE_VERSION, self)
    }
}

/// The frames of an inbound envelope of either form, validated in place (the frames
/// inside are checked by [`InboundView::client_frame`]).
pub fn inbound_items(bytes: &[u8]) -> Result<&[InboundView], WireError> {
    match split_version(bytes)? {
        (ENVELOPE_VERSION, archive) => {
            Ok(std::slice::from_ref(codec::access::<InboundView>(archive)?))
        }
        (_, archive) => Ok(&codec::access::<ArchivedInboundBatch<'static>>(archive)?.items),
    }
}

/// The frames of an outbound envelope of either form, validated in place (the frames
/// inside are checked by [`OutboundView::server_frame`]).
pub fn outbound_items(bytes: &[u8]) -> Result<&[OutboundView], WireError> {
    match split_version(bytes)? {
        (ENVELOPE_VERSION, archive) => Ok(std::slice::from_ref(codec::access::<OutboundView>(
            archive,
        )?)),
        (_, archive) => Ok(&codec::access::<ArchivedOutboundBatch<'static>>(archive)?.items),
    }
}

/// A validated inbound envelope, read in place (the lifetime of the serialising side's
/// borrow means nothing in the archive).
pub type InboundView = ArchivedInbound<'static>;

/// A validated outbound envelope, read in place.
pub type OutboundView = ArchivedOutbound<'static>;

impl std::fmt::Debug for InboundView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("user_id", &self.user_id)
            .field("node_id", &self.node_id)
            .field("core", &self.core)
            .field("connection_id", &self.connection_id)
            .field("received_at_us", &self.received_at_us)
            .field("frame_len", &self.frame.len())
            .finish()
    }
}

impl std::fmt::Debug for OutboundView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("targets", &self.targets.len())
            .field("frame_len", &self.frame.len())
            .finish()
    }
}

impl InboundView {
    /// Validates an inbound envelope in place. The frame inside is checked by
    /// [`InboundView::client_frame`].
    pub fn access(bytes: &[u8]) -> Result<&InboundView, WireError> {
        match split_version(bytes)? {
            (ENVELOPE_VERSION, archive) => codec::access(archive),
            (version, _) => Err(WireError::UnsupportedVersion(version)),
        }
    }

    /// The client's frame, validated in place.
    pub fn client_frame(&self) -> Result<ClientFrameRef<'_>, WireError> {
        ClientFrameRef::access(&self.frame)
    }
}

impl OutboundView {
    /// Validates an outbound envelope in place. The frame inside is checked by
    /// [`OutboundView::server_frame`].
    pub fn access(bytes: &[u8]) -> Result<&OutboundView, WireError> {
        match split_version(bytes)? {
            (ENVELOPE_VERSION, archive) => codec::access(archive),
            (version, _) => Err(WireError::UnsupportedVersion(version)),
        }
    }

    /// The server frame, validated in place.
    pub fn server_frame(&self) -> Result<ServerFrameRef<'_>, WireError> {
        ServerFrameRef::access(&self.frame)
    }

    /// The raw frame bytes, to write to every target.
    pub fn frame_bytes(&self) -> &[u8] {
        &self.frame
    }
}

fn encode_envelope<T>(version: u8, value: &T) -> Result<Vec<u8>, WireError>
where
    T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                Vec<u8>,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::BoxedError,
            >,
        >,
{
    let out = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::BoxedError>(value, vec![version])
        .map_err(|e| WireError::Encode(e.to_string()))?;
    if out.len() > MAX_ENVELOPE_BYTES {
        return Err(WireError::TooLarge {
            size: out.len(),
            limit: MAX_ENVELOPE_BYTES,
        });
    }
    Ok(out)
}

/// The version byte (one this build reads) and the archive after it.
fn split_version(bytes: &[u8]) -> Result<(u8, &[u8]), WireError> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(WireError::TooLarge {
            size: bytes.len(),
            limit: MAX_ENVELOPE_BYTES,
        });
    }
    match bytes {
        [
            version @ (ENVELOPE_VERSION | BATCH_ENVELOPE_VERSION),
            archive @ ..,
        ] => Ok((*version, archive)),
        [version, ..] => Err(WireError::UnsupportedVersion(*version)),
        [] => Err(WireError::Truncated(0)),
    }
}
