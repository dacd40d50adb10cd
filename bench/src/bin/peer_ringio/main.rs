//! A peer WebSocket server on ringio's completion loop, for the benchmarks that run the
//! gateway beside the other peers (bench/src/bin/peer_*.rs) on the same load: `--mode echo`
//! sends each data message back to its sender, `--mode broadcast` to every client of the
//! sender's group, picked with `?group=<u64>` in the upgrade request (0 without one). The
//! upgrade and the frames are the workspace's `wsproto`; each thread runs one loop with its
//! own `SO_REUSEPORT` listener.
//!
//! Two departures from the tokio peers: a broadcast client that falls behind is closed when
//! its queue passes 1 MiB (the loop's bound) without a 1008 close frame, and SIGTERM ends
//! the process at once (the loop has no signal handling), so nothing is printed at exit.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod websocket;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::mpsc;
use std::thread;

use anyhow::{Context, bail};
use clap::Parser;
use ringio::{Config, EventLoop};
use websocket::{Mode, Peer};

/// The peer servers' flags (as in bench/src/peer.rs).
#[derive(Debug, Parser)]
#[command(
    version,
    about = "A peer WebSocket server on an io_uring completion loop: echo or broadcast on any path"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// What to do with each data message.
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    mode: Mode,
    /// Threads, each with its own loop and listener; broadcast groups need all members on
    /// one loop, so broadcast takes 1.
    #[arg(long, default_value = "1")]
    threads: NonZeroUsize,
    /// Buffers in each loop's provided-buffer ring (a power of two). Every buffer is
    /// touched once the ring has cycled through them, so this times `--buffer-size` is
    /// resident memory per loop, whatever the number of connections.
    #[arg(long, default_value_t = ringio::DEFAULT_BUFFERS)]
    buffers: u16,
    /// Bytes per buffer: the most one receive completion delivers.
    #[arg(long, default_value_t = ringio::DEFAULT_BUFFER_SIZE)]
    buffer_size: u32,
}

impl Args {
    fn config(&self) -> Config {
        Config {
            buffers: self.buffers,
            buffer_size: self.buffer_size,
            ..Config::new(self.listen)
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = args.threads.get();
    if args.mode == Mode::Broadcast && threads > 1 {
        bail!("broadcast groups live in one loop: use --threads 1");
    }
    // A loop is not Send (its ring owns raw pointers): each thread builds its own and
    // reports whether it could, so a kernel without io_uring stops the start with a reason.
    let (ready_tx, ready_rx) = mpsc::channel();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (config, mode, ready) = (args.config(), args.mode, ready_tx.clone());
            thread::spawn(move || -> anyhow::Result<()> {
                let mut event_loop = match EventLoop::new(config, Peer::new(mode)) {
                    Ok(event_loop) => event_loop,
                    Err(err) => {
                        let _ = ready.send(Err(err.to_string()));
                        return Ok(());
                    }
                };
                let _ = ready.send(Ok(event_loop.local_addr()?));
                event_loop.run()?;
                Ok(())
            })
        })
        .collect();
    let mut bound = None;
    for _ in 0..threads {
        match ready_rx
            .recv()
            .context("a loop thread ended before it started")?
        {
            Ok(addr) => bound = Some(addr),
            Err(reason) => bail!("starting the io_uring loop (no epoll fallback here): {reason}"),
        }
    }
    if let Some(addr) = bound {
        eprintln!(
            "peer_ringio: {:?} on {addr}, {threads} thread{}",
            args.mode,
            if threads == 1 { "" } else { "s" }
        );
    }
    for handle in handles {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("a loop thread panicked"))??;
    }
    Ok(())
}
