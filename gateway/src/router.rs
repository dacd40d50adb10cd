//! Cross-core messaging: one bounded mailbox per core, a lock-free queue with an explicit
//! wake-up. Cores share nothing mutable; everything that crosses a core is a message here.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Instant;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use wire::envelope::Target;
use wire::{ServerFrameRef, UserId, WireError};

use crate::engine::EngineMsg;

/// One server frame on its way to many sessions: the complete WebSocket frame is built once
/// and every recipient writes the same refcounted bytes. The JSON text form is built on the
/// first text recipient, once.
#[derive(Debug)]
pub struct Delivery {
    binary: Bytes,
    /// Where the server frame starts inside `binary`, after the WebSocket header.
    payload_offset: usize,
    json: OnceLock<Bytes>,
    kind: u8,
    /// When the frame that caused this delivery was read (for the latency histogram).
    pub received_at: Instant,
}

impl Delivery {
    /// Wraps a binary server frame after validating it.
    pub fn new(frame: &[u8], received_at: Instant) -> Result<Arc<Delivery>, WireError> {
        let kind = ServerFrameRef::access(frame)?.kind() as u8;
        let binary = ws_frame(wsproto::OpCode::Binary, frame);
        let payload_offset = binary.len() - frame.len();
        Ok(Arc::new(Delivery {
            binary,
            payload_offset,
            json: OnceLock::new(),
            kind,
            received_at,
        }))
    }

    /// Length of the complete binary WebSocket frame.
    pub fn binary_len(&self) -> usize {
        self.binary.len()
    }

    /// The kind byte of the server frame.
    pub fn kind(&self) -> u8 {
        self.kind
    }

    /// The complete WebSocket frame for a binary or a text session.
    pub fn frame(&self, text: bool) -> Bytes {
        if !text {
            return self.binary.clone();
        }
        self.json
            .get_or_init(|| {
                let payload = &self.binary[self.payload_offset..];
                // Validated in `new`, so conversion cannot fail; an empty object keeps the
                // session alive should it ever.
                let json =
                    wire::server::binary_to_json(payload).unwrap_or_else(|_| "{}".to_owned());
                ws_frame(wsproto::OpCode::Text, json.as_bytes())
            })
            .clone()
    }
}

/// Builds one complete server-role WebSocket frame in a single buffer.
pub fn ws_frame(opcode: wsproto::OpCode, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 10);
    wsproto::encode_frame(wsproto::Role::Server, opcode, true, payload, &mut out);
    Bytes::from(out)
}

/// Who sent a frame, as the gateway asserts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// From the verified token.
    pub user_id: UserId,
    /// The connection, whose high bits name its core.
    pub connection_id: u64,
}

/// A message from one core to another.
#[derive(Debug)]
pub enum CoreMsg {
    /// Write `delivery` to every local session of the targets.
    Deliver {
        /// Users or connections.
        targets: Arc<[Target]>,
        /// Who among the targets does not receive it.
        except: Option<Skip>,
        /// The frame.
        delivery: Arc<Delivery>,
    },
    /// Work for this core's engine shard.
    Engine(EngineMsg),
    /// Stop accepting and close every session with 1001.
    Shutdown,
}

impl CoreMsg {
    /// The bytes of frames this message keeps alive until its core handles it.
    pub fn pinned_bytes(&self) -> usize {
        match self {
            CoreMsg::Deliver { delivery, .. } => delivery.binary_len(),
            CoreMsg::Engine(_) | CoreMsg::Shutdown => 0,
        }
    }
}

/// One core's inbox: bounded in messages, and it counts the bytes of the deliveries in it,
/// which the broker bridge keeps bounded too.
#[derive(Debug)]
pub struct Mailbox {
    queue: ArrayQueue<CoreMsg>,
    waker: AtomicWaker,
    delivery_bytes: AtomicUsize,
}

impl Mailbox {
    /// A mailbox holding up to `capacity` messages.
    pub fn new(capacity: usize) -> Mailbox {
        Mailbox {
            queue: ArrayQueue::new(capacity),
            waker: AtomicWaker::new(),
            delivery_bytes: AtomicUsize::new(0),
        }
    }

    /// Queues a message and wakes the owning core; a full mailbox hands the message back.
    pub fn push(&self, msg: CoreMsg) -> Result<(), CoreMsg> {
        let bytes = msg.pinned_bytes();
        // Counted before the push, so the core's count after its pop never goes below zero.
        self.delivery_bytes.fetch_add(bytes, Relaxed);
        if let Err(msg) = self.queue.push(msg) {
            self.delivery_bytes.fetch_sub(bytes, Relaxed);
            return Err(msg);
        }
        self.waker.wake();
        Ok(())
    }

    /// The next message, or `Pending` with the core's waker registered.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<CoreMsg> {
        if let Some(msg) = self.pop() {
            return Poll::Ready(msg);
        }
        self.waker.register(cx.waker());
        // A push between the first pop and the registration would otherwise sleep unseen.
        match self.pop() {
            Some(msg) => Poll::Ready(msg),
            None => Poll::Pending,
        }
    }

    fn pop(&self) -> Option<CoreMsg> {
        let msg = self.queue.pop()?;
        self.delivery_bytes.fetch_sub(msg.pinned_bytes(), Relaxed);
        Some(msg)
    }

    /// Bytes of the deliveries waiting in the mailbox.
    pub fn delivery_bytes(&self) -> usize {
        self.delivery_bytes.load(Relaxed)
    }
}

/// Bits of a connection id below its core number. The id stays under 2^53 so that
/// JavaScript clients, which read JSON numbers as doubles, see it exactly.
const CONNECTION_SEQ_BITS: u32 = 45;

/// The low bits of a connection id: the session's place in its core's registry, so that
/// finding it takes no table of its own. Above them, a count of the core's connections
/// (23 bits), which keeps an id from coming back until eight million more connections have
/// opened on its core.
const CONNECTION_INDEX_BITS: u32 = 22;

/// Most sessions one core holds: one per place in its registry. Far past what descriptors
/// allow in practice (every session holds a socket; a process may open 1,048,576 by default).
pub const MAX_SESSIONS_PER_CORE: usize = 1 << CONNECTION_INDEX_BITS;

/// Who among a delivery's targets does not receive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The user (the typist of a typing event).
    User(UserId),
    /// One connection of the targeted users (the session that sent a message, which has
    /// its sent receipt, while the sender's other sessions get the message).
    Connection(u64),
}

/// Connection ids carry their core above the low 45 bits, so any core can route to one.
pub fn connection_core(connection_id: u64) -> usize {
    (connection_id >> CONNECTION_SEQ_BITS) as usize
}

/// Whether `core` may hold any of `targets`: a user's sessions may be on any core, a
/// connection only on the core its id names.
pub fn core_holds_any(targets: &[Target], core: usize) -> bool {
    targets.iter().any(|t| match *t {
        Target::User(_) => true,
        Target::Connection(id) => connection_core(id) == core,
        Target::NotConnection(_) => false,
    })
}

/// The id of the `n`th connection of `core` (cores up to 255), at place `index` of its
/// registry (below [`MAX_SESSIONS_PER_CORE`]).
pub fn connection_id(core: usize, n: u64, index: usize) -> u64 {
    debug_assert!(index < MAX_SESSIONS_PER_CORE);
    let count = n & ((1 << (CONNECTION_SEQ_BITS - CONNECTION_INDEX_BITS)) - 1);
    ((core as u64 & 0xff) << CONNECTION_SEQ_BITS)
        | (count << CONNECTION_INDEX_BITS)
        | (index as u64 & (MAX_SESSIONS_PER_CORE as u64 - 1))
}

/// The place in its core's registry that a connection id names.
pub fn connection_index(connection_id: u64) -> usize {
    (connection_id & (MAX_SESSIONS_PER_CORE as u64 - 1)) as usize
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    #[test]
    fn a_mailbox_counts_the_bytes_of_the_deliveries_in_it() {
        let mailbox = Mailbox::new(1);
        let frame = wire::ServerFrame::Pong(wire::server::Pong {
            nonce: 1,
            server_time_us: 2,
        })
        .encode()
        .expect("encodes");
        let delivery = Delivery::new(&frame, Instant::now()).expect("valid");
        let deliver = || CoreMsg::Deliver {
            targets: Arc::from([Target::User(1)]),
            except: None,
            delivery: delivery.clone(),
        };
        mailbox.push(deliver()).expect("room");
        assert_eq!(mailbox.delivery_bytes(), delivery.binary_len());
        assert!(mailbox.push(deliver()).is_err(), "full");
        assert_eq!(mailbox.delivery_bytes(), delivery.binary_len());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(mailbox.poll_recv(&mut cx).is_ready());
        assert_eq!(mailbox.delivery_bytes(), 0);
    }
}
