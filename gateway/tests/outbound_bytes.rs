//! What one connection can make the gateway hold, in bytes (issue #12, H1): a client that
//! never reads and keeps asking for full sync pages of a chat of 4 KiB messages is closed
//! as a slow consumer with its queue freed, and a client that asks the same while reading
//! is served. The gateway runs in this process, so its RSS is this process's VmRSS. The
//! file holds one test, so no other test's memory mixes in.

mod common;

use std::time::{Duration, Instant};

use common::{admin_get, connect, raw_close_code, raw_upgrade, recv, send, start};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use wire::client::{CreateChat, SendMessage, SyncRequest};
use wire::limits::{MAX_BODY_BYTES, MAX_SYNC_PAGE};
use wire::{ChatKind, ClientFrame, ServerFrame};

/// Messages in the chat: a full sync page's worth.
const MESSAGES: u64 = MAX_SYNC_PAGE as u64;
/// Sync requests sent together, and the pause between bursts: 100 frames per second, the
/// default rate limit, and about 2.6 MiB of pages per burst, under the 4 MiB queue bound.
const BURST: u64 = 10;
const PAUSE: Duration = Duration::from_millis(100);
/// How much the gateway's RSS may grow while a never-reading client floods: the 4 MiB queue
/// bound, pages being built, and what the allocator keeps. Before the byte bound one such
/// client grew it by hundreds of MiB.
const RSS_GROWTH_CEILING: u64 = 16 * 1024 * 1024;
/// The byte bound the gateway starts with (its default).
const QUEUE_BYTES: f64 = 4.0 * 1024.0 * 1024.0;

fn vm_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

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

/// A chat of user 1 with users 2 and 3, holding a full page of maximal messages.
async fn chat_full_of_4_kib_messages(gateway: &gateway::Gateway) -> u64 {
    let (mut alice, _) = connect(gateway, 1).await;
    send(
        &mut alice,
        ClientFrame::CreateChat(CreateChat {
            client_msg_id: 1,
            kind: ChatKind::Group,
            title: "history".into(),
            members: vec![2, 3],
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
    let gateway = start(1, &[]);
    let chat_id = chat_full_of_4_kib_messages(&gateway).await;
    let rss_before = vm_rss();

    // The flooder asks for full pages at the rate limit and never reads.
    let mut flooder = raw_upgrade(&gateway, 2).await;
    let mut rss_peak = rss_before;
    let mut queued_peak: f64 = 0.0;
    let mut requests = 0;
    let started = Instant::now();
    let closed = loop {
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
        tokio::time::sleep(PAUSE).await;
        let (_, metrics) = admin_get(&gateway, "/metrics").await;
        queued_peak = queued_peak.max(sample(&metrics, "gateway_outbound_queue_bytes"));
        rss_peak = rss_peak.max(vm_rss());
        if sample(&metrics, "gateway_slow_consumer_closes_total") >= 1.0 {
            break true;
        }
        if started.elapsed() > Duration::from_secs(30) {
            break false;
        }
    };
    assert!(closed, "not closed after {requests} sync requests");
    assert_eq!(raw_close_code(&mut flooder).await, Some(4000));
    let (_, metrics) = admin_get(&gateway, "/metrics").await;
    assert_eq!(sample(&metrics, "gateway_outbound_queue_bytes"), 0.0);
    let rss_after = vm_rss();
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "flooder: {requests} sync requests in {:.1} s; queued bytes peak {:.1} MiB; \
         RSS before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB",
        started.elapsed().as_secs_f64(),
        queued_peak / (1024.0 * 1024.0),
        mib(rss_before),
        mib(rss_peak),
        mib(rss_after),
    );
    assert!(queued_peak <= QUEUE_BYTES, "queued {queued_peak} bytes");
    assert!(
        rss_peak - rss_before <= RSS_GROWTH_CEILING,
        "RSS grew by {:.1} MiB",
        mib(rss_peak - rss_before)
    );

    // A reader that asks the same, as long as the flooder did, is served every page.
    let (reader, _) = connect(&gateway, 3).await;
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
    assert_eq!(sample(&metrics, "gateway_slow_consumer_closes_total"), 1.0);

    gateway.begin_shutdown();
    gateway.join();
}
