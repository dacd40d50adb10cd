//! A gateway on loopback and real WebSocket clients (tokio-tungstenite) for the tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use gateway::{Config, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as TungsteniteCloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wire::{ClientFrame, ServerFrame};

pub const SECRET: &str = "test-secret-of-enough-length";

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Starts a gateway on loopback ports chosen by the kernel, with `extra` flags.
pub fn start(cores: usize, extra: &[&str]) -> Gateway {
    let cores = cores.to_string();
    let mut args = vec![
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--cores",
        &cores,
        "--jwt-secret",
        SECRET,
    ];
    args.extend_from_slice(extra);
    Gateway::start(Config::try_parse_from(args).expect("valid flags")).expect("gateway starts")
}

/// Where a gateway answers: one in this process, or the binary in a child process.
pub trait Endpoint {
    fn local_addr(&self) -> SocketAddr;
    fn admin_addr(&self) -> SocketAddr;
}

impl Endpoint for Gateway {
    fn local_addr(&self) -> SocketAddr {
        Gateway::local_addr(self)
    }

    fn admin_addr(&self) -> SocketAddr {
        Gateway::admin_addr(self)
    }
}

/// The gateway binary, with its own allocator (mimalloc), in a child process: what it holds
/// is its own RSS, not mixed with the test's clients. Killed when dropped.
pub struct GatewayProcess {
    child: std::process::Child,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl GatewayProcess {
    /// Starts the binary on one core with `extra` flags; returns once it accepts.
    pub async fn start(extra: &[&str]) -> GatewayProcess {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
        };
        let (listen, admin) = (free(), free());
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["--listen", &listen.to_string(), "--admin-listen"])
            .arg(admin.to_string())
            .args(["--cores", "1", "--jwt-secret", SECRET])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("gateway binary starts");
        let process = GatewayProcess {
            child,
            listen,
            admin,
        };
        for _ in 0..100 {
            if TcpStream::connect(admin).await.is_ok() && TcpStream::connect(listen).await.is_ok() {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the gateway binary did not listen within 5 s");
    }

    /// The process's resident set, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line");
        kib * 1024
    }
}

impl Endpoint for GatewayProcess {
    fn local_addr(&self) -> SocketAddr {
        self.listen
    }

    fn admin_addr(&self) -> SocketAddr {
        self.admin
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

pub fn token(user_id: u64) -> String {
    gateway::auth::mint_hs256(SECRET.as_bytes(), user_id, now_secs() + 3600)
}

pub fn url(gateway: &impl Endpoint) -> String {
    format!("ws://{}/ws", gateway.local_addr())
}

/// Connects as `user_id` with a bearer token and returns the client and its welcome.
pub async fn connect(gateway: &impl Endpoint, user_id: u64) -> (Client, wire::server::Welcome) {
    connect_with(gateway, &token(user_id))
        .await
        .expect("upgrade accepted")
}

pub async fn connect_with(
    gateway: &impl Endpoint,
    token: &str,
) -> Result<(Client, wire::server::Welcome), tokio_tungstenite::tungstenite::Error> {
    let mut request = url(gateway).into_client_request()?;
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    let (mut client, _) = tokio_tungstenite::connect_async(request).await?;
    match recv(&mut client).await {
        ServerFrame::Welcome(welcome) => Ok((client, welcome)),
        other => panic!("expected a welcome, got {other:?}"),
    }
}

pub async fn send(client: &mut Client, frame: ClientFrame) {
    let bytes = frame.encode().expect("frame encodes");
    client
        .send(Message::Binary(Bytes::from(bytes)))
        .await
        .expect("send");
}

pub async fn send_json(client: &mut Client, frame: ClientFrame) {
    client
        .send(Message::Text(frame.to_json().into()))
        .await
        .expect("send");
}

/// The next server frame (binary or JSON), skipping WebSocket pings.
pub async fn recv(client: &mut Client) -> ServerFrame {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("a frame within 10 s")
            .expect("stream open")
            .expect("no WebSocket error");
        match message {
            Message::Binary(bytes) => {
                return ServerFrame::decode(&bytes).expect("valid server frame");
            }
            Message::Text(text) => {
                return serde_json::from_str(text.as_str()).expect("valid JSON server frame");
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(close) => panic!("closed: {close:?}"),
            Message::Frame(_) => continue,
        }
    }
}

/// Reads until the server closes, returning the close code.
pub async fn close_code(client: &mut Client) -> Option<u16> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(20), client.next())
            .await
            .expect("a close within 20 s");
        match next {
            Some(Ok(Message::Close(close))) => return close.map(|c| u16::from(c.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

pub fn is_code(code: Option<u16>, expected: u16) -> bool {
    code == Some(expected)
        || code.map(TungsteniteCloseCode::from) == Some(TungsteniteCloseCode::from(expected))
}

/// The admin port's answer to GET `path`.
pub async fn admin_get(gateway: &impl Endpoint, path: &str) -> (u16, String) {
    http_get(gateway.admin_addr(), path).await
}

/// A port nobody listens on at the moment.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// GETs `path` from `addr`: the status (0 when nothing answered) and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(2), exchange).await else {
        return (0, String::new());
    };
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Sends raw bytes as an HTTP request and returns the status code of the response.
pub async fn raw_status(gateway: &impl Endpoint, request: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(gateway.local_addr())
        .await
        .expect("connect");
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The core a connection id names.
pub fn core_of(connection_id: u64) -> u64 {
    connection_id >> 45
}

/// Upgrades a raw socket by hand, for what no WebSocket library does (frames it would not
/// send, a client that never reads).
pub async fn raw_upgrade(gateway: &impl Endpoint, user_id: u64) -> TcpStream {
    let mut stream = TcpStream::connect(gateway.local_addr())
        .await
        .expect("connect");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {}\r\n\r\n",
        token(user_id)
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write head");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("read head");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// Reads frames as a client until the server closes; returns the close code.
pub async fn raw_close_code(stream: &mut TcpStream) -> Option<u16> {
    // Decoded as it comes, so a client behind by megabytes does not hold them all here.
    let mut bytes = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    let mut decoder = wsproto::Decoder::new(wsproto::Role::Client, 1 << 20);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await;
        match read {
            Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
        let mut start = 0;
        loop {
            let decoded = decoder.decode(&mut bytes[start..]).ok()?;
            start += decoded.consumed;
            match decoded.message {
                Some(wsproto::Message::Close { code, .. }) => return code,
                Some(_) => continue,
                None => break,
            }
        }
        bytes.drain(..start);
    }
}
