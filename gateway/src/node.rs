//! A node: the cores, their listeners and mailboxes, and a handle to stop them. Binding
//! happens here, before any core starts, so a bad address fails the start at once and
//! `--listen` with port 0 gives every core the same port.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use broker::Topology;
use monoio::io::Canceller;
use monoio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};
use telemetry::descriptors::DescriptorReserve;

use crate::auth::Verifier;
use crate::bridge::{Bridge, BridgeInbox, BridgeSettings};
use crate::config::{Config, EngineKind, IoDriver, JwtAlgorithm};
use crate::core::Core;
use crate::descriptors::{self, DescriptorPressure};
use crate::engine::Engine;
use crate::engine::amqp::AmqpEngine;
use crate::engine::memory::MemoryEngine;
use crate::ip_limit::IpConnectionLimit;
use crate::metrics::CoreMetrics;
use crate::router::{CoreMsg, Mailbox};
use crate::user_limit::UserBudgets;
use crate::{admin, affinity, connection, health, tls};

/// Messages a core's mailbox holds before senders park theirs and pause reading.
const MAILBOX_CAPACITY: usize = 64 * 1024;

/// Pending connections the kernel queues per listener.
const LISTEN_BACKLOG: i32 = 4096;

/// How often a process waiting for its admin port tries to bind it.
const ADMIN_RETRY: Duration = Duration::from_millis(200);

/// How long the broker may be unreachable before sessions are told (5030) instead of
/// waiting: a reconnection takes a few hundred milliseconds, an outage much longer.
const BROKER_GRACE_US: u64 = 1_000_000;

/// What every core shares, read-only after start.
pub struct Node {
    /// The configuration.
    pub config: Config,
    /// Token verification with the pinned algorithm.
    pub verifier: Verifier,
    /// TLS, when configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// `--connections-per-ip-per-minute`, counted across every core.
    pub ip_limit: Option<IpConnectionLimit>,
    /// `--user-frames-per-second`: one send budget per user, shared across every core.
    pub user_budgets: Option<Arc<UserBudgets>>,
    /// The certificate the TLS acceptor presents, replaced by a reload.
    pub certificates: Option<Arc<tls::Certificates>>,
    /// One mailbox per core.
    pub mailboxes: Vec<Mailbox>,
    /// One set of counters per core.
    pub metrics: Vec<Arc<CoreMetrics>>,
    /// Cores whose runtime is up and accepting.
    pub cores_ready: AtomicUsize,
    /// Set once shutdown begins: /readyz turns false.
    pub stopping: AtomicBool,
    /// Set while the broker is behind on confirms or unreachable: sessions stop reading.
    pub broker_paused: AtomicBool,
    /// Whether the broker connection is up (always true without a broker).
    pub broker_connected: AtomicBool,
    /// Since when the broker has been unreachable, in microseconds after `epoch` (0: it is
    /// connected, or there is none).
    broker_down_since_us: AtomicU64,
    /// The zero of `broker_down_since_us`.
    epoch: Instant,
    /// Whether Redis answers its probes (always true without Redis).
    pub redis_connected: AtomicBool,
    /// Bumped by each core's timer task at least every 100 ms; [`health`] watches them.
    pub core_beats: Vec<AtomicU64>,
    /// Per core: whether its beat moved within [`health::STALL_AFTER`].
    pub core_alive: Vec<AtomicBool>,
    /// Whether and how often the process ran out of file descriptors.
    pub descriptors: DescriptorPressure,
    /// When the graceful stop must be over; set when it begins.
    stop_deadline: OnceLock<Instant>,
    /// Whether every core accepts on the same sockets (passed by systemd) rather than on a
    /// SO_REUSEPORT socket of its own.
    pub shared_listeners: bool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("cores", &self.mailboxes.len())
            .field("listen", &self.config.listen)
            .finish()
    }
}

impl Node {
    /// The bridge lost the broker (or has not reached it yet); the first call of an outage
    /// counts.
    pub fn note_broker_down(&self) {
        let now = self.epoch.elapsed().as_micros() as u64 + 1;
        let _ =
            self.broker_down_since_us
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// The bridge has a broker session again.
    pub fn note_broker_up(&self) {
        self.broker_down_since_us.store(0, Ordering::Release);
    }

    /// Whether the broker has been unreachable for longer than [`BROKER_GRACE_US`]: sessions
    /// then keep reading and frames that need the broker are refused with 5030, instead of
    /// waiting in paused reads. A reconnection within the grace is waited out.
    pub fn broker_unreachable(&self) -> bool {
        let since = self.broker_down_since_us.load(Ordering::Acquire);
        since != 0 && self.epoch.elapsed().as_micros() as u64 + 1 - since > BROKER_GRACE_US
    }

    /// Whether the node should get new clients: see [`Node::not_ready_because`].
    pub fn is_ready(&self) -> bool {
        self.not_ready_because().is_empty()
    }

    /// Why the node should get no new clients: a core has not started or has stalled,
    /// shutdown has begun, or a dependency of the engine (broker, Redis) is lost. Empty
    /// when ready.
    pub fn not_ready_because(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        let started = self.cores_ready.load(Ordering::Acquire);
        if started < self.mailboxes.len() {
            reasons.push(format!(
                "{started} of {} cores started",
                self.mailboxes.len()
            ));
        }
        if self.stopping.load(Ordering::Acquire) {
            reasons.push("shutting down".to_owned());
        }
        reasons.extend(
            (0..self.core_alive.len())
                .filter(|&core| !self.core_answers(core))
                .map(|core| format!("core {core} stalled")),
        );
        if !self.broker_connected.load(Ordering::Acquire) {
            reasons.push("broker disconnected".to_owned());
        }
        if !self.redis_connected.load(Ordering::Acquire) {
            reasons.push("Redis unreachable".to_owned());
        }
        if self.descriptors.at_limit() {
            reasons.push("out of file descriptors".to_owned());
        }
        reasons
    }

    /// Whether core `core`'s timer ran within [`health::STALL_AFTER`].
    pub fn core_answers(&self, core: usize) -> bool {
        self.core_alive[core].load(Ordering::Acquire)
    }

    /// Whether every core has started and none has stalled: what systemd's watchdog needs,
    /// whatever the broker and Redis do.
    pub fn cores_answer(&self) -> bool {
        self.cores_ready.load(Ordering::Acquire) == self.mailboxes.len()
            && (0..self.core_alive.len()).all(|core| self.core_answers(core))
    }

    /// When the graceful stop must be over: fixed when the stop begins.
    pub fn stop_deadline(&self) -> Instant {
        *self
            .stop_deadline
            .get_or_init(|| Instant::now() + self.config.shutdown_deadline)
    }
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    node: Arc<Node>,
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    driver: IoDriver,
    cores: Vec<JoinHandle<()>>,
    bridge: Option<Bridge>,
}

impl Gateway {
    /// Binds, starts every core and the admin port, and returns once all cores accept.
    pub fn start(config: Config) -> Result<Gateway> {
        let verifier = match config.jwt_alg {
            JwtAlgorithm::Hs256 => {
                let secret = config
                    .jwt_secret
                    .as_deref()
                    .context("--jwt-secret is required for HS256")?;
                if secret.len() < 16 {
                    bail!("--jwt-secret must be at least 16 bytes");
                }
                Verifier::hs256(secret.as_bytes())
            }
            JwtAlgorithm::Es256 => {
                let path = config
                    .jwt_public_key
                    .as_ref()
                    .context("--jwt-public-key is required for ES256")?;
                let pem =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                Verifier::es256_from_pem(&pem)?
            }
        }
        .with_max_lifetime(config.jwt_max_lifetime);
        let (tls, certificates) = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let certificates = Arc::new(tls::Certificates::load(cert, key)?);
                (
                    Some(tls::acceptor(certificates.clone())?),
                    Some(certificates),
                )
            }
            _ => (None, None),
        };
        let cores = config.core_count();
        let (listeners, shared_listeners) = match inherited_listeners(cores)? {
            Some(listeners) => (listeners, true),
            None => (bind_listeners(config.listen, cores)?, false),
        };
        let local_addr = listeners[0][0].local_addr()?;
        let cpus = affinity::plan(cores);
        let admin = admin_listener(config.admin_listen)?;
        let admin_addr = match &admin {
            Some(listener) => listener.local_addr()?,
            None => config.admin_listen,
        };
        let node = Arc::new(Node {
            mailboxes: (0..cores).map(|_| Mailbox::new(MAILBOX_CAPACITY)).collect(),
            metrics: (0..cores)
                .map(|_| Arc::new(CoreMetrics::default()))
                .collect(),
            ip_limit: IpConnectionLimit::new(config.connections_per_ip_per_minute),
            user_budgets: {
                let (per_second, burst) = config.user_frame_limits();
                UserBudgets::new(per_second, burst)
            },
            config,
            verifier,
            tls,
            certificates,
            cores_ready: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            // Without a broker there is nothing to wait for; the bridge clears these.
            broker_paused: AtomicBool::new(false),
            broker_connected: AtomicBool::new(true),
            broker_down_since_us: AtomicU64::new(0),
            epoch: Instant::now(),
            redis_connected: AtomicBool::new(true),
            core_beats: (0..cores).map(|_| AtomicU64::new(0)).collect(),
            core_alive: (0..cores).map(|_| AtomicBool::new(true)).collect(),
            descriptors: DescriptorPressure::new(),
            stop_deadline: OnceLock::new(),
            shared_listeners,
        });
        let bridge = match node.config.engine {
            EngineKind::Memory => None,
            EngineKind::Amqp => {
                node.broker_paused.store(true, Ordering::Release);
                node.broker_connected.store(false, Ordering::Release);
                node.note_broker_down();
                node.redis_connected.store(false, Ordering::Release);
                Some(Bridge::spawn(bridge_settings(&node.config), node.clone())?)
            }
        };
        match admin {
            Some(listener) => admin::spawn(listener, node.clone())?,
            None => bind_admin_when_free(node.clone())?,
        }
        let driver = effective_driver(&node.config);
        tracing::info!(cores, %local_addr, %admin_addr, driver = driver.name(), "starting");
        let mut handles = Vec::with_capacity(cores);
        for (index, (listeners, cpu)) in listeners.into_iter().zip(cpus).enumerate() {
            let node = node.clone();
            let bridge = bridge.as_ref().map(|b| b.inbox.clone());
            let handle = std::thread::Builder::new()
                .name(format!("core-{index}"))
                .spawn(move || {
                    affinity::pin_current_thread(index, cpu);
                    if let Err(error) = run_core(index, node, listeners, bridge, driver) {
                        tracing::error!(core = index, error = format!("{error:#}"), "core stopped");
                    }
                })
                .context("spawning a core thread")?;
            handles.push(handle);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.cores_ready.load(Ordering::Acquire) < cores {
            if handles.iter().any(|h| h.is_finished()) || Instant::now() > deadline {
                bail!("a core failed to start (see the log above)");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        health::spawn_core_monitor(node.clone())?;
        Ok(Gateway {
            node,
            local_addr,
            admin_addr,
            driver,
            cores: handles,
            bridge,
        })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the admin port listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The I/O driver the cores run: the configured one, or the one it fell back to.
    pub fn io_driver(&self) -> IoDriver {
        self.driver
    }

    /// The shared node (metrics, readiness).
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Begins the graceful shutdown: stop accepting, close sessions with 1001, flush, all
    /// by [`Node::stop_deadline`].
    pub fn begin_shutdown(&self) {
        self.node.stop_deadline();
        self.node.stopping.store(true, Ordering::Release);
        for mailbox in &self.node.mailboxes {
            // A full mailbox still gets the message: retry until it fits.
            let mut msg = CoreMsg::Shutdown;
            while let Err(back) = mailbox.push(msg) {
                msg = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Waits for every core to finish (after [`Gateway::begin_shutdown`]), then for the
    /// bridge to publish what the sessions left and clear this node from the registry, by
    /// the same deadline as the cores.
    pub fn join(self) {
        for handle in self.cores {
            let _ = handle.join();
        }
        if let Some(bridge) = self.bridge {
            bridge.finish(self.node.stop_deadline());
        }
    }

    /// Replaces what can change without a restart: the TLS certificate and key, read again
    /// from their files. What else the configuration says needs a restart, which refuses
    /// no connection under socket activation.
    pub fn reload(&self) -> Result<()> {
        match (
            &self.node.certificates,
            &self.node.config.tls_cert,
            &self.node.config.tls_key,
        ) {
            (Some(certificates), Some(cert), Some(key)) => {
                certificates.reload(cert, key)?;
                tracing::info!(cert = %cert.display(), "reloaded the TLS certificate");
            }
            _ => {
                tracing::info!("reload: nothing to reload (no TLS); other settings need a restart")
            }
        }
        Ok(())
    }
}

/// The listening sockets systemd passed (socket activation), every one to every core: each
/// core accepts on a duplicate of each socket, so every socket is served as long as any
/// core runs, and the cores share each socket's accept queue. The sockets outlive the
/// process, so a restart queues new connections in their backlogs instead of refusing them.
fn inherited_listeners(cores: usize) -> Result<Option<Vec<Vec<StdListener>>>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let mut inherited = Vec::with_capacity(fds.len());
    for index in 0..fds.len() {
        if let Some(listener) = fds
            .take_tcp_listener(index)
            .context("taking a socket passed by systemd")?
        {
            listener.set_nonblocking(true)?;
            inherited.push(listener);
        }
    }
    anyhow::ensure!(
        !inherited.is_empty(),
        "systemd passed no TCP listening socket"
    );
    let mut listeners = Vec::with_capacity(cores);
    for _ in 0..cores {
        let duplicates = inherited
            .iter()
            .map(|socket| socket.try_clone().context("duplicating a passed socket"))
            .collect::<Result<Vec<_>>>()?;
        listeners.push(duplicates);
    }
    let addrs = inherited
        .iter()
        .map(|socket| socket.local_addr().map(|addr| addr.to_string()))
        .collect::<std::io::Result<Vec<_>>>()?;
    tracing::info!(sockets = ?addrs, "using sockets passed by systemd, on every core");
    Ok(Some(listeners))
}

/// One SO_REUSEPORT listener per core on `addr`: the kernel spreads connections over them.
fn bind_listeners(addr: SocketAddr, cores: usize) -> Result<Vec<Vec<StdListener>>> {
    let mut listeners: Vec<Vec<StdListener>> = Vec::with_capacity(cores);
    let mut addr = addr;
    for _ in 0..cores {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket
            .bind(&addr.into())
            .with_context(|| format!("binding {addr}"))?;
        socket.listen(LISTEN_BACKLOG)?;
        let listener: StdListener = socket.into();
        // Port 0 picks a port once; the other cores join it.
        addr = listener.local_addr()?;
        listeners.push(vec![listener]);
    }
    Ok(listeners)
}

fn bridge_settings(config: &Config) -> BridgeSettings {
    BridgeSettings {
        node_id: config.node_id,
        topology: Topology {
            prefix: config.amqp_prefix.clone(),
            shards: config.shards,
        },
        amqp_url: config.amqp_url.clone(),
        redis_url: config.redis_url.clone(),
        redis_prefix: config.redis_prefix.clone(),
        max_unconfirmed: config.max_unconfirmed,
        prefetch: config.prefetch,
        registry_ttl: config.registry_ttl,
        publish_linger: config.publish_linger,
    }
}

/// The driver the cores run: the one configured, or the nearest this host and
/// configuration allow (with a warning).
fn effective_driver(config: &Config) -> IoDriver {
    let mut driver = config.io_driver;
    if driver == IoDriver::Completion
        && let Err(error) = crate::completion::supported()
    {
        tracing::warn!(%error, "the completion driver is unavailable here: running on monoio");
        driver = IoDriver::IoUring;
    }
    if driver == IoDriver::IoUring && !monoio::utils::detect_uring() {
        tracing::warn!("io_uring is unavailable here: falling back to epoll");
        driver = IoDriver::Epoll;
    }
    driver
}

impl IoDriver {
    /// The name the flag takes.
    pub fn name(self) -> &'static str {
        match self {
            IoDriver::Completion => "completion",
            IoDriver::IoUring => "io-uring",
            IoDriver::Epoll => "epoll",
        }
    }
}

fn run_core(
    index: usize,
    node: Arc<Node>,
    listeners: Vec<StdListener>,
    bridge: Option<Arc<BridgeInbox>>,
    driver: IoDriver,
) -> Result<()> {
    match driver {
        IoDriver::Completion => {
            let core = Rc::new(Core::new(index, node.clone(), engine(&node, bridge)));
            crate::completion::serve_core(core, listeners)
        }
        IoDriver::IoUring => monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .with_entries(node.config.ring_entries)
            .enable_timer()
            .build()
            .context("building the runtime (io_uring needs locked memory: raise LimitMEMLOCK)")?
            .block_on(serve_core(index, node.clone(), listeners, bridge)),
        IoDriver::Epoll => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .context("building the epoll runtime")?
            .block_on(serve_core(index, node.clone(), listeners, bridge)),
    }
}

/// This core's shard of the configured engine.
fn engine(node: &Arc<Node>, bridge: Option<Arc<BridgeInbox>>) -> Box<dyn Engine> {
    match (node.config.engine, bridge) {
        (EngineKind::Amqp, Some(bridge)) => {
            let topology = Topology {
                prefix: node.config.amqp_prefix.clone(),
                shards: node.config.shards,
            };
            Box::new(AmqpEngine::new(
                bridge,
                node.clone(),
                topology,
                node.config.ack_window,
            ))
        }
        _ => Box::new(MemoryEngine::new(
            node.config.history_per_chat,
            node.config.max_chats_per_user,
        )),
    }
}

/// Binds the admin port; `None` when another process holds it. That is the process this
/// one replaces during an upgrade that starts the successor before stopping the old one
/// (both on the same env file, so on the same admin port): the clients' sockets are shared,
/// the admin port is taken over once it is free.
fn admin_listener(addr: SocketAddr) -> Result<Option<StdListener>> {
    match StdListener::bind(addr) {
        Ok(listener) => Ok(Some(listener)),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!(%addr, "the admin port is in use (by the process this one replaces?); serving it once it is free");
            Ok(None)
        }
        Err(error) => Err(error).with_context(|| format!("binding the admin port {addr}")),
    }
}

/// Tries to bind the admin port every [`ADMIN_RETRY`] until it is free, then serves it.
fn bind_admin_when_free(node: Arc<Node>) -> Result<()> {
    std::thread::Builder::new()
        .name("admin-bind".into())
        .spawn(move || {
            let addr = node.config.admin_listen;
            loop {
                std::thread::sleep(ADMIN_RETRY);
                match StdListener::bind(addr) {
                    Ok(listener) => {
                        if let Err(error) = admin::spawn(listener, node) {
                            tracing::error!(error = format!("{error:#}"), "serving the admin port");
                        } else {
                            tracing::info!(%addr, "serving the admin port");
                        }
                        return;
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {}
                    Err(error) => {
                        tracing::error!(%error, %addr, "binding the admin port failed; no admin port");
                        return;
                    }
                }
            }
        })
        .context("spawning the admin port's binder")?;
    Ok(())
}

/// One core's life inside its runtime: engine, core tasks, accepting, then the drain.
async fn serve_core(
    index: usize,
    node: Arc<Node>,
    listeners: Vec<StdListener>,
    bridge: Option<Arc<BridgeInbox>>,
) -> Result<()> {
    let listeners = listeners
        .into_iter()
        .map(|listener| {
            // A duplicate shares the backlog: refusals at the descriptor limit accept from
            // it without the runtime.
            let spare = listener
                .try_clone()
                .context("duplicating a listener for refusals")?;
            let listener = TcpListener::from_std(listener).context("registering a listener")?;
            Ok((listener, spare))
        })
        .collect::<Result<Vec<_>>>()?;
    let core = Rc::new(Core::new(index, node.clone(), engine(&node, bridge)));
    monoio::spawn(core.clone().pump_mailbox());
    monoio::spawn(core.clone().housekeeping());
    monoio::spawn(core.clone().sweep_idle());
    node.cores_ready.fetch_add(1, Ordering::AcqRel);
    futures_util::future::join_all(
        listeners
            .into_iter()
            .map(|(listener, spare)| accept_loop(&core, listener, spare)),
    )
    .await;
    tracing::info!(core = index, "stopped accepting");
    let deadline = node.stop_deadline();
    while !core.is_idle() && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Accepts on one listener until the core stops. `spare` is a non-blocking duplicate of
/// the listener, for answering clients at the descriptor limit.
async fn accept_loop(core: &Rc<Core>, listener: TcpListener, spare: StdListener) {
    // Stopping must not drop an accept the kernel already completed: that connection would
    // be reset. A cancelled accept still returns a connection it had completed, and that
    // one is served (and closed with 1001 like the rest).
    let canceller = Canceller::new();
    let handle = canceller.handle();
    let watcher = core.clone();
    monoio::spawn(async move {
        watcher.shutdown_started().await;
        drop(canceller.cancel());
    });
    let mut reserve = DescriptorReserve::new();
    loop {
        let accepted = listener.cancelable_accept(handle.clone()).await;
        if accepted.is_err() && core.is_shutting_down() {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if telemetry::descriptors::is_exhaustion(&error) => {
                core.refuse_at_descriptor_limit(&mut reserve, std::slice::from_ref(&spare));
                monoio::time::sleep(descriptors::ACCEPT_BACKOFF).await;
                continue;
            }
            Err(error) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Err(refusal) = core.admit_connection(peer) {
            monoio::spawn(connection::refuse(stream, refusal));
            continue;
        }
        let upgrading = core.upgrade_started();
        monoio::spawn(connection::serve(core.clone(), stream, peer, upgrading));
    }
}
