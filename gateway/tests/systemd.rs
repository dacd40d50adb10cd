//! The gateway binary as systemd runs it, with this test playing systemd: the notify
//! protocol (READY, WATCHDOG, STOPPING) on a datagram socket, and socket activation, where
//! the listening socket belongs to the service manager and outlives every gateway process,
//! so restarts and upgrades never refuse a connection.

mod common;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{SECRET, token};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wire::ServerFrame;

/// Time the gateways get to close sessions on SIGTERM.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(3);

/// Does what systemd does between fork and exec, without unsafe code: the socket arrives
/// on stdin and moves to fd 3 (SD_LISTEN_FDS_START), and LISTEN_PID and WATCHDOG_PID name
/// the process itself, which `exec` keeps from the shell.
const SYSTEMD_EXEC: &str = r#"
if [ -n "${LISTEN_FDS:-}" ]; then
    exec 3<&0 </dev/null
    LISTEN_PID=$$
    export LISTEN_PID
fi
if [ -n "${WATCHDOG_USEC:-}" ]; then
    WATCHDOG_PID=$$
    export WATCHDOG_PID
fi
exec "$0" "$@"
"#;

/// A scratch directory for notify sockets, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!("gw-systemd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("scratch directory");
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One gateway process under the test's supervision, with its notify socket and log.
struct Supervised {
    name: &'static str,
    child: Child,
    pid: u32,
    notify: UnixDatagram,
    log: Arc<Mutex<String>>,
}

impl Supervised {
    /// Starts the gateway binary the way the unit does: configuration in the environment
    /// (as from EnvironmentFile=), NOTIFY_SOCKET, and `socket` as fd 3 when given.
    fn spawn(
        name: &'static str,
        scratch: &Scratch,
        socket: Option<&std::net::TcpListener>,
        env: &[(&str, &str)],
    ) -> Supervised {
        let notify_path = scratch.0.join(format!("{name}.notify"));
        let notify = UnixDatagram::bind(&notify_path).expect("binding the notify socket");
        let deadline = format!("{}s", SHUTDOWN_DEADLINE.as_secs());
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(SYSTEMD_EXEC)
            .arg(env!("CARGO_BIN_EXE_gateway"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("NOTIFY_SOCKET", &notify_path)
            .env("GATEWAY_LISTEN", "127.0.0.1:0")
            .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
            .env("GATEWAY_CORES", "2")
            .env("GATEWAY_JWT_SECRET", SECRET)
            .env("GATEWAY_SHUTDOWN_DEADLINE", &deadline)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        match socket {
            Some(listener) => {
                let fd = OwnedFd::from(listener.try_clone().expect("duplicating the socket"));
                command.stdin(Stdio::from(fd)).env("LISTEN_FDS", "1");
            }
            None => {
                command.stdin(Stdio::null());
            }
        }
        let mut child = command.spawn().expect("starting the gateway");
        let pid = child.id().expect("a running child");
        let log = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        tokio::spawn(collect(BufReader::new(stdout), log.clone()));
        tokio::spawn(collect(BufReader::new(stderr), log.clone()));
        Supervised {
            name,
            child,
            pid,
            notify,
            log,
        }
    }

    /// The next notification (one datagram, one or more `KEY=VALUE` lines).
    async fn next_notification(&self, within: Duration) -> String {
        let mut buf = vec![0u8; 4096];
        let len = tokio::time::timeout(within, self.notify.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{}: no notification within {within:?}", self.name))
            .expect("reading the notify socket");
        String::from_utf8_lossy(&buf[..len]).into_owned()
    }

    /// Waits for a notification holding `line`, returning every notification up to it.
    async fn expect_notification(&self, line: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self.next_notification(left).await;
            let found = message.lines().any(|l| l == line);
            seen.push(message);
            if found {
                return seen;
            }
        }
    }

    /// What `systemctl stop` sends first (the shell's builtin kill needs no unsafe code
    /// and no procps).
    fn terminate(&self) {
        let status = std::process::Command::new("sh")
            .args(["-c", r#"kill -TERM "$1""#, "kill", &self.pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {}", self.pid);
    }

    async fn exit_within(&mut self, within: Duration) -> ExitStatus {
        let name = self.name;
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{name} did not exit within {within:?}"))
            .expect("waiting for the gateway")
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // Shown only when the test fails.
        let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        eprintln!("----- {} (pid {}) -----\n{log}", self.name, self.pid);
    }
}

async fn collect<R: tokio::io::AsyncRead + Unpin>(reader: BufReader<R>, log: Arc<Mutex<String>>) {
    let mut lines = reader.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(mut log) = log.lock() {
            log.push_str(&line);
            log.push('\n');
        }
    }
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a session as `user_id` and reads its welcome; any other outcome is an error. A
/// 503 from a process caught stopping is retried after its Retry-After, as PROTOCOL.md
/// tells clients to.
async fn open_session(addr: SocketAddr, user_id: u64) -> Result<Client, String> {
    let mut client = loop {
        let mut request = format!("ws://{addr}/ws")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        let bearer = format!("Bearer {}", token(user_id));
        request
            .headers_mut()
            .insert("Authorization", bearer.parse().expect("header value"));
        match tokio_tungstenite::connect_async(request).await {
            Ok((client, _)) => break client,
            Err(WsError::Http(response)) if response.status() == 503 => {
                let retry_after = response
                    .headers()
                    .get("Retry-After")
                    .and_then(|value| value.to_str().ok()?.parse().ok())
                    .ok_or("a 503 without Retry-After")?;
                tokio::time::sleep(Duration::from_secs(retry_after)).await;
            }
            Err(WsError::Http(response)) => {
                return Err(format!("upgrade refused with {}", response.status()));
            }
            Err(error) => return Err(format!("connect or upgrade failed: {error}")),
        }
    };
    loop {
        match client.next().await {
            Some(Ok(Message::Binary(bytes))) => {
                return match ServerFrame::decode(&bytes) {
                    Ok(ServerFrame::Welcome(_)) => Ok(client),
                    other => Err(format!("expected a welcome, got {other:?}")),
                };
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => return Err(format!("expected a welcome, got {other:?}")),
            Some(Err(error)) => return Err(format!("reading the welcome: {error}")),
            None => return Err("closed before the welcome".to_owned()),
        }
    }
}

/// The close code the server sends next.
async fn close_code(client: &mut Client) -> Option<CloseCode> {
    loop {
        match client.next().await {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// New sessions every few milliseconds until `stop`, each opened, welcomed and closed;
/// returns how many succeeded and what went wrong with the others.
async fn churn(addr: SocketAddr, stop: Arc<AtomicBool>) -> (usize, Vec<String>) {
    let mut attempts = JoinSet::new();
    let mut user_id = 1_000_000;
    while !stop.load(Ordering::Acquire) {
        user_id += 1;
        attempts.spawn(async move {
            let started = Instant::now();
            let outcome =
                tokio::time::timeout(Duration::from_secs(15), open_session(addr, user_id)).await;
            match outcome {
                Ok(Ok(mut client)) => {
                    let _ = client.close(None).await;
                    Ok(())
                }
                Ok(Err(error)) => Err(format!("{error} after {:?}", started.elapsed())),
                Err(_) => Err("no welcome within 15 s".to_owned()),
            }
        });
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut opened = 0;
    let mut failures = Vec::new();
    while let Some(result) = attempts.join_next().await {
        match result.expect("attempt task") {
            Ok(()) => opened += 1,
            Err(error) => failures.push(error),
        }
    }
    (opened, failures)
}

/// A listening socket as edge-gateway.socket makes it: a large backlog, so that the
/// connections arriving while no gateway accepts wait in it.
fn systemd_socket() -> std::net::TcpListener {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a TCP socket");
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    socket.bind(&addr.into()).expect("binding the socket");
    socket.listen(4096).expect("listening");
    socket.into()
}

/// After SIGTERM: every session is closed with 1001 and the process exits cleanly. The
/// first session reads nothing until the process has gone: its close frame must be
/// waiting in its socket all the same.
async fn expect_going_away(gateway: &mut Supervised, sessions: &mut [Client]) {
    let (laggard, prompt) = sessions.split_first_mut().expect("sessions");
    for session in prompt {
        let code = tokio::time::timeout(SHUTDOWN_DEADLINE, close_code(session))
            .await
            .expect("a close frame before the deadline");
        assert_eq!(code, Some(CloseCode::Away), "sessions are closed with 1001");
    }
    let status = gateway
        .exit_within(SHUTDOWN_DEADLINE + Duration::from_secs(2))
        .await;
    assert!(
        status.success(),
        "{} exits cleanly, got {status}",
        gateway.name
    );
    let code = tokio::time::timeout(Duration::from_secs(1), close_code(laggard))
        .await
        .expect("the laggard's close frame is waiting for it");
    assert_eq!(code, Some(CloseCode::Away), "the laggard got 1001 too");
}

/// Opens `count` sessions at once, returning how many succeeded and what went wrong with
/// the others: fired with a SIGTERM, it puts connections into the moment a process stops.
async fn burst(addr: SocketAddr, count: u64) -> (usize, Vec<String>) {
    let mut attempts = JoinSet::new();
    for user_id in 2_000_000..2_000_000 + count {
        attempts.spawn(async move {
            tokio::time::timeout(Duration::from_secs(15), open_session(addr, user_id))
                .await
                .map_err(|_| "no welcome within 15 s".to_owned())
                .and_then(|opened| opened.map(drop))
        });
    }
    let mut opened = 0;
    let mut failures = Vec::new();
    while let Some(result) = attempts.join_next().await {
        match result.expect("attempt task") {
            Ok(()) => opened += 1,
            Err(error) => failures.push(error),
        }
    }
    (opened, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_protocol_ready_watchdog_stopping() {
    let scratch = Scratch::new("notify");
    // 200 ms: the gateway pings every 100 ms while ready.
    let mut gateway = Supervised::spawn("notify", &scratch, None, &[("WATCHDOG_USEC", "200000")]);
    let before_ready = gateway
        .expect_notification("READY=1", Duration::from_secs(15))
        .await;
    assert!(
        before_ready.iter().all(|m| !m.contains("WATCHDOG=1")),
        "no watchdog ping before READY: {before_ready:?}"
    );
    let started = Instant::now();
    let mut pings = 0;
    while pings < 5 {
        let message = gateway.next_notification(Duration::from_secs(2)).await;
        if message.lines().any(|l| l == "WATCHDOG=1") {
            pings += 1;
        }
    }
    // Five pings at 100 ms take about half a second; far longer means a wrong interval.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "5 watchdog pings took {:?}",
        started.elapsed()
    );

    let stop_sent = Instant::now();
    gateway.terminate();
    gateway
        .expect_notification("STOPPING=1", Duration::from_secs(5))
        .await;
    let status = gateway
        .exit_within(SHUTDOWN_DEADLINE + Duration::from_secs(2))
        .await;
    assert!(status.success(), "clean exit, got {status}");
    assert!(stop_sent.elapsed() < SHUTDOWN_DEADLINE + Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarts_on_the_inherited_socket_refuse_no_connection() {
    let scratch = Scratch::new("restart");
    // The service manager's socket: bound once, passed to every gateway, never closed.
    let socket = systemd_socket();
    let addr = socket.local_addr().expect("socket address");

    let mut first = Supervised::spawn("first", &scratch, Some(&socket), &[]);
    first
        .expect_notification("READY=1", Duration::from_secs(15))
        .await;
    let mut sessions = Vec::new();
    for user_id in 1..=8 {
        sessions.push(open_session(addr, user_id).await.expect("a session"));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(churn(addr, stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // An upgrade: the new process accepts on the same socket before the old one stops.
    let mut second = Supervised::spawn("second", &scratch, Some(&socket), &[]);
    second
        .expect_notification("READY=1", Duration::from_secs(15))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let during_first_stop = tokio::spawn(burst(addr, 64));
    first.terminate();
    first
        .expect_notification("STOPPING=1", Duration::from_secs(5))
        .await;
    expect_going_away(&mut first, &mut sessions).await;
    for (user_id, session) in (1..).zip(sessions.iter_mut()) {
        *session = open_session(addr, user_id)
            .await
            .expect("a closed session reconnects");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A plain `systemctl restart`: stop, then start, with nobody accepting in between.
    let during_second_stop = tokio::spawn(burst(addr, 64));
    second.terminate();
    expect_going_away(&mut second, &mut sessions).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = Supervised::spawn("third", &scratch, Some(&socket), &[]);
    third
        .expect_notification("READY=1", Duration::from_secs(15))
        .await;
    for user_id in 1..=8 {
        open_session(addr, user_id)
            .await
            .expect("a session on the restarted gateway");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    stop.store(true, Ordering::Release);
    let mut opened = 0;
    let mut failures = Vec::new();
    for tally in [
        load.await.expect("the connection loop"),
        during_first_stop.await.expect("the first burst"),
        during_second_stop.await.expect("the second burst"),
    ] {
        opened += tally.0;
        failures.extend(tally.1);
    }
    assert!(
        failures.is_empty(),
        "{} of {} connections failed across the restarts: {failures:#?}",
        failures.len(),
        opened + failures.len()
    );
    assert!(opened >= 200, "only {opened} connections were opened");
    drop(socket);
}
