//! One core: a pinned monoio runtime that owns its listener, its sessions, its engine shard
//! and its counters. It touches another core only by a message in that core's mailbox.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use smallvec::SmallVec;
use wire::envelope::Target;
use wire::server::ErrorFrame;
use wire::{ClientMsgId, CloseCode, ErrorCode, ServerFrame, UserId};

use crate::bridge::{BridgeInbox, BridgeMsg};
use crate::engine::Engine;
use crate::metrics::CoreMetrics;
use crate::node::Node;
use crate::outbox::{Outbox, Outgoing, QueueLimits};
use crate::router::{CoreMsg, Delivery, Skip, connection_id, core_holds_any};

/// What each core (after its sweep) and the broker bridge call to hand back to the OS what
/// the allocator keeps of freed memory; set by the binary, which knows its allocator.
static RELEASE_FREED_MEMORY: OnceLock<fn()> = OnceLock::new();

/// Sets what a core calls once a sweep (every second) to give freed memory back. mimalloc,
/// for one, returns freed pages only when the thread that freed them calls into it again
/// after its purge delay: a core that goes quiet after a flood would hold the flood's
/// queues for good.
pub fn release_freed_memory_with(release: fn()) {
    let _ = RELEASE_FREED_MEMORY.set(release);
}

/// Gives back to the OS what the allocator keeps of memory this thread freed, if the binary
/// said how ([`release_freed_memory_with`]); the cores and the broker bridge call it once a
/// second.
pub fn release_freed_memory() {
    if let Some(release) = RELEASE_FREED_MEMORY.get() {
        release();
    }
}

/// Read buffer shared by every session of a core: a session borrows it only while it
/// parses what one read brought, so an idle session holds no buffer at all.
pub const SCRATCH_BYTES: usize = 64 * 1024;

/// How often a core looks for silent sessions to ping or close.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

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
    waiters: &'a RefCell<Vec<Waker>>,
    registered: Option<Waker>,
}

impl ShutdownWait<'_> {
    fn register(&mut self, waker: &Waker) {
        if self.registered.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return;
        }
        self.deregister();
        self.waiters.borrow_mut().push(waker.clone());
        self.registered = Some(waker.clone());
    }

    fn deregister(&mut self) {
        if let Some(registered) = self.registered.take() {
            let mut waiters = self.waiters.borrow_mut();
            if let Some(at) = waiters.iter().position(|w| w.will_wake(&registered)) {
                waiters.swap_remove(at);
            }
        }
    }
}

impl Drop for ShutdownWait<'_> {
    fn drop(&mut self) {
        self.deregister();
    }
}

/// A message waiting for room in a full queue.
enum Parked {
    Core(usize, CoreMsg),
    Bridge(Arc<BridgeInbox>, BridgeMsg),
}

impl Parked {
    /// Tries again; hands itself back while the queue is still full.
    fn push(self, node: &Node) -> Result<(), Parked> {
        match self {
            Parked::Core(core, msg) => node.mailboxes[core]
                .push(msg)
                .map_err(|msg| Parked::Core(core, msg)),
            Parked::Bridge(inbox, msg) => inbox.push(msg).map_err(|msg| Parked::Bridge(inbox, msg)),
        }
    }
}

/// A core's state. Lives in an `Rc`: only this core's thread ever sees it.
pub struct Core {
    index: usize,
    /// What every core shares (read-only).
    pub node: Arc<Node>,
    /// This core's counters.
    pub metrics: Arc<CoreMetrics>,
    sessions: RefCell<HashMap<u64, Rc<Outbox>>>,
    /// Each user's sessions on this core; almost always one, held inline.
    users: RefCell<HashMap<UserId, SmallVec<[u64; 1]>>>,
    /// The outbound queue limits, one copy for all of the core's sessions.
    queue_limits: Rc<QueueLimits>,
    engine: RefCell<Box<dyn Engine>>,
    /// Messages for cores whose mailbox was full, in order; while any wait, sessions stop
    /// reading instead of buffering more.
    overflow: RefCell<VecDeque<Parked>>,
    /// Session changes for the registry that found its queue full, in order. Apart from
    /// `overflow`, so that they never wait behind frames that wait for the broker, and
    /// without pausing readers: they do not grow with what clients send.
    parked_changes: RefCell<VecDeque<Parked>>,
    paused_readers: RefCell<Vec<Waker>>,
    /// The timer task's waker while it idles, for work that needs it sooner.
    timer_waker: RefCell<Option<Waker>>,
    /// The shared read buffer.
    pub scratch: RefCell<Box<[u8]>>,
    connections_opened: Cell<u64>,
    /// Connections accepted and not yet sessions: a stopping core waits for them too.
    upgrading: Rc<Cell<usize>>,
    shutting_down: Cell<bool>,
    /// When the shutdown's drain ends and what is still open is cut.
    drain_ends: Cell<Option<Instant>>,
    shutdown_waiters: RefCell<Vec<Waker>>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("index", &self.index)
            .field("sessions", &self.sessions.borrow().len())
            .finish()
    }
}

impl Core {
    /// A core's state with its engine shard.
    pub fn new(index: usize, node: Arc<Node>, engine: Box<dyn Engine>) -> Core {
        let queue_limits = Rc::new(QueueLimits {
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
            sessions: RefCell::new(HashMap::new()),
            users: RefCell::new(HashMap::new()),
            queue_limits,
            engine: RefCell::new(engine),
            overflow: RefCell::new(VecDeque::new()),
            parked_changes: RefCell::new(VecDeque::new()),
            paused_readers: RefCell::new(Vec::new()),
            timer_waker: RefCell::new(None),
            scratch: RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice()),
            connections_opened: Cell::new(first_connection_number()),
            upgrading: Rc::new(Cell::new(0)),
            shutting_down: Cell::new(false),
            drain_ends: Cell::new(None),
            shutdown_waiters: RefCell::new(Vec::new()),
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
        self.shutting_down.get()
    }

    /// Runs `f` with the engine shard.
    pub fn with_engine<R>(&self, f: impl FnOnce(&mut dyn Engine) -> R) -> R {
        f(self.engine.borrow_mut().as_mut())
    }

    /// Registers a new session, whose token expires at `expires_at` (Unix seconds), and
    /// returns its outbox.
    pub fn open_session(&self, user_id: UserId, expires_at: u64, text: bool) -> Rc<Outbox> {
        let n = self.connections_opened.get() + 1;
        self.connections_opened.set(n);
        let id = connection_id(self.index, n);
        let outbox = Rc::new(Outbox::new(
            id,
            user_id,
            expires_at,
            text,
            self.queue_limits.clone(),
        ));
        self.sessions.borrow_mut().insert(id, outbox.clone());
        self.users.borrow_mut().entry(user_id).or_default().push(id);
        self.metrics.connections.fetch_add(1, Relaxed);
        self.metrics.connections_total.fetch_add(1, Relaxed);
        outbox
    }

    /// Forgets a session.
    pub fn close_session(&self, outbox: &Outbox) {
        outbox.discard(&self.metrics);
        self.sessions.borrow_mut().remove(&outbox.connection_id);
        let mut users = self.users.borrow_mut();
        if let Some(ids) = users.get_mut(&outbox.user_id) {
            ids.retain(|id| *id != outbox.connection_id);
            if ids.is_empty() {
                users.remove(&outbox.user_id);
            }
        }
        self.metrics.connections.fetch_sub(1, Relaxed);
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
        let sessions = self.sessions.borrow();
        let users = self.users.borrow();
        let mut push = |id: &u64| {
            if let Some(outbox) = sessions.get(id) {
                self.metrics.frame_out(delivery.kind());
                outbox.push(Outgoing::Shared(delivery.clone()), &self.metrics);
            }
        };
        for target in targets {
            match *target {
                Target::User(user) if except != Some(Skip::User(user)) => users
                    .get(&user)
                    .into_iter()
                    .flatten()
                    .filter(|&&id| except != Some(Skip::Connection(id)))
                    .for_each(&mut push),
                Target::User(_) | Target::NotConnection(_) => {}
                Target::Connection(id) => push(&id),
            }
        }
    }

    /// Sends `msg` to core `core`. A full mailbox parks the message in order and pauses
    /// this core's readers until it drains: backpressure, not unbounded buffering.
    pub fn send_to_core(&self, core: usize, msg: CoreMsg) {
        self.send(Parked::Core(core, msg));
    }

    /// Hands work to the broker bridge: a frame in order with everything parked before it,
    /// a session change in order with the session changes parked before it.
    pub fn send_to_bridge(&self, inbox: &Arc<BridgeInbox>, msg: BridgeMsg) {
        let session_change = BridgeInbox::is_session_change(&msg);
        let parked = Parked::Bridge(inbox.clone(), msg);
        if session_change {
            self.push_in_order(&self.parked_changes, parked);
        } else {
            self.send(parked);
        }
    }

    fn send(&self, parked: Parked) {
        if self.push_in_order(&self.overflow, parked) {
            self.metrics.mailbox_full.fetch_add(1, Relaxed);
        }
    }

    /// Pushes `parked` to its queue, or, if messages already wait in `waiting` or its queue
    /// is full, appends it to `waiting` (retried by the timer) to keep the order. True when
    /// it found its queue full.
    fn push_in_order(&self, waiting: &RefCell<VecDeque<Parked>>, parked: Parked) -> bool {
        let mut queue = waiting.borrow_mut();
        if !queue.is_empty() {
            queue.push_back(parked);
            return false;
        }
        match parked.push(&self.node) {
            Ok(()) => false,
            Err(parked) => {
                queue.push_back(parked);
                drop(queue);
                self.need_timer();
                true
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
        !self.overflow.borrow().is_empty()
            || (self
                .node
                .broker_paused
                .load(std::sync::atomic::Ordering::Acquire)
                && !self.node.broker_unreachable())
    }

    /// Wakes `waker` when the backpressure ends.
    pub fn wait_for_room(&self, waker: &Waker) {
        self.paused_readers.borrow_mut().push(waker.clone());
        self.need_timer();
    }

    /// Wakes the idle timer: something now waits for its next tick.
    pub fn need_timer(&self) {
        if let Some(waker) = self.timer_waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Whether anything waits for the timer: parked messages, paused readers, engine work.
    fn timer_needed(&self) -> bool {
        !self.overflow.borrow().is_empty()
            || !self.parked_changes.borrow().is_empty()
            || !self.paused_readers.borrow().is_empty()
            || self.engine.borrow().wants_tick()
    }

    fn retry_overflow(&self) {
        self.retry(&self.parked_changes);
        self.retry(&self.overflow);
    }

    /// Pushes what waits in `waiting`, in order, while its queues take it.
    fn retry(&self, waiting: &RefCell<VecDeque<Parked>>) {
        let mut queue = waiting.borrow_mut();
        while let Some(parked) = queue.pop_front() {
            if let Err(parked) = parked.push(&self.node) {
                queue.push_front(parked);
                return;
            }
        }
    }

    fn resume_readers(&self) {
        for waker in self.paused_readers.borrow_mut().drain(..) {
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
        if self.shutting_down.replace(true) {
            return;
        }
        tracing::info!(
            core = self.index,
            sessions = self.sessions.borrow().len(),
            "closing sessions with 1001"
        );
        for outbox in self.sessions.borrow().values() {
            outbox.close(CloseCode::GOING_AWAY);
        }
        for waker in self.shutdown_waiters.borrow_mut().drain(..) {
            waker.wake();
        }
        self.drain_ends.set(Some(Instant::now() + SHUTDOWN_DRAIN));
    }

    /// Ends every session still open after the shutdown's drain, written or not.
    fn cut_remaining_sessions(&self) {
        let now = Instant::now();
        let mut cut = 0;
        for outbox in self.sessions.borrow().values() {
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
            waiters: &self.shutdown_waiters,
            registered: None,
        };
        poll_fn(|cx| {
            if self.shutting_down.get() {
                return Poll::Ready(());
            }
            waiting.register(cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Whether every session, and every connection still upgrading, has gone.
    pub fn is_idle(&self) -> bool {
        self.sessions.borrow().is_empty() && self.upgrading.get() == 0
    }

    /// Counts a connection as upgrading until the returned guard drops.
    pub fn upgrade_started(&self) -> UpgradeGuard {
        self.upgrading.set(self.upgrading.get() + 1);
        UpgradeGuard(self.upgrading.clone())
    }

    /// Drains this core's mailbox for as long as the core runs.
    pub async fn pump_mailbox(self: Rc<Self>) {
        let mailbox = &self.node.mailboxes[self.index];
        loop {
            let msg = poll_fn(|cx| mailbox.poll_recv(cx)).await;
            self.handle(msg);
            // Handle what else is already queued before yielding, in one go.
            while let Poll::Ready(msg) =
                mailbox.poll_recv(&mut std::task::Context::from_waker(Waker::noop()))
            {
                self.handle(msg);
            }
        }
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
            self.node.core_beats[self.index].fetch_add(1, Relaxed);
            if self
                .drain_ends
                .get()
                .is_some_and(|end| Instant::now() >= end)
            {
                self.drain_ends.set(None);
                self.cut_remaining_sessions();
            }
            self.retry_overflow();
            self.engine.borrow_mut().tick(&self);
            if !self.is_backpressured() {
                self.resume_readers();
            }
        }
    }

    /// Sleeps [`IDLE_TICK`], or less if [`Core::need_timer`] calls first.
    async fn idle_until_needed(&self) {
        let mut idle = std::pin::pin!(monoio::time::sleep(IDLE_TICK));
        poll_fn(|cx| {
            if idle.as_mut().poll(cx).is_ready() || self.timer_needed() {
                return Poll::Ready(());
            }
            *self.timer_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        self.timer_waker.borrow_mut().take();
    }

    /// Pings silent sessions, closes the ones silent past the idle timeout and the ones that
    /// drain their queue too slowly ([`Outbox::drains_too_slowly`]). One sweep
    /// per core instead of one timer per session keeps idle sessions small.
    pub async fn sweep_idle(self: Rc<Self>) {
        let ping = crate::router::ws_frame(wsproto::OpCode::Ping, b"");
        loop {
            monoio::time::sleep(SWEEP_INTERVAL).await;
            let now = Instant::now();
            let now_secs = self.now_us() / 1_000_000;
            // While this core does not read, a client's silence is ours: its pings and
            // pongs wait unread. Its silence counts from when reading resumes.
            let not_reading = self.is_backpressured();
            let mut deepest = 0;
            for outbox in self.sessions.borrow().values() {
                deepest = deepest.max(outbox.len());
                if outbox.close_requested().is_some() {
                    outbox.abort_if_stuck(now, CLOSE_GRACE);
                    continue;
                }
                if now_secs >= outbox.expires_at {
                    outbox.close(CloseCode::TOKEN_EXPIRED);
                    continue;
                }
                // A queue left behind by a burst with no push since is judged here.
                if outbox.drains_too_slowly(now, &self.metrics) {
                    continue;
                }
                if not_reading {
                    outbox.touch(now);
                    continue;
                }
                let silent = now.saturating_duration_since(outbox.last_read());
                if silent >= self.node.config.idle_timeout {
                    outbox.close(CloseCode::IDLE_TIMEOUT);
                } else if silent >= self.node.config.ping_interval && !outbox.pinged() {
                    outbox.set_pinged(true);
                    outbox.push(Outgoing::Own(ping.clone()), &self.metrics);
                }
            }
            self.metrics.end_sweep_window(deepest);
            release_freed_memory();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;

    struct Task;

    impl Wake for Task {
        fn wake(self: Arc<Self>) {}
    }

    #[test]
    fn a_shutdown_wait_keeps_one_waker_in_the_list_while_it_waits() {
        let waiters = RefCell::new(Vec::new());
        let first = Waker::from(Arc::new(Task));
        let other = Waker::from(Arc::new(Task));
        let mut wait = ShutdownWait {
            waiters: &waiters,
            registered: None,
        };
        wait.register(&first);
        wait.register(&first);
        assert_eq!(waiters.borrow().len(), 1, "polled twice, registered once");
        wait.register(&other);
        assert_eq!(waiters.borrow().len(), 1);
        assert!(
            waiters.borrow()[0].will_wake(&other),
            "the task's new waker"
        );
        let mut second = ShutdownWait {
            waiters: &waiters,
            registered: None,
        };
        second.register(&first);
        drop(wait);
        assert_eq!(waiters.borrow().len(), 1, "a finished wait leaves the list");
        assert!(waiters.borrow()[0].will_wake(&first));
        drop(second);
        assert!(waiters.borrow().is_empty());
    }
}
