//! Prometheus text through the `prometheus-client` crate. The gateway and the backend keep
//! their own counters where counting is cheapest (atomics their threads own) and describe
//! them to the crate at each scrape through a [`Collector`]; the helpers here keep those
//! descriptions one line each.

use std::fmt::Result;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, NoLabelSet,
    prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The media type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The collectors a process exports.
#[derive(Debug, Default)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// The process metrics and the build info of `program`, plus `collectors`.
    pub fn new(
        program: &str,
        version: &'static str,
        collectors: Vec<Box<dyn Collector>>,
    ) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(crate::process::ProcessMetrics));
        registry.register_collector(Box::new(BuildInfo {
            name: format!("{program}_build"),
            version,
        }));
        for collector in collectors {
            registry.register_collector(collector);
        }
        Metrics { registry }
    }

    /// Everything in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        if let Err(error) = prometheus_text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "encoding the metrics failed");
        }
        out
    }
}

/// `{program}_build_info{version="..."} 1`.
#[derive(Debug)]
struct BuildInfo {
    name: String,
    version: &'static str,
}

impl Collector for BuildInfo {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result {
        encoder
            .encode_descriptor(&self.name, "The running build.", None, MetricType::Info)?
            .encode_info(&[("version", self.version)])
    }
}

/// One gauge without labels.
pub fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

/// One counter without labels; `name` without `_total`, which the encoding appends.
pub fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeCounterValue,
) -> Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

/// A gauge with one series per label set.
pub fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, V)>,
) -> Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        metric.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

/// A counter with one series per label set; `name` without `_total`.
pub fn counters<L: EncodeLabelSet, V: EncodeCounterValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, V)>,
) -> Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        metric
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

/// A histogram from per-bucket counts (not cumulative) under `bounds`, plus the count of
/// observations above the last bound.
pub fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    bounds: &[f64],
    counts: &[u64],
    sum: f64,
) -> Result {
    let buckets: Vec<(f64, u64)> = bounds.iter().copied().zip(counts.iter().copied()).collect();
    let count = counts.iter().sum();
    encoder
        .encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Sample;

    impl Collector for Sample {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result {
            gauge(&mut encoder, "demo_up", "Up.", 1u64)?;
            counter(&mut encoder, "demo_requests", "Requests.", 5u64)?;
            gauges(
                &mut encoder,
                "demo_per_core",
                "Per core.",
                [([("core", 0)], 2i64), ([("core", 1)], 3i64)],
            )?;
            counters(
                &mut encoder,
                "demo_closes",
                "Closes.",
                [([("code", "1000")], 4u64)],
            )?;
            histogram(
                &mut encoder,
                "demo_seconds",
                "Latency.",
                &[0.001, 0.01],
                &[1, 2, 3],
                0.5,
            )
        }
    }

    #[test]
    fn collectors_render_as_prometheus_text() {
        let text = Metrics::new("demo", "1.2.3", vec![Box::new(Sample)]).render();
        for line in [
            "# TYPE demo_up gauge\ndemo_up 1\n",
            "# TYPE demo_requests_total counter\ndemo_requests_total 5\n",
            "demo_per_core{core=\"0\"} 2\ndemo_per_core{core=\"1\"} 3\n",
            "demo_closes_total{code=\"1000\"} 4\n",
            "demo_seconds_bucket{le=\"0.001\"} 1\ndemo_seconds_bucket{le=\"0.01\"} 3\n",
            "demo_seconds_bucket{le=\"+Inf\"} 6\ndemo_seconds_sum 0.5\ndemo_seconds_count 6\n",
            "demo_build_info{version=\"1.2.3\"} 1\n",
            "# TYPE process_open_fds gauge\n",
            "process_max_fds ",
            "process_resident_memory_bytes ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
