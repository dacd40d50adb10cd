//! The AMQP side of the edge: the topology that gateway nodes and backend workers share,
//! how frames are sharded over the inbound queues, how to connect, and how to publish in
//! order without a loop turn per message.
//!
//! Both sides declare the whole topology they touch at start, with the same arguments from
//! this crate, so whichever starts first creates it and the other's declarations are no-ops
//! (RabbitMQ refuses a redeclaration whose arguments differ). `README.md` beside this crate
//! draws the topology and explains each argument.

mod connect;
mod error;
mod publish;
mod shard;
mod topology;

pub use connect::{DEFAULT_CONNECTION_TIMEOUT_MS, DEFAULT_HEARTBEAT_SECS, connect};
pub use error::BrokerError;
pub use publish::{QueuedPublish, queue_publish};
pub use shard::shard_of;
pub use topology::{
    DEAD_LETTER_MAX_BYTES, DEAD_LETTER_MAX_LENGTH, DEAD_LETTER_TTL_MS, DELIVERY_LIMIT,
    INBOUND_MAX_LENGTH, NODE_MAX_BYTES, NODE_MAX_LENGTH, NODE_MESSAGE_TTL_MS,
    NODE_QUEUE_EXPIRES_MS, Topology,
};

/// The message header that marks an outbound delivery the backend sent again because it
/// could not prove the first send reached the broker (see the backend's README). Gateways
/// may ignore it; tests use it to tell a legitimate republish from a bug.
pub const REPUBLISH_HEADER: &str = "x-edge-republish";

/// Header of a frame the backend dead-lettered because the database refused it: the
/// database's reason.
pub const DEAD_LETTER_REASON_HEADER: &str = "x-edge-refused";
