//! A per-core completion loop on io_uring, for servers that keep many mostly idle sockets:
//!
//! - one multishot accept per listener: a `SO_REUSEPORT` listener the loop binds
//!   ([`EventLoop::new`]), or listeners the caller bound or was passed by systemd
//!   ([`EventLoop::with_listeners`]); [`EventLoop::stop_accepting`] ends them;
//! - one multishot receive per connection, filling buffers from a provided-buffer ring that
//!   all connections share, so an idle connection holds no buffer and a read costs no
//!   system call of its own (the kernel completes it when data arrives); a handler can
//!   pause and resume it per connection ([`Outbox::pause_reading`]);
//! - per connection, a queue of refcounted frames ([`Bytes`]) written with one vectored
//!   write per loop turn, at most one in flight, short writes resumed, and
//!   [`Handler::on_sent`] once the queue is empty, so a handler can feed it a batch at a time;
//! - connection state in a slab, found by the compact index each operation carries;
//! - wake-ups: a per-connection [`Waker`] for code on the loop's own thread
//!   ([`EventLoop::conn_waker`], [`conn_waker`]) that makes the loop call
//!   [`Handler::on_wake`], and one for other threads ([`EventLoop::waker`]) that ends the
//!   loop's wait so its owner can look at what those threads sent.
//!
//! The protocol lives behind [`Handler`]: it gets bytes and answers with frames to send and
//! connections to close, and never sees the ring. All `unsafe` is in the `ring` module, but
//! for building the per-connection wakers in `wake`.
//!
//! [`EventLoop::new`] fails with [`Error::Unsupported`] when the kernel lacks what the loop
//! needs, so a caller can fall back to a readiness (epoll) loop.

mod batch;
mod notify;
mod posting;
#[allow(unsafe_code)]
mod ring;
#[allow(unsafe_code)]
mod wake;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;
use socket2::{Domain, SockRef, Socket, Type};

pub use batch::MAX_FRAMES_PER_WRITE;
use notify::Notifier;
use ring::{Buffer, Event, Ring, RingConfig, WriteId};
use wake::Registration;

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

/// How often the buffers the kernel holds are fitted to the load, and idle ones' memory is
/// given back ([`posting`]).
const BUFFER_FIT_INTERVAL: Duration = Duration::from_secs(1);

/// Buffers in the provided-buffer ring by default: enough that a turn with a completion
/// from each of a few thousand busy connections rarely finds the ring empty.
pub const DEFAULT_BUFFERS: u16 = 4096;
/// Bytes per buffer by default: a page.
pub const DEFAULT_BUFFER_SIZE: u32 = 4096;

/// Sizes and bounds of one loop.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address [`EventLoop::new`] listens on; the listener sets `SO_REUSEPORT`, so one loop
    /// per core can bind the same address and the kernel spreads connections over them.
    /// [`EventLoop::with_listeners`] ignores it.
    pub listen: SocketAddr,
    /// Submission queue entries.
    pub ring_entries: u32,
    /// Buffers in the provided-buffer ring, a power of two at most 32,768: the most reads
    /// the kernel can complete between two loop turns. The kernel holds only as many as
    /// recent turns needed (at least 32), so memory follows the load up to this bound; when
    /// they run out, receives pause until the loop hands buffers back, and resume at once.
    pub buffers: u16,
    /// Bytes per buffer: the most one completion delivers.
    pub buffer_size: u32,
    /// Connections held at once; more are accepted and closed at once.
    pub max_connections: usize,
    /// Unsent bytes queued to one connection; past this, it is closed as too slow.
    pub max_queued_bytes: usize,
    /// Whether each listener keeps one multishot accept armed (the default), or one accept
    /// at a time. A listening socket that several loops share (sockets passed by systemd)
    /// needs one at a time: the kernel wakes the accept that waited longest, and a
    /// multishot accept never stops waiting, so one loop would take every connection. One
    /// at a time, each loop's next accept queues behind the others'.
    pub accept_multishot: bool,
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
            accept_multishot: true,
        }
    }
}

/// Wakes the connections of one loop, as their [`Waker`]s do, from code on the loop's thread
/// (elsewhere it does nothing): one word for all of them ([`EventLoop::conn_wakes`]).
#[derive(Debug, Clone, Copy)]
pub struct ConnWakes {
    loop_id: u32,
}

impl ConnWakes {
    /// Makes the loop's next turn call [`Handler::on_wake`] for `conn`.
    pub fn wake(self, conn: ConnId) {
        wake::wake(self.loop_id, conn.0);
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

/// A change to whether a connection's bytes reach [`Handler::on_data`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// See [`Outbox::pause_reading`].
    Paused,
    /// See [`Outbox::resume_reading`].
    Resumed,
}

/// What a handler asks the loop to do: frames to queue, connections to close or abort,
/// reading to pause or resume. Applied by the loop after the callback returns: sends, then
/// closes, then aborts, then reading changes, each in the order asked.
#[derive(Debug, Default)]
pub struct Outbox {
    sends: Vec<(ConnId, Bytes)>,
    closes: Vec<ConnId>,
    aborts: Vec<ConnId>,
    reading: Vec<(ConnId, Reading)>,
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

    /// Closes `conn` now: the frames queued to it and the write in flight are dropped. For a
    /// peer that stopped reading, whose queued frames would never go out.
    pub fn abort(&mut self, conn: ConnId) {
        self.aborts.push(conn);
    }

    /// Stops handing `conn`'s bytes to [`Handler::on_data`] until
    /// [`Outbox::resume_reading`]: the loop cancels its receive, so the kernel's socket
    /// buffer fills and TCP slows the peer down. What the kernel had already received is
    /// held, in order, with an end of stream or error that arrives meanwhile, and handed
    /// over after the resume (or dropped if the connection closes first).
    pub fn pause_reading(&mut self, conn: ConnId) {
        self.reading.push((conn, Reading::Paused));
    }

    /// Undoes [`Outbox::pause_reading`]: the held bytes go to [`Handler::on_data`] in this
    /// turn, then the receive is armed again.
    pub fn resume_reading(&mut self, conn: ConnId) {
        self.reading.push((conn, Reading::Resumed));
    }

    /// The frames queued since the loop last applied the outbox.
    pub fn sends(&self) -> &[(ConnId, Bytes)] {
        &self.sends
    }

    /// The closes asked for since the loop last applied the outbox.
    pub fn closes(&self) -> &[ConnId] {
        &self.closes
    }

    /// The aborts asked for since the loop last applied the outbox.
    pub fn aborts(&self) -> &[ConnId] {
        &self.aborts
    }

    /// The reading changes asked for since the loop last applied the outbox.
    pub fn reading(&self) -> &[(ConnId, Reading)] {
        &self.reading
    }
}

/// The protocol on top of the loop: plain callbacks, no I/O. Every callback runs on the
/// loop's thread, inside [`EventLoop::turn`].
pub trait Handler {
    /// Per-connection state, kept in the loop's slab.
    type Session;

    /// A connection from `peer` was accepted. The handler may already send to it and close
    /// it (to refuse it with an answer, say).
    fn on_open(&mut self, conn: ConnId, peer: SocketAddr, out: &mut Outbox) -> Self::Session;

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

    /// A waker of `conn`'s ([`EventLoop::conn_waker`], [`conn_waker`]) was woken since the
    /// loop last looked: called once however many wakes there were. Not called once `conn`
    /// is closing. Wakes are by slot, so a connection that got a closed one's slot may get a
    /// wake meant for the old one: handlers must tolerate spurious wakes.
    fn on_wake(&mut self, conn: ConnId, session: &mut Self::Session, out: &mut Outbox) {
        let _ = (conn, session, out);
    }

    /// Everything queued to `conn` has been written: a write completed and neither frames
    /// nor a write are left. A handler that keeps its own outbound queue hands the loop the
    /// next batch here.
    fn on_sent(&mut self, conn: ConnId, session: &mut Self::Session, out: &mut Outbox) {
        let _ = (conn, session, out);
    }

    /// An accept failed (`EMFILE` when the process is out of descriptors, most likely);
    /// the loop pauses accepting for a moment after this. Clients wait in the backlog.
    fn on_accept_error(&mut self, error: &io::Error) {
        let _ = error;
    }
}

/// Whether this kernel runs the loop: builds a small ring with a provided-buffer ring and
/// checks its operations, as [`EventLoop::new`] does, without a listener. A caller picks
/// its fallback (a readiness loop) on [`Error::Unsupported`].
pub fn probe() -> Result<(), Error> {
    Ring::new(RingConfig {
        entries: 8,
        buffers: 2,
        buffer_size: 64,
    })
    .map(drop)
}

/// A waker for connection `conn` of the loop whose callback is running: for a [`Handler`]
/// to hand out (to a channel, a timer, another session). Waking it on the loop's thread,
/// inside or outside a turn, makes the loop call [`Handler::on_wake`] in its next turn;
/// waking it on another thread, or after the loop is dropped, does nothing (other threads
/// use [`EventLoop::waker`]). It allocates nothing, and cloning it copies two words.
///
/// Outside the loop's callbacks there is no running loop to name: use
/// [`EventLoop::conn_waker`] there (debug builds panic; release builds return a waker that
/// does nothing).
pub fn conn_waker(conn: ConnId) -> Waker {
    wake::current_waker(conn.0)
}

/// Emptied queues the loop keeps for reuse, so a connection's next frames allocate
/// nothing; a few, so that what they keep stays small.
const SPARE_QUEUES: usize = 64;
/// The most frames a kept queue may have room for: a larger one is freed.
const SPARE_QUEUE_FRAMES: usize = 64;

/// Frames handed to a connection and not yet to a write: in [`EventLoop::queued`], and
/// there only while some wait (never empty), since an idle connection has none.
struct Queued {
    frames: VecDeque<Bytes>,
    /// Bytes in `frames`, bounded by [`Config::max_queued_bytes`].
    bytes: usize,
}

/// Keeps `frames`, emptied, for the next connection that sends, unless [`SPARE_QUEUES`]
/// are kept already or it has room for more than [`SPARE_QUEUE_FRAMES`].
fn keep_spare(spare: &mut Vec<VecDeque<Bytes>>, mut frames: VecDeque<Bytes>) {
    if frames.capacity() <= SPARE_QUEUE_FRAMES && spare.len() < SPARE_QUEUES {
        frames.clear();
        spare.push(frames);
    }
}

/// One connection's I/O state beside the handler's session: 14 bytes of the loop's own
/// (its queue, when it has one, is in [`EventLoop::queued`], not behind a pointer here).
struct Conn<S> {
    socket: OwnedFd,
    session: S,
    /// The write in flight, if any.
    writing: Option<WriteId>,
    recv_armed: bool,
    /// Close once the queue is written (the handler asked for it).
    draining: bool,
    /// The handler has been told; the slot goes once no operation is in flight.
    closing: bool,
    /// In the loop's list of connections to write to this turn.
    listed_for_write: bool,
    /// The handler paused reading: receives are held, not delivered, and not re-armed.
    paused: bool,
    /// Receives are held for it in [`EventLoop::held`]: new ones queue behind them.
    holding: bool,
}

/// A receive completion kept for a paused connection. Its bytes are copied out of the
/// ring's buffer, which goes back at once: a pause may last seconds, and connections that
/// each held a buffer that long could leave the ring dry for every other connection.
#[derive(Debug)]
enum Held {
    Data(Vec<u8>),
    /// End of stream or an error: the connection closes when it is reached.
    Ended,
}

/// Whether the loop accepts connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accepting {
    Yes,
    /// [`EventLoop::stop_accepting`] was called: the next turn cancels the accepts.
    Stopping,
    Stopped,
}

/// One of the loop's listeners and whether its multishot accept is armed.
struct Listener {
    /// Closed (`None`) once accepting stopped and its accept ended.
    socket: Option<TcpListener>,
    accept_armed: bool,
}

/// One core's loop: a ring, its listeners, the connections and their handler.
///
/// Not `Send`: a loop lives on the thread that built it.
pub struct EventLoop<H: Handler> {
    // Declared first so that it is dropped first: it waits out every operation in flight.
    ring: Ring,
    listeners: Vec<Listener>,
    config: Config,
    conns: Slab<Conn<H::Session>>,
    handler: H,
    outbox: Outbox,
    events: Vec<Event>,
    /// Connections with frames queued and maybe no write in flight.
    to_write: Vec<u32>,
    /// Connections whose multishot receive ended and must be armed again.
    to_rearm: Vec<u32>,
    /// Connections resumed with receives held for them.
    to_resume: Vec<u32>,
    /// Receives held for paused connections, per connection in arrival order.
    held: HashMap<u32, VecDeque<Held>>,
    /// This loop's per-connection wakes.
    wakes: Registration,
    /// The connections taken from `wakes`, kept for its capacity.
    woken: Vec<u32>,
    notifier: Arc<Notifier>,
    accepting: Accepting,
    backing_off: bool,
    /// Connections refused because `max_connections` were open.
    refused: u64,
    /// Receives that ended because the buffer ring was empty (`ENOBUFS`).
    buffer_ring_dry: u64,
    /// When the buffers the kernel holds were last fitted to the load.
    buffers_fitted: Instant,
    /// Frames handed to connections and not yet to a write, by connection: few at a time.
    queued: HashMap<u32, Queued>,
    /// Emptied queues, for the next connection that sends ([`SPARE_QUEUES`] at most).
    spare_queues: Vec<VecDeque<Bytes>>,
}

impl<H: Handler> EventLoop<H> {
    /// Builds the ring (checking the kernel supports it), binds a `SO_REUSEPORT` listener
    /// on [`Config::listen`] and serves it (see [`EventLoop::with_listeners`]).
    pub fn new(config: Config, handler: H) -> Result<EventLoop<H>, Error> {
        let listener = Socket::new(Domain::for_address(config.listen), Type::STREAM, None)?;
        listener.set_reuse_address(true)?;
        listener.set_reuse_port(true)?;
        listener.bind(&config.listen.into())?;
        listener.listen(4096)?;
        EventLoop::with_listeners(config, vec![listener.into()], handler)
    }

    /// Builds the ring (checking the kernel supports it) and serves `listeners`, already
    /// bound and listening (by the caller, or passed by systemd), with one multishot accept
    /// each, armed by the first [`EventLoop::turn`]. [`Config::listen`] is not used.
    pub fn with_listeners(
        config: Config,
        listeners: Vec<TcpListener>,
        handler: H,
    ) -> Result<EventLoop<H>, Error> {
        let max_connections = u32::try_from(config.max_connections)
            .map_err(|_| Error::Config("max_connections must fit in 32 bits"))?;
        if u32::try_from(listeners.len()).is_err() {
            return Err(Error::Config("too many listeners"));
        }
        let mut ring = Ring::new(RingConfig {
            entries: config.ring_entries,
            buffers: config.buffers,
            buffer_size: config.buffer_size,
        })?;
        let notifier = Notifier::new()?;
        ring.arm_notify(notifier.fd())?;
        Ok(EventLoop {
            ring,
            listeners: listeners
                .into_iter()
                .map(|socket| Listener {
                    socket: Some(socket),
                    accept_armed: false,
                })
                .collect(),
            config,
            conns: Slab::new(),
            handler,
            outbox: Outbox::default(),
            events: Vec::new(),
            to_write: Vec::new(),
            to_rearm: Vec::new(),
            to_resume: Vec::new(),
            held: HashMap::new(),
            wakes: Registration::new(max_connections),
            woken: Vec::new(),
            notifier,
            accepting: Accepting::Yes,
            backing_off: false,
            refused: 0,
            buffer_ring_dry: 0,
            buffers_fitted: Instant::now(),
            queued: HashMap::new(),
            spare_queues: Vec::new(),
        })
    }

    /// The address the first listener is bound to (useful with port 0). Fails once
    /// [`EventLoop::stop_accepting`] has closed it.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listeners
            .first()
            .and_then(|listener| listener.socket.as_ref())
            .ok_or_else(|| io::Error::other("the loop has no open listener"))?
            .local_addr()
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The handler, to change between turns (what other threads sent it, say).
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// A waker for connection `conn`, as [`conn_waker`] makes inside callbacks, for code
    /// on this loop's thread outside them. Waking it makes the next [`EventLoop::turn`]
    /// call [`Handler::on_wake`] for `conn` before it waits for I/O.
    pub fn conn_waker(&self, conn: ConnId) -> Waker {
        self.wakes.waker(conn.0)
    }

    /// What wakes this loop's connections by id, in its callbacks or outside them: for a
    /// handler that keeps one of these rather than a [`Waker`] per connection.
    pub fn conn_wakes(&self) -> ConnWakes {
        ConnWakes {
            loop_id: self.wakes.loop_id(),
        }
    }

    /// A waker for other threads (`Send + Sync`): waking it ends the wait of this loop's
    /// current or next [`EventLoop::turn`] promptly, so whatever runs the loop can look at
    /// what those threads sent. It calls no handler. Wakes between two turns coalesce into
    /// one write to the loop's eventfd.
    pub fn waker(&self) -> Waker {
        Waker::from(Arc::clone(&self.notifier))
    }

    /// Stops accepting for good: the next turn cancels every listener's accept, and each
    /// listener is closed once its accept has ended, so clients still in its backlog are
    /// reset rather than left waiting (and, with `SO_REUSEPORT`, new ones go to the
    /// listeners still open). A connection the kernel accepted before the cancellation is
    /// still opened; after that, [`Handler::on_open`] is not called again. Open
    /// connections are served on.
    pub fn stop_accepting(&mut self) {
        if self.accepting == Accepting::Yes {
            self.accepting = Accepting::Stopping;
        }
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

    /// Buffers the kernel holds for receives now: as many as recent turns needed.
    pub fn buffers_posted(&self) -> u16 {
        self.ring.buffers_posted()
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

    /// One turn:
    ///
    /// 1. calls [`Handler::on_wake`] for the connections woken since the last turn, and
    ///    queues the writes and re-arms that and the last turn asked for;
    /// 2. submits, and waits for a completion, for `timeout`, or (if connections were
    ///    woken again meanwhile) not at all;
    /// 3. handles every completion;
    /// 4. calls [`Handler::on_wake`] for the connections woken meanwhile, and queues writes
    ///    and re-arms (submitted by the next turn).
    pub fn turn(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let _entered = self.wakes.enter();
        self.serve_wakes()?;
        self.queue_io()?;
        let timeout = if self.wakes.pending() {
            Some(Duration::ZERO)
        } else {
            timeout
        };
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
        if self.buffers_fitted.elapsed() >= BUFFER_FIT_INTERVAL {
            self.buffers_fitted = Instant::now();
            self.ring.fit_buffers();
        }
        self.serve_wakes()?;
        self.queue_io()
    }

    fn handle(&mut self, event: Event) -> io::Result<()> {
        match event {
            Event::Accepted {
                listener,
                result,
                more,
            } => self.accepted(listener, result, more)?,
            Event::BackoffOver => self.backing_off = false,
            Event::Received { conn, result, more } => self.received(conn, result, more)?,
            Event::Wrote { conn, result } => {
                let Some(state) = self.conns.get_mut(conn as usize) else {
                    return Ok(());
                };
                state.writing = None;
                match result {
                    Ok(()) if state.closing => {}
                    Ok(()) if self.queued.contains_key(&conn) => self.list_for_write(conn),
                    Ok(()) if state.draining => self.close(conn)?,
                    Ok(()) => {
                        self.handler
                            .on_sent(ConnId(conn), &mut state.session, &mut self.outbox);
                        self.apply_outbox()?;
                    }
                    Err(_) => self.close(conn)?,
                }
                self.free_if_done(conn);
            }
            Event::Notified(result) => {
                result.map_err(|err| {
                    io::Error::new(err.kind(), format!("reading the loop's eventfd: {err}"))
                })?;
                self.notifier.drained();
                self.ring.arm_notify(self.notifier.fd())?;
            }
        }
        Ok(())
    }

    fn accepted(
        &mut self,
        listener: u32,
        result: io::Result<OwnedFd>,
        more: bool,
    ) -> io::Result<()> {
        if let Some(state) = self.listeners.get_mut(listener as usize) {
            state.accept_armed = more;
            if !more && self.accepting != Accepting::Yes {
                state.socket = None;
            }
        }
        match result {
            // Accepted before a cancellation took effect: served all the same.
            Ok(socket) => self.open(socket)?,
            Err(err)
                if self.accepting != Accepting::Yes
                    && err.raw_os_error() == Some(libc::ECANCELED) => {}
            Err(err) => {
                self.handler.on_accept_error(&err);
                // Out of descriptors, most likely: pause instead of spinning. The pending
                // clients wait in the backlog meanwhile.
                if !self.backing_off && !more && self.accepting == Accepting::Yes {
                    self.backing_off = true;
                    self.ring.arm_backoff(ACCEPT_BACKOFF)?;
                }
            }
        }
        Ok(())
    }

    fn received(
        &mut self,
        conn: u32,
        result: io::Result<Option<Buffer>>,
        more: bool,
    ) -> io::Result<()> {
        let Some(state) = self.conns.get_mut(conn as usize) else {
            if let Ok(Some(buffer)) = result {
                self.ring.recycle(buffer);
            }
            return Ok(());
        };
        state.recv_armed = more;
        if state.closing {
            if let Ok(Some(buffer)) = result {
                self.ring.recycle(buffer);
            }
            self.free_if_done(conn);
            return Ok(());
        }
        // Paused, or resumed with receives still held: this one queues behind them.
        let hold = state.paused || state.holding;
        match result {
            Ok(Some(buffer)) if hold => {
                let data = self.ring.bytes(&buffer).to_vec();
                self.ring.recycle(buffer);
                self.hold(conn, Held::Data(data));
            }
            Ok(Some(buffer)) => {
                if !state.draining {
                    let data = self.ring.bytes(&buffer);
                    self.handler
                        .on_data(ConnId(conn), &mut state.session, data, &mut self.outbox);
                }
                self.ring.recycle(buffer);
                self.apply_outbox()?;
            }
            // The ring ran dry: this turn gives buffers back, then it is re-armed.
            Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => self.buffer_ring_dry += 1,
            // A pause cancelled it; re-armed below if reading resumed meanwhile.
            Err(err) if err.raw_os_error() == Some(libc::ECANCELED) => {}
            Ok(None) | Err(_) if hold => self.hold(conn, Held::Ended),
            Ok(None) | Err(_) => self.close(conn)?,
        }
        if !more {
            // Re-armed at the end of the turn unless it closed, is paused or holds an end.
            self.to_rearm.push(conn);
        }
        Ok(())
    }

    fn hold(&mut self, conn: u32, held: Held) {
        if let Some(state) = self.conns.get_mut(conn as usize) {
            state.holding = true;
            self.held.entry(conn).or_default().push_back(held);
        }
    }

    fn open(&mut self, socket: OwnedFd) -> io::Result<()> {
        if self.conns.len() >= self.config.max_connections {
            // Dropping the descriptor closes it: the client sees the connection end.
            self.refused += 1;
            return Ok(());
        }
        let Some(peer) = SockRef::from(&socket)
            .peer_addr()
            .ok()
            .and_then(|peer| peer.as_socket())
        else {
            // The client is gone already (ENOTCONN): nothing to serve.
            return Ok(());
        };
        // Small frames go out at once instead of waiting for the previous segment's ACK.
        let _ = SockRef::from(&socket).set_tcp_nodelay(true);
        let entry = self.conns.vacant_entry();
        let conn = ConnId(entry.key() as u32);
        let session = self.handler.on_open(conn, peer, &mut self.outbox);
        entry.insert(Conn {
            socket,
            session,
            writing: None,
            recv_armed: false,
            draining: false,
            closing: false,
            listed_for_write: false,
            paused: false,
            holding: false,
        });
        self.to_rearm.push(conn.0);
        self.apply_outbox()
    }

    /// Calls [`Handler::on_wake`] for each connection woken since the last call.
    fn serve_wakes(&mut self) -> io::Result<()> {
        let mut woken = std::mem::take(&mut self.woken);
        self.wakes.take(&mut woken);
        for conn in woken.drain(..) {
            let Some(state) = self.conns.get_mut(conn as usize) else {
                continue;
            };
            if state.closing || state.draining {
                continue;
            }
            self.handler
                .on_wake(ConnId(conn), &mut state.session, &mut self.outbox);
            self.apply_outbox()?;
        }
        self.woken = woken;
        Ok(())
    }

    /// Moves the handler's sends into the connections' queues, starts its closes and
    /// pauses or resumes reading.
    fn apply_outbox(&mut self) -> io::Result<()> {
        let mut sends = std::mem::take(&mut self.outbox.sends);
        for (to, frame) in sends.drain(..) {
            let Some(state) = self.conns.get_mut(to.0 as usize) else {
                continue;
            };
            if state.closing || state.draining {
                continue;
            }
            let queue = self.queued.entry(to.0).or_insert_with(|| Queued {
                frames: self.spare_queues.pop().unwrap_or_default(),
                bytes: 0,
            });
            queue.bytes += frame.len();
            queue.frames.push_back(frame);
            if queue.bytes > self.config.max_queued_bytes {
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
            if state.writing.is_none() && !self.queued.contains_key(&conn.0) {
                self.close(conn.0)?;
            }
        }
        self.outbox.closes = closes;
        let mut aborts = std::mem::take(&mut self.outbox.aborts);
        for conn in aborts.drain(..) {
            self.close(conn.0)?;
        }
        self.outbox.aborts = aborts;
        let mut reading = std::mem::take(&mut self.outbox.reading);
        for (conn, change) in reading.drain(..) {
            let Some(state) = self.conns.get_mut(conn.0 as usize) else {
                continue;
            };
            match change {
                Reading::Paused if !state.paused && !state.closing => {
                    state.paused = true;
                    // Completions the kernel posts before the cancellation lands are held.
                    if state.recv_armed {
                        self.ring.cancel_recv(conn.0)?;
                    }
                }
                Reading::Resumed if state.paused => {
                    state.paused = false;
                    self.to_resume.push(conn.0);
                }
                Reading::Paused | Reading::Resumed => {}
            }
        }
        self.outbox.reading = reading;
        Ok(())
    }

    /// Hands the receives held for resumed connections to the handler, in order, and has
    /// their receive re-armed once none are left.
    fn deliver_held(&mut self) -> io::Result<()> {
        while let Some(conn) = self.to_resume.pop() {
            while let Some(state) = self.conns.get_mut(conn as usize)
                && !state.paused
                && !state.closing
            {
                let Some(held) = self.held.get_mut(&conn).and_then(VecDeque::pop_front) else {
                    state.holding = false;
                    self.held.remove(&conn);
                    self.to_rearm.push(conn);
                    break;
                };
                match held {
                    Held::Data(mut data) => {
                        if !state.draining {
                            self.handler.on_data(
                                ConnId(conn),
                                &mut state.session,
                                &mut data,
                                &mut self.outbox,
                            );
                        }
                        self.apply_outbox()?;
                    }
                    Held::Ended => self.close(conn)?,
                }
            }
        }
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

    /// Tells the handler, drops the queue and what is held, and cancels what is in flight;
    /// the slot goes now or when the last operation completes ([`Self::free_if_done`]).
    fn close(&mut self, conn: u32) -> io::Result<()> {
        let Some(state) = self.conns.get_mut(conn as usize) else {
            return Ok(());
        };
        if state.closing {
            return Ok(());
        }
        state.closing = true;
        if let Some(unwritten) = self.queued.remove(&conn) {
            keep_spare(&mut self.spare_queues, unwritten.frames);
        }
        self.handler.on_close(ConnId(conn), &mut state.session);
        if state.holding {
            state.holding = false;
            self.held.remove(&conn);
        }
        if state.recv_armed {
            self.ring.cancel_recv(conn)?;
        }
        if let Some(write) = state.writing {
            self.ring.cancel_write(write)?;
        }
        // With nothing in flight (paused, in `on_open`, or a receive ended by a dry buffer
        // ring) no completion would come to free the slot.
        self.free_if_done(conn);
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

    /// Delivers what resumed connections held, then queues the writes asked for (one per
    /// connection), re-arms receives and accepts, or cancels the accepts once stopped.
    fn queue_io(&mut self) -> io::Result<()> {
        self.deliver_held()?;
        let mut to_write = std::mem::take(&mut self.to_write);
        for conn in to_write.drain(..) {
            let Some(state) = self.conns.get_mut(conn as usize) else {
                continue;
            };
            state.listed_for_write = false;
            if state.closing || state.writing.is_some() {
                continue;
            }
            let Entry::Occupied(mut queued) = self.queued.entry(conn) else {
                continue;
            };
            let queue = queued.get_mut();
            let fd = state.socket.as_raw_fd();
            let write = self.ring.write(conn, fd, &mut queue.frames)?;
            state.writing = Some(write);
            queue.bytes = queue.frames.iter().map(Bytes::len).sum();
            if queue.frames.is_empty() {
                // An idle connection holds no queue: a few hundred thousand of them would
                // otherwise keep one allocation each for frames long written.
                keep_spare(&mut self.spare_queues, queued.remove().frames);
            }
        }
        self.to_write = to_write;
        let mut to_rearm = std::mem::take(&mut self.to_rearm);
        for conn in to_rearm.drain(..) {
            let Some(state) = self.conns.get_mut(conn as usize) else {
                continue;
            };
            if state.closing || state.recv_armed || state.paused || state.holding {
                continue;
            }
            state.recv_armed = true;
            let fd = state.socket.as_raw_fd();
            self.ring.arm_recv(conn, fd)?;
        }
        self.to_rearm = to_rearm;
        match self.accepting {
            Accepting::Yes if !self.backing_off => {
                for (index, listener) in (0u32..).zip(&mut self.listeners) {
                    if let Some(socket) = &listener.socket
                        && !listener.accept_armed
                    {
                        listener.accept_armed = true;
                        self.ring.arm_accept(
                            index,
                            socket.as_raw_fd(),
                            self.config.accept_multishot,
                        )?;
                    }
                }
            }
            Accepting::Stopping => {
                self.accepting = Accepting::Stopped;
                for (index, listener) in (0u32..).zip(&mut self.listeners) {
                    if listener.accept_armed {
                        self.ring.cancel_accept(index)?;
                    } else {
                        listener.socket = None;
                    }
                }
            }
            Accepting::Yes | Accepting::Stopped => {}
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
        // queue, no allocation while idle; beside an 8-byte-aligned session, 16 bytes.
        let size = size_of::<Conn<()>>();
        assert!(size <= 16, "Conn<()> grew to {size} bytes");
        assert_eq!(size_of::<Conn<[u64; 8]>>(), 64 + 16);
    }
}
