//! The worker's life as systemd sees it (`Type=notify`): READY=1 only once every shard
//! consumes, and SIGTERM honoured at every stage, also while a dependency accepts TCP but
//! never answers. The binary runs as a child process with a NOTIFY_SOCKET of the test's.

mod full_stack;

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use full_stack::{clean_up, database_url, private_corner};

/// How long a stopped worker may take to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(3);

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A private corner of the services: schema, AMQP prefix and Redis prefix.
fn corner(label: &str) -> String {
    private_corner(label).0
}

struct Worker {
    child: Child,
    notify: UnixDatagram,
    dir: std::path::PathBuf,
}

impl Worker {
    /// Starts the backend binary with `args` and a notify socket.
    fn start(name: &str, args: &[&str]) -> Worker {
        let dir = std::env::temp_dir().join(format!("edge-lifecycle-{name}"));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let notify = UnixDatagram::bind(&path).expect("notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let child = Command::new(env!("CARGO_BIN_EXE_backend"))
            .args(args)
            .args(["--shards", "2", "--name", name])
            .env("NOTIFY_SOCKET", &path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("backend starts");
        Worker { child, notify, dir }
    }

    /// Every notification that arrives within `within`, until one holds `wanted`.
    fn wait_for(&self, wanted: &str, within: Duration) -> Result<Vec<String>, Vec<String>> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.notify.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = message.lines().any(|line| line == wanted);
                seen.push(message);
                if found {
                    return Ok(seen);
                }
            }
        }
        Err(seen)
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the exit; its status and how long it took.
    fn exit(&mut self, within: Duration) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < within,
                "the worker did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it logged (after it exited).
    fn log(&mut self) -> String {
        let mut log = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
        }
        log
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn ready_once_every_shard_consumes_and_stopping_on_sigterm() {
    let name = corner("lifecycle_ready");
    let mut worker = Worker::start(
        &name,
        &[
            "--database-url",
            &database_url(),
            "--pg-schema",
            &name,
            "--amqp-prefix",
            &name,
            "--redis-prefix",
            &name,
        ],
    );
    let seen = worker
        .wait_for("READY=1", Duration::from_secs(30))
        .unwrap_or_else(|seen| panic!("no READY=1; notifications: {seen:?}"));
    assert!(
        seen.iter().any(|m| m.contains("STATUS=consuming 2 shards")),
        "READY comes with the status: {seen:?}"
    );
    worker.terminate();
    worker
        .wait_for("STOPPING=1", Duration::from_secs(5))
        .unwrap_or_else(|seen| panic!("no STOPPING=1; notifications: {seen:?}"));
    let (status, took) = worker.exit(EXIT_WITHIN);
    assert!(status.success(), "a clean stop exits 0: {status}");
    eprintln!("stopped in {took:?}");
    let log = worker.log();
    assert!(log.contains("every shard consumes; ready"), "{log}");
    clean_up(&name, 0, Some(AMQP_URL));
}

#[test]
fn a_database_that_accepts_but_never_answers_is_logged_and_sigterm_still_stops_the_start() {
    // A server that accepts TCP connections and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "postgres://postgres@{}/test",
        silent.local_addr().expect("address")
    );
    let name = corner("lifecycle_silent");
    let mut worker = Worker::start(&name, &["--database-url", &url, "--pg-schema", &name]);
    // It has reached the database step, whose connection hangs.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        worker.child.try_wait().expect("wait").is_none(),
        "still starting"
    );
    assert!(
        worker
            .wait_for("READY=1", Duration::from_millis(10))
            .is_err(),
        "not ready"
    );
    worker.terminate();
    let (status, took) = worker.exit(EXIT_WITHIN);
    assert!(
        status.success(),
        "a stop during the start exits 0: {status}"
    );
    eprintln!("stopped during the start in {took:?}");
    let log = worker.log();
    assert!(log.contains("connecting to PostgreSQL"), "{log}");
    assert!(log.contains("stopped before the start finished"), "{log}");
    drop(silent);
}

#[test]
fn a_database_that_never_answers_fails_the_start_within_the_connect_timeout() {
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "postgres://postgres@{}/test",
        silent.local_addr().expect("address")
    );
    let name = corner("lifecycle_timeout");
    let mut worker = Worker::start(&name, &["--database-url", &url, "--pg-schema", &name]);
    let (status, took) = worker.exit(Duration::from_secs(15));
    assert!(!status.success(), "an unreachable database fails the start");
    assert!(
        took < Duration::from_secs(10),
        "it gave up after {took:?}, not at the 5 s timeout"
    );
    let log = worker.log();
    assert!(
        log.contains("did not answer the connection in time"),
        "{log}"
    );
    drop(silent);
}
