//! The worker's counters ([`Stats`]) as Prometheus metrics, with the process's own, on a
//! small admin port (`--metrics-listen`): /metrics and /healthz.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use telemetry::admin::Response;
use telemetry::metrics::{CONTENT_TYPE, Metrics, counter, counters, gauge};

use crate::stats::Stats;

/// Serves /metrics and /healthz on `listener`.
pub fn spawn(listener: TcpListener, stats: Arc<Stats>) -> anyhow::Result<()> {
    let metrics = Metrics::new(
        "backend",
        env!("CARGO_PKG_VERSION"),
        vec![Box::new(StatsMetrics(stats))],
    );
    telemetry::admin::spawn(listener, "metrics", move |path| match path {
        "/healthz" => Response::text("200 OK", "ok\n"),
        "/metrics" => Response {
            status: "200 OK",
            content_type: CONTENT_TYPE,
            body: metrics.render(),
        },
        _ => Response::not_found(),
    })
}

/// Describes [`Stats`] at each scrape.
#[derive(Debug)]
struct StatsMetrics(Arc<Stats>);

impl Collector for StatsMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let e = &mut encoder;
        counter(
            e,
            "backend_frames_processed",
            "Frames handled and acknowledged (stored, answered or refused).",
            s.processed.load(Relaxed),
        )?;
        counters(
            e,
            "backend_frames_dead_lettered",
            "Frames dead-lettered: not valid envelopes or frames (invalid), or refused by the database (poison).",
            [
                ([("reason", "invalid")], s.invalid.load(Relaxed)),
                ([("reason", "poison")], s.poisoned.load(Relaxed)),
            ],
        )?;
        counter(
            e,
            "backend_batches",
            "Batches committed.",
            s.batches.load(Relaxed),
        )?;
        gauge(
            e,
            "backend_batch_max_frames",
            "Largest batch since the worker started.",
            s.max_batch.load(Relaxed),
        )?;
        counter(
            e,
            "backend_messages_stored",
            "Messages stored.",
            s.stored.load(Relaxed),
        )?;
        counter(
            e,
            "backend_messages_duplicate",
            "Sends that were already stored (a resend or a redelivery).",
            s.duplicates.load(Relaxed),
        )?;
        counter(
            e,
            "backend_messages_republished",
            "Stored messages published again because their first publish was never confirmed.",
            s.republished.load(Relaxed),
        )?;
        counter(
            e,
            "backend_requests_refused",
            "Requests answered with an error frame.",
            s.refused.load(Relaxed),
        )?;
        counter(
            e,
            "backend_envelopes_published",
            "Outbound envelopes published and confirmed.",
            s.published.load(Relaxed),
        )?;
        counter(
            e,
            "backend_retries",
            "Batches or sessions retried after a failure of a dependency.",
            s.retries.load(Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn metrics_show_the_counters_and_the_process() {
        let stats = Arc::new(Stats::default());
        stats.record_batch(7);
        Stats::add(&stats.poisoned, 2);
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
        let addr = listener.local_addr().expect("address");
        spawn(listener, stats).expect("serving");
        let mut stream = std::net::TcpStream::connect(addr).expect("connecting");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .expect("asking");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("reading");
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        for line in [
            "backend_frames_processed_total 7\n",
            "backend_batches_total 1\n",
            "backend_batch_max_frames 7\n",
            "backend_frames_dead_lettered_total{reason=\"poison\"} 2\n",
            "backend_frames_dead_lettered_total{reason=\"invalid\"} 0\n",
            "process_open_fds ",
            "backend_build_info{version=",
        ] {
            assert!(answer.contains(line), "missing {line:?} in\n{answer}");
        }
    }
}
