//! Several workers and worker crashes: order and exactly-once effects hold.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Env, NODE};
use wire::client::{CreateChat, SendMessage};
use wire::{ChatKind, ClientFrame, ServerFrame, UserId};

const ALICE: UserId = 2001;
const BOB: UserId = 2002;

async fn direct_chat(env: &Env, node: &mut common::NodeReader) -> u64 {
    env.send(
        ALICE,
        1,
        ClientFrame::CreateChat(CreateChat {
            client_msg_id: 1,
            kind: ChatKind::Direct,
            title: String::new(),
            members: vec![BOB],
        }),
    )
    .await;
    match node
        .find(|r| matches!(r.frame, ServerFrame::ChatCreated(_)))
        .await
        .frame
    {
        ServerFrame::ChatCreated(created) => created.chat_id,
        other => panic!("not a ChatCreated: {other:?}"),
    }
}

fn sends(chat_id: u64, count: u64) -> Vec<(UserId, u64, ClientFrame)> {
    (1..=count)
        .map(|i| {
            (
                ALICE,
                1,
                ClientFrame::Send(SendMessage {
                    chat_id,
                    client_msg_id: 10_000 + i,
                    body: format!("message {i}"),
                }),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_the_same_shards_keep_per_chat_order() {
    let env = Env::new(2).await;
    env.online(ALICE, NODE).await;
    env.online(BOB, NODE).await;
    let mut node = env.node_reader().await;
    let first = env.start(&["--batch-size", "32"]);
    let second = env.start(&["--batch-size", "32"]);
    let chat = direct_chat(&env, &mut node).await;

    env.send_all(&sends(chat, 500)).await;
    let mut seqs = Vec::with_capacity(500);
    while seqs.len() < 500 {
        let received = node.next().await;
        if let ServerFrame::Message(m) = received.frame {
            assert!(
                !received.republish,
                "nothing failed, nothing is republished"
            );
            seqs.push((m.seq, m.client_msg_id));
        }
    }
    let expected: Vec<(u64, u64)> = (1..=500).map(|i| (i, 10_000 + i)).collect();
    assert_eq!(seqs, expected);
    // Single active consumer: one worker did all of this chat's work.
    let (a, b) = (first.stats.snapshot(), second.stats.snapshot());
    assert_eq!(a.stored + b.stored, 500);

    first.stop().await;
    second.stop().await;
    node.close().await;
    env.cleanup().await;
}

/// Counts a delivered message by seq: (plain copies, copies marked as republished). Returns
/// whether it was a message.
fn record(copies: &mut BTreeMap<u64, (u32, u32)>, received: common::Received) -> bool {
    let ServerFrame::Message(m) = received.frame else {
        return false;
    };
    let entry = copies.entry(m.seq).or_default();
    if received.republish {
        entry.1 += 1;
    } else {
        entry.0 += 1;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_loses_and_duplicates_nothing() {
    const COUNT: u64 = 600;
    let env = Env::new(1).await;
    env.online(ALICE, NODE).await;
    env.online(BOB, NODE).await;
    let mut node = env.node_reader().await;
    let doomed = env.start(&["--batch-size", "16"]);
    let chat = direct_chat(&env, &mut node).await;

    // All confirmed by the broker before the crash, so all must end up stored once.
    env.send_all(&sends(chat, COUNT)).await;
    // seq -> (plain deliveries, republished deliveries)
    let mut copies: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
    let mut seen = 0;
    while seen < 150 {
        if record(&mut copies, node.next().await) {
            seen += 1;
        }
    }
    doomed.kill().await;
    let replacement = env.start(&["--batch-size", "16"]);
    while copies.len() < COUNT as usize {
        record(&mut copies, node.next_within(Duration::from_secs(15)).await);
    }
    // Let late duplicates, if any, arrive before judging.
    while let Some(received) = node.try_next(Duration::from_millis(500)).await {
        record(&mut copies, received);
    }

    let seqs: BTreeSet<u64> = copies.keys().copied().collect();
    assert_eq!(
        seqs,
        (1..=COUNT).collect::<BTreeSet<u64>>(),
        "every seq delivered"
    );
    for (seq, (plain, republished)) in &copies {
        assert!(
            *plain <= 1,
            "seq {seq} delivered {plain} times without the republish mark"
        );
        assert!(plain + republished >= 1, "seq {seq} never delivered");
    }
    assert_eq!(
        env.column(&format!(
            "SELECT count(*) FROM {{schema}}.messages WHERE chat_id = {chat}"
        ))
        .await,
        [COUNT as i64],
        "every confirmed frame stored exactly once"
    );
    assert_eq!(
        env.column(&format!(
            "SELECT count(DISTINCT client_msg_id) FROM {{schema}}.messages WHERE chat_id = {chat}"
        ))
        .await,
        [COUNT as i64]
    );
    assert_eq!(
        env.column(&format!(
            "SELECT max(seq) FROM {{schema}}.messages WHERE chat_id = {chat}"
        ))
        .await,
        [COUNT as i64],
        "seqs gap-free"
    );
    let republished: u32 = copies.values().map(|c| c.1).sum();
    eprintln!(
        "killed after {seen} deliveries; {republished} republished deliveries; replacement {:?}",
        replacement.stats.snapshot()
    );

    replacement.stop().await;
    node.close().await;
    env.cleanup().await;
}
