//! Counters of one worker, logged periodically.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// What the worker has done since it started. Shared by every shard task.
#[derive(Debug, Default)]
pub struct Stats {
    /// Frames handled and acknowledged (stored, answered or refused with an error frame).
    pub processed: AtomicU64,
    /// Frames dead-lettered because they are not valid envelopes or frames.
    pub invalid: AtomicU64,
    /// Frames dead-lettered because the database refuses them (found by retrying a failed
    /// batch one frame at a time).
    pub poisoned: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Largest batch so far.
    pub max_batch: AtomicU64,
    /// Messages stored.
    pub stored: AtomicU64,
    /// Sends that were already stored (a resend or a redelivery).
    pub duplicates: AtomicU64,
    /// Stored messages published again because their first publish was never confirmed.
    pub republished: AtomicU64,
    /// Requests answered with an error frame.
    pub refused: AtomicU64,
    /// Outbound envelopes published and confirmed.
    pub published: AtomicU64,
    /// Batches or sessions retried after a failure of a dependency.
    pub retries: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub processed: u64,
    pub invalid: u64,
    pub poisoned: u64,
    pub batches: u64,
    pub max_batch: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub republished: u64,
    pub refused: u64,
    pub published: u64,
    pub retries: u64,
}

impl Stats {
    /// Reads every counter.
    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            processed: get(&self.processed),
            invalid: get(&self.invalid),
            poisoned: get(&self.poisoned),
            batches: get(&self.batches),
            max_batch: get(&self.max_batch),
            stored: get(&self.stored),
            duplicates: get(&self.duplicates),
            republished: get(&self.republished),
            refused: get(&self.refused),
            published: get(&self.published),
            retries: get(&self.retries),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn record_batch(&self, frames: u64) {
        Self::add(&self.batches, 1);
        Self::add(&self.processed, frames);
        self.max_batch.fetch_max(frames, Ordering::Relaxed);
    }
}

impl Snapshot {
    /// Mean frames per batch.
    pub fn mean_batch(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.processed as f64 / self.batches as f64
        }
    }
}

/// Logs the counters every `interval` until `shutdown`, and once more at the end.
pub(crate) async fn log_periodically(
    stats: &Stats,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    let mut last = stats.snapshot();
    loop {
        let stop = tokio::select! {
            _ = ticker.tick() => false,
            _ = shutdown.cancelled() => true,
        };
        let now = stats.snapshot();
        if now != last || stop {
            tracing::info!(
                processed = now.processed,
                processed_since = now.processed - last.processed,
                batches = now.batches,
                mean_batch = format!("{:.1}", now.mean_batch()),
                max_batch = now.max_batch,
                stored = now.stored,
                duplicates = now.duplicates,
                republished = now.republished,
                refused = now.refused,
                dead_lettered_invalid = now.invalid,
                dead_lettered_poison = now.poisoned,
                published = now.published,
                retries = now.retries,
                "backend counters"
            );
        }
        last = now;
        if stop {
            return;
        }
    }
}
