//! The worker's life as systemd sees it (`Type=notify`): READY once the schema is migrated
//! and every shard consumes, WATCHDOG pings while the runtime runs, STOPPING on shutdown.
//! Every call is a no-op without NOTIFY_SOCKET (tests, a terminal).

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

pub(crate) fn ready(shards: usize) {
    let status = format!("consuming {shards} shards");
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

pub(crate) fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("finishing the current batches"),
    ]);
}

pub(crate) fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "sd_notify failed");
    }
}

/// Pings systemd's watchdog at half its interval (when WatchdogSec is set); returns at
/// `shutdown`. The pings come from a task on the worker's runtime, so a runtime that no
/// longer schedules tasks (a blocked worker thread, a deadlock) stops them and systemd
/// restarts the process. A dependency that is down does not: the shards wait it out and
/// retry, which is not a hang.
pub(crate) async fn watchdog(shutdown: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        shutdown.cancelled().await;
        return;
    };
    let mut ticker = tokio::time::interval(interval / 2);
    loop {
        tokio::select! {
            _ = ticker.tick() => notify(&[NotifyState::Watchdog]),
            _ = shutdown.cancelled() => return,
        }
    }
}

/// How long connecting to a dependency (TCP and its handshake) may take before the attempt
/// counts as failed: a server that accepts TCP but never answers is an error to report and
/// retry, not a silent hang.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
