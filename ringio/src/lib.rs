//! A per-core completion loop on io_uring, for servers that keep many mostly idle sockets:
//!
//! - one multishot accept on a `SO_REUSEPORT` listener (one listener and one loop per core);
//! - one multishot receive per connection, filling buffers from a provided-buffer ring that
//!   all connections share, so an idle connection holds no buffer and a read costs no
//!   system call of its own (the kernel completes it when data arrives);
//! - per connection, a queue of refcounted frames ([`Bytes`]) written with one vectored
//!   write per loop turn, at most one in flight, short writes resumed;
//! - connection state in a slab, found by the compact index each operation carries.
//!
//! The protocol lives behind [`Handler`]: it gets bytes and answers with frames to send and
//! connections to close, and never sees the ring. All `unsafe` is in the `ring` module.
//!
//! [`EventLoop::new`] fails with [`Error::Unsupported`] when the kernel lacks what the loop
//! needs, so a caller can fall back to a readiness (epoll) loop.

mod batch;
#[allow(unsafe_code)]
mod ring;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use bytes::Bytes;
use slab::Slab;
use socket2::{Domain, SockRef, Socket, Type};

pub use batch::MAX_FRAMES_PER_WRITE;
use ring::{Event, Ring, RingConfig};

/// Why a loop could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel lacks an io_uring feature the loop needs: use the epoll path instead.
    #[error("io_uring completion loop unsupported here: {0}")]
    Unsupported(String),
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// The listener could not be set up, or the ring failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// How long accepting pauses after a failed accept (out of descriptors, most likely)
/// instead of spinning on the same error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Buffers in the provided-buffer ring by default: enough that a turn with a completion
/// from each of a few thousand busy connections rarely finds the ring empty.
pub const DEFAULT_BUFFERS: u16 = 4096;
/// Bytes per buffer by default: a page.
pub const DEFAULT_BUFFER_SIZE: u32 = 4096;

/// Sizes and bounds of one loop.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; the listener sets `SO_REUSEPORT`, so one loop per core can bind
    /// the same address and the kernel spreads connections over them.
    pub listen: SocketAddr,
    /// Submission queue entries.
    pub ring_entries: u32,
    /// Buffers in the provided-buffer ring, a power of two at most 32,768: the most reads
    /// the kernel can complete between two loop turns. When they run out, receives pause
    /// until the loop hands buffers back, and resume at once.
    pub buffers: u16,
    /// Bytes per buffer: the most one completion delivers.
    pub buffer_size: u32,
    /// Connections held at once; more are accepted and closed at once.
    pub max_connections: usize,
    /// Unsent bytes queued to one connection; past this, it is closed as too slow.
    pub max_queued_bytes: usize,
}

impl Config {
    /// Defaults sized for a WebSocket gateway core: 4,096 buffers of 4 KiB (16 MiB), 20,000
    /// connections, 1 MiB queued per connection.
    pub fn new(listen: SocketAddr) -> Config {
        Config {
            listen,
            ring_entries: 4096,
            buffers: DEFAULT_BUFFERS,
            buffer_size: DEFAULT_BUFFER_SIZE,
            max_connections: 20_000,
            max_queued_bytes: 1 << 20,
        }
    }
}

/// A connection's id within its loop: an index into the loop's slab. It is valid from
/// [`Handler::on_open`] until [`Handler::on_close`]; after that the index may name a newer
/// connection, so a handler forgets it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u32);

impl ConnId {
    /// The id of slab index `index`, for driving a [`Handler`] without a loop (in tests).
    pub fn from_index(index: u32) -> ConnId {
        ConnId(index)
    }

    /// The slab index.
    pub fn index(self) -> u32 {
        self.0
    }
}

/// What a handler asks the loop to do: frames to queue and connections to close. Applied by
/// the loop after the callback returns, in order.
#[derive(Debug, Default)]
pub struct Outbox {
    sends: Vec<(ConnId, Bytes)>,
    closes: Vec<ConnId>,
}

impl Outbox {
    /// Queues `frame` to `to`; frames to a connection go out in the order queued.
    pub fn send(&mut self, to: ConnId, frame: Bytes) {
        self.sends.push((to, frame));
    }

    /// Closes `conn` once the frames queued to it so far have gone out; it reads no more.
    pub fn close(&mut self, conn: ConnId) {
        self.closes.push(conn);
    }

    /// The frames queued since the loop last applied the outbox.
    pub fn sends(&self) -> &[(ConnId, Bytes)] {
        &self.sends
    }

    /// The closes asked for since the loop last applied the outbox.
    pub fn closes(&self) -> &[ConnId] {
        &self.closes
    }
}

/// The protocol on top of the loop: plain callbacks, no I/O.
pub trait Handler {
    /// Per-connection state, kept in the loop's slab.
    type Session;

    /// A connection was accepted.
    fn on_open(&mut self, conn: ConnId) -> Self::Session;

    /// Bytes arrived on `conn`. `data` is a buffer of the shared ring, lent for this call
    /// only (a handler copies out what it must keep, such as an incomplete frame) and
    /// writable, so masked payloads can be unmasked in place.
    fn on_data(
        &mut self,
        conn: ConnId,
        session: &mut Self::Session,
        data: &mut [u8],
        out: &mut Outbox,
    );

    /// `conn` is closing (the peer closed, an error, a close the handler asked for, or a
    /// full send queue); frames sent to it from here on are dropped.
    fn on_close(&mut self, conn: ConnId, session: &mut Self::Session);
}

/// One connection's I/O state beside the handler's session.
struct Conn<S> {
    socket: OwnedFd,
    session: S,
    /// Frames not yet handed to a write.
    queue: VecDeque<Bytes>,
    /// Bytes in `queue`, bounded by [`Config::max_queued_bytes`].
    queued_bytes: usize,
    /// The write in flight, if any.
    writing: Option<u32>,
    recv_armed: bool,
    /// Close once the queue is written (the handler asked for it).
    draining: bool,
    /// The handler has been told; the slot goes once no operation is in flight.
    closing: bool,
    /// In the loop's list of connections to write to this turn.
    listed_for_write: bool,
}

/// One core's loop: a ring, a listener, the connections and their handler.
pub struct EventLoop<H: Handler> {
    ring: Ring,
    listener: Socket,
    config: Config,
    conns: Slab<Conn<H::Session>>,
    handler: H,
    outbox: Outbox,
    events: Vec<Event>,
    /// Connections with frames queued and maybe no write in flight.
    to_write: Vec<u32>,
    /// Connections whose multishot receive ended and must be armed again.
    to_rearm: Vec<u32>,
    accept_armed: bool,
    backing_off: bool,
    /// Connections refused because `max_connections` were open.
    refused: u64,
    /// Receives that ended because the buffer ring was empty (`ENOBUFS`).
    buffer_ring_dry: u64,
}

impl<H: Handler> EventLoop<H> {
    /// Builds the ring (checking the kernel supports it), binds the listener and arms the
    /// first accept.
    pub fn new(config: Config, handler: H) -> Result<EventLoop<H>, Error> {
        if config.max_connections > u32::MAX as usize {
            return Err(Error::Config("max_connections must fit in 32 bits"));
        }
        let mut ring = Ring::new(RingConfig {
            entries: config.ring_entries,
            buffers: config.buffers,
            buffer_size: config.buffer_size,
        })?;
        let listener = Socket::new(Domain::for_address(config.listen), Type::STREAM, None)?;
        listener.set_reuse_address(true)?;
        listener.set_reuse_port(true)?;
        listener.bind(&config.listen.into())?;
        listener.listen(4096)?;
        ring.arm_accept(listener.as_raw_fd())?;
        Ok(EventLoop {
            ring,
            listener,
            config,
            conns: Slab::new(),
            handler,
            outbox: Outbox::default(),
            events: Vec::new(),
            to_write: Vec::new(),
            to_rearm: Vec::new(),
            accept_armed: true,
            backing_off: false,
            refused: 0,
            buffer_ring_dry: 0,
        })
    }

    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("the listener has no IP address"))
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Connections open or closing.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Connections refused so far because `max_connections` were open.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Receives so far that found the buffer ring empty and were re-armed once buffers
    /// came back. Many mean `Config::buffers` is small for the load.
    pub fn buffer_ring_dry(&self) -> u64 {
        self.buffer_ring_dry
    }

    /// Writes so far that the kernel completed short and that went on from where they
    /// stopped.
    pub fn short_writes(&self) -> u64 {
        self.ring.short_writes()
    }

    /// Runs turns until an error.
    pub fn run(&mut self) -> io::Result<()> {
        loop {
            self.turn(None)?;
        }
    }

    /// One turn: submits what the last turn queued, waits for a completion (or `timeout`),
    /// handles every completion, then queues this turn's writes and re-arms.
    pub fn turn(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.ring.submit_and_wait(timeout)?;
        let mut events = std::mem::take(&mut self.events);
        let conns = &self.conns;
        // A short write goes on only while its connection is open: a closing one must not
        // keep a write to a peer that stopped reading in flight, or its slot never frees.
        self.ring.reap(&mut events, |conn| {
            conns
                .get(conn as usize)
                .filter(|conn| !conn.closing)
                .map(|conn| conn.socket.as_raw_fd())
        });
        for event in events.drain(..) {
            self.handle(event)?;
        }
        self.events = events;
        self.end_turn()
    }

    fn handle(&mut self, event: Event) -> io::Result<()> {
        match event {
            Event::Accepted { result, more } => {
                self.accept_armed = more;
                match result {
                    Ok(socket) => self.open(socket),
                    Err(_) => {
                        // Out of descriptors, most likely: pause instead of spinning. The
                        // pending clients wait in the backlog meanwhile.
                        if !self.backing_off && !more {
                            self.backing_off = true;
                            self.ring.arm_backoff(ACCEPT_BACKOFF)?;
                        }
                    }
                }
            }
            Event::BackoffOver => self.backing_off = false,
            Event::Received { conn, result, more } => {
                let Some(state) = self.conns.get_mut(conn as usize) else {
                    if let Ok(Some(buffer)) = result {
                        self.ring.recycle(buffer);
                    }
                    return Ok(());
                };
                state.recv_armed = more;
                match result {
                    Ok(Some(buffer)) => {
                        if !state.closing && !state.draining {
                            let data = self.ring.bytes(&buffer);
                            self.handler.on_data(
                                ConnId(conn),
                                &mut state.session,
                                data,
                                &mut self.outbox,
                            );
                        }
                        self.ring.recycle(buffer);
                        self.apply_outbox()?;
                        if !more {
                            self.to_rearm.push(conn);
                        }
                    }
                    // The ring ran dry: this turn gives buffers back, then it is re-armed.
                    Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                        self.buffer_ring_dry += 1;
                        self.to_rearm.push(conn);
                    }
                    Ok(None) | Err(_) => self.close(conn)?,
                }
                self.free_if_done(conn);
            }
            Event::Wrote { conn, result } => {
                let Some(state) = self.conns.get_mut(conn as usize) else {
                    return Ok(());
                };
                state.writing = None;
                match result {
                    Ok(()) if !state.queue.is_empty() => self.list_for_write(conn),
                    Ok(()) if state.draining => self.close(conn)?,
                    Ok(()) => {}
                    Err(_) => self.close(conn)?,
                }
                self.free_if_done(conn);
            }
        }
        Ok(())
    }

    fn open(&mut self, socket: OwnedFd) {
        if self.conns.len() >= self.config.max_connections {
            // Dropping the descriptor closes it: the client sees the connection end.
            self.refused += 1;
            return;
        }
        // Small frames go out at once instead of waiting for the previous segment's ACK.
        let _ = SockRef::from(&socket).set_tcp_nodelay(true);
        let entry = self.conns.vacant_entry();
        let conn = ConnId(entry.key() as u32);
        let session = self.handler.on_open(conn);
        entry.insert(Conn {
            socket,
            session,
            queue: VecDeque::new(),
            queued_bytes: 0,
            writing: None,
            recv_armed: false,
            draining: false,
            closing: false,
            listed_for_write: false,
        });
        self.to_rearm.push(conn.0);
    }

    /// Moves the handler's sends into the connections' queues and starts its closes.
    fn apply_outbox(&mut self) -> io::Result<()> {
        let mut sends = std::mem::take(&mut self.outbox.sends);
        for (to, frame) in sends.drain(..) {
            let Some(state) = self.conns.get_mut(to.0 as usize) else {
                continue;
            };
            if state.closing || state.draining {
                continue;
            }
            state.queued_bytes += frame.len();
            state.queue.push_back(frame);
            if state.queued_bytes > self.config.max_queued_bytes {
                // Too slow a reader: what it has not taken is dropped with it.
                self.close(to.0)?;
            } else {
                self.list_for_write(to.0);
            }
        }
        self.outbox.sends = sends;
        let mut closes = std::mem::take(&mut self.outbox.closes);
        for conn in closes.drain(..) {
            let Some(state) = self.conns.get_mut(conn.0 as usize) else {
                continue;
            };
            state.draining = true;
            if state.writing.is_none() && state.queue.is_empty() {
                self.close(conn.0)?;
            }
        }
        self.outbox.closes = closes;
        Ok(())
    }

    fn list_for_write(&mut self, conn: u32) {
        if let Some(state) = self.conns.get_mut(conn as usize)
            && !state.listed_for_write
        {
            state.listed_for_write = true;
            self.to_write.push(conn);
        }
    }

    /// Tells the handler, drops the queue and cancels what is in flight; the slot goes when
    /// the last operation completes ([`Self::free_if_done`]).
    fn close(&mut self, conn: u32) -> io::Result<()> {
        let Some(state) = self.conns.get_mut(conn as usize) else {
            return Ok(());
        };
        if state.closing {
            return Ok(());
        }
        state.closing = true;
        state.queue = VecDeque::new();
        state.queued_bytes = 0;
        self.handler.on_close(ConnId(conn), &mut state.session);
        if state.recv_armed {
            self.ring.cancel_recv(conn)?;
        }
        if let Some(write) = state.writing {
            self.ring.cancel_write(write)?;
        }
        Ok(())
    }

    fn free_if_done(&mut self, conn: u32) {
        if let Some(state) = self.conns.get(conn as usize)
            && state.closing
            && !state.recv_armed
            && state.writing.is_none()
        {
            // Dropping the socket closes it.
            self.conns.remove(conn as usize);
        }
    }

    /// Queues this turn's writes (one per connection) and re-arms receives and the accept.
    fn end_turn(&mut self) -> io::Result<()> {
        let mut to_write = std::mem::take(&mut self.to_write);
        for conn in to_write.drain(..) {
            let Some(state) = self.conns.get_mut(conn as usize) else {
                continue;
            };
            state.listed_for_write = false;
            if state.closing || state.writing.is_some() || state.queue.is_empty() {
                continue;
            }
            let fd = state.socket.as_raw_fd();
            let write = self.ring.write(conn, fd, &mut state.queue)?;
            state.writing = Some(write);
            state.queued_bytes = state.queue.iter().map(Bytes::len).sum();
            if state.queue.capacity() > 2 * MAX_FRAMES_PER_WRITE && state.queue.is_empty() {
                // A burst grew the queue: an idle connection should not keep that.
                state.queue = VecDeque::new();
            }
        }
        self.to_write = to_write;
        let mut to_rearm = std::mem::take(&mut self.to_rearm);
        for conn in to_rearm.drain(..) {
            let Some(state) = self.conns.get_mut(conn as usize) else {
                continue;
            };
            if state.closing || state.recv_armed {
                continue;
            }
            state.recv_armed = true;
            let fd = state.socket.as_raw_fd();
            self.ring.arm_recv(conn, fd)?;
        }
        self.to_rearm = to_rearm;
        if !self.accept_armed && !self.backing_off {
            self.accept_armed = true;
            self.ring.arm_accept(self.listener.as_raw_fd())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_costs_the_loop_a_few_dozen_bytes() {
        // The loop's own part of a slot, beside the handler's session: no buffer, no
        // allocation while idle (an empty VecDeque allocates nothing).
        let size = size_of::<Conn<()>>();
        assert!(size <= 56, "Conn<()> grew to {size} bytes");
    }
}
