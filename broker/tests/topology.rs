//! The topology against the real RabbitMQ on 127.0.0.1:5672 (override with `AMQP_URL`): each
//! test declares its own prefix and deletes it afterwards.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use broker::{DELIVERY_LIMIT, Topology};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

struct Fixture {
    topology: Topology,
    connection: Connection,
    channel: Channel,
}

impl Fixture {
    async fn new(shards: u16) -> Fixture {
        let suffix = RandomState::new().hash_one(std::process::id());
        let topology = Topology {
            prefix: format!("test-broker-{suffix:016x}"),
            shards,
        };
        let connection = broker::connect(&amqp_url(), "broker-test")
            .await
            .expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        Fixture {
            topology,
            connection,
            channel,
        }
    }

    async fn publish(&self, exchange: &str, routing_key: &str, body: &[u8]) {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(
            confirm.is_ack(),
            "publish to {exchange}/{routing_key} not acked"
        );
        assert!(
            confirm.take_message().is_none(),
            "unroutable: {routing_key}"
        );
    }

    /// Consumes `queue` on a channel of its own (auto-ack), so that the consumer can be
    /// dropped without closing the fixture's channel.
    async fn consume(&self, queue: &str) -> lapin::Consumer {
        let channel = self.connection.create_channel().await.expect("channel");
        channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume")
    }

    async fn get(&self, queue: &str) -> Option<Vec<u8>> {
        // A quorum queue commits through Raft, so a just-published message can take a moment.
        for _ in 0..50 {
            let got = self
                .channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get");
            if let Some(message) = got {
                return Some(message.delivery.data.clone());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    async fn cleanup(self, nodes: &[u32]) {
        self.topology
            .delete_all(&self.channel, nodes)
            .await
            .expect("delete");
        let _ = self.connection.close(200, "done".into()).await;
    }
}

async fn next(consumer: &mut lapin::Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .expect("a delivery within 5 s")
        .expect("consumer open")
        .expect("delivery")
}

#[tokio::test]
async fn declarations_are_idempotent_and_route_by_shard_and_node() {
    let f = Fixture::new(4).await;
    for _ in 0..2 {
        f.topology
            .declare_backend(&f.channel)
            .await
            .expect("backend");
        f.topology.declare_node(&f.channel, 7).await.expect("node");
    }
    for shard in 0..4 {
        let body = format!("shard {shard}");
        f.publish(
            &f.topology.inbound_exchange(),
            &Topology::shard_routing_key(shard),
            body.as_bytes(),
        )
        .await;
        // basic.get is refused on single-active-consumer queues: consume instead.
        let mut consumer = f.consume(&f.topology.inbound_queue(shard)).await;
        assert_eq!(next(&mut consumer).await.data, body.as_bytes());
    }
    f.publish(
        &f.topology.outbound_exchange(),
        &Topology::node_routing_key(7),
        b"to node 7",
    )
    .await;
    assert_eq!(
        f.get(&f.topology.node_queue(7)).await.as_deref(),
        Some(&b"to node 7"[..])
    );
    f.cleanup(&[7]).await;
}

#[tokio::test]
async fn rejected_frames_are_dead_lettered() {
    let f = Fixture::new(1).await;
    f.topology
        .declare_backend(&f.channel)
        .await
        .expect("declare");
    f.publish(
        &f.topology.inbound_exchange(),
        &Topology::shard_routing_key(0),
        b"poison",
    )
    .await;
    let consumer_channel = f.connection.create_channel().await.expect("channel");
    let mut consumer = consumer_channel
        .basic_consume(
            f.topology.inbound_queue(0).as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let delivery = next(&mut consumer).await;
    delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    assert_eq!(
        f.get(&f.topology.dead_letter_queue()).await.as_deref(),
        Some(&b"poison"[..])
    );
    drop(consumer);
    // Closed before the queues are deleted: the broker cancels consumers of a deleted queue,
    // and that cancel crossing our own is a connection error in lapin.
    consumer_channel
        .close(200, "done".into())
        .await
        .expect("close");
    f.cleanup(&[]).await;
}

#[tokio::test]
async fn a_frame_requeued_past_the_delivery_limit_is_dead_lettered() {
    let f = Fixture::new(1).await;
    f.topology
        .declare_backend(&f.channel)
        .await
        .expect("declare");
    f.publish(
        &f.topology.inbound_exchange(),
        &Topology::shard_routing_key(0),
        b"crashes every worker",
    )
    .await;
    let consumer_channel = f.connection.create_channel().await.expect("channel");
    let mut consumer = consumer_channel
        .basic_consume(
            f.topology.inbound_queue(0).as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    // The first delivery plus DELIVERY_LIMIT redeliveries; the return after that dead-letters.
    for attempt in 0..=DELIVERY_LIMIT {
        let delivery = next(&mut consumer).await;
        let count = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned());
        if attempt > 0 {
            assert!(
                matches!(count, Some(AMQPValue::LongLongInt(n)) if n == attempt)
                    || matches!(count, Some(AMQPValue::LongInt(n)) if i64::from(n) == attempt),
                "attempt {attempt}: x-delivery-count {count:?}"
            );
        }
        delivery
            .reject(BasicRejectOptions { requeue: true })
            .await
            .expect("reject");
    }
    assert_eq!(
        f.get(&f.topology.dead_letter_queue()).await.as_deref(),
        Some(&b"crashes every worker"[..])
    );
    drop(consumer);
    // Closed before the queues are deleted: the broker cancels consumers of a deleted queue,
    // and that cancel crossing our own is a connection error in lapin.
    consumer_channel
        .close(200, "done".into())
        .await
        .expect("close");
    f.cleanup(&[]).await;
}

#[tokio::test]
async fn only_one_consumer_of_a_shard_is_active() {
    let f = Fixture::new(1).await;
    f.topology
        .declare_backend(&f.channel)
        .await
        .expect("declare");
    let queue = f.topology.inbound_queue(0);
    let mut consumers = Vec::new();
    let mut channels = Vec::new();
    for _ in 0..2 {
        let channel = f.connection.create_channel().await.expect("channel");
        channel
            .basic_qos(10, BasicQosOptions::default())
            .await
            .expect("qos");
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        consumers.push(consumer);
        channels.push(channel);
    }
    for i in 0..6u8 {
        f.publish(
            &f.topology.inbound_exchange(),
            &Topology::shard_routing_key(0),
            &[i],
        )
        .await;
    }
    let (mut active, mut standby) = {
        let mut it = consumers.into_iter();
        let first = it.next().expect("two consumers");
        let second = it.next().expect("two consumers");
        (first, second)
    };
    // Whichever registered first is the active one; the other gets nothing while it lives.
    for i in 0..6u8 {
        let delivery = next(&mut active).await;
        assert_eq!(delivery.data, [i]);
    }
    let idle = tokio::time::timeout(Duration::from_millis(300), standby.next()).await;
    assert!(idle.is_err(), "the standby consumer received a delivery");
    // The active one goes away without acking: the standby takes over, in order.
    drop(active);
    let first_channel = channels.remove(0);
    first_channel
        .close(200, "failover".into())
        .await
        .expect("close");
    for i in 0..6u8 {
        let delivery = next(&mut standby).await;
        assert_eq!(delivery.data, [i]);
    }
    drop(standby);
    for channel in channels {
        channel.close(200, "done".into()).await.expect("close");
    }
    f.cleanup(&[]).await;
}
