//! One core: a pinned I/O loop that owns its listener, its sessions, its engine shard
//! and its counters. It touches another core only by a message in that core's mailbox.
//!
//! Who may touch what: the [`Registry`] (sessions by connection and by user) is borrowed
//! only for one routing or one sweep batch; the [`Parked`] queues only by the code that
//! sends to another core or the bridge and by the timer that retries; the [`Waiters`] only
//! to add or wake a waker; the engine only while it handles one event. No borrow is held
//! across an await.

mod parked;
mod registry;

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use telemetry::descriptors::DescriptorReserve;
use wire::envelope::Target;
use wire::server::ErrorFrame;
use wire::{ClientMsgId, CloseCode, ErrorCode, ServerFrame, UserId};

use crate::bridge::{BridgeInbox, BridgeMsg};
use crate::engine::Engine;
use crate::metrics::CoreMetrics;
use crate::node::Node;
use crate::outbox::{Outbox, OutboxShared, Outgoing, QueueLimits};
use crate::router::{CoreMsg, Delivery, MAX_SESSIONS_PER_CORE, Skip, core_holds_any};

use parked::{Offer, ParkedLimits, ParkedQueue, Pinned};
use registry::Registry;

/// What each core (after its sweep) and the broker bridge call to hand back to the OS what
/// the allocator keeps of freed memory, thoroughly or not; set by the binary, which knows
/// its allocator.
static RELEASE_FREED_MEMORY: OnceLock<fn(bool)> = OnceLock::new();

/// Sets what a core calls once a sweep turn (every second) to give freed memory back, with
/// whether to be thorough. mimalloc, for one, returns freed pages only when the thread that
/// freed them calls into it again after its purge delay: a core that goes quiet after a
/// flood would hold the flood's queues for good.
pub fn release_freed_memory_with(release: fn(bool)) {
    let _ = RELEASE_FREED_MEMORY.set(release);
}

/// Gives back to the OS what the allocator keeps of memory this thread freed, if the binary
/// said how ([`release_freed_memory_with`]); `thorough` also gives back what a light pass
/// leaves, at a cost a busy thread should not pay. The cores and the broker bridge call it
/// once a second.
pub fn release_freed_memory(thorough: bool) {
    if let Some(release) = RELEASE_FREED_MEMORY.get() {
        release(thorough);
    }
}

/// The reason a connection refused for want of room (descriptors, or the core's places) is
/// given.
const AT_CONNECTION_LIMIT: &str = "the server is at its connection limit";

/// Read buffer shared by every session of a core: a session borrows it only while it
/// parses what one read brought, so an idle session holds no buffer at all.
pub const SCRATCH_BYTES: usize = 64 * 1024;

/// How often the sweep visits each session (to ping or close the silent ones).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Slots of the sweep's wheel: a session is visited in the slot of its connection id, one
/// slot per [`SWEEP_INTERVAL`] / `SWEEP_SLOTS`, so a core spends a fiftieth of its sweep
/// every 20 ms instead of holding every delivery back while it walks all its sessions.
const SWEEP_SLOTS: usize = 50;

/// Sessions the sweep checks before it lets the core's other tasks run.
const SWEEP_BATCH: usize = 256;

/// Mailbox messages a core handles before it lets its sessions write what they queued.
const MAILBOX_BATCH: usize = 64;

/// Messages (and the bytes of their frames) that may wait for a full queue: far above what
/// the reads in progress when a queue fills can add (see [`parked`]).
const PARKED_FRAMES: ParkedLimits = ParkedLimits {
    messages: 65_536,
    bytes: 64 << 20,
};

/// Session changes that may wait for the bridge's full registry queue: a few per session
/// opened or closed while the bridge is behind.
const PARKED_SESSION_CHANGES: ParkedLimits = ParkedLimits {
    messages: 65_536,
    bytes: usize::MAX,
};

/// How long a closing session may take to write its close frame before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long a shutdown lets sessions finish their closing handshake and upgrades finish,
/// before it cuts what is left (a reader whose socket is full, a half-sent upgrade). Short:
/// under socket activation the successor starts only once this process has exited, and
/// new connections wait in the backlog meanwhile.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_millis(500);

/// How often a core retries messages parked for a full queue, resumes paused readers and
/// ticks its engine while any of that is waiting.
const TICK: Duration = Duration::from_millis(1);

/// How often the timer runs when nothing waits: only the watchdog's beat. A core woken
/// every millisecond for nothing spent about 15% more CPU per echoed message
/// (bench/RESULTS.md); work that needs the timer wakes it at once ([`Core::need_timer`]).
const IDLE_TICK: Duration = Duration::from_millis(100);

/// Where a core's connection numbers start: random, so that a restarted node does not
/// reuse the ids of its previous run, and a late reply the backend addressed to an old
/// connection cannot reach a new one.
fn first_connection_number() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(SystemTime::now()) & ((1 << 40) - 1)
}

/// Marks a connection as upgrading while it lives.
#[derive(Debug)]
pub struct UpgradeGuard(Rc<Cell<usize>>);

impl Drop for UpgradeGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// One wait for the shutdown: its waker in the core's list while it waits.
struct ShutdownWait<'a> {
    waiters: &'a RefCell<Waiters>,
    registered: Option<Waker>,
}

impl ShutdownWait<'_> {
    fn register(&mut self, waker: &Waker) {
        if self.registered.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return;
        }
        self.deregister();
        self.waiters.borrow_mut().shutdown.push(waker.clone());
        self.registered = Some(waker.clone());
    }

    fn deregister(&mut self) {
        if let Some(registered) = self.registered.take() {
            let shutdown = &mut self.waiters.borrow_mut().shutdown;
            if let Some(at) = shutdown.iter().position(|w| w.will_wake(&registered)) {
                shutdown.swap_remove(at);
            }
        }
    }
}

impl Drop for ShutdownWait<'_> {
    fn drop(&mut self) {
        self.deregister();
    }
}

/// A message for another core or for the bridge.
enum Outbound {
    Core(usize, CoreMsg),
    Bridge(Arc<BridgeInbox>, BridgeMsg),
}

impl Outbound {
    /// Hands the message over; hands it back while its queue is full.
    fn push(self, node: &Node) -> Result<(), Outbound> {
        match self {
            Outbound::Core(core, msg) => node.mailboxes[core]
                .push(msg)
                .map_err(|msg| Outbound::Core(core, msg)),
            Outbound::Bridge(inbox, msg) => {
                inbox.push(msg).map_err(|msg| Outbound::Bridge(inbox, msg))
            }
        }
    }
}

impl Pinned for Outbound {
    fn pinned_bytes(&self) -> usize {
        match self {
            Outbound::Core(_, msg) => msg.pinned_bytes(),
            Outbound::Bridge(_, BridgeMsg::Publish { frame, .. }) => frame.frame.len(),
            Outbound::Bridge(..) => 0,
        }
    }
}

/// What waits for room in a full queue, in two orders of its own.
struct Parked {
    /// Frames and cross-core work; while any wait, sessions stop reading instead of
    /// buffering more.
    frames: ParkedQueue<Outbound>,
    /// Session changes for the bridge's registry: apart from `frames`, so that they never
    /// wait behind frames that wait for the broker, and without pausing readers (they do
    /// not grow with what clients send).
    session_changes: ParkedQueue<Outbound>,
}

/// Tasks waiting on this core's state.
#[derive(Default)]
struct Waiters {
    /// Sessions paused by backpressure.
    paused_readers: Vec<Waker>,
    /// The timer task while it idles, for work that needs it sooner.
    timer: Option<Waker>,
    /// Tasks waiting for the shutdown to begin.
    shutdown: Vec<Waker>,
}

/// Where a core is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Serving,
    /// Closing its sessions with 1001; what is still open at `until` is cut.
    Draining {
        until: Instant,
    },
    /// The drain is over.
    Drained,
}

/// A core's state. Lives in an `Rc`: only this core's thread ever sees it.
pub struct Core {
    index: usize,
    /// What every core shares (read-only).
    pub node: Arc<Node>,
    /// This core's counters.
    pub metrics: Arc<CoreMetrics>,
    registry: RefCell<Registry>,
    /// What the core's outboxes share: the queue limits and their sessions' wakers.
    pub outboxes: Rc<OutboxShared>,
    engine: RefCell<Box<dyn Engine>>,
    parked: RefCell<Parked>,
    waiters: RefCell<Waiters>,
    /// The shared read buffer.
    pub scratch: RefCell<Box<[u8]>>,
    /// Connections accepted and not yet sessions: a stopping core waits for them too.
    upgrading: Rc<Cell<usize>>,
    lifecycle: Cell<Lifecycle>,
    /// The core's frame count when its last sweep round ended.
    frames_at_round: Cell<u64>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("index", &self.index)
            .field("sessions", &self.registry.borrow().len())
            .finish()
    }
}

impl Core {
    /// A core's state with its engine shard.
    pub fn new(index: usize, node: Arc<Node>, engine: Box<dyn Engine>) -> Core {
        let outboxes = OutboxShared::new(QueueLimits {
            frames: node.config.outbound_queue,
            bytes: node.config.outbound_queue_bytes,
            max_frames: node.config.outbound_queue_max,
            max_bytes: node.config.outbound_queue_max_bytes,
            stall: node.config.slow_consumer_stall,
            behind_for: node.config.slow_consumer_behind,
        });
        Core {
            index,
            metrics: node.metrics[index].clone(),
            node,
            registry: RefCell::new(Registry::new(index, SWEEP_SLOTS, first_connection_number())),
            outboxes,
            engine: RefCell::new(engine),
            parked: RefCell::new(Parked {
                frames: ParkedQueue::new(PARKED_FRAMES),
                session_changes: ParkedQueue::new(PARKED_SESSION_CHANGES),
            }),
            waiters: RefCell::new(Waiters::default()),
            scratch: RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice()),
            upgrading: Rc::new(Cell::new(0)),
            lifecycle: Cell::new(Lifecycle::Serving),
            frames_at_round: Cell::new(0),
        }
    }

    /// This core's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many cores the node runs.
    pub fn cores(&self) -> usize {
        self.node.mailboxes.len()
    }

    /// Microseconds since the Unix epoch.
    pub fn now_us(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    }

    /// Whether the core is closing.
    pub fn is_shutting_down(&self) -> bool {
        self.lifecycle.get() != Lifecycle::Serving
    }

    /// Runs `f` with the engine shard.
    pub fn with_engine<R>(&self, f: impl FnOnce(&mut dyn Engine) -> R) -> R {
        f(self.engine.borrow_mut().as_mut())
    }

    /// Registers a new session, whose token expires at `expires_at` (Unix seconds), and
    /// returns its outbox.
    pub fn open_session(&self, user_id: UserId, expires_at: u64, text: bool) -> Rc<Outbox> {
        let outbox = self
            .registry
            .borrow_mut()
            .insert(|id| Outbox::new(id, user_id, expires_at, text, self.outboxes.clone()));
        self.metrics.connections.fetch_add(1, Relaxed);
        self.metrics.connections_total.fetch_add(1, Relaxed);
        outbox
    }

    /// Whether `user` has a session open on this core.
    pub fn has_sessions_of(&self, user: UserId) -> bool {
        self.registry.borrow().has_user(user)
    }

    /// Forgets a session.
    pub fn close_session(&self, outbox: &Outbox) {
        outbox.discard(&self.metrics);
        outbox.forget_waker();
        self.registry.borrow_mut().remove(outbox);
        self.metrics.connections.fetch_sub(1, Relaxed);
    }

    /// Whether a new connection from `peer` is within `--connections-per-ip-per-minute`
    /// and the core's room for sessions ([`MAX_SESSIONS_PER_CORE`]); when not, the refusal
    /// to answer it with (counted).
    pub fn admit_connection(&self, peer: SocketAddr) -> Result<(), Vec<u8>> {
        let held = self.registry.borrow().len() + self.upgrading.get();
        if held >= MAX_SESSIONS_PER_CORE {
            self.metrics.refuse("core_full");
            return Err(self.refusal(503, AT_CONNECTION_LIMIT));
        }
        let admitted = self
            .node
            .ip_limit
            .as_ref()
            .is_none_or(|limit| limit.admit(peer.ip(), Instant::now()));
        if admitted {
            return Ok(());
        }
        self.metrics.refuse("ip_rate");
        Err(self.refusal(429, "too many new connections from this address"))
    }

    /// A refusal before the upgrade, in what the client speaks: an HTTP response on ws://,
    /// and on wss://, whose clients open with a TLS handshake, a TLS alert.
    fn refusal(&self, status: u16, reason: &str) -> Vec<u8> {
        match self.node.tls {
            Some(_) => crate::tls::REFUSAL_ALERT.to_vec(),
            None => wsproto::handshake::refusal(status, reason),
        }
    }

    /// An accept failed for lack of a descriptor: answers the clients waiting in the
    /// backlogs of `listeners` (non-blocking duplicates of the core's) with a 503 now,
    /// rather than let them wait for a descriptor that may never free, through `reserve`;
    /// counted, and logged by the node's [`DescriptorPressure`](crate::descriptors::DescriptorPressure).
    pub fn refuse_at_descriptor_limit(
        &self,
        reserve: &mut DescriptorReserve,
        listeners: &[StdListener],
    ) {
        let answer = self.refusal(503, AT_CONNECTION_LIMIT);
        let refused: usize = listeners
            .iter()
            .map(|listener| {
                crate::descriptors::refuse_waiting(
                    reserve,
                    listener,
                    &answer,
                    crate::descriptors::MAX_REFUSALS_PER_EVENT,
                )
                .unwrap_or(0)
            })
            .sum();
        self.metrics.refuse_many("descriptors", refused as u64);
        self.node.descriptors.accept_failed(refused);
    }

    /// Answers the session `origin` with an error frame, counted in the metrics.
    pub fn reply_error(
        &self,
        origin: crate::router::Origin,
        code: ErrorCode,
        reason: impl Into<String>,
        client_msg_id: Option<ClientMsgId>,
        received_at: Instant,
    ) {
        self.metrics.error(code);
        let frame = ServerFrame::Error(ErrorFrame::new(code, reason, client_msg_id));
        let to: Arc<[Target]> = Arc::from([Target::Connection(origin.connection_id)]);
        self.deliver_frame(&frame, to, None, received_at);
    }

    /// Encodes a server frame once and delivers it to `targets` on whichever cores hold
    /// them, skipping `except` (the typist, or the session that sent a message).
    pub fn deliver_frame(
        &self,
        frame: &ServerFrame,
        targets: Arc<[Target]>,
        except: Option<Skip>,
        received_at: Instant,
    ) {
        let delivery = frame
            .encode()
            .and_then(|bytes| Delivery::new(&bytes, received_at));
        match delivery {
            Ok(delivery) => self.deliver(targets, except, delivery),
            Err(error) => {
                tracing::error!(%error, kind = frame.kind().name(), "could not encode a server frame")
            }
        }
    }

    /// Routes a delivery: connection targets go to their core; user targets to every core,
    /// since a user's sessions may be on any of them.
    pub fn deliver(&self, targets: Arc<[Target]>, except: Option<Skip>, delivery: Arc<Delivery>) {
        for core in 0..self.cores() {
            let wanted = core_holds_any(&targets, core);
            if !wanted {
                continue;
            }
            if core == self.index {
                self.deliver_local(&targets, except, &delivery);
            } else {
                let msg = CoreMsg::Deliver {
                    targets: targets.clone(),
                    except,
                    delivery: delivery.clone(),
                };
                self.send_to_core(core, msg);
            }
        }
    }

    /// Queues a delivery on this core's sessions of the targets.
    pub fn deliver_local(
        &self,
        targets: &[Target],
        except: Option<Skip>,
        delivery: &Arc<Delivery>,
    ) {
        let registry = self.registry.borrow();
        let push = |outbox: &Rc<Outbox>| {
            self.metrics.frame_out(delivery.kind());
            outbox.push(Outgoing::Shared(delivery.clone()), &self.metrics);
        };
        for target in targets {
            match *target {
                Target::User(user) if except != Some(Skip::User(user)) => registry
                    .user_sessions(user)
                    .filter(|outbox| except != Some(Skip::Connection(outbox.connection_id)))
                    .for_each(push),
                Target::User(_) | Target::NotConnection(_) => {}
                Target::Connection(id) => registry.get(id).into_iter().for_each(push),
            }
        }
    }

    /// Sends `msg` to core `core`. A full mailbox parks the message in order and pauses
    /// this core's readers until it drains: backpressure, not unbounded buffering.
    pub fn send_to_core(&self, core: usize, msg: CoreMsg) {
        self.send_frame_or_park(Outbound::Core(core, msg));
    }

    /// Hands work to the broker bridge: a frame in order with everything parked before it,
    /// a session change in order with the session changes parked before it.
    pub fn send_to_bridge(&self, inbox: &Arc<BridgeInbox>, msg: BridgeMsg) {
        let session_change = BridgeInbox::is_session_change(&msg);
        let outbound = Outbound::Bridge(inbox.clone(), msg);
        if session_change {
            let offer = self
                .parked
                .borrow_mut()
                .session_changes
                .offer(outbound, |msg| msg.push(&self.node));
            self.after_offer(offer);
        } else {
            self.send_frame_or_park(outbound);
        }
    }

    fn send_frame_or_park(&self, outbound: Outbound) {
        let offer = self
            .parked
            .borrow_mut()
            .frames
            .offer(outbound, |msg| msg.push(&self.node));
        if matches!(offer, Offer::Parked) {
            self.metrics.mailbox_full.fetch_add(1, Relaxed);
        }
        self.after_offer(offer);
    }

    /// Wakes the timer for a message that is the first to wait, counts one that was dropped.
    fn after_offer(&self, offer: Offer<Outbound>) {
        match offer {
            Offer::Sent | Offer::Queued => {}
            Offer::Parked => self.need_timer(),
            Offer::Refused(_) => {
                // Only the first drop is logged: the counter tells how many followed.
                if self.metrics.parked_dropped.fetch_add(1, Relaxed) == 0 {
                    tracing::warn!(
                        core = self.index,
                        "too many messages wait for full queues: dropping the newest"
                    );
                }
            }
        }
    }

    /// Sends a message built by `make` to every other core.
    pub fn to_other_cores(&self, make: impl Fn() -> crate::engine::EngineMsg) {
        for core in (0..self.cores()).filter(|&c| c != self.index) {
            self.send_to_core(core, CoreMsg::Engine(make()));
        }
    }

    /// Whether sessions must stop reading for now: a queue this core feeds is full, or the
    /// broker is behind on its confirms or reconnecting. A broker unreachable for longer
    /// does not pause reads: the engine answers what needs it with 5030 instead.
    pub fn is_backpressured(&self) -> bool {
        !self.parked.borrow().frames.is_empty()
            || (self
                .node
                .broker_paused
                .load(std::sync::atomic::Ordering::Acquire)
                && !self.node.broker_unreachable())
    }

    /// Wakes `waker` when the backpressure ends.
    pub fn wait_for_room(&self, waker: &Waker) {
        self.waiters.borrow_mut().paused_readers.push(waker.clone());
        self.need_timer();
    }

    /// Wakes the idle timer: something now waits for its next tick.
    pub fn need_timer(&self) {
        let timer = self.waiters.borrow_mut().timer.take();
        if let Some(waker) = timer {
            waker.wake();
        }
    }

    /// Whether anything waits for the timer: parked messages, paused readers, engine work.
    fn timer_needed(&self) -> bool {
        let parked = self.parked.borrow();
        !parked.frames.is_empty()
            || !parked.session_changes.is_empty()
            || !self.waiters.borrow().paused_readers.is_empty()
            || self.engine.borrow().wants_tick()
    }

    /// Pushes what waits, in order, while its queues take it.
    fn retry_parked(&self) {
        let mut parked = self.parked.borrow_mut();
        parked.session_changes.retry(|msg| msg.push(&self.node));
        parked.frames.retry(|msg| msg.push(&self.node));
    }

    fn resume_readers(&self) {
        let readers = std::mem::take(&mut self.waiters.borrow_mut().paused_readers);
        for waker in readers {
            waker.wake();
        }
    }

    fn handle(&self, msg: CoreMsg) {
        match msg {
            CoreMsg::Deliver {
                targets,
                except,
                delivery,
            } => self.deliver_local(&targets, except, &delivery),
            CoreMsg::Engine(msg) => self.engine.borrow_mut().message(self, msg),
            CoreMsg::Shutdown => self.begin_shutdown(),
        }
    }

    fn begin_shutdown(&self) {
        if self.is_shutting_down() {
            return;
        }
        self.lifecycle.set(Lifecycle::Draining {
            until: Instant::now() + SHUTDOWN_DRAIN,
        });
        let registry = self.registry.borrow();
        tracing::info!(
            core = self.index,
            sessions = registry.len(),
            "closing sessions with 1001"
        );
        for outbox in registry.all() {
            outbox.close(CloseCode::GOING_AWAY);
        }
        drop(registry);
        let waiting = std::mem::take(&mut self.waiters.borrow_mut().shutdown);
        for waker in waiting {
            waker.wake();
        }
    }

    /// Ends every session still open once the shutdown's drain is over, written or not.
    fn cut_sessions_after_the_drain(&self) {
        let Lifecycle::Draining { until } = self.lifecycle.get() else {
            return;
        };
        let now = Instant::now();
        if now < until {
            return;
        }
        self.lifecycle.set(Lifecycle::Drained);
        let mut cut = 0;
        for outbox in self.registry.borrow().all() {
            cut += usize::from(outbox.abort_if_stuck(now, Duration::ZERO));
        }
        if cut > 0 {
            tracing::info!(
                core = self.index,
                sessions = cut,
                "cut sessions that did not finish closing within the shutdown drain"
            );
        }
    }

    /// Resolves when the core begins to shut down. Every upgrade waits on this while it
    /// runs, so its waker is registered once and leaves the list when the wait ends or is
    /// dropped: the list would otherwise keep one waker per connection ever accepted.
    pub async fn shutdown_started(&self) {
        let mut waiting = ShutdownWait {
            waiters: &self.waiters,
            registered: None,
        };
        poll_fn(|cx| {
            if self.is_shutting_down() {
                return Poll::Ready(());
            }
            waiting.register(cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Whether the shutdown's drain is over: what is still open is cut.
    pub fn drain_is_over(&self) -> bool {
        self.lifecycle.get() == Lifecycle::Drained
    }

    /// Whether every session, and every connection still upgrading, has gone.
    pub fn is_idle(&self) -> bool {
        self.registry.borrow().is_empty() && self.upgrading.get() == 0
    }

    /// Counts a connection as upgrading until the returned guard drops.
    pub fn upgrade_started(&self) -> UpgradeGuard {
        self.upgrading.set(self.upgrading.get() + 1);
        UpgradeGuard(self.upgrading.clone())
    }

    /// Drains this core's mailbox for as long as the core runs, [`MAILBOX_BATCH`] messages
    /// at a time: between batches the sessions write what the batch queued for them.
    pub async fn pump_mailbox(self: Rc<Self>) {
        loop {
            poll_fn(|cx| self.handle_mailbox(cx)).await;
            yield_to_other_tasks().await;
        }
    }

    /// Handles up to [`MAILBOX_BATCH`] messages from this core's mailbox. `Ready` once a
    /// whole batch was handled (more may wait: come back after the sessions have written);
    /// `Pending` once the mailbox is empty, with `cx`'s waker registered for the next
    /// message.
    pub fn handle_mailbox(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mailbox = &self.node.mailboxes[self.index];
        for _ in 0..MAILBOX_BATCH {
            match mailbox.poll_recv(cx) {
                Poll::Ready(msg) => self.handle(msg),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(())
    }

    /// Retries parked messages while any wait, ticks the engine, and lets paused sessions
    /// read again once the backpressure is over.
    pub async fn housekeeping(self: Rc<Self>) {
        loop {
            if self.timer_needed() {
                monoio::time::sleep(TICK).await;
            } else {
                self.idle_until_needed().await;
            }
            self.housekeeping_tick();
        }
    }

    /// How long until the next [`Core::housekeeping_tick`]: a millisecond while anything
    /// waits for it, [`IDLE_TICK`] otherwise.
    pub fn housekeeping_interval(&self) -> Duration {
        if self.timer_needed() { TICK } else { IDLE_TICK }
    }

    /// One turn of the housekeeping: the watchdog's beat, the end of a shutdown's drain,
    /// parked messages retried, the engine's tick, paused readers resumed.
    pub fn housekeeping_tick(&self) {
        self.node.core_beats[self.index].fetch_add(1, Relaxed);
        self.cut_sessions_after_the_drain();
        self.retry_parked();
        self.engine.borrow_mut().tick(self);
        if !self.is_backpressured() {
            self.resume_readers();
        }
    }

    /// Sleeps [`IDLE_TICK`], or less if [`Core::need_timer`] calls first.
    async fn idle_until_needed(&self) {
        let mut idle = std::pin::pin!(monoio::time::sleep(IDLE_TICK));
        poll_fn(|cx| {
            if idle.as_mut().poll(cx).is_ready() || self.timer_needed() {
                return Poll::Ready(());
            }
            self.waiters.borrow_mut().timer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        self.waiters.borrow_mut().timer.take();
    }

    /// Visits every session once per [`SWEEP_INTERVAL`], one wheel slot per tick and at
    /// most [`SWEEP_BATCH`] sessions between yields (see [`SessionSweep`]). Once per turn
    /// of the wheel it closes the metrics window of queue depths and gives freed memory
    /// back. One sweep per core instead of one timer per session keeps idle sessions small.
    pub async fn sweep_idle(self: Rc<Self>) {
        let ping = crate::router::ws_frame(wsproto::OpCode::Ping, b"");
        let slots = self.registry.borrow().slots();
        // The slot's connection ids: the registry may change while the sweep yields.
        let mut due = Vec::new();
        let mut deepest = 0;
        loop {
            for slot in 0..slots {
                monoio::time::sleep(self.sweep_tick()).await;
                due.clear();
                self.registry.borrow().slot_connections(slot, &mut due);
                for (i, batch) in due.chunks(SWEEP_BATCH).enumerate() {
                    if i > 0 {
                        yield_to_other_tasks().await;
                    }
                    deepest = deepest.max(self.sweep_batch(batch, &ping));
                }
            }
            self.end_sweep_round(deepest);
            deepest = 0;
        }
    }

    /// How often the sweep visits its next wheel slot.
    pub fn sweep_tick(&self) -> Duration {
        SWEEP_INTERVAL / self.registry.borrow().slots() as u32
    }

    /// Sweeps the wheel's next slot at once, for a driver that runs the sweep from its own
    /// timer: its sessions are a fiftieth of the core's, so no yield is needed.
    pub fn sweep_next_slot(&self, sweep: &mut SweepState) {
        sweep.due.clear();
        self.registry
            .borrow()
            .slot_connections(sweep.slot, &mut sweep.due);
        let due = std::mem::take(&mut sweep.due);
        sweep.deepest = sweep.deepest.max(self.sweep_batch(&due, &sweep.ping));
        sweep.due = due;
        sweep.slot += 1;
        if sweep.slot == self.registry.borrow().slots() {
            sweep.slot = 0;
            self.end_sweep_round(std::mem::take(&mut sweep.deepest));
        }
    }

    /// Once per turn of the sweep's wheel: the queue-depth window closes, and freed memory
    /// goes back to the OS, thoroughly when the core was quiet (fewer frames in the round
    /// than it has sessions). A thorough pass on a busy core costs up to a millisecond and
    /// gives back pages it is about to use again.
    fn end_sweep_round(&self, deepest: usize) {
        self.metrics.end_sweep_window(deepest);
        let moved = self.metrics.frames_moved();
        let in_round = moved.saturating_sub(self.frames_at_round.replace(moved));
        release_freed_memory(in_round <= self.registry.borrow().len() as u64);
    }

    /// Applies [`SessionSweep`] to the sessions `ids` still open; returns the deepest queue
    /// among them.
    fn sweep_batch(&self, ids: &[u64], ping: &bytes::Bytes) -> usize {
        let sweep = SessionSweep {
            now: Instant::now(),
            now_secs: self.now_us() / 1_000_000,
            // While this core does not read, a client's silence is ours: its pings and
            // pongs wait unread. Its silence counts from when reading resumes.
            not_reading: self.is_backpressured(),
            ping_interval: self.node.config.ping_interval,
            idle_timeout: self.node.config.idle_timeout,
        };
        let registry = self.registry.borrow();
        let mut deepest = 0;
        for outbox in ids.iter().filter_map(|&id| registry.get(id)) {
            deepest = deepest.max(outbox.len());
            sweep.visit(outbox, ping, &self.metrics);
        }
        deepest
    }
}

/// Where a driver's sweep is on its wheel ([`Core::sweep_next_slot`]).
pub struct SweepState {
    slot: usize,
    deepest: usize,
    /// The slot's connection ids, kept for reuse.
    due: Vec<u64>,
    ping: bytes::Bytes,
}

impl Default for SweepState {
    fn default() -> SweepState {
        SweepState {
            slot: 0,
            deepest: 0,
            due: Vec::new(),
            ping: crate::router::ws_frame(wsproto::OpCode::Ping, b""),
        }
    }
}

/// What the sweep does with one session at its visit: pings it after `ping_interval` of
/// silence, closes it after `idle_timeout` (4xxx/1000 codes as below), when its token has
/// expired, or when it drains its queue too slowly ([`Outbox::drains_too_slowly`]); drops a
/// closing session stuck past [`CLOSE_GRACE`]; gives an empty queue's memory back.
struct SessionSweep {
    now: Instant,
    now_secs: u64,
    not_reading: bool,
    ping_interval: Duration,
    idle_timeout: Duration,
}

impl SessionSweep {
    fn visit(&self, outbox: &Outbox, ping: &bytes::Bytes, metrics: &CoreMetrics) {
        if outbox.close_requested().is_some() {
            outbox.abort_if_stuck(self.now, CLOSE_GRACE);
            return;
        }
        if self.now_secs >= u64::from(outbox.expires_at) {
            outbox.close(CloseCode::TOKEN_EXPIRED);
            return;
        }
        // A queue left behind by a burst with no push since is judged here.
        if outbox.drains_too_slowly(self.now, metrics) {
            return;
        }
        if self.not_reading {
            outbox.touch(self.now);
            return;
        }
        let silent = outbox.silent_for(self.now);
        if silent >= self.idle_timeout {
            outbox.close(CloseCode::IDLE_TIMEOUT);
        } else if silent >= self.ping_interval && !outbox.pinged() {
            outbox.set_pinged(true);
            outbox.push(Outgoing::Own(ping.clone()), metrics);
        }
    }
}

/// Returns to the runtime once, after scheduling this task again behind those already
/// woken (monoio has no `yield_now`).
async fn yield_to_other_tasks() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::task::Wake;

    use super::*;
    use crate::outbox::QueueLimits;

    const PING_INTERVAL: Duration = Duration::from_secs(25);
    const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

    fn outbox_with(expires_at: u64) -> Outbox {
        let limits = QueueLimits {
            frames: 8,
            bytes: 1 << 20,
            max_frames: 64,
            max_bytes: 4 << 20,
            stall: Duration::from_secs(2),
            behind_for: Duration::from_secs(30),
        };
        Outbox::new(1, 1, expires_at, false, OutboxShared::new(limits))
    }

    /// A session that last read at `start`.
    fn outbox(expires_at: u64, start: Instant) -> Outbox {
        let outbox = outbox_with(expires_at);
        outbox.touch(start);
        outbox
    }

    /// The sweep as it runs `after` `start`, at Unix second 1,000.
    fn sweep(outbox: &Outbox, start: Instant, after: Duration, not_reading: bool) {
        let sweep = SessionSweep {
            now: start + after,
            now_secs: 1_000,
            not_reading,
            ping_interval: PING_INTERVAL,
            idle_timeout: IDLE_TIMEOUT,
        };
        let ping = crate::router::ws_frame(wsproto::OpCode::Ping, b"");
        sweep.visit(outbox, &ping, &CoreMetrics::default());
    }

    #[test]
    fn a_silent_session_is_pinged_once_then_closed_at_the_idle_timeout() {
        let start = Instant::now();
        let outbox = outbox(u64::MAX, start);
        sweep(
            &outbox,
            start,
            PING_INTERVAL - Duration::from_millis(1),
            false,
        );
        assert!(outbox.is_empty() && !outbox.pinged());
        sweep(&outbox, start, PING_INTERVAL, false);
        assert_eq!(outbox.len(), 1, "one ping queued");
        sweep(
            &outbox,
            start,
            PING_INTERVAL + Duration::from_secs(1),
            false,
        );
        assert_eq!(outbox.len(), 1, "no second ping before the client answers");
        assert_eq!(outbox.close_requested(), None);
        sweep(&outbox, start, IDLE_TIMEOUT, false);
        assert_eq!(outbox.close_requested(), Some(CloseCode::IDLE_TIMEOUT));
    }

    #[test]
    fn an_expired_token_closes_the_session() {
        let start = Instant::now();
        let outbox = outbox(1_000, start);
        sweep(&outbox, start, Duration::ZERO, false);
        assert_eq!(outbox.close_requested(), Some(CloseCode::TOKEN_EXPIRED));
    }

    #[test]
    fn silence_while_the_core_does_not_read_is_not_the_clients() {
        let start = Instant::now();
        let outbox = outbox(u64::MAX, start);
        sweep(&outbox, start, IDLE_TIMEOUT, true);
        assert_eq!(outbox.close_requested(), None);
        assert_eq!(
            outbox.silent_for(start + IDLE_TIMEOUT),
            Duration::ZERO,
            "silence counts from now"
        );
    }

    #[test]
    fn a_closing_session_is_dropped_once_its_grace_is_over() {
        let start = Instant::now();
        let outbox = outbox(u64::MAX, start);
        outbox.close(CloseCode::GOING_AWAY);
        sweep(&outbox, start, Duration::ZERO, false);
        assert!(!outbox.is_aborted());
        sweep(&outbox, start, CLOSE_GRACE + Duration::from_secs(1), false);
        assert!(outbox.is_aborted());
    }

    struct Task;

    impl Wake for Task {
        fn wake(self: Arc<Self>) {}
    }

    #[test]
    fn a_shutdown_wait_keeps_one_waker_in_the_list_while_it_waits() {
        let waiters = RefCell::new(Waiters::default());
        let first = Waker::from(Arc::new(Task));
        let other = Waker::from(Arc::new(Task));
        let mut wait = ShutdownWait {
            waiters: &waiters,
            registered: None,
        };
        wait.register(&first);
        wait.register(&first);
        assert_eq!(
            waiters.borrow().shutdown.len(),
            1,
            "polled twice, registered once"
        );
        wait.register(&other);
        assert_eq!(waiters.borrow().shutdown.len(), 1);
        assert!(
            waiters.borrow().shutdown[0].will_wake(&other),
            "the task's new waker"
        );
        let mut second = ShutdownWait {
            waiters: &waiters,
            registered: None,
        };
        second.register(&first);
        drop(wait);
        assert_eq!(
            waiters.borrow().shutdown.len(),
            1,
            "a finished wait leaves the list"
        );
        assert!(waiters.borrow().shutdown[0].will_wake(&first));
        drop(second);
        assert!(waiters.borrow().shutdown.is_empty());
    }
}
