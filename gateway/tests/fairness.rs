//! A client that reads as fast as the network allows is never closed because others sent a
//! burst at it (issue #12, H2), on the gateway's default limits: twenty users who each burst
//! a whole connection's worth of 4 KiB messages at one fast-reading victim, then one account
//! with twenty connections doing the same. The victim gets every accepted message and no
//! 4000; the account with twenty connections gets one user's budget, not twenty.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::{Client, connect, recv, send};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Barrier;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use wire::client::{CreateChat, SendMessage};
use wire::limits::MAX_BODY_BYTES;
use wire::{ChatKind, ClientFrame, ErrorCode, ServerFrame};

/// Senders, and connections of the one account.
const SENDERS: u64 = 20;
/// Messages each connection sends at once: the default per-connection burst.
const BURST: u64 = 200;
/// The default per-user rate and burst.
const USER_RATE: u64 = 200;
const USER_BURST: u64 = 400;

const VICTIM: u64 = 1;

/// What a fast reader has seen so far.
#[derive(Default)]
struct Seen {
    messages: AtomicU64,
    rate_limited: AtomicU64,
    /// The close code, once closed (0: still open).
    closed: AtomicU64,
}

/// Reads everything as it comes, counting messages and rate-limit refusals.
fn read_fast(mut stream: SplitStream<Client>) -> (Arc<Seen>, JoinHandle<()>) {
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    let task = tokio::spawn(async move {
        while let Some(next) = stream.next().await {
            let frame = match next {
                Ok(Message::Binary(bytes)) => ServerFrame::decode(&bytes).expect("valid frame"),
                Ok(Message::Close(close)) => {
                    let code = close.map_or(1005, |close| u16::from(close.code));
                    counts.closed.store(u64::from(code), Relaxed);
                    return;
                }
                Ok(_) => continue,
                Err(_) => {
                    counts.closed.store(1006, Relaxed);
                    return;
                }
            };
            match frame {
                ServerFrame::Message(_) => {
                    counts.messages.fetch_add(1, Relaxed);
                }
                ServerFrame::Error(error) if error.code == ErrorCode::RateLimited as u16 => {
                    counts.rate_limited.fetch_add(1, Relaxed);
                }
                _ => {}
            }
        }
    });
    (seen, task)
}

/// A group of `owner` (already connected) and the victim; its id.
async fn chat_with_victim(owner: &mut Client, client_msg_id: u64) -> u64 {
    send(
        owner,
        ClientFrame::CreateChat(CreateChat {
            client_msg_id,
            kind: ChatKind::Group,
            title: "burst".into(),
            members: vec![VICTIM],
        }),
    )
    .await;
    match recv(owner).await {
        ServerFrame::ChatCreated(created) => created.chat_id,
        other => panic!("expected chat_created, got {other:?}"),
    }
}

/// Sends a burst of maximal messages on `client` once every sender is ready; the sending
/// half, kept open while its replies are read, and what the reader saw.
fn burst(
    client: Client,
    chat_id: u64,
    start: Arc<Barrier>,
    first_id: u64,
) -> JoinHandle<(SplitSink<Client, Message>, Arc<Seen>)> {
    tokio::spawn(async move {
        let (mut sink, stream) = client.split();
        let (seen, _) = read_fast(stream);
        let body = "x".repeat(MAX_BODY_BYTES);
        let frames: Vec<_> = (0..BURST)
            .map(|i| {
                let frame = ClientFrame::Send(SendMessage {
                    chat_id,
                    client_msg_id: first_id + i,
                    body: body.clone(),
                });
                Message::Binary(Bytes::from(frame.encode().expect("encodes")))
            })
            .collect();
        // The token create_chat took is back after 10 ms: the whole burst is within limits.
        tokio::time::sleep(Duration::from_millis(50)).await;
        start.wait().await;
        for frame in frames {
            sink.feed(frame).await.expect("send");
        }
        sink.flush().await.expect("flush");
        (sink, seen)
    })
}

/// Waits until the victim has `expected` messages, or 30 s.
async fn victim_receives(victim: &Seen, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while victim.messages.load(Relaxed) < expected && Instant::now() < deadline {
        assert_eq!(victim.closed.load(Relaxed), 0, "the victim was closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing more than what was accepted arrives, and the victim is still open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(victim.messages.load(Relaxed), expected);
    assert_eq!(victim.closed.load(Relaxed), 0, "the victim was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_reader_is_never_closed_by_bursts_and_one_account_gets_one_budget() {
    let gateway = common::start(2, &[]);
    let (victim, _) = connect(&gateway, VICTIM).await;
    let (_victim_sink, victim_stream) = victim.split();
    let (victim, _victim_reader) = read_fast(victim_stream);

    // Twenty users, each with a chat with the victim, burst at once.
    let start = Arc::new(Barrier::new(SENDERS as usize));
    let mut senders = Vec::new();
    for user in 0..SENDERS {
        let (mut client, _) = connect(&gateway, 100 + user).await;
        let chat_id = chat_with_victim(&mut client, 1).await;
        senders.push(burst(client, chat_id, start.clone(), 10));
    }
    let mut sent = Vec::new();
    for sender in senders {
        sent.push(sender.await.expect("sender"));
    }
    victim_receives(&victim, SENDERS * BURST).await;
    let refused: u64 = sent
        .iter()
        .map(|(_, seen)| seen.rate_limited.load(Relaxed))
        .sum();
    assert_eq!(refused, 0, "each sender kept to its own limits");

    // One account with twenty connections, on both cores, bursts the same.
    let (mut owner, _) = connect(&gateway, 2).await;
    let chat_id = chat_with_victim(&mut owner, 1).await;
    let mut connections = vec![owner];
    for _ in 1..SENDERS {
        connections.push(connect(&gateway, 2).await.0);
    }
    let start = Arc::new(Barrier::new(SENDERS as usize));
    let began = Instant::now();
    let senders: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(n, client)| burst(client, chat_id, start.clone(), 10 + n as u64 * BURST))
        .collect();
    let mut sent = Vec::new();
    for sender in senders {
        sent.push(sender.await.expect("sender"));
    }
    let readers: Vec<_> = sent.iter().map(|(_, seen)| seen).collect();
    // Every refusal has been answered once the victim has the rest.
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let refused: u64 = readers.iter().map(|r| r.rate_limited.load(Relaxed)).sum();
        let accepted = SENDERS * BURST - refused;
        if victim.messages.load(Relaxed) >= SENDERS * BURST + accepted || Instant::now() > deadline
        {
            break refused;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = began.elapsed().as_secs_f64();
    let accepted = SENDERS * BURST - refused;
    println!("one account, {SENDERS} connections: {accepted} accepted in {elapsed:.2} s");
    assert!(accepted >= USER_BURST, "a whole user burst is accepted");
    assert!(
        accepted as f64 <= USER_BURST as f64 + USER_RATE as f64 * elapsed + 1.0,
        "{accepted} accepted in {elapsed:.2} s: more than one user's budget"
    );
    assert!(
        readers.iter().all(|r| r.closed.load(Relaxed) == 0),
        "no connection of the account was closed"
    );
    victim_receives(&victim, SENDERS * BURST + accepted).await;

    gateway.begin_shutdown();
    tokio::task::spawn_blocking(move || gateway.join())
        .await
        .expect("gateway stops");
}
