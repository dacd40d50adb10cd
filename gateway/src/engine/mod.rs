//! What happens to a validated client frame. Every engine is sharded per core: each core
//! runs its own instance, and instances talk only through core mailboxes.

pub mod amqp;
pub mod memory;

use std::time::Instant;

use wire::ClientFrameRef;

use crate::core::Core;
use crate::router::Origin;

/// A message between the shards of an engine on different cores.
#[derive(Debug)]
pub enum EngineMsg {
    /// The memory engine's traffic.
    Memory(memory::Msg),
}

/// One core's shard of an engine.
pub trait Engine {
    /// A session opened on this core.
    fn connected(&mut self, core: &Core, origin: Origin);

    /// A session on this core closed.
    fn disconnected(&mut self, core: &Core, origin: Origin);

    /// A validated frame from a session on this core. `raw` is the frame's binary form.
    fn client_frame(
        &mut self,
        core: &Core,
        origin: Origin,
        frame: ClientFrameRef<'_>,
        raw: &[u8],
        received_at: Instant,
    );

    /// A message from another core's shard.
    fn message(&mut self, core: &Core, msg: EngineMsg);

    /// Called every millisecond while [`Engine::wants_tick`] says so, for work on a timer
    /// (flushing coalesced acks).
    fn tick(&mut self, _core: &Core) {}

    /// Whether work waits for [`Engine::tick`]; an engine that starts such work calls
    /// [`Core::need_timer`].
    fn wants_tick(&self) -> bool {
        false
    }
}
