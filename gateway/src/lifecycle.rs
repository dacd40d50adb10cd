//! The process's life as systemd sees it: READY once every core accepts, WATCHDOG pings
//! while the cores answer, RELOADING and READY around a reload (SIGHUP), STOPPING when
//! SIGTERM or SIGINT starts the graceful shutdown.

use anyhow::{Context, Result};
use sd_notify::NotifyState;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
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

/// Tells systemd a reload has begun; [`notify_ready`] ends it.
pub fn notify_reloading() {
    notify(&[NotifyState::Reloading, NotifyState::Status("reloading")]);
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

/// Pings systemd's watchdog at half its interval, when WatchdogSec is set, while every core
/// has started, none has stalled ([`Node::cores_answer`]) and no shutdown is under way: a
/// core stuck in a loop, or one whose thread ended, stops the pings and systemd restarts
/// the process. A lost broker or Redis does not: a restart would not bring them back.
pub fn spawn_watchdog(node: Arc<Node>) -> Result<()> {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return Ok(());
    };
    let period = interval / 2;
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            while !node.stopping.load(Ordering::Acquire) {
                if node.cores_answer() {
                    notify(&[NotifyState::Watchdog]);
                } else {
                    tracing::error!("a core does not answer; withholding the watchdog ping");
                }
                std::thread::sleep(period);
            }
        })
        .context("spawning the watchdog thread")?;
    Ok(())
}

/// What a signal asks of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGHUP: read again what can change without a restart.
    Reload,
    /// SIGTERM or SIGINT (the signal's number): stop gracefully.
    Stop(i32),
}

/// The signals the gateway handles. Installed first thing, so that a SIGHUP, which would
/// otherwise end the process, only ever asks for a reload.
pub struct Signals(signal_hook::iterator::Signals);

impl Signals {
    /// Catches SIGTERM, SIGINT and SIGHUP from now on.
    pub fn install() -> Result<Signals> {
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
            .map(Signals)
            .context("installing signal handlers")
    }

    /// Blocks until the next signal.
    pub fn wait(&mut self) -> Request {
        match self.0.forever().next() {
            Some(SIGHUP) => Request::Reload,
            Some(signal) => Request::Stop(signal),
            None => Request::Stop(SIGTERM),
        }
    }
}
