//! Counters each core owns and the admin port reads. A core writes only its own
//! `CoreMetrics` (relaxed atomics on a cache line nobody else writes), so counting costs no
//! lock and no contention; at each scrape [`NodeMetrics`] describes them, summed over the
//! cores where a per-core series would say nothing more, to `prometheus-client`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use telemetry::metrics::{counter, counters, gauge, gauges, histogram};
use wire::{ClientKind, CloseCode, ErrorCode, ServerKind};

use crate::config::EngineKind;
use crate::node::Node;

/// Upper bounds of the delivery latency buckets, in microseconds.
const LATENCY_BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];

/// Frame kinds fit in a byte; a table of 16 covers every kind with room to grow.
const KINDS: usize = 16;

/// Close codes counted under their own label: the gateway's, and 1006 for a connection
/// that ended without a close frame. A client may close with any code it likes, so every
/// other code is counted as `other`: label values must not be the client's to choose.
const CLOSE_CODES: [u16; 11] = [
    CloseCode::NORMAL.0,
    CloseCode::GOING_AWAY.0,
    CloseCode::PROTOCOL_ERROR.0,
    1006,
    CloseCode::INVALID_PAYLOAD.0,
    CloseCode::POLICY_VIOLATION.0,
    CloseCode::MESSAGE_TOO_BIG.0,
    CloseCode::INTERNAL_ERROR.0,
    CloseCode::SLOW_CONSUMER.0,
    CloseCode::IDLE_TIMEOUT.0,
    CloseCode::TOKEN_EXPIRED.0,
];

/// A Prometheus histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }
}

/// One core's counters.
#[derive(Debug, Default)]
pub struct CoreMetrics {
    /// Open WebSocket sessions.
    pub connections: AtomicI64,
    /// Sessions ever opened.
    pub connections_total: AtomicU64,
    /// Upgrades refused, by reason label (the gateway's own names, so a bounded set).
    pub refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Sessions closed, by index into [`CLOSE_CODES`]; the last counts every other code.
    closes: [AtomicU64; CLOSE_CODES.len() + 1],
    /// Client frames by kind byte.
    pub frames_in: [AtomicU64; KINDS],
    /// Server frames by kind byte.
    pub frames_out: [AtomicU64; KINDS],
    /// Error frames sent, by code (index into `ErrorCode::ALL`).
    pub errors: [AtomicU64; ErrorCode::ALL.len()],
    /// WebSocket payload bytes read.
    pub bytes_in: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_out: AtomicU64,
    /// Sessions closed because their outbound queue filled.
    pub slow_consumer_closes: AtomicU64,
    /// Frames waiting in the outbound queues of this core's sessions.
    pub outbound_queued: AtomicI64,
    /// Bytes those frames pin.
    pub outbound_queued_bytes: AtomicI64,
    /// Deepest outbound queue a push has made since the last sweep.
    outbound_peak: AtomicU64,
    /// Deepest outbound queue of the last sweep window: what was left in any queue at the
    /// sweep, or what a push reached since the one before. It goes down as queues drain.
    outbound_deepest: AtomicU64,
    /// Messages that waited because another core's mailbox was full.
    pub mailbox_full: AtomicU64,
    /// Messages dropped because the queue of those waiting for a full mailbox or bridge
    /// queue was at its bound (see `core::parked`).
    pub parked_dropped: AtomicU64,
    /// From the moment a frame was read to the moment its delivery was written.
    pub delivery_latency: Histogram,
}

impl CoreMetrics {
    /// Client and server frames counted so far.
    pub fn frames_moved(&self) -> u64 {
        self.frames_in
            .iter()
            .chain(&self.frames_out)
            .map(|count| count.load(Relaxed))
            .sum()
    }

    /// Counts a refused upgrade.
    pub fn refuse(&self, reason: &'static str) {
        self.refuse_many(reason, 1);
    }

    /// Counts `n` upgrades refused for one reason.
    pub fn refuse_many(&self, reason: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        // The lock is per core and only a scrape contends for it; a poisoned map still counts.
        let mut refused = self
            .refused
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *refused.entry(reason).or_insert(0) += n;
    }

    /// Counts a closed session.
    pub fn close(&self, code: u16) {
        let slot = CLOSE_CODES
            .iter()
            .position(|&known| known == code)
            .unwrap_or(CLOSE_CODES.len());
        self.closes[slot].fetch_add(1, Relaxed);
    }

    /// Counts an error frame.
    pub fn error(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|&c| c == code) {
            self.errors[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts a client frame.
    pub fn frame_in(&self, kind: ClientKind, bytes: usize) {
        self.frames_in[kind as usize % KINDS].fetch_add(1, Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Relaxed);
    }

    /// Counts a server frame queued for a session.
    pub fn frame_out(&self, kind_byte: u8) {
        self.frames_out[kind_byte as usize % KINDS].fetch_add(1, Relaxed);
    }

    /// Notes a push of `bytes` that left an outbound queue `depth` frames deep.
    pub fn queue_depth(&self, depth: usize, bytes: usize) {
        self.outbound_queued.fetch_add(1, Relaxed);
        self.outbound_queued_bytes.fetch_add(bytes as i64, Relaxed);
        self.outbound_peak.fetch_max(depth as u64, Relaxed);
    }

    /// Notes `frames` frames of `bytes` in all that left an outbound queue.
    pub fn dequeued(&self, frames: usize, bytes: usize) {
        self.outbound_queued.fetch_sub(frames as i64, Relaxed);
        self.outbound_queued_bytes.fetch_sub(bytes as i64, Relaxed);
    }

    /// Ends a sweep window in which the deepest queue left at the sweep was `deepest_now`.
    pub fn end_sweep_window(&self, deepest_now: usize) {
        let peak = self.outbound_peak.swap(0, Relaxed);
        self.outbound_deepest
            .store(peak.max(deepest_now as u64), Relaxed);
    }
}

/// The node's metrics as the admin port exports them.
#[derive(Debug)]
pub struct NodeMetrics(pub Arc<Node>);

impl Collector for NodeMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let node = &self.0;
        let cores = &node.metrics;
        let sum = |f: &dyn Fn(&CoreMetrics) -> u64| cores.iter().map(|c| f(c)).sum::<u64>();
        let e = &mut encoder;

        gauge(
            e,
            "gateway_ready",
            "1 while /readyz answers 200.",
            u64::from(node.is_ready()),
        )?;
        gauges(
            e,
            "gateway_core_up",
            "1 while the core's timer runs; 0 for a core stalled for a second or more.",
            (0..cores.len()).map(|i| ([("core", i)], u64::from(node.core_answers(i)))),
        )?;
        if node.config.engine == EngineKind::Amqp {
            gauge(
                e,
                "gateway_broker_connected",
                "1 while the broker connection is up.",
                u64::from(
                    node.broker_connected
                        .load(std::sync::atomic::Ordering::Acquire),
                ),
            )?;
            gauge(
                e,
                "gateway_broker_paused",
                "1 while sessions stop reading: the broker is behind on its confirms or unreachable.",
                u64::from(
                    node.broker_paused
                        .load(std::sync::atomic::Ordering::Acquire),
                ),
            )?;
            gauge(
                e,
                "gateway_redis_connected",
                "1 while Redis answers the registry's probes.",
                u64::from(
                    node.redis_connected
                        .load(std::sync::atomic::Ordering::Acquire),
                ),
            )?;
        }

        gauges(
            e,
            "gateway_connections",
            "Open WebSocket sessions, per core (sum them for the node).",
            cores
                .iter()
                .enumerate()
                .map(|(i, c)| ([("core", i)], c.connections.load(Relaxed))),
        )?;
        counter(
            e,
            "gateway_connections_opened",
            "Sessions ever opened.",
            sum(&|c| c.connections_total.load(Relaxed)),
        )?;
        let mut refused: BTreeMap<&'static str, u64> = BTreeMap::new();
        for core in cores {
            let map = core
                .refused
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for (&reason, &n) in map.iter() {
                *refused.entry(reason).or_insert(0) += n;
            }
        }
        counters(
            e,
            "gateway_handshakes_refused",
            "Upgrades refused, by reason.",
            refused
                .into_iter()
                .map(|(reason, n)| ([("reason", reason)], n)),
        )?;
        counter(
            e,
            "gateway_accept_descriptor_exhausted",
            "Accepts that failed because the process or the system had no file descriptor left.",
            node.descriptors.accept_failures(),
        )?;
        gauge(
            e,
            "gateway_at_descriptor_limit",
            "1 while the node is out of file descriptors (answering new clients 503).",
            u64::from(node.descriptors.at_limit()),
        )?;
        let close_labels = CLOSE_CODES
            .iter()
            .map(u16::to_string)
            .chain(["other".to_owned()]);
        counters(
            e,
            "gateway_closes",
            "Sessions closed, by WebSocket close code (codes the gateway does not use: other).",
            close_labels
                .enumerate()
                .map(|(i, code)| ([("code", code)], sum(&|c| c.closes[i].load(Relaxed)))),
        )?;
        counters(
            e,
            "gateway_frames_in",
            "Client frames, by kind.",
            ClientKind::ALL.iter().map(|&kind| {
                let n = sum(&|c| c.frames_in[kind as usize % KINDS].load(Relaxed));
                ([("kind", kind.name())], n)
            }),
        )?;
        counters(
            e,
            "gateway_frames_out",
            "Server frames queued to sessions, by kind.",
            ServerKind::ALL.iter().map(|&kind| {
                let n = sum(&|c| c.frames_out[kind as usize % KINDS].load(Relaxed));
                ([("kind", kind.name())], n)
            }),
        )?;
        counters(
            e,
            "gateway_errors",
            "Error frames sent, by code.",
            ErrorCode::ALL.iter().enumerate().map(|(i, code)| {
                let labels = [
                    ("code", code.as_u16().to_string()),
                    ("name", code.name().to_owned()),
                ];
                (labels, sum(&|c| c.errors[i].load(Relaxed)))
            }),
        )?;
        counter(
            e,
            "gateway_bytes_in",
            "WebSocket payload bytes read.",
            sum(&|c| c.bytes_in.load(Relaxed)),
        )?;
        counter(
            e,
            "gateway_bytes_out",
            "Bytes written to sockets.",
            sum(&|c| c.bytes_out.load(Relaxed)),
        )?;
        counter(
            e,
            "gateway_slow_consumer_closes",
            "Sessions closed because their outbound queue filled.",
            sum(&|c| c.slow_consumer_closes.load(Relaxed)),
        )?;
        gauge(
            e,
            "gateway_outbound_queue_frames",
            "Frames waiting in outbound queues.",
            cores
                .iter()
                .map(|c| c.outbound_queued.load(Relaxed))
                .sum::<i64>(),
        )?;
        gauge(
            e,
            "gateway_outbound_queue_bytes",
            "Bytes the frames waiting in outbound queues pin.",
            cores
                .iter()
                .map(|c| c.outbound_queued_bytes.load(Relaxed))
                .sum::<i64>(),
        )?;
        gauge(
            e,
            "gateway_outbound_queue_max_frames",
            "Deepest outbound queue of any session over the last second.",
            cores
                .iter()
                .map(|c| c.outbound_deepest.load(Relaxed))
                .max()
                .unwrap_or(0),
        )?;
        counter(
            e,
            "gateway_mailbox_full",
            "Cross-core messages that waited for a full mailbox.",
            sum(&|c| c.mailbox_full.load(Relaxed)),
        )?;
        counter(
            e,
            "gateway_parked_dropped",
            "Messages dropped because too many already waited for a full mailbox or bridge queue.",
            sum(&|c| c.parked_dropped.load(Relaxed)),
        )?;
        let bounds: Vec<f64> = LATENCY_BUCKETS_US
            .iter()
            .map(|&us| us as f64 / 1e6)
            .collect();
        let counts: Vec<u64> = (0..=LATENCY_BUCKETS_US.len())
            .map(|i| sum(&|c| c.delivery_latency.buckets[i].load(Relaxed)))
            .collect();
        histogram(
            e,
            "gateway_delivery_latency_seconds",
            "Frame read to delivery written.",
            &bounds,
            &counts,
            sum(&|c| c.delivery_latency.sum_us.load(Relaxed)) as f64 / 1e6,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_are_a_bounded_label_set() {
        let core = CoreMetrics::default();
        core.close(1000);
        core.close(4001);
        core.close(3999);
        core.close(65535);
        let counted = |code| {
            let slot = CLOSE_CODES.iter().position(|&c| c == code);
            core.closes[slot.unwrap_or(CLOSE_CODES.len())].load(Relaxed)
        };
        assert_eq!(counted(1000), 1);
        assert_eq!(counted(4001), 1);
        assert_eq!(counted(0), 2, "client-chosen codes share one label");
    }

    #[test]
    fn the_deepest_queue_gauge_goes_down_when_queues_drain() {
        let core = CoreMetrics::default();
        core.queue_depth(1, 10);
        core.queue_depth(40, 10);
        core.end_sweep_window(3);
        assert_eq!(
            core.outbound_deepest.load(Relaxed),
            40,
            "the peak since the last sweep"
        );
        core.end_sweep_window(3);
        assert_eq!(
            core.outbound_deepest.load(Relaxed),
            3,
            "what is left at the sweep"
        );
        core.end_sweep_window(0);
        assert_eq!(core.outbound_deepest.load(Relaxed), 0);
    }
}
