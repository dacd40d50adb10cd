//! The `gateway` binary: flags, logs, start, and the graceful stop on SIGTERM/SIGINT.

use anyhow::Result;
use clap::Parser;
use gateway::{Config, Gateway, lifecycle};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = Config::parse();
    let deadline = config.shutdown_deadline;
    let gateway = Gateway::start(config)?;
    tracing::info!(listen = %gateway.local_addr(), admin = %gateway.admin_addr(), "gateway ready");
    lifecycle::notify_ready();
    lifecycle::spawn_watchdog(gateway.node().clone())?;
    let signal = lifecycle::wait_for_signal()?;
    tracing::info!(signal, ?deadline, "shutting down");
    lifecycle::notify_stopping();
    gateway.begin_shutdown();
    // Past the deadline the process exits whatever the cores are doing.
    std::thread::spawn(move || {
        std::thread::sleep(deadline + std::time::Duration::from_secs(1));
        tracing::warn!("shutdown deadline passed; exiting");
        std::process::exit(0);
    });
    gateway.join();
    tracing::info!("stopped");
    Ok(())
}
