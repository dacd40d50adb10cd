//! The backend binary: flags, logging and signals around [`backend::run`].

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use backend::{Config, Stats};
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(error) = telemetry::logs::init(config.log_format) {
        eprintln!("{error:#}");
        return ExitCode::FAILURE;
    }
    telemetry::logs::exit_status(run(config).await)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let stats = Arc::new(Stats::default());
    if let Some(addr) = config.metrics_listen {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the metrics port {addr}"))?;
        backend::metrics::spawn(listener, stats.clone())?;
        tracing::info!(%addr, "serving /metrics");
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    backend::run(config, shutdown, stats).await
}

/// Cancels `shutdown` on SIGINT or SIGTERM (what systemd sends to stop a unit).
async fn stop_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down: finishing the current batches");
    shutdown.cancel();
}
