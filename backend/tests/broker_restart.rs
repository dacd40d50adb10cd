//! Issue #11's fault: the broker restarted under load with batches in flight. Nothing that
//! got a `sent` receipt is lost, and duplicates are only (chat, seq) repeats that clients
//! drop.
//!
//! The broker is a private RabbitMQ node (the shared one serves other tests and must not be
//! restarted), killed with SIGKILL in the middle of a steady stream of messages and started
//! again on the same data directory. The gateway (in-process) and a backend worker
//! (a process) must reconnect by themselves. The clients behave as real ones do: a sender
//! resends, with the same client message id, what got no `sent` receipt within a while; a
//! recipient that sees a seq gap, or reconnects, syncs.
//!
//! It takes 30 to 60 s on a busy 2-core machine, most of it the broker's two boots.

mod full_stack;
mod private_broker;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use full_stack::{
    SHARDS, database_url, private_corner, start_gateway_with, tear_down, upgrade_request,
};
use futures_util::{SinkExt, StreamExt};
use gateway::Gateway;
use private_broker::PrivateBroker;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wire::client::{Ack, CreateChat, SendMessage, SyncRequest};
use wire::limits::MAX_SYNC_PAGE;
use wire::server::Message as Delivery;
use wire::{ChatKind, ClientFrame, ErrorCode, ReceiptKind, ServerFrame};

/// Each sender sends one new message this often while the stream runs.
const SEND_EVERY: Duration = Duration::from_millis(50);
/// Streaming before the broker is killed.
const BEFORE_KILL: Duration = Duration::from_secs(3);
/// Streaming after the broker accepts connections again.
const AFTER_RESTART: Duration = Duration::from_secs(4);
/// A message without its `sent` receipt this long is sent again (the wait doubles each time,
/// up to `MAX_RESEND_AFTER`).
const RESEND_AFTER: Duration = Duration::from_secs(3);
const MAX_RESEND_AFTER: Duration = Duration::from_secs(8);
/// A sync without its answer this long is asked again.
const SYNC_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the senders may take to get every receipt once the stream stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How soon after the broker accepts connections again the path must work again.
const RECOVERY_TARGET: Duration = Duration::from_secs(5);
/// At the end, how long a recipient waits for missing messages to arrive live before it
/// syncs them, and how long it may take in all.
const LIVE_GRACE: Duration = Duration::from_secs(3);
const FINISH_TIMEOUT: Duration = Duration::from_secs(20);

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The gateway and the backend worker of this test, on the private broker, with their own
/// schema and prefixes.
struct Stack {
    name: String,
    node_id: u32,
    gateway: Option<Gateway>,
    worker: Option<Child>,
}

impl Stack {
    /// The stack on the broker at `amqp_url`, the gateway with `gateway_flags` besides the
    /// defaults.
    fn new(amqp_url: &str, gateway_flags: &[&str]) -> Stack {
        let (name, node_id) = private_corner("restart");
        let gateway = start_gateway_with(&name, node_id, amqp_url, gateway_flags);
        let mut worker = Command::new(env!("CARGO_BIN_EXE_backend"))
            .args(["--amqp-url", amqp_url])
            .args(["--database-url", &database_url(), "--pg-schema", &name])
            .args(["--amqp-prefix", &name, "--redis-prefix", &name])
            .args(["--shards", SHARDS, "--name", &format!("{name}-worker")])
            .args(["--stats-interval", "5s"])
            .env(
                "RUST_LOG",
                std::env::var("BACKEND_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .spawn()
            .expect("backend starts");
        // Its log, shown with the test's output (this thread inherits the test's capture).
        let log = worker.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(log).lines().map_while(Result::ok) {
                eprintln!("backend | {line}");
            }
        });
        Stack {
            name,
            node_id,
            gateway: Some(gateway),
            worker: Some(worker),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.gateway.as_ref().expect("running gateway").local_addr()
    }

    /// Every stored message: (chat, seq, sender, client message id, body), by chat and seq.
    async fn stored(&self) -> Vec<(u64, u64, u64, u64, String)> {
        let (client, connection) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
            .await
            .expect("postgres");
        tokio::spawn(connection);
        let query = format!(
            "SELECT chat_id, seq, sender, client_msg_id, body FROM \"{}\".messages \
             ORDER BY chat_id, seq",
            self.name
        );
        let rows = client.query(&query, &[]).await.expect("query");
        rows.iter()
            .map(|r| {
                let n = |i: usize| u64::try_from(r.get::<_, i64>(i)).expect("not negative");
                (n(0), n(1), n(2), n(3), r.get(4))
            })
            .collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // The private broker goes with its directory; the schema is ours to drop.
        let gateway = self.gateway.take();
        tear_down(
            self.worker.as_mut(),
            gateway,
            &self.name,
            self.node_id,
            None,
        );
    }
}

/// Connects `user`, retrying for up to `patience` (the gateway refuses connections while it
/// has no broker), and waits for the welcome.
async fn connect(addr: SocketAddr, user: u64, patience: Duration) -> Result<Client, String> {
    let request = upgrade_request(addr, user);
    let deadline = Instant::now() + patience;
    loop {
        let error = match tokio_tungstenite::connect_async(request.clone()).await {
            Ok((mut client, _)) => match recv(&mut client, Duration::from_secs(10)).await {
                Ok(ServerFrame::Welcome(_)) => {
                    // Give the registry a moment to record the user before others send.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Ok(client);
                }
                Ok(other) => format!("expected a welcome, got {other:?}"),
                Err(error) => error,
            },
            Err(error) => error.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!("user {user} could not connect: {error}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn send(client: &mut Client, frame: &ClientFrame) -> Result<(), String> {
    let bytes = Bytes::from(frame.encode().expect("encodes"));
    match tokio::time::timeout(Duration::from_secs(30), client.send(Message::Binary(bytes))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("send: {error}")),
        Err(_) => Err("send blocked for 30 s".into()),
    }
}

/// The next server frame, or why there is none.
async fn recv(client: &mut Client, timeout: Duration) -> Result<ServerFrame, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, client.next()).await {
            Err(_) => return Err(format!("no frame within {timeout:?}")),
            Ok(next) => {
                if let Some(frame) = decode(next)? {
                    return Ok(frame);
                }
            }
        }
    }
}

/// A server frame from what the socket gave, `None` for control frames, or why the
/// connection is over.
fn decode(
    next: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Result<Option<ServerFrame>, String> {
    match next {
        None => Err("connection ended".into()),
        Some(Err(error)) => Err(format!("WebSocket error: {error}")),
        Some(Ok(Message::Binary(bytes))) => ServerFrame::decode(&bytes)
            .map(Some)
            .map_err(|e| format!("invalid server frame: {e}")),
        Some(Ok(Message::Close(close))) => Err(format!("closed: {close:?}")),
        Some(Ok(_)) => Ok(None),
    }
}

/// Has `creator` create a chat and returns its id, skipping other frames meanwhile (the
/// creation of another chat it is a member of, for one).
async fn create_chat(
    creator: &mut Client,
    creator_id: u64,
    kind: ChatKind,
    members: Vec<u64>,
) -> u64 {
    let frame = ClientFrame::CreateChat(CreateChat {
        client_msg_id: creator_id,
        kind,
        title: String::new(),
        members,
    });
    send(creator, &frame).await.expect("create chat");
    loop {
        match recv(creator, Duration::from_secs(20)).await {
            Ok(ServerFrame::ChatCreated(created))
                if created.creator == creator_id && created.client_msg_id == creator_id =>
            {
                return created.chat_id;
            }
            Ok(_) => continue,
            Err(error) => panic!("no chat_created: {error}"),
        }
    }
}

/// The in-process gateway's log, with the test's output.
fn log_to_test_output() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,gateway=info")),
        )
        .try_init();
}

/// Where the test is; every client follows it.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Senders send a new message every `SEND_EVERY`.
    Stream,
    /// No new messages; senders resend until every message has its receipt.
    Drain,
    /// Recipients complete their view of each chat up to its stored last seq (live first,
    /// then by sync) and report.
    Finish(BTreeMap<u64, u64>),
}

/// What one client did and saw.
#[derive(Debug, Default)]
struct Report {
    user: u64,
    /// The chats it is a member of.
    chats: Vec<u64>,
    /// Every message it sent: client message id -> (chat, body).
    sent: BTreeMap<u64, (u64, String)>,
    /// Its `sent` receipts: client message id -> (chat, seq).
    receipted: BTreeMap<u64, (u64, u64)>,
    /// Its view of its chats: (chat, seq) -> (sender, client message id), from deliveries,
    /// syncs and its own receipts.
    view: BTreeMap<(u64, u64), (u64, u64)>,
    /// Anything that contradicts at-least-once with (chat, seq) dedupe.
    conflicts: Vec<String>,
    /// Error frames other than 5030, which no request of this test should get.
    errors: Vec<String>,
    /// 5030 answers (the broker was unreachable: resend later).
    unavailable: u64,
    /// Messages first seen live, and seen live again with the same (chat, seq).
    live: u64,
    repeats: u64,
    /// `sent` receipts that came again (for resends and republished frames).
    receipt_repeats: u64,
    /// Messages first seen in a sync answer.
    via_sync: u64,
    resends: u64,
    syncs: u64,
    reconnects: u64,
    /// Whether the view reached every chat's last seq before `FINISH_TIMEOUT`.
    complete: bool,
}

/// A message awaiting its `sent` receipt.
struct Pending {
    frame: ClientFrame,
    resend_at: Instant,
    wait: Duration,
}

/// One client: its socket, what it sends, and what it knows.
struct Member {
    addr: SocketAddr,
    ws: Client,
    sends_to: Vec<u64>,
    next_send: Instant,
    next_number: u64,
    pending: BTreeMap<u64, Pending>,
    /// Per chat, the highest seq up to which the view has no hole.
    watermark: BTreeMap<u64, u64>,
    /// Per chat, when the outstanding sync was asked.
    syncing: BTreeMap<u64, Instant>,
    next_sync_id: u64,
    receipt_times: Arc<Mutex<Vec<Instant>>>,
    report: Report,
}

impl Member {
    async fn run(
        mut self,
        mut phase: watch::Receiver<Phase>,
        drained: mpsc::UnboundedSender<u64>,
    ) -> Report {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported_drained = false;
        let mut finish_started: Option<Instant> = None;
        loop {
            let current = phase.borrow().clone();
            let outcome = tokio::select! {
                next = self.ws.next() => match decode(next) {
                    Ok(Some(frame)) => self.on_frame(frame).await,
                    Ok(None) => Ok(()),
                    Err(error) => Err(error),
                },
                _ = tick.tick() => self.on_tick(&current).await,
                changed = phase.changed() => {
                    if changed.is_err() {
                        return self.report;
                    }
                    Ok(())
                }
            };
            if let Err(error) = outcome {
                self.reconnect(&error).await;
            }
            match &current {
                Phase::Stream => {}
                Phase::Drain => {
                    if self.pending.is_empty() && !reported_drained {
                        reported_drained = true;
                        let _ = drained.send(self.report.user);
                    }
                }
                Phase::Finish(last) => {
                    let started = *finish_started.get_or_insert_with(Instant::now);
                    if self.has_all(last) {
                        self.report.complete = true;
                        return self.report;
                    }
                    if started.elapsed() >= FINISH_TIMEOUT {
                        return self.report;
                    }
                    if started.elapsed() >= LIVE_GRACE {
                        for (&chat, &seq) in last {
                            if self.watermark(chat) < seq {
                                self.sync(chat).await;
                            }
                        }
                    }
                }
            }
        }
    }

    fn watermark(&self, chat: u64) -> u64 {
        self.watermark.get(&chat).copied().unwrap_or(0)
    }

    fn has_all(&self, last: &BTreeMap<u64, u64>) -> bool {
        last.iter()
            .filter(|(chat, _)| self.report.chats.contains(chat))
            .all(|(&chat, &seq)| self.watermark(chat) >= seq)
    }

    async fn on_tick(&mut self, phase: &Phase) -> Result<(), String> {
        let now = Instant::now();
        if *phase == Phase::Stream && !self.sends_to.is_empty() && now >= self.next_send {
            self.next_send = now + SEND_EVERY;
            let chat = self.sends_to[self.next_number as usize % self.sends_to.len()];
            let client_msg_id = self.report.user * 1_000_000 + self.next_number;
            let body = format!("message {} of user {}", self.next_number, self.report.user);
            self.next_number += 1;
            let frame = ClientFrame::Send(SendMessage {
                chat_id: chat,
                client_msg_id,
                body: body.clone(),
            });
            self.report.sent.insert(client_msg_id, (chat, body));
            self.pending.insert(
                client_msg_id,
                Pending {
                    frame: frame.clone(),
                    resend_at: now + RESEND_AFTER,
                    wait: RESEND_AFTER,
                },
            );
            send(&mut self.ws, &frame).await?;
        }
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.resend_at <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            let pending = self.pending.get_mut(&id).expect("pending");
            pending.wait = (pending.wait * 2).min(MAX_RESEND_AFTER);
            pending.resend_at = now + pending.wait;
            let frame = pending.frame.clone();
            self.report.resends += 1;
            send(&mut self.ws, &frame).await?;
        }
        let stale: Vec<u64> = self
            .syncing
            .iter()
            .filter(|(_, asked)| asked.elapsed() >= SYNC_TIMEOUT)
            .map(|(&chat, _)| chat)
            .collect();
        for chat in stale {
            self.syncing.remove(&chat);
            self.sync(chat).await;
        }
        Ok(())
    }

    async fn on_frame(&mut self, frame: ServerFrame) -> Result<(), String> {
        match frame {
            ServerFrame::Message(message) => {
                let chat = message.chat_id;
                self.learn(&message, false);
                self.advance(chat).await?;
            }
            ServerFrame::Receipt(r) if r.kind == ReceiptKind::Sent => {
                let Some(client_msg_id) = r.client_msg_id else {
                    self.report
                        .conflicts
                        .push(format!("a sent receipt without client message id: {r:?}"));
                    return Ok(());
                };
                if r.user_id != self.report.user {
                    self.report
                        .conflicts
                        .push(format!("someone else's sent receipt: {r:?}"));
                    return Ok(());
                }
                match self.report.sent.get(&client_msg_id) {
                    Some((chat, _)) if *chat == r.chat_id => {}
                    other => self.report.conflicts.push(format!(
                        "a sent receipt {r:?} for a message sent as {other:?}"
                    )),
                }
                match self.report.receipted.get(&client_msg_id) {
                    Some(&placed) if placed != (r.chat_id, r.seq) => {
                        self.report.conflicts.push(format!(
                            "message {client_msg_id} receipted at {placed:?} and at {:?}",
                            (r.chat_id, r.seq)
                        ));
                    }
                    Some(_) => self.report.receipt_repeats += 1,
                    None => {
                        self.report
                            .receipted
                            .insert(client_msg_id, (r.chat_id, r.seq));
                        self.receipt_times
                            .lock()
                            .expect("receipt times")
                            .push(Instant::now());
                    }
                }
                self.pending.remove(&client_msg_id);
                let own = (self.report.user, client_msg_id);
                self.place(r.chat_id, r.seq, own);
                self.advance(r.chat_id).await?;
            }
            ServerFrame::SyncBatch(batch) => {
                self.syncing.remove(&batch.chat_id);
                for message in &batch.messages {
                    self.learn(message, true);
                }
                self.advance(batch.chat_id).await?;
                if batch.has_more {
                    self.sync(batch.chat_id).await;
                }
            }
            // The gateway answers sends with 5030 while the broker is unreachable; the
            // message stays pending and its resend timer sends it again.
            ServerFrame::Error(error) if error.code == ErrorCode::Unavailable as u16 => {
                self.report.unavailable += 1;
            }
            ServerFrame::Error(error) => {
                let code = ErrorCode::from_u16(error.code);
                self.report.errors.push(format!("{code:?}: {error:?}"));
            }
            _ => {}
        }
        Ok(())
    }

    /// Records a delivered or synced message.
    fn learn(&mut self, message: &Delivery, via_sync: bool) {
        let known = self.place(
            message.chat_id,
            message.seq,
            (message.sender, message.client_msg_id),
        );
        match (known, via_sync) {
            (true, false) => self.report.repeats += 1,
            (false, false) => self.report.live += 1,
            (false, true) => self.report.via_sync += 1,
            (true, true) => {}
        }
    }

    /// Puts (sender, client message id) at (chat, seq) in the view; whether it was there.
    fn place(&mut self, chat: u64, seq: u64, what: (u64, u64)) -> bool {
        match self.report.view.get(&(chat, seq)) {
            Some(&known) if known == what => true,
            Some(&known) => {
                self.report.conflicts.push(format!(
                    "user {} got ({chat}, {seq}) as {what:?} after {known:?}",
                    self.report.user
                ));
                true
            }
            None => {
                self.report.view.insert((chat, seq), what);
                false
            }
        }
    }

    /// Moves the chat's watermark over what the view holds, acks it as delivered, and syncs
    /// if the view holds anything past a hole.
    async fn advance(&mut self, chat: u64) -> Result<(), String> {
        let before = self.watermark(chat);
        let mut mark = before;
        while self.report.view.contains_key(&(chat, mark + 1)) {
            mark += 1;
        }
        if mark > before {
            self.watermark.insert(chat, mark);
            send(
                &mut self.ws,
                &ClientFrame::AckDelivered(Ack {
                    chat_id: chat,
                    seq: mark,
                }),
            )
            .await?;
        }
        let past_hole = self
            .report
            .view
            .range((chat, mark + 1)..=(chat, u64::MAX))
            .next()
            .is_some();
        if past_hole {
            self.sync(chat).await;
        }
        Ok(())
    }

    /// Asks for what follows the watermark, unless a sync of the chat is outstanding. A send
    /// failure is left to the next read, which reconnects.
    async fn sync(&mut self, chat: u64) {
        if self.syncing.contains_key(&chat) {
            return;
        }
        self.syncing.insert(chat, Instant::now());
        self.next_sync_id += 1;
        self.report.syncs += 1;
        let frame = ClientFrame::Sync(SyncRequest {
            client_msg_id: self.next_sync_id,
            chat_id: chat,
            after_seq: self.watermark(chat),
            limit: MAX_SYNC_PAGE,
            before_seq: None,
        });
        let _ = send(&mut self.ws, &frame).await;
    }

    /// Opens a new connection after `why` ended the last one; then resends what awaits a
    /// receipt and syncs every chat, as a real client does.
    async fn reconnect(&mut self, why: &str) {
        eprintln!("user {} reconnects: {why}", self.report.user);
        self.report.reconnects += 1;
        self.ws = connect(self.addr, self.report.user, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let frames: Vec<ClientFrame> = self.pending.values().map(|p| p.frame.clone()).collect();
        for frame in frames {
            self.report.resends += 1;
            if send(&mut self.ws, &frame).await.is_err() {
                return;
            }
        }
        self.syncing.clear();
        for chat in self.report.chats.clone() {
            self.sync(chat).await;
        }
    }
}

/// The messages (ready and unacknowledged) in each queue of the broker.
fn queue_depths(broker: &PrivateBroker) -> BTreeMap<String, u64> {
    let output = broker.ctl(&[
        "list_queues",
        "name",
        "messages",
        "--quiet",
        "--no-table-headers",
    ]);
    assert!(
        output.status.success(),
        "rabbitmqctl list_queues: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some((fields.next()?.to_owned(), fields.next()?.parse().ok()?))
        })
        .collect()
}

/// How many `items` there are and the first few, for an assertion message.
fn some<T: Debug>(items: &[T]) -> String {
    format!(
        "{} in all, first {:?}",
        items.len(),
        &items[..items.len().min(10)]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_under_load_loses_no_receipted_message() {
    log_to_test_output();
    let t0 = Instant::now();
    let at = move || format!("{:>6.2} s", t0.elapsed().as_secs_f64());
    // Dropped last: the stack stops while its broker still exists.
    let mut broker = PrivateBroker::start().await;
    eprintln!("[{}] private broker {} up", at(), broker.node());
    let stack = Stack::new(&broker.amqp_url(), &[]);
    let addr = stack.addr();

    // A group of four (1 to 4) and a direct chat (2 and 5). Users 1, 2, 3 and 5 send; 4 only
    // reads.
    let patience = Duration::from_secs(30);
    let mut clients = BTreeMap::new();
    for user in 1..=5 {
        clients.insert(user, connect(addr, user, patience).await.expect("connect"));
    }
    let group = create_chat(
        clients.get_mut(&1).expect("user 1"),
        1,
        ChatKind::Group,
        vec![2, 3, 4],
    )
    .await;
    let direct = create_chat(
        clients.get_mut(&2).expect("user 2"),
        2,
        ChatKind::Direct,
        vec![5],
    )
    .await;
    let plans: [(u64, Vec<u64>, Vec<u64>); 5] = [
        (1, vec![group], vec![group]),
        (2, vec![group, direct], vec![group, direct]),
        (3, vec![group], vec![group]),
        (4, vec![group], vec![]),
        (5, vec![direct], vec![direct]),
    ];
    eprintln!("[{}] chats {group} (group) and {direct} (direct)", at());

    let (phase_tx, phase_rx) = watch::channel(Phase::Stream);
    let (drained_tx, mut drained_rx) = mpsc::unbounded_channel();
    let receipt_times = Arc::new(Mutex::new(Vec::new()));
    let mut members = Vec::new();
    for (user, chats, sends_to) in plans {
        let report = Report {
            user,
            chats,
            ..Report::default()
        };
        let member = Member {
            addr,
            ws: clients.remove(&user).expect("client"),
            sends_to,
            next_send: Instant::now(),
            next_number: 1,
            pending: BTreeMap::new(),
            watermark: BTreeMap::new(),
            syncing: BTreeMap::new(),
            next_sync_id: 0,
            receipt_times: receipt_times.clone(),
            report,
        };
        members.push(tokio::spawn(
            member.run(phase_rx.clone(), drained_tx.clone()),
        ));
    }

    tokio::time::sleep(BEFORE_KILL).await;
    let receipted_before = receipt_times.lock().expect("times").len();
    let killed = Instant::now();
    broker.kill().await;
    eprintln!(
        "[{}] broker killed (SIGKILL) after {receipted_before} receipts",
        at()
    );
    let boot = broker.start_again().await;
    let back = Instant::now();
    eprintln!(
        "[{}] broker accepts connections again: down {:.1} s, of which its start took {:.1} s",
        at(),
        (back - killed).as_secs_f64(),
        boot.as_secs_f64()
    );
    tokio::time::sleep(AFTER_RESTART).await;
    phase_tx.send(Phase::Drain).expect("members run");
    eprintln!("[{}] stream stopped; waiting for every receipt", at());
    let mut drained = BTreeSet::new();
    let drain_deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while drained.len() < members.len() {
        match tokio::time::timeout_at(drain_deadline, drained_rx.recv()).await {
            Ok(Some(user)) => {
                drained.insert(user);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let all_receipted = drained.len() == members.len();
    eprintln!(
        "[{}] {} of {} clients have every receipt",
        at(),
        drained.len(),
        members.len()
    );

    let stored = stack.stored().await;
    let mut last = BTreeMap::from([(group, 0), (direct, 0)]);
    for (chat, seq, ..) in &stored {
        let entry = last.entry(*chat).or_insert(0);
        *entry = (*entry).max(*seq);
    }
    phase_tx
        .send(Phase::Finish(last.clone()))
        .expect("members run");
    let mut reports = Vec::new();
    for member in members {
        let report = tokio::time::timeout(FINISH_TIMEOUT + Duration::from_secs(70), member)
            .await
            .expect("a client finishes")
            .expect("a client task does not panic");
        reports.push(report);
    }
    eprintln!("[{}] clients finished", at());
    // Late resends may still wait in the inbound queues: give the worker time for them.
    let inbound = format!("{}.in.", stack.name);
    let settled_by = Instant::now() + Duration::from_secs(30);
    let depths = loop {
        let depths = queue_depths(&broker);
        let busy = depths
            .iter()
            .any(|(queue, &depth)| queue.starts_with(&inbound) && depth > 0);
        if !busy || Instant::now() >= settled_by {
            break depths;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!("[{}] queue depths {depths:?}", at());

    // When the path worked again: the first receipt after the broker came back.
    let times = receipt_times.lock().expect("times").clone();
    let during = times.iter().filter(|&&t| t > killed && t < back).count();
    let first_after = times.iter().filter(|&&t| t >= back).min().copied();
    match first_after {
        Some(t) => eprintln!(
            "{during} sent receipts between the kill and the restart (already on their way); \
             the first after the restart {:.2} s after the broker accepted connections",
            (t - back).as_secs_f64()
        ),
        None => eprintln!("no sent receipt after the broker came back"),
    }
    let sent: usize = reports.iter().map(|r| r.sent.len()).sum();
    for r in &reports {
        eprintln!(
            "user {}: sent {}, receipted {}, resends {}, repeated receipts {}, live {}, \
             repeats {}, via sync {}, syncs {}, reconnects {}, 5030 answers {}, errors {}, \
             complete {}",
            r.user,
            r.sent.len(),
            r.receipted.len(),
            r.resends,
            r.receipt_repeats,
            r.live,
            r.repeats,
            r.via_sync,
            r.syncs,
            r.reconnects,
            r.unavailable,
            r.errors.len(),
            r.complete
        );
    }
    eprintln!(
        "stored {} messages of {sent} sent; last seq per chat {last:?}",
        stored.len()
    );

    // Stored: each chat's seqs are 1..=n, and each (sender, client message id) once.
    let mut by_chat: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut by_id: BTreeMap<(u64, u64), Vec<(u64, u64)>> = BTreeMap::new();
    for (chat, seq, sender, client_msg_id, _) in &stored {
        by_chat.entry(*chat).or_default().push(*seq);
        by_id
            .entry((*sender, *client_msg_id))
            .or_default()
            .push((*chat, *seq));
    }
    for (chat, seqs) in &by_chat {
        assert_eq!(
            *seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "chat {chat}: stored seqs are gap-free from 1"
        );
    }
    let stored_twice: Vec<_> = by_id.iter().filter(|(_, at)| at.len() > 1).collect();
    assert!(
        stored_twice.is_empty(),
        "stored twice: {}",
        some(&stored_twice)
    );

    // Every receipted message is stored, once, where its receipt said.
    let mut lost = Vec::new();
    for r in &reports {
        for (&client_msg_id, &placed) in &r.receipted {
            match by_id.get(&(r.user, client_msg_id)) {
                Some(at) if at[..] == [placed] => {}
                other => lost.push(format!(
                    "user {} message {client_msg_id} receipted at {placed:?}, stored at {other:?}",
                    r.user
                )),
            }
        }
    }
    assert!(
        lost.is_empty(),
        "receipted messages lost or misplaced: {}",
        some(&lost)
    );

    // Nothing is stored that no one sent (chat and body as sent).
    let sent_by: BTreeMap<(u64, u64), &(u64, String)> = reports
        .iter()
        .flat_map(|r| r.sent.iter().map(|(&id, what)| ((r.user, id), what)))
        .collect();
    let unsent: Vec<_> = stored
        .iter()
        .filter(|(chat, _, sender, id, body)| {
            sent_by.get(&(*sender, *id)) != Some(&&(*chat, body.clone()))
        })
        .collect();
    assert!(
        unsent.is_empty(),
        "stored but never sent: {}",
        some(&unsent)
    );

    // Every client saw only (chat, seq) repeats of the same message.
    let conflicts: Vec<&String> = reports.iter().flat_map(|r| &r.conflicts).collect();
    assert!(
        conflicts.is_empty(),
        "conflicting deliveries: {}",
        some(&conflicts)
    );
    let errors: Vec<&String> = reports.iter().flat_map(|r| &r.errors).collect();
    assert!(errors.is_empty(), "error frames: {}", some(&errors));

    // Nothing went to the dead-letter queue (a frame redelivered past the delivery limit),
    // and every inbound frame was handled.
    let left: Vec<_> = depths
        .iter()
        .filter(|&(queue, &depth)| {
            depth > 0
                && (queue.as_str() == format!("{}.dead", stack.name) || queue.starts_with(&inbound))
        })
        .collect();
    assert!(
        depths.contains_key(&format!("{}.dead", stack.name)) && left.is_empty(),
        "inbound or dead-letter queues not empty: {left:?} (all: {depths:?})"
    );

    // The path came back: every message sent got its receipt.
    let unreceipted: Vec<(u64, u64)> = reports
        .iter()
        .flat_map(|r| {
            r.sent
                .keys()
                .filter(|id| !r.receipted.contains_key(id))
                .map(|&id| (r.user, id))
        })
        .collect();
    assert!(
        all_receipted && unreceipted.is_empty(),
        "messages without a sent receipt {DRAIN_TIMEOUT:?} after the stream's end: {}",
        some(&unreceipted)
    );

    // Every client ends up with every stored message of its chats, live or by sync.
    for r in &reports {
        let expected: BTreeMap<(u64, u64), (u64, u64)> = stored
            .iter()
            .filter(|(chat, ..)| r.chats.contains(chat))
            .map(|(chat, seq, sender, id, _)| ((*chat, *seq), (*sender, *id)))
            .collect();
        let missing: Vec<_> = expected
            .iter()
            .filter(|(at, what)| r.view.get(at) != Some(what))
            .collect();
        let not_stored: Vec<_> = r
            .view
            .iter()
            .filter(|(at, _)| !expected.contains_key(at))
            .collect();
        assert!(
            missing.is_empty() && not_stored.is_empty(),
            "user {}: missing {}; not stored {}",
            r.user,
            some(&missing),
            some(&not_stored)
        );
    }

    // Live traffic resumed soon after the broker accepted again (the operations target).
    let resumed = first_after.map(|t| t - back);
    assert!(
        resumed.is_some_and(|after| after < RECOVERY_TARGET),
        "messages flowed again {resumed:?} after the restart (target {RECOVERY_TARGET:?})"
    );
    eprintln!("[{}] done", at());
}

/// A broker outage longer than the idle timeout closes no client that keeps reading: the
/// gateway goes on reading (so the client's pongs count) and answers sends with 5030 and
/// their client message id until the broker is back, then the same connection works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_closes_no_healthy_client_and_refuses_sends_with_5030() {
    log_to_test_output();
    const IDLE: Duration = Duration::from_secs(3);
    let mut broker = PrivateBroker::start().await;
    let stack = Stack::new(
        &broker.amqp_url(),
        &["--idle-timeout", "3s", "--ping-interval", "1s"],
    );
    let mut client = connect(stack.addr(), 1, Duration::from_secs(30))
        .await
        .expect("connect");
    let chat = create_chat(&mut client, 1, ChatKind::Group, vec![2]).await;
    let message = |client_msg_id| {
        ClientFrame::Send(SendMessage {
            chat_id: chat,
            client_msg_id,
            body: format!("message {client_msg_id}"),
        })
    };

    // A quorum queue killed within a second of its creation may not come back (its log is
    // not on disk yet); a broker that has run a while is the case to test. The client reads
    // meanwhile too: one that stops reading for the idle timeout is rightly closed.
    let kill_at = Instant::now() + BEFORE_KILL;
    while Instant::now() < kill_at {
        match recv(&mut client, Duration::from_millis(200)).await {
            Ok(_) => {}
            Err(why) if why.starts_with("no frame") => {}
            Err(why) => panic!("the client was cut before the outage: {why}"),
        }
    }
    broker.kill().await;
    // Reading all along (the client answers the server's pings), for twice the idle
    // timeout and more, with one send after the first seconds, then while the broker boots.
    let outage_until = Instant::now() + IDLE * 3;
    tokio::time::sleep(Duration::from_secs(2)).await;
    send(&mut client, &message(100)).await.expect("send");
    let mut refused = false;
    let mut on_frame = |frame: Result<ServerFrame, String>| match frame {
        Ok(ServerFrame::Error(error)) => {
            assert_eq!(error.code, ErrorCode::Unavailable as u16, "{error:?}");
            assert_eq!(error.client_msg_id, Some(100), "{error:?}");
            refused = true;
        }
        Ok(other) => panic!("during the outage: {other:?}"),
        Err(why) if why.starts_with("no frame") => {}
        Err(why) => panic!("the client was cut during the outage: {why}"),
    };
    while Instant::now() < outage_until {
        on_frame(recv(&mut client, Duration::from_millis(200)).await);
    }
    let mut restarted = std::pin::pin!(broker.start_again());
    loop {
        tokio::select! {
            _ = &mut restarted => break,
            frame = recv(&mut client, Duration::from_millis(200)) => on_frame(frame),
        }
    }
    assert!(refused, "the send during the outage was answered with 5030");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next_id = 200;
    let receipted = loop {
        assert!(
            Instant::now() < deadline,
            "no sent receipt after the broker returned"
        );
        next_id += 1;
        send(&mut client, &message(next_id)).await.expect("send");
        match recv(&mut client, Duration::from_millis(500)).await {
            Ok(ServerFrame::Receipt(r)) if r.kind == ReceiptKind::Sent => break r,
            Ok(ServerFrame::Error(error)) if error.code == ErrorCode::Unavailable as u16 => {
                // Not reconnected yet: resend a little later, as a client would.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(other) => panic!("after the outage: {other:?}"),
            Err(why) if why.starts_with("no frame") => {}
            Err(why) => panic!("the client was cut after the outage: {why}"),
        }
    };
    assert!(
        receipted
            .client_msg_id
            .is_some_and(|id| id > 200 && id <= next_id),
        "a receipt for a send after the outage: {receipted:?}"
    );
}
