//! The process's life as systemd sees it: READY once every core accepts, WATCHDOG pings
//! while the cores answer, STOPPING when a signal starts the graceful shutdown.

use anyhow::{Context, Result};
use sd_notify::NotifyState;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::node::Node;

/// Tells systemd the gateway is ready (no-op without NOTIFY_SOCKET).
pub fn notify_ready() {
    notify(&[
        NotifyState::Ready,
        NotifyState::Status("accepting connections"),
    ]);
}

/// Tells systemd the gateway is stopping.
pub fn notify_stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("closing sessions"),
    ]);
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "sd_notify failed");
    }
}

/// Pings systemd's watchdog at half its interval, when WatchdogSec is set, while the node
/// is ready and every core's timer task has run since the last ping: a core stuck in a
/// loop, or one whose thread ended, stops the pings and systemd restarts the process.
pub fn spawn_watchdog(node: Arc<Node>) -> Result<()> {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return Ok(());
    };
    let period = interval / 2;
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let mut last: Vec<u64> = node
                .core_beats
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect();
            loop {
                std::thread::sleep(period);
                let now: Vec<u64> = node
                    .core_beats
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .collect();
                let all_alive = now.iter().zip(&last).all(|(now, before)| now != before);
                if node.is_ready() && all_alive {
                    notify(&[NotifyState::Watchdog]);
                } else if node.is_ready() {
                    tracing::error!(
                        "a core has stopped running its timer; withholding the watchdog ping"
                    );
                }
                last = now;
            }
        })
        .context("spawning the watchdog thread")?;
    Ok(())
}

/// Blocks until SIGTERM or SIGINT.
pub fn wait_for_signal() -> Result<i32> {
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    Ok(signals.forever().next().unwrap_or(SIGTERM))
}
