//! Counters each core owns and the admin port reads. A core writes only its own
//! `CoreMetrics` (relaxed atomics on a cache line nobody else writes), so counting costs no
//! lock and no contention; a scrape sums the cores.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use wire::{ClientKind, ErrorCode, ServerKind};

/// Upper bounds of the delivery latency buckets, in microseconds.
const LATENCY_BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];

/// Frame kinds fit in a byte; a table of 16 covers every kind with room to grow.
const KINDS: usize = 16;

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
    /// Upgrades refused, by reason label.
    pub refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Sessions closed, by close code.
    pub closes: Mutex<BTreeMap<u16, u64>>,
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
    /// Deepest outbound queue seen on this core.
    pub outbound_high_water: AtomicU64,
    /// Messages that waited because another core's mailbox was full.
    pub mailbox_full: AtomicU64,
    /// From the moment a frame was read to the moment its delivery was written.
    pub delivery_latency: Histogram,
}

impl CoreMetrics {
    /// Counts a refused upgrade.
    pub fn refuse(&self, reason: &'static str) {
        bump(&self.refused, reason);
    }

    /// Counts a closed session.
    pub fn close(&self, code: u16) {
        bump(&self.closes, code);
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

    /// Notes an outbound queue's depth after a push.
    pub fn queue_depth(&self, depth: usize) {
        self.outbound_queued.fetch_add(1, Relaxed);
        self.outbound_high_water.fetch_max(depth as u64, Relaxed);
    }
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    // The lock is per core and only a scrape contends for it; a poisoned map still counts.
    let mut map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    *map.entry(key).or_insert(0) += 1;
}

fn sum(cores: &[std::sync::Arc<CoreMetrics>], f: impl Fn(&CoreMetrics) -> u64) -> u64 {
    cores.iter().map(|c| f(c)).sum()
}

fn merged<K: Ord + Copy>(
    cores: &[std::sync::Arc<CoreMetrics>],
    f: impl Fn(&CoreMetrics) -> &Mutex<BTreeMap<K, u64>>,
) -> BTreeMap<K, u64> {
    let mut out = BTreeMap::new();
    for core in cores {
        let map = f(core)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (&k, &v) in map.iter() {
            *out.entry(k).or_insert(0) += v;
        }
    }
    out
}

/// Renders every core's counters in the Prometheus text format.
pub fn render(cores: &[std::sync::Arc<CoreMetrics>]) -> String {
    let mut out = String::with_capacity(4096);
    let gauge_i = |f: &dyn Fn(&CoreMetrics) -> i64| cores.iter().map(|c| f(c)).sum::<i64>();

    metric(
        &mut out,
        "gateway_connections",
        "gauge",
        "Open WebSocket sessions.",
    );
    let _ = writeln!(
        out,
        "gateway_connections {}",
        gauge_i(&|c| c.connections.load(Relaxed))
    );
    for (i, core) in cores.iter().enumerate() {
        let _ = writeln!(
            out,
            "gateway_connections{{core=\"{i}\"}} {}",
            core.connections.load(Relaxed)
        );
    }

    metric(
        &mut out,
        "gateway_connections_total",
        "counter",
        "Sessions ever opened.",
    );
    let _ = writeln!(
        out,
        "gateway_connections_total {}",
        sum(cores, |c| c.connections_total.load(Relaxed))
    );

    metric(
        &mut out,
        "gateway_handshakes_refused_total",
        "counter",
        "Upgrades refused, by reason.",
    );
    for (reason, n) in merged(cores, |c| &c.refused) {
        let _ = writeln!(
            out,
            "gateway_handshakes_refused_total{{reason=\"{reason}\"}} {n}"
        );
    }

    metric(
        &mut out,
        "gateway_closes_total",
        "counter",
        "Sessions closed, by WebSocket close code.",
    );
    for (code, n) in merged(cores, |c| &c.closes) {
        let _ = writeln!(out, "gateway_closes_total{{code=\"{code}\"}} {n}");
    }

    metric(
        &mut out,
        "gateway_frames_in_total",
        "counter",
        "Client frames, by kind.",
    );
    for &kind in ClientKind::ALL {
        let n = sum(cores, |c| c.frames_in[kind as usize % KINDS].load(Relaxed));
        let _ = writeln!(
            out,
            "gateway_frames_in_total{{kind=\"{}\"}} {n}",
            kind.name()
        );
    }

    metric(
        &mut out,
        "gateway_frames_out_total",
        "counter",
        "Server frames queued to sessions, by kind.",
    );
    for &kind in ServerKind::ALL {
        let n = sum(cores, |c| c.frames_out[kind as usize % KINDS].load(Relaxed));
        let _ = writeln!(
            out,
            "gateway_frames_out_total{{kind=\"{}\"}} {n}",
            kind.name()
        );
    }

    metric(
        &mut out,
        "gateway_errors_total",
        "counter",
        "Error frames sent, by code.",
    );
    for (i, code) in ErrorCode::ALL.iter().enumerate() {
        let n = sum(cores, |c| c.errors[i].load(Relaxed));
        let _ = writeln!(
            out,
            "gateway_errors_total{{code=\"{}\",name=\"{}\"}} {n}",
            code.as_u16(),
            code.name()
        );
    }

    metric(
        &mut out,
        "gateway_bytes_in_total",
        "counter",
        "WebSocket payload bytes read.",
    );
    let _ = writeln!(
        out,
        "gateway_bytes_in_total {}",
        sum(cores, |c| c.bytes_in.load(Relaxed))
    );
    metric(
        &mut out,
        "gateway_bytes_out_total",
        "counter",
        "Bytes written to sockets.",
    );
    let _ = writeln!(
        out,
        "gateway_bytes_out_total {}",
        sum(cores, |c| c.bytes_out.load(Relaxed))
    );

    metric(
        &mut out,
        "gateway_slow_consumer_closes_total",
        "counter",
        "Sessions closed because their outbound queue filled.",
    );
    let _ = writeln!(
        out,
        "gateway_slow_consumer_closes_total {}",
        sum(cores, |c| c.slow_consumer_closes.load(Relaxed))
    );

    metric(
        &mut out,
        "gateway_outbound_queue_frames",
        "gauge",
        "Frames waiting in outbound queues.",
    );
    let _ = writeln!(
        out,
        "gateway_outbound_queue_frames {}",
        gauge_i(&|c| c.outbound_queued.load(Relaxed))
    );
    metric(
        &mut out,
        "gateway_outbound_queue_high_water",
        "gauge",
        "Deepest outbound queue seen.",
    );
    let high = cores
        .iter()
        .map(|c| c.outbound_high_water.load(Relaxed))
        .max()
        .unwrap_or(0);
    let _ = writeln!(out, "gateway_outbound_queue_high_water {high}");

    metric(
        &mut out,
        "gateway_mailbox_full_total",
        "counter",
        "Cross-core messages that waited for a full mailbox.",
    );
    let _ = writeln!(
        out,
        "gateway_mailbox_full_total {}",
        sum(cores, |c| c.mailbox_full.load(Relaxed))
    );

    metric(
        &mut out,
        "gateway_delivery_latency_seconds",
        "histogram",
        "Frame read to delivery written.",
    );
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
        cumulative += sum(cores, |c| c.delivery_latency.buckets[i].load(Relaxed));
        let _ = writeln!(
            out,
            "gateway_delivery_latency_seconds_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    cumulative += sum(cores, |c| {
        c.delivery_latency.buckets[LATENCY_BUCKETS_US.len()].load(Relaxed)
    });
    let _ = writeln!(
        out,
        "gateway_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let sum_us = sum(cores, |c| c.delivery_latency.sum_us.load(Relaxed));
    let _ = writeln!(
        out,
        "gateway_delivery_latency_seconds_sum {}",
        sum_us as f64 / 1e6
    );
    let _ = writeln!(out, "gateway_delivery_latency_seconds_count {cumulative}");
    out
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn render_sums_cores_and_keeps_histogram_cumulative() {
        let cores = vec![
            Arc::new(CoreMetrics::default()),
            Arc::new(CoreMetrics::default()),
        ];
        cores[0].connections.fetch_add(3, Relaxed);
        cores[1].connections.fetch_add(2, Relaxed);
        cores[0].refuse("expired");
        cores[1].refuse("expired");
        cores[1].error(ErrorCode::NotMember);
        cores[0].delivery_latency.observe(Duration::from_micros(80));
        cores[1].delivery_latency.observe(Duration::from_millis(3));
        let text = render(&cores);
        assert!(text.contains("gateway_connections 5\n"), "{text}");
        assert!(text.contains("gateway_handshakes_refused_total{reason=\"expired\"} 2\n"));
        assert!(text.contains("gateway_errors_total{code=\"4030\",name=\"not_member\"} 1\n"));
        assert!(text.contains("gateway_delivery_latency_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(text.contains("gateway_delivery_latency_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("gateway_delivery_latency_seconds_count 2\n"));
    }
}
