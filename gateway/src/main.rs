//! The `gateway` binary: flags, logs, start, reloads on SIGHUP, and the graceful stop on
//! SIGTERM/SIGINT; or, with `gateway token`, a development token printed on stdout.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Parser;
use gateway::config::{Cli, Command};
use gateway::lifecycle::{self, Request, Signals};
use gateway::{Config, Gateway};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs mimalloc's collection on the calling thread: it gives back freed pages whose purge
/// delay is over, which mimalloc otherwise does only when that thread allocates again.
/// Each core calls it once a sweep (every second), `thorough` when it was quiet.
///
/// A thorough (forced) collection also runs the purges already scheduled in segments still
/// in use, which an ordinary one leaves until something touches that segment again, which
/// a quiet core never does: after a burst of connections, what their upgrades freed stayed
/// resident (about 50 bytes per connection at 10,000, bench/RESULTS.md). It took a median
/// 0.07 ms on an idle core with 10,000 sessions, but 0.17 ms and up to 1 ms under 20,000
/// deliveries a second, hence only when quiet.
#[allow(unsafe_code)]
fn collect_freed_memory(thorough: bool) {
    // The mimalloc crate links libmimalloc, whose public C API declares
    // `void mi_collect(bool force)`: no pointers, callable from any thread at any time.
    unsafe extern "C" {
        safe fn mi_collect(force: bool);
    }
    mi_collect(thorough);
}

/// Exit status when the shutdown deadline passed with a core or the bridge still running.
const FORCED_EXIT: i32 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => match mint(&args) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{error:#}");
                ExitCode::FAILURE
            }
        },
        None => {
            let config = cli.config;
            if let Err(error) = telemetry::logs::init(config.log_format) {
                eprintln!("{error:#}");
                return ExitCode::FAILURE;
            }
            telemetry::logs::exit_status(run(config))
        }
    }
}

fn mint(args: &gateway::config::TokenArgs) -> Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    args.mint(now)
}

fn run(config: Config) -> Result<()> {
    let mut signals = Signals::install()?;
    gateway::core::release_freed_memory_with(collect_freed_memory);
    let gateway = Gateway::start(config)?;
    tracing::info!(listen = %gateway.local_addr(), admin = %gateway.admin_addr(), "gateway ready");
    lifecycle::notify_ready();
    lifecycle::spawn_watchdog(gateway.node().clone())?;
    let signal = loop {
        match signals.wait() {
            Request::Reload => {
                tracing::info!("SIGHUP: reloading");
                lifecycle::notify_reloading();
                if let Err(error) = gateway.reload() {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "reload failed; keeping what was loaded"
                    );
                }
                lifecycle::notify_ready();
            }
            Request::Stop(signal) => break signal,
        }
    };
    tracing::info!(signal, deadline = ?gateway.node().config.shutdown_deadline, "shutting down");
    lifecycle::notify_stopping();
    gateway.begin_shutdown();
    // Past the deadline the process exits whatever the cores are doing, and says it failed:
    // a core that did not stop in time is a fault the service manager should record.
    let deadline = gateway.node().stop_deadline();
    std::thread::spawn(move || {
        std::thread::sleep(
            deadline.saturating_duration_since(std::time::Instant::now()) + Duration::from_secs(1),
        );
        tracing::error!(
            status = FORCED_EXIT,
            "the shutdown deadline passed with a core or the bridge still running; exiting"
        );
        std::process::exit(FORCED_EXIT);
    });
    gateway.join();
    tracing::info!("stopped");
    Ok(())
}
