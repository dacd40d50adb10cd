//! A RabbitMQ node of a test's own, for faults that must not touch the shared broker other
//! tests use: it can be killed and started again on the same data directory (durable queues,
//! quorum queue contents and definitions survive), and it is removed when dropped, also when
//! the test panics.
//!
//! The node runs `rabbitmq-server` in the foreground as a child process in a process group of
//! its own (the script and the Erlang VM it starts), so a kill reaches the VM itself. Its
//! name, ports, data, logs, configuration, plugin list (empty, so it boots faster) and Erlang
//! cookie are its own, under a temporary directory; `HOME` points there too, so `rabbitmqctl`
//! run by [`PrivateBroker::ctl`] finds the same cookie. Only 127.0.0.1 listens, where the
//! default `guest` user may log in.
//!
//! The scripts are taken from `TEST_RABBITMQ_BIN` if set, else from the Debian package's
//! `/usr/lib/rabbitmq/bin` if present (its `/usr/sbin` wrappers switch to the `rabbitmq`
//! user when run as root, who could read neither this directory nor this cookie), else from
//! `PATH`.

#![allow(dead_code)] // A helper for several test binaries; each uses a part of it.

use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a start may take before the test fails: a boot takes 8 to 20 s on a busy 2-core
/// machine (most of it loading code), a restart after a kill as long.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a graceful stop may take before the node is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A private RabbitMQ node; see the module documentation.
pub struct PrivateBroker {
    node: String,
    dir: PathBuf,
    port: u16,
    dist_port: u16,
    server: Option<Child>,
}

impl PrivateBroker {
    /// Starts a new node on free ports with an empty data directory, and waits until it
    /// accepts AMQP connections.
    pub async fn start() -> PrivateBroker {
        let nonce = RandomState::new().hash_one(std::process::id()) & 0xffff_ffff_ffff;
        let dir = std::env::temp_dir().join(format!("edge-broker-{nonce:012x}"));
        let (port, dist_port) = free_ports(nonce);
        let mut broker = PrivateBroker {
            node: format!("edge-test-{nonce:012x}@localhost"),
            dir,
            port,
            dist_port,
            server: None,
        };
        broker.prepare();
        broker.start_again().await;
        broker
    }

    /// The URL of the node's AMQP listener, as the `guest` user.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The Erlang node name, for `rabbitmqctl -n`.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The node's main log file (it is kept until the broker is dropped).
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("log").join(format!("{}.log", self.node))
    }

    /// Starts the stopped node again on the same data directory and waits until it accepts
    /// AMQP connections; returns how long that took.
    pub async fn start_again(&mut self) -> Duration {
        assert!(
            self.server.is_none(),
            "the private broker is already running"
        );
        let started = Instant::now();
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.out"))
            .expect("the server output file");
        let child = Command::new(script("rabbitmq-server"))
            .envs(self.environment())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("the server output file"))
            .stderr(output)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run rabbitmq-server: {e}"));
        self.server = Some(child);
        let deadline = started + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .server
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.server = None;
                panic!(
                    "the private broker exited during its start ({status}); {}",
                    self.tail()
                );
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok()
                && let Ok(connection) =
                    broker::connect(&self.amqp_url(), "private-broker-probe").await
            {
                let _ = connection.close(200, "ready".into()).await;
                return started.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "the private broker did not start within {START_TIMEOUT:?}; {}",
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the node with SIGKILL, as a crash or the OOM killer would: no clean shutdown,
    /// connections reset. Returns once its AMQP port is closed.
    pub async fn kill(&mut self) {
        self.signal_group("KILL");
        self.reap(STOP_TIMEOUT).await;
    }

    /// Stops the node gracefully (SIGTERM, as systemd would), killing it if that takes longer
    /// than 30 s.
    pub async fn stop(&mut self) {
        self.signal_group("TERM");
        if !self.reap(STOP_TIMEOUT).await {
            self.kill().await;
        }
    }

    /// Runs `rabbitmqctl -n <node> <args>` against this node.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(script("rabbitmqctl"))
            .envs(self.environment())
            .args(["-n", &self.node])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run rabbitmqctl: {e}"))
    }

    /// Writes the configuration, the empty plugin list and the cookie.
    fn prepare(&self) {
        for sub in ["home", "mnesia", "log"] {
            std::fs::create_dir_all(self.dir.join(sub)).expect("the broker's directories");
        }
        // The listener is also set here so that a system-wide configuration file (which may
        // name the shared broker's port) is never read.
        std::fs::write(
            self.dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{}\n", self.port),
        )
        .expect("rabbitmq.conf");
        std::fs::write(self.dir.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
        std::fs::write(self.dir.join("rabbitmq-env.conf"), "").expect("rabbitmq-env.conf");
        let cookie_path = self.dir.join("home").join(".erlang.cookie");
        let cookie: String = (0..20)
            .map(|i| {
                let n = RandomState::new().hash_one((i, &self.node)) % 26;
                char::from(b'A' + n as u8)
            })
            .collect();
        std::fs::write(&cookie_path, cookie).expect("the Erlang cookie");
        // Erlang refuses a cookie file others may read.
        std::fs::set_permissions(&cookie_path, std::fs::Permissions::from_mode(0o400))
            .expect("the cookie's permissions");
    }

    /// What the server and the CLI share: the node name, the cookie's home, and an env file
    /// of our own instead of the system's.
    fn environment(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("HOME", self.dir.join("home")),
            ("RABBITMQ_NODENAME", PathBuf::from(&self.node)),
            ("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf")),
        ]
    }

    fn signal_group(&self, signal: &str) {
        if let Some(child) = &self.server {
            // The group id is the script's pid (`process_group(0)`); the VM is in it.
            let _ = Command::new("kill")
                .args(["-s", signal, "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Waits up to `timeout` for the script to exit and the AMQP port to close; whether it did.
    async fn reap(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some(child) = self.server.as_mut() {
            if child.try_wait().ok().flatten().is_some() {
                self.server = None;
                break;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// The end of the server's output and log, for a failure message.
    fn tail(&self) -> String {
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        let last = |text: String| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        format!(
            "server output:\n{}\nlog:\n{}",
            last(read(&self.dir.join("server.out"))),
            last(read(&self.log_file()))
        )
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.signal_group("KILL");
        if let Some(mut child) = self.server.take() {
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The script `name`: see the module documentation.
fn script(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("TEST_RABBITMQ_BIN") {
        return PathBuf::from(dir).join(name);
    }
    let packaged = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if packaged.exists() {
        packaged
    } else {
        PathBuf::from(name)
    }
}

/// Two free ports below the ephemeral range, so that no outgoing connection takes one of
/// them while the node is down between a kill and its start again.
fn free_ports(seed: u64) -> (u16, u16) {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_start.max(10_002) - 1);
    let free = |port: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
    for attempt in 0u64..1000 {
        let port =
            low + (RandomState::new().hash_one((seed, attempt)) % u64::from(high - low)) as u16;
        if free(port) && free(port + 1) {
            return (port, port + 1);
        }
    }
    panic!("no two free ports for the private broker");
}
