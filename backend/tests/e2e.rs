//! The full path on the real services: WebSocket clients, a gateway (amqp engine,
//! in-process), RabbitMQ, backend workers (processes, so they can be killed with SIGKILL),
//! PostgreSQL and Redis. Each test has its own schema, AMQP prefix, Redis prefix and node id.

mod full_stack;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use full_stack::{SHARDS, database_url, private_corner, start_gateway, tear_down, upgrade_request};
use futures_util::{SinkExt, StreamExt};
use gateway::Gateway;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wire::client::{Ack, CreateChat, SendMessage, SyncRequest};
use wire::{ChatKind, ClientFrame, ErrorCode, ReceiptKind, ServerFrame};

/// The system's broker, which these tests share (each in its own prefix).
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One test's private corner of the services and the processes serving it.
struct Stack {
    name: String,
    node_id: u32,
    gateway: Option<Gateway>,
    workers: Vec<Child>,
}

impl Stack {
    fn new(label: &str) -> Stack {
        let (name, node_id) = private_corner(&format!("e2e_{label}"));
        let gateway = start_gateway(&name, node_id, AMQP_URL);
        let mut stack = Stack {
            name,
            node_id,
            gateway: Some(gateway),
            workers: Vec::new(),
        };
        stack.start_worker();
        stack
    }

    fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("running gateway")
    }

    /// Starts one more backend worker process on every shard.
    fn start_worker(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_backend"))
            .args(["--database-url", &database_url(), "--pg-schema", &self.name])
            .args([
                "--amqp-prefix",
                &self.name,
                "--redis-prefix",
                &self.name,
                "--shards",
                SHARDS,
            ])
            .args([
                "--name",
                &format!("{}-worker{}", self.name, self.workers.len()),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("backend starts");
        self.workers.push(child);
    }

    /// Kills worker `index` with SIGKILL, as a crash or the OOM killer would.
    fn kill_worker(&mut self, index: usize) {
        let mut child = self.workers.remove(index);
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    async fn connect(&self, user_id: u64) -> Client {
        let request = upgrade_request(self.gateway().local_addr(), user_id);
        // The gateway accepts only once it reaches the broker; retry until then.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match tokio_tungstenite::connect_async(request.clone()).await {
                Ok((mut client, _)) => {
                    assert!(matches!(recv(&mut client).await, ServerFrame::Welcome(_)));
                    // Give the registry a moment to record the user before others send.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return client;
                }
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("could not connect: {error}"),
            }
        }
    }

    async fn stored_messages(&self, chat_id: u64) -> Vec<(i64, i64)> {
        let (client, connection) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
            .await
            .expect("postgres");
        tokio::spawn(connection);
        let query = format!(
            "SELECT seq, client_msg_id FROM \"{}\".messages WHERE chat_id = $1 ORDER BY seq",
            self.name
        );
        let rows = client
            .query(&query, &[&(chat_id as i64)])
            .await
            .expect("query");
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Leave the services as we found them.
        let gateway = self.gateway.take();
        tear_down(
            &mut self.workers,
            gateway,
            &self.name,
            self.node_id,
            Some(AMQP_URL),
        );
    }
}

async fn send(client: &mut Client, frame: ClientFrame) {
    client
        .send(Message::Binary(Bytes::from(
            frame.encode().expect("encodes"),
        )))
        .await
        .expect("send");
}

async fn recv(client: &mut Client) -> ServerFrame {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), client.next())
            .await
            .expect("a frame within 20 s")
            .expect("stream open")
            .expect("no WebSocket error");
        match message {
            Message::Binary(bytes) => {
                return ServerFrame::decode(&bytes).expect("valid server frame");
            }
            Message::Close(close) => panic!("closed: {close:?}"),
            _ => continue,
        }
    }
}

async fn create_chat(
    stack: &Stack,
    creator: &mut Client,
    kind: ChatKind,
    members: Vec<u64>,
) -> u64 {
    send(
        creator,
        ClientFrame::CreateChat(CreateChat {
            client_msg_id: 1,
            kind,
            title: String::new(),
            members,
        }),
    )
    .await;
    match recv(creator).await {
        ServerFrame::ChatCreated(created) => {
            let _ = stack;
            created.chat_id
        }
        other => panic!("expected chat_created, got {other:?}"),
    }
}

fn message(chat_id: u64, client_msg_id: u64, body: &str) -> ClientFrame {
    ClientFrame::Send(SendMessage {
        chat_id,
        client_msg_id,
        body: body.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_receipts_sync_dedupe_and_membership_through_the_full_path() {
    let stack = Stack::new("flow");
    let mut alice = stack.connect(1).await;
    let mut bob = stack.connect(2).await;
    let chat_id = create_chat(&stack, &mut alice, ChatKind::Direct, vec![2]).await;
    assert!(matches!(recv(&mut bob).await, ServerFrame::ChatCreated(c) if c.chat_id == chat_id));

    // a sends, b receives with seq 1, a gets its sent receipt.
    send(&mut alice, message(chat_id, 100, "hello")).await;
    match recv(&mut bob).await {
        ServerFrame::Message(m) => assert_eq!(
            (m.seq, m.sender, m.client_msg_id, m.body.as_str()),
            (1, 1, 100, "hello")
        ),
        other => panic!("expected the message, got {other:?}"),
    }
    match recv(&mut alice).await {
        ServerFrame::Receipt(r) => assert_eq!(
            (r.kind, r.seq, r.client_msg_id),
            (ReceiptKind::Sent, 1, Some(100))
        ),
        other => panic!("expected a sent receipt, got {other:?}"),
    }

    // b acks delivered then read; a hears both.
    send(&mut bob, ClientFrame::AckDelivered(Ack { chat_id, seq: 1 })).await;
    send(&mut bob, ClientFrame::AckRead(Ack { chat_id, seq: 1 })).await;
    let mut kinds = Vec::new();
    for _ in 0..2 {
        match recv(&mut alice).await {
            ServerFrame::Receipt(r) => {
                assert_eq!((r.seq, r.user_id), (1, 2));
                kinds.push(r.kind);
            }
            other => panic!("expected a receipt, got {other:?}"),
        }
    }
    kinds.sort_by_key(|k| *k as u8);
    assert_eq!(kinds, [ReceiptKind::Delivered, ReceiptKind::Read]);

    // The same client message id twice: stored once, delivered once.
    send(&mut alice, message(chat_id, 101, "once")).await;
    send(&mut alice, message(chat_id, 101, "once")).await;
    send(&mut alice, message(chat_id, 102, "after")).await;
    for expected in [2, 2, 3] {
        assert!(matches!(recv(&mut alice).await, ServerFrame::Receipt(r) if r.seq == expected));
    }
    assert!(
        matches!(recv(&mut bob).await, ServerFrame::Message(m) if m.seq == 2 && m.body == "once")
    );
    assert!(
        matches!(recv(&mut bob).await, ServerFrame::Message(m) if m.seq == 3 && m.body == "after")
    );
    assert_eq!(
        stack.stored_messages(chat_id).await,
        [(1, 100), (2, 101), (3, 102)]
    );

    // b goes offline, misses two messages, comes back and syncs them.
    drop(bob);
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut alice, message(chat_id, 103, "missed one")).await;
    send(&mut alice, message(chat_id, 104, "missed two")).await;
    for expected in [4, 5] {
        assert!(matches!(recv(&mut alice).await, ServerFrame::Receipt(r) if r.seq == expected));
    }
    let mut bob = stack.connect(2).await;
    send(
        &mut bob,
        ClientFrame::Sync(SyncRequest {
            client_msg_id: 7,
            chat_id,
            after_seq: 3,
            limit: 50,
            before_seq: None,
        }),
    )
    .await;
    match recv(&mut bob).await {
        ServerFrame::SyncBatch(batch) => {
            let got: Vec<(u64, &str)> = batch
                .messages
                .iter()
                .map(|m| (m.seq, m.body.as_str()))
                .collect();
            assert_eq!(got, [(4, "missed one"), (5, "missed two")]);
            assert!(!batch.has_more);
        }
        other => panic!("expected a sync batch, got {other:?}"),
    }

    // A non-member's send is answered with an error frame echoing its client message id.
    let mut mallory = stack.connect(3).await;
    send(&mut mallory, message(chat_id, 555, "let me in")).await;
    match recv(&mut mallory).await {
        ServerFrame::Error(e) => assert_eq!(
            (e.code, e.client_msg_id),
            (ErrorCode::NotMember.as_u16(), Some(555))
        ),
        other => panic!("expected an error frame, got {other:?}"),
    }
}

/// Collects, at `reader`, every delivered seq until `count` distinct ones arrived (or a
/// minute passed); returns them in arrival order and how many repeated.
async fn collect_deliveries(reader: &mut Client, count: u64) -> (Vec<u64>, u64) {
    let mut seqs = Vec::new();
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (seen.len() as u64) < count && Instant::now() < deadline {
        if let ServerFrame::Message(m) = recv(reader).await {
            seqs.push(m.seq);
            seen.insert(m.seq);
        }
    }
    let duplicates = seqs.len() as u64 - seen.len() as u64;
    (seqs, duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_with_sigkill_mid_stream_loses_and_duplicates_nothing() {
    let mut stack = Stack::new("kill");
    let mut alice = stack.connect(1).await;
    let mut bob = stack.connect(2).await;
    let chat_id = create_chat(&stack, &mut alice, ChatKind::Direct, vec![2]).await;
    assert!(matches!(recv(&mut bob).await, ServerFrame::ChatCreated(_)));
    let count = 600;
    for i in 0..count {
        send(&mut alice, message(chat_id, 10_000 + i, "through a crash")).await;
        if i == count / 2 {
            stack.kill_worker(0);
            stack.start_worker();
        }
    }
    let (seqs, _) = collect_deliveries(&mut bob, count).await;
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(
        unique,
        (1..=count).collect::<BTreeSet<u64>>(),
        "every seq reached the recipient"
    );
    let stored = stack.stored_messages(chat_id).await;
    assert_eq!(
        stored.len() as u64,
        count,
        "each message stored exactly once"
    );
    let expected: Vec<(i64, i64)> = (0..count as i64).map(|i| (i + 1, 10_000 + i)).collect();
    assert_eq!(
        stored, expected,
        "gap-free seq in send order, no duplicate rows"
    );
    // A delivery the crash interrupted may reach the recipient again with the same seq;
    // clients drop it by (chat, seq). It is never a second stored message (checked above).
    eprintln!(
        "deliveries repeated after the crash (same seq): {}",
        seqs.len() - unique.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backend_workers_keep_per_chat_order() {
    let mut stack = Stack::new("order");
    stack.start_worker();
    let mut alice = stack.connect(1).await;
    let mut bob = stack.connect(2).await;
    let chat_id = create_chat(&stack, &mut alice, ChatKind::Group, vec![2]).await;
    assert!(matches!(recv(&mut bob).await, ServerFrame::ChatCreated(_)));
    for i in 0..500 {
        send(&mut alice, message(chat_id, 1_000 + i, &format!("m{i}"))).await;
    }
    let (seqs, duplicates) = collect_deliveries(&mut bob, 500).await;
    assert_eq!(duplicates, 0);
    assert_eq!(
        seqs,
        (1..=500).collect::<Vec<u64>>(),
        "deliveries in seq order"
    );
}

/// The pid of the gateway's AMQP connection, as rabbitmqctl names it.
fn gateway_connection_pid(node_id: u32) -> Option<String> {
    let output = Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let needle = format!("gateway-node-{node_id}\"");
    text.lines()
        .find(|line| line.contains(&needle))
        .and_then(|line| line.split_whitespace().next())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_recovers_when_the_broker_drops_its_connection() {
    let stack = Stack::new("drop");
    let mut alice = stack.connect(1).await;
    let mut bob = stack.connect(2).await;
    let chat_id = create_chat(&stack, &mut alice, ChatKind::Direct, vec![2]).await;
    assert!(matches!(recv(&mut bob).await, ServerFrame::ChatCreated(_)));

    let pid = gateway_connection_pid(stack.node_id)
        .expect("the gateway's connection is listed by rabbitmqctl");
    let closed = Command::new("rabbitmqctl")
        .args(["close_connection", &pid, "e2e test drops the gateway"])
        .status()
        .expect("rabbitmqctl");
    assert!(closed.success());
    // Sent while the gateway reconnects: held, then published on the new connection.
    for i in 0..20 {
        send(&mut alice, message(chat_id, 200 + i, "through the outage")).await;
    }
    let mut seen = BTreeSet::new();
    while seen.len() < 20 {
        if let ServerFrame::Message(m) = recv(&mut bob).await {
            seen.insert(m.seq);
        }
    }
    assert_eq!(seen, (1..=20).collect::<BTreeSet<u64>>());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reconnected = false;
    while Instant::now() < deadline {
        if gateway_connection_pid(stack.node_id).is_some_and(|p| p != pid) {
            reconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(reconnected, "the gateway opened a new connection");
}
