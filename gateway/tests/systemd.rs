//! The gateway binary as systemd runs it, with this test playing systemd: the notify
//! protocol (READY, WATCHDOG, RELOADING, STOPPING) on a datagram socket; socket activation,
//! where the listening sockets belong to the service manager and outlive every gateway
//! process, so restarts and upgrades never refuse a connection; signals (SIGHUP reloads,
//! SIGTERM stops, a stop that hangs exits non-zero); `CPUAffinity=` (as `taskset`); the
//! journal's priority prefixes; and readiness as a load balancer reads it, against a
//! private Redis, a broker behind a proxy the test cuts, and a core thread the test stops.

mod common;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{SECRET, free_port, http_get, token};
use futures_util::{SinkExt, StreamExt};
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

/// Does what systemd does between fork and exec, without unsafe code: the sockets arrive
/// on stdin and, for a second one, stdout, and move to fds 3 and 4 (SD_LISTEN_FDS_START);
/// the gateway logs on stderr. LISTEN_PID and WATCHDOG_PID name the process itself, which
/// `exec` keeps from the shell.
const SYSTEMD_EXEC: &str = r#"
if [ -n "${LISTEN_FDS:-}" ]; then
    exec 3<&0 4>&1 </dev/null >&2
    [ "$LISTEN_FDS" -ge 2 ] || exec 4>&-
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

/// How a gateway is started: what systemd would pass it.
#[derive(Default)]
struct Launch<'a> {
    /// Listening sockets passed as fds 3 and up (at most two here).
    sockets: &'a [&'a std::net::TcpListener],
    /// Configuration, as from EnvironmentFile=, over the defaults of [`Supervised::spawn`].
    env: &'a [(&'a str, &'a str)],
    /// The CPUs the process may run on, as `CPUAffinity=` sets them (a `taskset -c` list).
    cpus: Option<&'a str>,
}

/// One gateway process under the test's supervision, with its notify socket and log.
struct Supervised {
    name: &'static str,
    child: Child,
    pid: u32,
    notify: UnixDatagram,
    log: Arc<Mutex<String>>,
    admin: SocketAddr,
}

impl Supervised {
    /// Starts the gateway binary the way the unit does: configuration in the environment
    /// (as from EnvironmentFile=), NOTIFY_SOCKET, and the sockets from fd 3 when given.
    fn spawn(name: &'static str, scratch: &Scratch, launch: Launch<'_>) -> Supervised {
        let notify_path = scratch.0.join(format!("{name}.notify"));
        let notify = UnixDatagram::bind(&notify_path).expect("binding the notify socket");
        let deadline = format!("{}s", SHUTDOWN_DEADLINE.as_secs());
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = match launch.cpus {
            Some(cpus) => {
                let mut taskset = Command::new("taskset");
                taskset.args(["-c", cpus, "sh"]);
                taskset
            }
            None => Command::new("sh"),
        };
        command
            .arg("-c")
            .arg(SYSTEMD_EXEC)
            .arg(env!("CARGO_BIN_EXE_gateway"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", &notify_path)
            .env("GATEWAY_LISTEN", "127.0.0.1:0")
            .env("GATEWAY_ADMIN_LISTEN", admin.to_string())
            .env("GATEWAY_CORES", "2")
            .env("GATEWAY_JWT_SECRET", SECRET)
            .env("GATEWAY_SHUTDOWN_DEADLINE", &deadline)
            .envs(launch.env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let passed = |socket: &std::net::TcpListener| {
            Stdio::from(OwnedFd::from(
                socket.try_clone().expect("duplicating the socket"),
            ))
        };
        match launch.sockets {
            [] => {
                command.stdin(Stdio::null());
            }
            [first] => {
                command.stdin(passed(first)).env("LISTEN_FDS", "1");
            }
            [first, second] => {
                command
                    .stdin(passed(first))
                    .stdout(passed(second))
                    .env("LISTEN_FDS", "2");
            }
            _ => panic!("the harness passes at most two sockets"),
        }
        let mut child = command.spawn().expect("starting the gateway");
        let pid = child.id().expect("a running child");
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(collect(BufReader::new(stdout), log.clone()));
        }
        let stderr = child.stderr.take().expect("piped stderr");
        tokio::spawn(collect(BufReader::new(stderr), log.clone()));
        Supervised {
            name,
            child,
            pid,
            notify,
            log,
            admin,
        }
    }

    /// What the gateway has logged so far.
    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until the log holds `text`.
    async fn expect_log(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "{}: no {text:?} in the log within {within:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` (a name `kill` takes) to the gateway.
    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("sh")
            .args([
                "-c",
                r#"kill -s "$1" "$2""#,
                "kill",
                signal,
                &self.pid.to_string(),
            ])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -s {signal} {}", self.pid);
    }

    /// The thread id of the gateway's thread named `name`.
    fn thread(&self, name: &str) -> i32 {
        let tasks = format!("/proc/{}/task", self.pid);
        std::fs::read_dir(&tasks)
            .expect("the gateway's threads")
            .filter_map(|task| {
                let task = task.ok()?;
                let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
                (comm.trim_end() == name).then(|| task.file_name().to_str()?.parse().ok())?
            })
            .next()
            .unwrap_or_else(|| panic!("no thread {name} in {tasks}"))
    }

    /// GETs `path` from the admin port: the status and the body.
    async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    /// Polls `path` until it answers `status`; returns how long that took.
    async fn expect_status(&self, path: &str, status: u16, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let (now, body) = self.admin_get(path).await;
            if now == status {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "{}: {path} still answers {now} ({body:?}) after {within:?}, expected {status}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
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
        self.signal("TERM");
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
        eprintln!(
            "----- {} (pid {}) -----\n{}",
            self.name,
            self.pid,
            self.log()
        );
    }
}

/// The value of the sample `series` (name and labels, as exported) in a scrape.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
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
    welcomed(addr, user_id).await.map(|(client, _)| client)
}

/// Opens a session as `user_id`: the client and its welcome. A 503 from a process caught
/// stopping is retried after its Retry-After.
async fn welcomed(
    addr: SocketAddr,
    user_id: u64,
) -> Result<(Client, wire::server::Welcome), String> {
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
                    Ok(ServerFrame::Welcome(welcome)) => Ok((client, welcome)),
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

/// A launch that passes `sockets`, with the defaults otherwise.
fn on<'a>(sockets: &'a [&'a std::net::TcpListener]) -> Launch<'a> {
    Launch {
        sockets,
        ..Launch::default()
    }
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
    let env = [("WATCHDOG_USEC", "200000")];
    let mut gateway = Supervised::spawn(
        "notify",
        &scratch,
        Launch {
            env: &env,
            ..Launch::default()
        },
    );
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
    let log = gateway.log();
    assert!(log.contains("gateway ready"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "no colour codes when stderr is not a terminal: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarts_on_the_inherited_socket_refuse_no_connection() {
    let scratch = Scratch::new("restart");
    // The service manager's socket: bound once, passed to every gateway, never closed.
    let socket = systemd_socket();
    let addr = socket.local_addr().expect("socket address");
    let sockets = [&socket];

    let mut first = Supervised::spawn("first", &scratch, on(&sockets));
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
    let mut second = Supervised::spawn("second", &scratch, on(&sockets));
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
    let third = Supervised::spawn("third", &scratch, on(&sockets));
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

/// A client that upgrades, then writes pings and never reads again: the pongs fill its
/// (small) receive buffer and the server's send buffer, so nothing more, not even a close
/// frame, can be written to it.
async fn slow_reader(addr: SocketAddr, user_id: u64) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(addr).await.expect("connect");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {}\r\n\r\n",
        token(user_id)
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("upgrade request");
    let mut head = [0u8; 512];
    let read = stream.read(&mut head).await.expect("the upgrade answer");
    assert!(
        head[..read].starts_with(b"HTTP/1.1 101"),
        "upgraded: {:?}",
        String::from_utf8_lossy(&head[..read])
    );
    // A masked ping (mask 0) with the largest control payload.
    let mut ping = vec![0x89, 0x80 | 125, 0, 0, 0, 0];
    ping.extend([b'p'; 125]);
    let pings = ping.repeat(64);
    tokio::spawn(async move { while stream.write_all(&pings).await.is_ok() {} })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stop_is_not_held_by_a_slow_reader_or_a_half_sent_upgrade() {
    let scratch = Scratch::new("drain");
    let socket = systemd_socket();
    let addr = socket.local_addr().expect("socket address");
    let sockets = [&socket];
    // Room for the pings: the reader must be slow, not rate limited. One env file for both
    // processes, so one admin port as well.
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin_listen = admin.to_string();
    let env = [
        ("GATEWAY_FRAMES_PER_SECOND", "1000000"),
        ("GATEWAY_FRAME_BURST", "1000000"),
        ("GATEWAY_ADMIN_LISTEN", admin_listen.as_str()),
    ];
    let launch = || Launch {
        sockets: &sockets,
        env: &env,
        ..Launch::default()
    };
    let mut old = Supervised::spawn("old", &scratch, launch());
    old.expect_notification("READY=1", Duration::from_secs(15))
        .await;
    let mut session = open_session(addr, 1).await.expect("a session");
    let flood = slow_reader(addr, 2).await;
    let mut half_open = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut half_open, b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a request head");
    // Long enough for the reader's buffers to fill.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // An upgrade: the successor starts on the same socket (and env file) first.
    let new = Supervised::spawn("new", &scratch, launch());
    new.expect_notification("READY=1", Duration::from_secs(15))
        .await;

    let stopped_at = Instant::now();
    old.terminate();
    assert_eq!(close_code(&mut session).await, Some(CloseCode::Away));
    let status = old.exit_within(Duration::from_secs(5)).await;
    let held = stopped_at.elapsed();
    assert!(status.success(), "the old process exited cleanly: {status}");
    assert!(
        held < Duration::from_secs(1),
        "the old process held the socket {held:?} after SIGTERM"
    );
    flood.abort();

    // The successor serves the clients, and the admin port once the old process let go.
    tokio::time::timeout(Duration::from_secs(5), open_session(addr, 3))
        .await
        .expect("a connection after the stop is welcomed")
        .expect("a session");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let healthz = tokio::time::timeout(Duration::from_millis(500), http_get(admin, "/healthz"));
        if let Ok((200, _)) = healthz.await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the successor did not take over the admin port"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(new);
    drop(socket);
}

/// The core that holds a session, from the connection id in its welcome.
async fn core_of_session(addr: SocketAddr, user_id: u64) -> u64 {
    let (mut client, welcome) = welcomed(addr, user_id).await.expect("a session");
    let _ = client.close(None).await;
    welcome.connection_id >> 45
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_core_accepts_on_every_passed_socket() {
    let scratch = Scratch::new("sockets");
    // Two ListenStream= lines: systemd passes two sockets (LISTEN_FDS=2).
    let (a, b) = (systemd_socket(), systemd_socket());
    let addrs = [
        a.local_addr().expect("address"),
        b.local_addr().expect("address"),
    ];
    let sockets = [&a, &b];

    let one_core = [("GATEWAY_CORES", "1")];
    let mut single = Supervised::spawn(
        "one-core",
        &scratch,
        Launch {
            sockets: &sockets,
            env: &one_core,
            ..Launch::default()
        },
    );
    single
        .expect_notification("READY=1", Duration::from_secs(15))
        .await;
    for (user_id, addr) in (1..).zip(addrs) {
        let session = tokio::time::timeout(Duration::from_secs(5), open_session(addr, user_id))
            .await
            .unwrap_or_else(|_| panic!("no welcome on {addr} within 5 s"));
        session.unwrap_or_else(|error| panic!("a session on {addr}: {error}"));
    }
    single.terminate();
    assert!(single.exit_within(Duration::from_secs(10)).await.success());

    // Two cores: each accepts on both sockets, so both cores take connections from each.
    let mut double = Supervised::spawn("two-cores", &scratch, on(&sockets));
    double
        .expect_notification("READY=1", Duration::from_secs(15))
        .await;
    for addr in addrs {
        let mut cores = std::collections::BTreeSet::new();
        for user_id in 1..=24 {
            cores.insert(core_of_session(addr, user_id).await);
        }
        assert_eq!(
            cores.into_iter().collect::<Vec<_>>(),
            vec![0, 1],
            "both cores accept on {addr}"
        );
    }
    double.terminate();
    assert!(double.exit_within(Duration::from_secs(10)).await.success());
}

/// The CPUs a thread may run on, from its status in /proc.
fn cpus_allowed(pid: u32, tid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .expect("the thread's status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cores_run_on_the_allowed_cpus_and_the_journal_gets_priorities() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let scratch = Scratch::new("affinity");
    // CPUAffinity= names the last CPU only: both cores must run there, not on CPUs 0 and 1.
    let last = (cpus - 1).to_string();
    let env = [("GATEWAY_LOG_FORMAT", "journald")];
    let mut gateway = Supervised::spawn(
        "affinity",
        &scratch,
        Launch {
            env: &env,
            cpus: Some(&last),
            ..Launch::default()
        },
    );
    gateway
        .expect_notification("READY=1", Duration::from_secs(15))
        .await;
    for core in ["core-0", "core-1"] {
        let tid = gateway.thread(core);
        assert_eq!(cpus_allowed(gateway.pid, tid), last, "{core}");
    }
    gateway
        .expect_log("fewer CPUs allowed than cores", Duration::from_secs(2))
        .await;
    gateway.terminate();
    assert!(gateway.exit_within(Duration::from_secs(10)).await.success());

    // sd-daemon(3) prefixes on every line: journald files each at its priority.
    let log = gateway.log();
    assert!(!log.is_empty());
    for line in log.lines() {
        let priority = line
            .strip_prefix('<')
            .and_then(|rest| rest.split_once('>'))
            .map(|(n, _)| n);
        assert!(
            matches!(priority, Some("3" | "4" | "6" | "7")),
            "no priority prefix: {line:?}"
        );
        assert!(!line.contains('\x1b'), "colour codes: {line:?}");
    }
    let warning = log
        .lines()
        .find(|line| line.contains("fewer CPUs allowed than cores"))
        .expect("the warning");
    assert!(
        warning.starts_with("<4>"),
        "a warning is priority 4: {warning}"
    );
    let ready = log
        .lines()
        .find(|line| line.contains("gateway ready"))
        .expect("the ready line");
    assert!(ready.starts_with("<6>"), "info is priority 6: {ready}");
}

/// A self-signed certificate for localhost, written to `dir` as cert.pem and key.pem;
/// returns its DER form.
fn write_certificate(dir: &std::path::Path) -> Vec<u8> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).expect("writing cert.pem");
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem())
        .expect("writing key.pem");
    certified.cert.der().to_vec()
}

/// Accepts any server certificate: the test compares what the server presents itself.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type TlsClient =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens a wss:// session: the client and the DER certificate the server presented.
async fn open_tls_session(addr: SocketAddr, user_id: u64) -> (TlsClient, Vec<u8>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let presented = tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec();
    let mut request = format!("wss://localhost:{}/ws", addr.port())
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", token(user_id))
            .parse()
            .expect("header"),
    );
    let (client, _) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("upgrade over TLS");
    (client, presented)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reloads_the_certificate_and_ends_nothing() {
    let scratch = Scratch::new("reload");
    let first = write_certificate(&scratch.0);
    let socket = systemd_socket();
    let addr = socket.local_addr().expect("address");
    let cert = scratch.0.join("cert.pem");
    let key = scratch.0.join("key.pem");
    let (cert, key) = (cert.to_str().expect("UTF-8"), key.to_str().expect("UTF-8"));
    let env = [
        ("GATEWAY_TLS_CERT", cert),
        ("GATEWAY_TLS_KEY", key),
        ("GATEWAY_LOG_FORMAT", "json"),
    ];
    let sockets = [&socket];
    let mut gateway = Supervised::spawn(
        "reload",
        &scratch,
        Launch {
            sockets: &sockets,
            env: &env,
            ..Launch::default()
        },
    );
    gateway
        .expect_notification("READY=1", Duration::from_secs(15))
        .await;
    let (mut before, presented) = open_tls_session(addr, 1).await;
    assert_eq!(presented, first);

    // A renewed certificate, then `systemctl reload` (ExecReload sends SIGHUP).
    let renewed = write_certificate(&scratch.0);
    gateway.signal("HUP");
    let seen = gateway
        .expect_notification("READY=1", Duration::from_secs(5))
        .await;
    assert!(
        seen.iter().any(|m| m.lines().any(|l| l == "RELOADING=1")),
        "RELOADING=1 before READY=1: {seen:?}"
    );
    let (_after, presented) = open_tls_session(addr, 2).await;
    assert_eq!(
        presented, renewed,
        "new handshakes present the renewed certificate"
    );

    // A broken file is refused and the renewed certificate stays.
    std::fs::write(scratch.0.join("cert.pem"), "not a certificate").expect("writing");
    gateway.signal("HUP");
    gateway
        .expect_notification("READY=1", Duration::from_secs(5))
        .await;
    gateway
        .expect_log("reload failed", Duration::from_secs(2))
        .await;
    let (_later, presented) = open_tls_session(addr, 3).await;
    assert_eq!(presented, renewed);

    // The session opened before the reloads is still served.
    before
        .send(Message::Ping(b"still there".to_vec().into()))
        .await
        .expect("ping");
    loop {
        match tokio::time::timeout(Duration::from_secs(5), before.next()).await {
            Ok(Some(Ok(Message::Pong(payload)))) => {
                assert_eq!(&payload[..], b"still there");
                break;
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("the first session ended: {other:?}"),
        }
    }
    assert!(gateway.child.try_wait().expect("status").is_none());
    gateway.terminate();
    let status = gateway.exit_within(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");

    // JSON logs: one object a line.
    let log = gateway.log();
    for line in log.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
        assert!(
            event["level"].is_string() && event["message"].is_string(),
            "{line}"
        );
    }
    assert!(log.contains("reloaded the TLS certificate"), "{log}");
}

/// A thread of the gateway stopped with ptrace, as a core stuck in a loop or a system call
/// would be: the process runs on, that thread does not. Thawed on drop.
struct Frozen {
    release: Option<std::sync::mpsc::Sender<()>>,
    tracer: Option<std::thread::JoinHandle<()>>,
}

impl Frozen {
    fn thread(tid: i32) -> Frozen {
        use nix::sys::ptrace;
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        use std::sync::mpsc::{RecvTimeoutError, channel};

        let (release, released) = channel::<()>();
        let (stopped, is_stopped) = channel();
        // ptrace requests must come from the thread that attached.
        let tracer = std::thread::spawn(move || {
            let pid = nix::unistd::Pid::from_raw(tid);
            ptrace::seize(pid, ptrace::Options::empty()).expect("attaching to the thread");
            ptrace::interrupt(pid).expect("stopping the thread");
            waitpid(pid, Some(WaitPidFlag::__WALL)).expect("the thread stops");
            let _ = stopped.send(());
            loop {
                match released.recv_timeout(Duration::from_millis(20)) {
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                        let _ = ptrace::detach(pid, None);
                        return;
                    }
                    // If the process exits meanwhile, the dead thread is reported here and
                    // must be reaped, or the process's exit never reaches its parent.
                    Err(RecvTimeoutError::Timeout) => {
                        match waitpid(pid, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
                            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_) => {
                                return;
                            }
                            Ok(_) => continue,
                        }
                    }
                }
            }
        });
        is_stopped
            .recv_timeout(Duration::from_secs(5))
            .expect("the thread stopped");
        Frozen {
            release: Some(release),
            tracer: Some(tracer),
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(tracer) = self.tracer.take() {
            let _ = tracer.join();
        }
    }
}

/// Collects the notifications that arrive within `window`.
async fn notifications_within(gateway: &Supervised, window: Duration) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, gateway.notify.recv(&mut buf)).await {
            Ok(Ok(len)) => seen.push(String::from_utf8_lossy(&buf[..len]).into_owned()),
            _ => return seen,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_core_makes_the_node_unready_and_a_stop_it_hangs_exits_non_zero() {
    let scratch = Scratch::new("stall");
    let env = [("WATCHDOG_USEC", "1000000")];
    let mut gateway = Supervised::spawn(
        "stall",
        &scratch,
        Launch {
            env: &env,
            ..Launch::default()
        },
    );
    gateway
        .expect_notification("READY=1", Duration::from_secs(15))
        .await;
    gateway
        .expect_status("/readyz", 200, Duration::from_secs(5))
        .await;

    let core = gateway.thread("core-1");
    let frozen = Frozen::thread(core);
    let took = gateway
        .expect_status("/readyz", 503, Duration::from_secs(5))
        .await;
    assert!(
        took < Duration::from_secs(2),
        "/readyz took {took:?} to see the stall"
    );
    let (_, body) = gateway.admin_get("/readyz").await;
    assert!(body.contains("core 1 stalled"), "{body}");
    let (_, metrics) = gateway.admin_get("/metrics").await;
    assert_eq!(
        sample(&metrics, "gateway_core_up{core=\"1\"}"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "gateway_ready"), Some(0.0));
    // The watchdog goes quiet too (it pinged every 500 ms), so systemd would restart it.
    let _ = notifications_within(&gateway, Duration::ZERO).await;
    let quiet = notifications_within(&gateway, Duration::from_millis(1500)).await;
    assert!(
        quiet.iter().all(|m| !m.contains("WATCHDOG=1")),
        "no watchdog ping while a core is stalled: {quiet:?}"
    );

    drop(frozen);
    gateway
        .expect_status("/readyz", 200, Duration::from_secs(2))
        .await;
    gateway
        .expect_notification("WATCHDOG=1", Duration::from_secs(2))
        .await;

    // A core that hangs through the stop: the process exits after the deadline, non-zero.
    let _frozen = Frozen::thread(core);
    let stop_sent = Instant::now();
    gateway.terminate();
    gateway
        .expect_notification("STOPPING=1", Duration::from_secs(5))
        .await;
    let status = gateway
        .exit_within(SHUTDOWN_DEADLINE + Duration::from_secs(4))
        .await;
    assert_eq!(
        status.code(),
        Some(1),
        "a forced exit reports failure: {status}"
    );
    assert!(stop_sent.elapsed() >= SHUTDOWN_DEADLINE);
    assert!(gateway.log().contains("shutdown deadline passed"));
}

/// A private redis-server on `port`, killed on drop.
struct PrivateRedis(Child);

impl PrivateRedis {
    async fn start(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        PrivateRedis(child)
    }

    async fn kill(mut self) {
        self.0.kill().await.expect("killing redis-server");
    }
}

/// A TCP proxy in front of the shared RabbitMQ: cutting it drops every connection through
/// it and refuses new ones, as a broker that went away would.
struct BrokerProxy {
    port: u16,
    upstream: SocketAddr,
    accepting: Option<tokio::task::JoinHandle<()>>,
}

impl BrokerProxy {
    async fn start(upstream: SocketAddr) -> BrokerProxy {
        let mut proxy = BrokerProxy {
            port: free_port(),
            upstream,
            accepting: None,
        };
        proxy.restore().await;
        proxy
    }

    /// Accepts again on the same port.
    async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("binding the proxy");
        let upstream = self.upstream;
        self.accepting = Some(tokio::spawn(async move {
            // Dropping this set (when the task is aborted) closes every proxied connection.
            let mut pipes = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                pipes.spawn(async move {
                    if let Ok(mut broker) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                    }
                });
            }
        }));
    }

    fn cut(&mut self) {
        if let Some(accepting) = self.accepting.take() {
            accepting.abort();
        }
    }
}

impl Drop for BrokerProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_follows_the_broker_and_redis() {
    let scratch = Scratch::new("ready");
    let redis_port = free_port();
    let redis = PrivateRedis::start(redis_port).await;
    let mut broker = BrokerProxy::start(SocketAddr::from(([127, 0, 0, 1], 5672))).await;
    let prefix = format!("ops-ready-{}", std::process::id());
    let amqp_url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker.port);
    let redis_url = format!("redis://127.0.0.1:{redis_port}/");
    let env = [
        ("GATEWAY_ENGINE", "amqp"),
        ("GATEWAY_AMQP_URL", amqp_url.as_str()),
        ("GATEWAY_AMQP_PREFIX", prefix.as_str()),
        ("GATEWAY_SHARDS", "1"),
        ("GATEWAY_REDIS_URL", redis_url.as_str()),
        ("GATEWAY_REDIS_PREFIX", prefix.as_str()),
    ];
    let mut gateway = Supervised::spawn(
        "ready",
        &scratch,
        Launch {
            env: &env,
            ..Launch::default()
        },
    );
    gateway
        .expect_notification("READY=1", Duration::from_secs(15))
        .await;
    gateway
        .expect_status("/readyz", 200, Duration::from_secs(10))
        .await;
    let (_, metrics) = gateway.admin_get("/metrics").await;
    assert_eq!(
        sample(&metrics, "gateway_broker_connected"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "gateway_redis_connected"), Some(1.0));

    // Redis goes away: not ready within 2 s; ready again when it is back.
    redis.kill().await;
    let took = gateway
        .expect_status("/readyz", 503, Duration::from_secs(5))
        .await;
    assert!(
        took < Duration::from_secs(2),
        "Redis loss seen after {took:?}"
    );
    let (_, body) = gateway.admin_get("/readyz").await;
    assert!(body.contains("Redis unreachable"), "{body}");
    let (_, metrics) = gateway.admin_get("/metrics").await;
    assert_eq!(sample(&metrics, "gateway_redis_connected"), Some(0.0));
    let _redis = PrivateRedis::start(redis_port).await;
    gateway
        .expect_status("/readyz", 200, Duration::from_secs(5))
        .await;

    // The broker goes away: the same.
    broker.cut();
    let took = gateway
        .expect_status("/readyz", 503, Duration::from_secs(5))
        .await;
    assert!(
        took < Duration::from_secs(2),
        "broker loss seen after {took:?}"
    );
    let (_, body) = gateway.admin_get("/readyz").await;
    assert!(body.contains("broker disconnected"), "{body}");
    let (_, metrics) = gateway.admin_get("/metrics").await;
    assert_eq!(sample(&metrics, "gateway_broker_connected"), Some(0.0));
    broker.restore().await;
    // The bridge retries with a backoff of at most 5 s.
    gateway
        .expect_status("/readyz", 200, Duration::from_secs(10))
        .await;

    gateway.terminate();
    assert!(gateway.exit_within(Duration::from_secs(10)).await.success());
    let connection = broker::connect("amqp://guest:guest@127.0.0.1:5672/%2f", "ops-ready-cleanup")
        .await
        .expect("the shared broker");
    let channel = connection.create_channel().await.expect("a channel");
    broker::Topology { prefix, shards: 1 }
        .delete_all(&channel, &[1])
        .await
        .expect("deleting the test's queues");
}
