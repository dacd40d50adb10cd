//! What one connection can make the gateway hold, in bytes (issue #12, H1): clients that
//! never read and keep asking for full sync pages of a chat of 4 KiB messages within the
//! rate limit stop being read once their queue is past its mark, are closed as slow
//! consumers once nothing has been written for the stall time, and their memory goes back;
//! a client that asks the same while reading is served. The gateway is the binary, with
//! its allocator (mimalloc), in a child process: its RSS is its own, not the clients'.

mod common;

use std::time::{Duration, Instant};

use common::{
    Endpoint, GatewayProcess, admin_get, connect, raw_close_code, raw_upgrade, recv, send,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use wire::client::{CreateChat, SendMessage, SyncRequest};
use wire::limits::{MAX_BODY_BYTES, MAX_SYNC_PAGE, MAX_SYNC_PAGE_BYTES};
use wire::{ChatKind, ClientFrame, ServerFrame};

/// Messages in the chat: a full sync page's worth.
const MESSAGES: u64 = MAX_SYNC_PAGE as u64;
/// Never-reading clients, each its own user.
const FLOODERS: u64 = 16;
/// Sync requests sent together, and the pause between bursts: 100 frames per second, the
/// default rate limit, and about 2.6 MiB of pages per burst: past the queue's mark at once.
const BURST: u64 = 10;
const PAUSE: Duration = Duration::from_millis(100);
/// The queue mark the gateway starts with (its default).
const QUEUE_BYTES: u64 = 1024 * 1024;
/// What one never-reading connection may make its queue hold: the mark, plus the one page
/// that passed it (its bodies and each message's envelope) before reading stopped.
const QUEUED_CEILING: u64 = QUEUE_BYTES + MAX_SYNC_PAGE_BYTES as u64 + 64 * 1024;
/// How much the gateway's RSS may grow per never-reading connection: twice its queue. The
/// pages are objects of about a quarter MiB, and mimalloc's pages around them made RSS grow
/// by about 1.6 times what was queued (measured). Before the byte bound one such client
/// grew it by hundreds of MiB.
const RSS_GROWTH_PER_FLOODER: u64 = 2 * QUEUED_CEILING;
/// What the gateway may keep, 6 s after every flooder is gone, of what they made it hold,
/// all together. Its cores ask mimalloc to give freed pages back once a second; without
/// that, about 60 MiB of 100 stayed for good (measured).
const RSS_KEPT_AFTER: u64 = 8 * 1024 * 1024;

fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} in /metrics"))
}

fn sync(client_msg_id: u64, chat_id: u64) -> ClientFrame {
    ClientFrame::Sync(SyncRequest {
        client_msg_id,
        chat_id,
        after_seq: 0,
        limit: MAX_SYNC_PAGE,
        before_seq: None,
    })
}

/// A chat of user 1 with users 2 to `FLOODERS + 2`, holding a full page of maximal messages.
async fn chat_full_of_4_kib_messages(gateway: &impl Endpoint) -> u64 {
    let (mut alice, _) = connect(gateway, 1).await;
    send(
        &mut alice,
        ClientFrame::CreateChat(CreateChat {
            client_msg_id: 1,
            kind: ChatKind::Group,
            title: "history".into(),
            members: (2..=FLOODERS + 2).collect(),
        }),
    )
    .await;
    let chat_id = match recv(&mut alice).await {
        ServerFrame::ChatCreated(created) => created.chat_id,
        other => panic!("expected chat_created, got {other:?}"),
    };
    let body = "x".repeat(MAX_BODY_BYTES);
    // In two halves, each within the rate limit's burst.
    for half in 0..2 {
        for i in 0..MESSAGES / 2 {
            let client_msg_id = 10 + half * MESSAGES + i;
            let frame = ClientFrame::Send(SendMessage {
                chat_id,
                client_msg_id,
                body: body.clone(),
            });
            send(&mut alice, frame).await;
        }
        for _ in 0..MESSAGES / 2 {
            assert!(matches!(recv(&mut alice).await, ServerFrame::Receipt(_)));
        }
    }
    chat_id
}

#[tokio::test]
async fn a_never_reading_sync_flooder_is_closed_with_its_bytes_bounded_and_a_reader_is_served() {
    let gateway = GatewayProcess::start(&[]).await;
    let chat_id = chat_full_of_4_kib_messages(&gateway).await;
    let rss_before = gateway.rss();

    // The flooders ask for full pages at the rate limit and never read.
    let mut flooders = Vec::new();
    for user in 3..FLOODERS + 3 {
        flooders.push(raw_upgrade(&gateway, user).await);
    }
    let rss_connected = gateway.rss();
    let mut rss_peak = rss_connected;
    let mut queued_peak: f64 = 0.0;
    let mut requests = 0;
    let started = Instant::now();
    let closed = loop {
        for flooder in &mut flooders {
            for _ in 0..BURST {
                let payload = sync(requests, chat_id).encode().expect("encodes");
                let mut frame = Vec::new();
                wsproto::encode_frame(
                    wsproto::Role::Client,
                    wsproto::OpCode::Binary,
                    true,
                    &payload,
                    &mut frame,
                );
                if flooder.write_all(&frame).await.is_err() {
                    break;
                }
                requests += 1;
            }
        }
        tokio::time::sleep(PAUSE).await;
        let (_, metrics) = admin_get(&gateway, "/metrics").await;
        queued_peak = queued_peak.max(sample(&metrics, "gateway_outbound_queue_bytes"));
        rss_peak = rss_peak.max(gateway.rss());
        if sample(&metrics, "gateway_slow_consumer_closes_total") >= FLOODERS as f64 {
            break true;
        }
        if started.elapsed() > Duration::from_secs(30) {
            break false;
        }
    };
    let flood = started.elapsed();
    assert!(closed, "not all closed after {requests} sync requests");
    // Read at once: a close frame nobody reads within the close grace is dropped unsent.
    let codes = futures_util::future::join_all(flooders.iter_mut().map(raw_close_code)).await;
    assert!(codes.iter().all(|code| *code == Some(4000)), "{codes:?}");
    drop(flooders);
    let (_, metrics) = admin_get(&gateway, "/metrics").await;
    assert_eq!(sample(&metrics, "gateway_outbound_queue_bytes"), 0.0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_1s = gateway.rss();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_after = gateway.rss();
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "{FLOODERS} flooders: {requests} sync requests in {:.1} s; queued bytes peak {:.1} MiB; \
         RSS before {:.1} MiB, connected {:.1} MiB, peak {:.1} MiB, 1 s after {:.1} MiB, 6 s after {:.1} MiB",
        flood.as_secs_f64(),
        queued_peak / (1024.0 * 1024.0),
        mib(rss_before),
        mib(rss_connected),
        mib(rss_peak),
        mib(rss_1s),
        mib(rss_after),
    );
    assert!(
        queued_peak <= (FLOODERS * QUEUED_CEILING) as f64,
        "queued {queued_peak} bytes"
    );
    assert!(
        rss_peak - rss_before <= FLOODERS * RSS_GROWTH_PER_FLOODER,
        "RSS grew by {:.1} MiB",
        mib(rss_peak - rss_before)
    );
    assert!(
        rss_after.saturating_sub(rss_before) <= RSS_KEPT_AFTER,
        "RSS stayed {:.1} MiB above where it was",
        mib(rss_after - rss_before)
    );
    let requests = requests / FLOODERS;

    // A reader that asks the same, as long as the flooder did, is served every page.
    let (reader, _) = connect(&gateway, 2).await;
    let (mut sink, mut stream) = reader.split();
    let pages = tokio::spawn(async move {
        let mut pages = 0;
        while pages < requests {
            let next = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
            match next.expect("a frame within 10 s") {
                Some(Ok(Message::Binary(bytes))) => {
                    match ServerFrame::decode(&bytes).expect("valid frame") {
                        ServerFrame::SyncBatch(batch) => {
                            assert!(batch.has_more, "a page stops at its byte bound");
                            pages += 1;
                        }
                        other => panic!("expected a sync batch, got {other:?}"),
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("the reader was cut: {other:?}"),
            }
        }
        pages
    });
    let mut sent = 0;
    while sent < requests {
        for _ in 0..BURST.min(requests - sent) {
            let bytes = sync(sent, chat_id).encode().expect("encodes");
            sink.send(Message::Binary(Bytes::from(bytes)))
                .await
                .expect("send");
            sent += 1;
        }
        tokio::time::sleep(PAUSE).await;
    }
    assert_eq!(pages.await.expect("reader"), requests);
    let (_, metrics) = admin_get(&gateway, "/metrics").await;
    assert_eq!(
        sample(&metrics, "gateway_slow_consumer_closes_total"),
        FLOODERS as f64
    );
}
