//! The `gateway` binary: flags, logs, start, and the graceful stop on SIGTERM/SIGINT; or,
//! with `gateway token`, a development token printed on stdout.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Parser;
use gateway::config::{Cli, Command};
use gateway::{Config, Gateway, lifecycle};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .context("the clock is before 1970")?
                .as_secs();
            println!("{}", args.mint(now)?);
            Ok(())
        }
        None => serve(cli.config),
    }
}

fn serve(config: Config) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
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
