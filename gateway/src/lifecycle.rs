//! The process's life as systemd sees it: READY once every core accepts, WATCHDOG pings
//! while the cores answer, STOPPING when a signal starts the graceful shutdown.

use anyhow::{Context, Result};
use sd_notify::NotifyState;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::Arc;

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

/// Pings systemd's watchdog at half its interval while the node is ready, when
/// WatchdogSec is set; a node whose cores stopped stops pinging and gets restarted.
pub fn spawn_watchdog(node: Arc<Node>) -> Result<()> {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return Ok(());
    };
    let period = interval / 2;
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(period);
                if node.is_ready() {
                    notify(&[NotifyState::Watchdog]);
                }
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
