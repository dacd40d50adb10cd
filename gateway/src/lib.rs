//! The edge gateway: a thread-per-core WebSocket server on io_uring.

pub mod auth;
pub mod handshake;
pub mod ws;
