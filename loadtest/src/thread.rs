//! One tester thread: a pinned monoio runtime that opens its share of the connections,
//! drives them, and keeps its own statistics; a coordinator task relays the global phase
//! and sends the main thread a snapshot every second. Threads share only the atomics in
//! [`Shared`] and the snapshot channel.

use std::cell::{Cell, RefCell, RefMut};
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::cli::Metric;
use crate::conn::{self, End};
use crate::ledger::Ledger;
use crate::pacer::Pacer;
use crate::plan::Plan;
use crate::scenario;
use crate::schedule::connect_due;
use crate::stats::{Histograms, histogram};
use crate::target::loopback_source;
use crate::upgrade;

/// Size of each thread's read buffer, shared by its connections.
const SCRATCH_BYTES: usize = 64 * 1024;

/// How often the coordinator looks at the global phase.
const PHASE_POLL: Duration = Duration::from_millis(2);

/// Time connections get to close after Stop before the thread ends anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// The run's phases, in order. The main thread moves the global phase; each thread's
/// coordinator relays it to its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Phase {
    /// Connections are being opened.
    Connecting = 0,
    /// All are open: the chats are created.
    Setup = 1,
    /// The schedule runs from the run start.
    Run = 2,
    /// Everything closes.
    Stop = 3,
}

impl Phase {
    /// The phase after this one.
    pub fn next(self) -> Phase {
        match self {
            Phase::Connecting => Phase::Setup,
            Phase::Setup => Phase::Run,
            Phase::Run | Phase::Stop => Phase::Stop,
        }
    }

    fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Connecting,
            1 => Phase::Setup,
            2 => Phase::Run,
            _ => Phase::Stop,
        }
    }
}

/// What all threads and the main thread share.
#[derive(Debug)]
pub struct Shared {
    /// The plan.
    pub plan: Plan,
    /// Time zero of the run: every timestamp is microseconds since it.
    pub epoch: Instant,
    phase: AtomicU8,
    run_start_us: AtomicU64,
    /// Connections upgraded.
    pub connected: AtomicUsize,
    /// Connection attempts that failed.
    pub failed: AtomicUsize,
    /// Connections done with setup, or ended before it.
    pub settled: AtomicUsize,
}

impl Shared {
    /// Shared state for `plan`, with the epoch now.
    pub fn new(plan: Plan) -> Shared {
        Shared {
            plan,
            epoch: Instant::now(),
            phase: AtomicU8::new(Phase::Connecting as u8),
            run_start_us: AtomicU64::new(u64::MAX),
            connected: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            settled: AtomicUsize::new(0),
        }
    }

    /// Now, microseconds since the epoch.
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// The global phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Moves the global phase (the run start must be set before [`Phase::Run`]).
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// When the schedules start, microseconds since the epoch.
    pub fn run_start_us(&self) -> u64 {
        self.run_start_us.load(Ordering::Acquire)
    }

    /// Sets the schedules' start.
    pub fn set_run_start_us(&self, us: u64) {
        self.run_start_us.store(us, Ordering::Release);
    }
}

/// Counts a thread keeps.
#[derive(Debug, Clone, Default)]
pub struct ThreadStats {
    /// Latencies.
    pub histograms: Histograms,
    /// Messages sent and received.
    pub ledger: Ledger,
    /// Scheduled messages sent.
    pub sent: u64,
    /// Data messages received (duplicates included).
    pub received: u64,
    /// Connections upgraded.
    pub connected: u64,
    /// Failed attempts by reason.
    pub connect_errors: BTreeMap<String, u64>,
    /// Error frames and other errors by label.
    pub errors: BTreeMap<String, u64>,
    /// Connection ends by label.
    pub closes: BTreeMap<String, u64>,
    /// Abnormal ends.
    pub abnormal_closes: u64,
    /// First connection attempt, µs since the epoch.
    pub first_attempt_us: Option<u64>,
    /// Last successful upgrade, µs since the epoch.
    pub last_connect_us: u64,
    interval: Interval,
}

/// What changed since the last snapshot.
#[derive(Debug, Clone)]
struct Interval {
    sent: u64,
    received: u64,
    errors: u64,
    primary: Histogram<u64>,
    max_lag_us: u64,
}

impl Default for Interval {
    fn default() -> Self {
        Interval {
            sent: 0,
            received: 0,
            errors: 0,
            primary: histogram(),
            max_lag_us: 0,
        }
    }
}

impl ThreadStats {
    /// Records a latency; `primary` says whether it is the scenario's main one.
    pub fn record(&mut self, metric: Metric, us: u64, primary: Metric) {
        self.histograms.record(metric, us);
        if metric == primary {
            self.interval.primary.saturating_record(us.max(1));
        }
    }

    /// One message left, `lag_us` after its scheduled time when it had one.
    pub fn sent(&mut self, lag_us: Option<u64>) {
        self.sent += 1;
        self.interval.sent += 1;
        if let Some(lag_us) = lag_us {
            self.histograms.record(Metric::SendLag, lag_us);
            self.interval.max_lag_us = self.interval.max_lag_us.max(lag_us);
        }
    }

    /// One data message arrived.
    pub fn received(&mut self) {
        self.received += 1;
        self.interval.received += 1;
    }

    /// Counts an error under `label`.
    pub fn error(&mut self, label: String) {
        *self.errors.entry(label).or_default() += 1;
        self.interval.errors += 1;
    }

    fn connect_failed(&mut self, label: String) {
        *self.connect_errors.entry(label).or_default() += 1;
        self.interval.errors += 1;
    }

    fn ended(&mut self, end: &End) {
        *self.closes.entry(end.label()).or_default() += 1;
        if end.is_error() {
            self.abnormal_closes += 1;
            self.interval.errors += 1;
        }
    }
}

/// A thread's progress over the last second.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The thread.
    pub thread: usize,
    /// When, µs since the epoch.
    pub at_us: u64,
    /// Messages sent in the interval.
    pub sent: u64,
    /// Messages received in the interval.
    pub received: u64,
    /// Errors in the interval.
    pub errors: u64,
    /// The primary latency in the interval.
    pub primary: Histogram<u64>,
    /// The latest a scheduled send left in the interval.
    pub max_lag_us: u64,
    /// Open connections.
    pub live: usize,
}

/// CPU the thread used in one phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseCpu {
    /// The phase.
    pub phase: Phase,
    /// Thread CPU time, µs.
    pub cpu_us: u64,
    /// Wall time, µs.
    pub wall_us: u64,
}

/// What a thread hands back at the end.
#[derive(Debug, Clone)]
pub struct ThreadReport {
    /// The thread.
    pub index: usize,
    /// Its statistics.
    pub stats: ThreadStats,
    /// Its CPU use per phase.
    pub cpu: Vec<PhaseCpu>,
}

/// A thread's state, shared by its tasks.
pub struct ThreadCtx {
    /// What all threads share.
    pub shared: Arc<Shared>,
    /// This thread's number.
    pub index: usize,
    stats: RefCell<ThreadStats>,
    phase: Cell<Phase>,
    phase_waiters: RefCell<Vec<Waker>>,
    live: Cell<usize>,
    inflight: Cell<usize>,
    slot_waiter: RefCell<Option<Waker>>,
    rng: RefCell<fastrand::Rng>,
    scratch: RefCell<Box<[u8]>>,
    /// Precise wake-ups for the connections' deadlines.
    pub pacer: Pacer,
}

impl ThreadCtx {
    fn new(shared: Arc<Shared>, index: usize, pacer: Pacer) -> ThreadCtx {
        let seed = shared.plan.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ThreadCtx {
            shared,
            index,
            stats: RefCell::new(ThreadStats::default()),
            phase: Cell::new(Phase::Connecting),
            phase_waiters: RefCell::new(Vec::new()),
            live: Cell::new(0),
            inflight: Cell::new(0),
            slot_waiter: RefCell::new(None),
            rng: RefCell::new(fastrand::Rng::with_seed(seed)),
            scratch: RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice()),
            pacer,
        }
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.shared.plan
    }

    /// Now, µs since the epoch.
    pub fn now_us(&self) -> u64 {
        self.shared.now_us()
    }

    /// The runtime instant of `us` since the epoch (for coarse waits: deadlines that
    /// measure go through the pacer).
    pub fn instant_at(&self, us: u64) -> monoio::time::Instant {
        monoio::time::Instant::from_std(self.shared.epoch + Duration::from_micros(us))
    }

    /// This thread's statistics (never borrowed across an await).
    pub fn stats_mut(&self) -> RefMut<'_, ThreadStats> {
        self.stats.borrow_mut()
    }

    /// Records a latency of `metric`.
    pub fn record(&self, metric: Metric, us: u64) {
        let primary = self.plan().work.primary();
        self.stats_mut().record(metric, us, primary);
    }

    /// A uniform random number in `[0, 1)`.
    pub fn random_fraction(&self) -> f64 {
        self.rng.borrow_mut().f64()
    }

    /// The phase as this thread last relayed it.
    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    /// Wakes `waker` when the thread's phase changes.
    pub fn wake_on_phase_change(&self, waker: Waker) {
        self.phase_waiters.borrow_mut().push(waker);
    }

    /// A connection finished setup or ended before it.
    pub fn settled(&self) {
        self.shared.settled.fetch_add(1, Ordering::AcqRel);
    }

    /// The read buffer the thread's connections share, one read at a time.
    pub fn scratch(&self) -> RefMut<'_, Box<[u8]>> {
        self.scratch.borrow_mut()
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.set(phase);
        for waker in self.phase_waiters.take() {
            waker.wake();
        }
    }

    async fn acquire_slot(&self) {
        poll_fn(|cx| {
            if self.inflight.get() < self.plan().connect_concurrency {
                self.inflight.set(self.inflight.get() + 1);
                Poll::Ready(())
            } else {
                *self.slot_waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }

    fn release_slot(&self) {
        self.inflight.set(self.inflight.get() - 1);
        if let Some(waker) = self.slot_waiter.take() {
            waker.wake();
        }
    }

    fn take_snapshot(&self) -> Snapshot {
        let mut stats = self.stats_mut();
        let interval = std::mem::take(&mut stats.interval);
        Snapshot {
            thread: self.index,
            at_us: self.now_us(),
            sent: interval.sent,
            received: interval.received,
            errors: interval.errors,
            primary: interval.primary,
            max_lag_us: interval.max_lag_us,
            live: self.live.get(),
        }
    }
}

/// Why a thread could not run.
#[derive(Debug, thiserror::Error)]
pub enum ThreadError {
    /// The runtime could not be built.
    #[error("thread {thread}: building the runtime: {source}")]
    Runtime {
        /// The thread.
        thread: usize,
        /// The cause.
        source: std::io::Error,
    },
    /// The pacer's timer could not be made.
    #[error("thread {thread}: making its pacer's timer: {source}")]
    Pacer {
        /// The thread.
        thread: usize,
        /// The cause.
        source: std::io::Error,
    },
}

/// Runs thread `index` with the connections `indices` until the global Stop.
pub fn run(
    shared: Arc<Shared>,
    index: usize,
    indices: Vec<usize>,
    snapshots: Sender<Snapshot>,
) -> Result<ThreadReport, ThreadError> {
    let cpu = shared
        .plan
        .cpus
        .as_ref()
        .and_then(|cpus| cpus.get(index % cpus.len().max(1)).copied());
    if let Some(cpu) = cpu {
        // Unpinned is slower, not wrong: go on.
        let _ = monoio::utils::bind_to_cpu_set([cpu]);
    }
    // monoio's epoll driver, not io_uring: every socket here is readiness-driven (poll-io),
    // which monoio's io_uring driver serves through an epoll instance polled from the ring,
    // and that driver re-arms the epoll poll only when it parks with nothing else to do, so
    // a busy schedule (thousands of wake-ups a second) starves socket I/O. The epoll driver
    // checks sockets on every park.
    let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .with_entries(4096)
        .enable_timer()
        .build()
        .map_err(|source| ThreadError::Runtime {
            thread: index,
            source,
        })?;
    runtime.block_on(async move {
        let pacer = Pacer::new(shared.epoch).map_err(|source| ThreadError::Pacer {
            thread: index,
            source,
        })?;
        let ctx = Rc::new(ThreadCtx::new(shared, index, pacer));
        Ok(coordinate(ctx, indices, snapshots).await)
    })
}

async fn coordinate(
    ctx: Rc<ThreadCtx>,
    indices: Vec<usize>,
    snapshots: Sender<Snapshot>,
) -> ThreadReport {
    monoio::spawn(open_all(ctx.clone(), indices));
    let pacer_ctx = ctx.clone();
    monoio::spawn(async move { pacer_ctx.pacer.run().await });
    let mut cpu = Vec::new();
    let mut phase_start = (Phase::Connecting, thread_cpu_us(), ctx.now_us());
    let mut next_snapshot = ctx.now_us() + 1_000_000;
    let mut stop_at = None;
    loop {
        monoio::time::sleep(PHASE_POLL).await;
        let now = ctx.now_us();
        let global = ctx.shared.phase();
        if global != ctx.phase() {
            let (phase, cpu_then, wall_then) = phase_start;
            let cpu_now = thread_cpu_us();
            cpu.push(PhaseCpu {
                phase,
                cpu_us: cpu_now - cpu_then,
                wall_us: now - wall_then,
            });
            phase_start = (global, cpu_now, now);
            ctx.set_phase(global);
        }
        if now >= next_snapshot {
            next_snapshot += 1_000_000;
            // The main thread gone means the run is over anyway.
            let _ = snapshots.send(ctx.take_snapshot());
        }
        if global == Phase::Stop {
            let since = *stop_at.get_or_insert(now);
            if ctx.live.get() == 0 || now - since > CLOSE_GRACE.as_micros() as u64 {
                break;
            }
        }
    }
    let _ = snapshots.send(ctx.take_snapshot());
    let stats = std::mem::take(&mut *ctx.stats_mut());
    ThreadReport {
        index: ctx.index,
        stats,
        cpu,
    }
}

/// Thread CPU time in µs (user and system).
fn thread_cpu_us() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1000
}

/// Opens this thread's connections at its share of the connect rate.
async fn open_all(ctx: Rc<ThreadCtx>, indices: Vec<usize>) {
    let plan = ctx.plan();
    let rate = plan.connect_rate / plan.threads as f64;
    let start = ctx.now_us();
    for (k, index) in indices.into_iter().enumerate() {
        if ctx.phase() == Phase::Stop {
            break;
        }
        let due = connect_due(start, rate, k);
        if due > ctx.now_us() {
            monoio::time::sleep_until(ctx.instant_at(due)).await;
        }
        ctx.acquire_slot().await;
        ctx.live.set(ctx.live.get() + 1);
        monoio::spawn(connection(ctx.clone(), index));
    }
}

/// One connection's life: open, drive, count the end.
async fn connection(ctx: Rc<ThreadCtx>, index: usize) {
    let plan = ctx.plan();
    let user_id = plan.user_id(index);
    let (key, source) = {
        let random = ctx.rng.borrow_mut().u128(..);
        let source = (plan.source_addrs > 0).then(|| loopback_source(index, plan.source_addrs));
        (upgrade::key(random), source)
    };
    let token = plan.secret.as_ref().map(|secret| {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + plan.token_ttl.as_secs();
        crate::token::mint_hs256(secret.as_bytes(), user_id, exp)
    });
    let request = upgrade::request(&plan.target, &key, token.as_deref(), plan.raw_group(index));
    let started = ctx.now_us();
    ctx.stats_mut().first_attempt_us.get_or_insert(started);
    let opened = monoio::time::timeout(
        plan.connect_timeout,
        conn::open(plan.target.addr, source, &request, &key),
    )
    .await;
    ctx.release_slot();
    match opened {
        Ok(Ok((io, leftover))) => {
            let now = ctx.now_us();
            ctx.record(Metric::Connect, now - started);
            {
                let mut stats = ctx.stats_mut();
                stats.connected += 1;
                stats.last_connect_us = stats.last_connect_us.max(now);
            }
            ctx.shared.connected.fetch_add(1, Ordering::AcqRel);
            let end = scenario::drive(&ctx, index, io, leftover).await;
            ctx.stats_mut().ended(&end);
        }
        Ok(Err(error)) => {
            ctx.stats_mut().connect_failed(error.label());
            ctx.shared.failed.fetch_add(1, Ordering::AcqRel);
        }
        Err(_) => {
            ctx.stats_mut().connect_failed("timeout".to_owned());
            ctx.shared.failed.fetch_add(1, Ordering::AcqRel);
        }
    }
    ctx.live.set(ctx.live.get() - 1);
}
