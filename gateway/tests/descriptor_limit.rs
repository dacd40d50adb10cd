//! The gateway at its file-descriptor limit: started with a low RLIMIT_NOFILE and filled
//! with sessions, it must answer the next clients with a prompt 503 (not leave them in the
//! backlog), report not-ready with the reason, log the condition once per interval rather
//! than at every failed accept, count it, and serve again once sessions close.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use common::{SECRET, free_port, http_get};

/// Descriptors the gateway may hold: its own (runtime, listeners, reserves, admin port, ...)
/// plus about a hundred sessions.
const NOFILE: u32 = 128;

/// How long a refused client may wait for its answer: far less than any client's timeout.
const PROMPT: Duration = Duration::from_millis(500);

/// The line the gateway logs while out of descriptors.
const LOG_LINE: &str = "out of file descriptors";

struct Spawned {
    _child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Spawned {
    /// The gateway binary on one core with `io_driver`, with RLIMIT_NOFILE set by the shell
    /// that execs it.
    fn start(io_driver: &str) -> Spawned {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(r#"ulimit -n {NOFILE} && exec "$0""#))
            .arg(env!("CARGO_BIN_EXE_gateway"))
            .env("RUST_LOG", "info")
            .env("GATEWAY_LISTEN", listen.to_string())
            .env("GATEWAY_ADMIN_LISTEN", admin.to_string())
            .env("GATEWAY_CORES", "1")
            .env("GATEWAY_IO_DRIVER", io_driver)
            .env("GATEWAY_JWT_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the gateway");
        let log = Arc::new(Mutex::new(String::new()));
        for reader in [
            Box::new(child.stdout.take().expect("piped stdout"))
                as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().expect("piped stderr")),
        ] {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(reader).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    log.lock().expect("log").push_str(&format!("{line}\n"));
                }
            });
        }
        Spawned {
            _child: child,
            listen,
            admin,
            log,
        }
    }

    /// GET `path` on the admin port: status and body (status 0 when nothing answered
    /// within 2 s).
    async fn admin(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    /// Polls `path` until it answers `status`, for at most `within`.
    async fn wait_for(&self, path: &str, status: u16, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let (got, body) = self.admin(path).await;
            if got == status {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{path} still answers {got} ({body:?}) after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens a connection and asks to upgrade it: the response head, and the stream (open
    /// when the upgrade succeeded). A client left waiting fails the test.
    async fn upgrade(&self, user_id: u64) -> (String, TcpStream) {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 600;
        let token = gateway::auth::mint_hs256(SECRET.as_bytes(), user_id, exp);
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        let started = Instant::now();
        let answered = tokio::time::timeout(PROMPT, async {
            let mut stream = TcpStream::connect(self.listen).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).await? == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            std::io::Result::Ok((String::from_utf8_lossy(&head).into_owned(), stream))
        })
        .await;
        match answered {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => panic!("client {user_id}: {error}"),
            Err(_) => panic!(
                "client {user_id} had no answer within {:?}",
                started.elapsed()
            ),
        }
    }
}

fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_descriptor_limit_on_io_uring() {
    at_the_descriptor_limit_clients_get_a_prompt_503_and_readiness_follows("io-uring").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_descriptor_limit_on_epoll() {
    at_the_descriptor_limit_clients_get_a_prompt_503_and_readiness_follows("epoll").await;
}

async fn at_the_descriptor_limit_clients_get_a_prompt_503_and_readiness_follows(io_driver: &str) {
    let gateway = Spawned::start(io_driver);
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(10))
        .await;

    // Fill the process with sessions until the gateway refuses two in a row. One refusal
    // alone may have met a descriptor the gateway holds for a moment (the core monitor
    // probes for a free one four times a second; a preempted prober holds it for longer),
    // and the next client would then be served.
    let mut sessions = Vec::new();
    let mut refusals_in_a_row = 0;
    let mut refused = 0;
    let mut user_id = 0;
    let refusal = loop {
        user_id += 1;
        assert!(user_id <= 2 * u64::from(NOFILE), "never refused");
        let (head, stream) = gateway.upgrade(user_id).await;
        let status = status_of(&head);
        if status == 503 {
            refused += 1;
        }
        match status {
            101 => {
                sessions.push(stream);
                refusals_in_a_row = 0;
            }
            503 if refusals_in_a_row == 1 => break head,
            503 => refusals_in_a_row += 1,
            other => panic!("client {user_id}: unexpected answer {other}: {head}"),
        }
    };
    assert!(
        sessions.len() > NOFILE as usize / 2,
        "only {} sessions before the limit",
        sessions.len()
    );
    assert!(refusal.contains("Retry-After: 1\r\n"), "{refusal}");

    // Every client while at the limit gets its 503 promptly (upgrade() fails otherwise),
    // readiness says why, and the log does not grow with each of them.
    let (status, body) = gateway.admin("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(LOG_LINE), "{body}");
    // For one log interval and a bit, clients keep coming: each gets its 503, and the log
    // gains one line with the counts, not one per failed accept.
    let flood_started = Instant::now();
    let flood = gateway::descriptors::LOG_INTERVAL + Duration::from_millis(500);
    while flood_started.elapsed() < flood {
        // The sessions stay open, so no descriptor frees: each answer must be a 503.
        let (head, _) = gateway.upgrade(1_000 + refused).await;
        assert_eq!(status_of(&head), 503, "{head}");
        refused += 1;
    }
    let log = gateway.log.lock().expect("log").clone();
    let lines: Vec<&str> = log.lines().filter(|line| line.contains(LOG_LINE)).collect();
    assert_eq!(lines.len(), 2, "{refused} refusals in {flood:?}:\n{log}");
    assert!(
        !lines[1].contains("refused=0"),
        "the second line counts the refusals since the first: {}",
        lines[1]
    );
    // A refusal is counted just after its 503 is written: allow the last one a moment.
    let counted_by = Instant::now() + PROMPT;
    let metrics = loop {
        let metrics = gateway.wait_for("/metrics", 200, PROMPT).await;
        let counted: u64 = metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix("gateway_handshakes_refused_total{reason=\"descriptors\"} ")
            })
            .and_then(|n| n.parse().ok())
            .expect("refusals at the limit are counted");
        if counted == refused || Instant::now() > counted_by {
            assert_eq!(counted, refused, "{metrics}");
            break metrics;
        }
    };
    assert!(
        metrics.contains("gateway_at_descriptor_limit 1"),
        "{metrics}"
    );

    // Sessions close: the gateway serves again and reports ready.
    sessions.truncate(sessions.len() - 10);
    gateway
        .wait_for("/readyz", 200, Duration::from_secs(5))
        .await;
    let (head, _session) = gateway.upgrade(5_000).await;
    assert_eq!(status_of(&head), 101, "{head}");
    let metrics = gateway.wait_for("/metrics", 200, PROMPT).await;
    let exhausted: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("gateway_accept_descriptor_exhausted_total "))
        .and_then(|n| n.parse().ok())
        .expect("the exhaustion counter");
    assert!(exhausted >= 1, "{metrics}");
}
