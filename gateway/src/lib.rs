//! The edge gateway: a thread-per-core WebSocket server on io_uring.
//!
//! Each core runs a pinned loop with its own SO_REUSEPORT listener ([`node`], [`core`]): the
//! io_uring completion loop ([`completion`], on `ringio`), or monoio's readiness-driven
//! tasks ([`connection`]) where the kernel refuses it. A connection is upgraded
//! ([`handshake`] on top of [`wsproto::handshake`], [`auth`]), framed by a sans-IO codec
//! ([`wsproto`]) and served by the same protocol state on either driver ([`open_session`],
//! [`session`]); an idle one holds no buffer. Frames go to an [`engine`] shard; deliveries reach
//! sessions through per-session queues ([`outbox`]) and, across cores, through mailboxes
//! ([`router`]).

pub mod admin;
pub mod affinity;
pub mod auth;
pub mod bridge;
pub mod clock;
pub mod completion;
pub mod config;
pub mod connection;
pub mod core;
pub mod descriptors;
pub mod engine;
pub mod handshake;
pub mod health;
pub mod ip_limit;
pub mod lifecycle;
pub mod metrics;
pub mod node;
pub mod open_session;
pub mod outbox;
pub mod router;
pub mod session;
pub mod session_wakers;
pub mod shared_map;
pub mod tls;
pub mod user_limit;

pub use config::Config;
pub use node::Gateway;
