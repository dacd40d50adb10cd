//! What the peer WebSocket servers share (`peer_fastwebsockets`, `peer_tungstenite`; the Node
//! peer in `bench/peers/node` mirrors it): their flags, the Tokio runtime, the accept loop, the
//! stop on SIGTERM or SIGINT, and the two counters they print when they stop. The WebSocket
//! handling itself stays in each binary, written from its crate's documented usage, so that
//! each peer is measured at its idiomatic best on the same load as the gateway.
//!
//! Broadcast mode has groups, which the client picks in its upgrade request's query string:
//! `?group=<u64>`, among any other parameters and in any order (`?token=a&group=7`). A missing
//! or unparsable group is group 0. Every data message a client sends goes to every client of
//! its group, the sender included, and to no other group. Each group is a broadcast ring of
//! its own ([`Groups`]), made when its first client joins.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::broadcast;

/// Messages a broadcast receiver may fall behind before its client is closed: the gateway's
/// default outbound queue (`--outbound-queue`), so that every server drops slow clients at
/// the same depth.
pub const BROADCAST_CAPACITY: usize = 1024;

/// The close frame a slow broadcast client gets: 1008 (policy violation), the standard code
/// nearest to the gateway's own 4000 for the same case.
pub const SLOW_CLIENT_CLOSE_CODE: u16 = 1008;
/// The close frame's reason.
pub const SLOW_CLIENT_CLOSE_REASON: &str = "slow consumer";

/// How long the accept loop pauses after a failed accept (out of file descriptors, most
/// likely) instead of spinning on the same error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The peer servers' flags (the Node peer takes the same ones).
#[derive(Debug, Parser)]
#[command(
    version,
    about = "A peer WebSocket server for the benchmarks: echo or broadcast on any path"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// What to do with each data message.
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    pub mode: Mode,
    /// Tokio worker threads: 1 runs a current-thread runtime, more a multi-thread one.
    #[arg(long, default_value = "1")]
    pub threads: NonZeroUsize,
}

/// What a peer does with each data message (binary or text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Send it back unchanged to its sender.
    Echo,
    /// Send it unchanged to every client of the sender's group (`?group=<u64>` in the upgrade
    /// request, 0 without one), the sender included.
    Broadcast,
}

impl Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Echo => "echo",
            Mode::Broadcast => "broadcast",
        })
    }
}

/// The broadcast group an upgrade request's query string asks for: the first `group`
/// parameter's value as a `u64` in decimal digits, or 0 when there is none or it is anything
/// else.
pub fn group_of(query: Option<&str>) -> u64 {
    query
        .into_iter()
        .flat_map(|query| query.split('&'))
        .find_map(|pair| pair.strip_prefix("group="))
        // Digits only: `parse` alone would also take a leading `+`.
        .filter(|group| group.bytes().all(|byte| byte.is_ascii_digit()))
        .and_then(|group| group.parse().ok())
        .unwrap_or(0)
}

/// Broadcast mode's groups, shared by every connection: one broadcast ring per group, made
/// when its first client joins. Every member subscribes to its group's ring, and every data
/// message is sent once into it and read by every subscriber.
pub struct Groups<T> {
    rings: Arc<Mutex<HashMap<u64, broadcast::Sender<T>>>>,
}

impl<T: Clone> Groups<T> {
    /// No groups yet.
    pub fn new() -> Groups<T> {
        Groups {
            rings: Arc::default(),
        }
    }

    /// Joins `group`, making its ring on the first join: the sender for the client's messages
    /// and the receiver of the group's, its own included.
    pub fn join(&self, group: u64) -> (broadcast::Sender<T>, broadcast::Receiver<T>) {
        // Held only for the lookup, never across an await; nothing panics while holding it.
        let mut rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        let ring = rings
            .entry(group)
            .or_insert_with(|| broadcast::Sender::new(BROADCAST_CAPACITY));
        (ring.clone(), ring.subscribe())
    }
}

impl<T: Clone> Default for Groups<T> {
    fn default() -> Groups<T> {
        Groups::new()
    }
}

// Not derived: a derived Clone would ask `T: Clone` of the handle, which only clones the Arc.
impl<T> Clone for Groups<T> {
    fn clone(&self) -> Groups<T> {
        Groups {
            rings: Arc::clone(&self.rings),
        }
    }
}

/// One peer server: its name for stderr and what it counts instead of logging each time.
pub struct Peer {
    name: &'static str,
    failed_connections: AtomicU64,
    slow_clients: AtomicU64,
}

impl Peer {
    /// A peer that prints as `name`.
    pub const fn new(name: &'static str) -> Peer {
        Peer {
            name,
            failed_connections: AtomicU64::new(0),
            slow_clients: AtomicU64::new(0),
        }
    }

    /// Builds the runtime `args` ask for, listens, hands every accepted TCP stream to
    /// `connection` on a task of its own, and returns on SIGTERM or SIGINT, dropping the
    /// connections.
    pub fn run<F, Fut>(&self, args: &Args, connection: F) -> anyhow::Result<()>
    where
        F: Fn(TcpStream) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let threads = args.threads.get();
        let mut builder = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        };
        let runtime = builder
            .enable_all()
            .build()
            .context("building the runtime")?;
        let signal = runtime.block_on(self.serve(args, connection))?;
        // Dropping the runtime drops every connection's task, so the line below is the last.
        drop(runtime);
        eprintln!(
            "{}: stopped on {signal}; {} connections ended with an error, {} slow clients closed",
            self.name,
            self.failed_connections.load(Relaxed),
            self.slow_clients.load(Relaxed),
        );
        Ok(())
    }

    async fn serve<F, Fut>(&self, args: &Args, connection: F) -> anyhow::Result<&'static str>
    where
        F: Fn(TcpStream) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // Installed before the listener exists, so a runner that stops the server as soon as
        // it has printed its line still gets a clean exit.
        let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT")?;
        // Tokio sets SO_REUSEADDR on Unix, so back-to-back runs can reuse the port.
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let threads = args.threads.get();
        eprintln!(
            "{}: {} on {}, {threads} thread{}",
            self.name,
            args.mode,
            listener.local_addr().context("reading the bound address")?,
            if threads == 1 { "" } else { "s" },
        );
        loop {
            tokio::select! {
                stream = self.accept(&listener) => {
                    tokio::spawn(connection(stream));
                }
                _ = terminate.recv() => return Ok("SIGTERM"),
                _ = interrupt.recv() => return Ok("SIGINT"),
            }
        }
    }

    async fn accept(&self, listener: &TcpListener) -> TcpStream {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    // As the gateway and Node's ws do: small frames go out at once instead of
                    // waiting behind Nagle's algorithm for the previous segment's ACK.
                    let _ = stream.set_nodelay(true);
                    return stream;
                }
                Err(err) => {
                    eprintln!("{}: accept: {err}", self.name);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }

    /// Counts a connection that ended with an error; only the first is printed, so that a
    /// tester dropping thousands of sockets at once does not flood stderr.
    pub fn connection_failed(&self, err: &dyn Display) {
        if self.failed_connections.fetch_add(1, Relaxed) == 0 {
            eprintln!(
                "{}: a connection ended with an error ({err}); later ones are only counted",
                self.name
            );
        }
    }

    /// Counts a broadcast client closed after its receiver lost `missed` messages to the
    /// ring's overwrites; only the first is printed.
    pub fn slow_client_closed(&self, missed: u64) {
        if self.slow_clients.fetch_add(1, Relaxed) == 0 {
            eprintln!(
                "{}: closing a client that fell more than {BROADCAST_CAPACITY} messages behind \
                 ({missed} lost); later ones are only counted",
                self.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_of_reads_the_group_parameter_or_defaults_to_0() {
        assert_eq!(group_of(None), 0);
        assert_eq!(group_of(Some("")), 0);
        assert_eq!(group_of(Some("group=3")), 3);
        assert_eq!(group_of(Some("token=a&group=7")), 7);
        assert_eq!(group_of(Some("group=7&token=a")), 7);
        assert_eq!(group_of(Some("group=x")), 0);
        assert_eq!(group_of(Some("group=")), 0);
        assert_eq!(group_of(Some("group=+3")), 0);
        assert_eq!(group_of(Some("group=x&group=5")), 0);
        assert_eq!(group_of(Some("subgroup=5")), 0);
        assert_eq!(group_of(Some("group=18446744073709551615")), u64::MAX);
        assert_eq!(group_of(Some("group=18446744073709551616")), 0);
    }

    #[test]
    fn groups_deliver_only_within_a_group() {
        let groups = Groups::<u32>::new();
        let (one, mut one_rx) = groups.join(1);
        let (_, mut also_one_rx) = groups.join(1);
        let (_, mut two_rx) = groups.join(2);
        one.send(7).unwrap();
        assert_eq!(one_rx.try_recv().unwrap(), 7);
        assert_eq!(also_one_rx.try_recv().unwrap(), 7);
        assert!(two_rx.try_recv().is_err());
    }
}
