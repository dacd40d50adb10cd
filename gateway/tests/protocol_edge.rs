//! The protocol's edges, on real sockets: what a refused frame echoes, the closing
//! handshake, bytes pipelined behind the upgrade, HTTP versions, upgrades during shutdown,
//! the rate limit's close against a pacing client, and the per-IP limit across cores.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use rkyv::rancor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use wire::client::{CreateChat, PresenceQuery, SendMessage, SyncRequest};
use wire::{ChatKind, ClientFrame, ErrorCode, PROTOCOL_VERSION, ServerFrame};
use wsproto::{OpCode, Role};

// ---- F1: refusals echo the frame's client_msg_id ----

/// A binary frame archived by rkyv directly, past `encode`'s limit checks: what a hostile
/// or buggy client could send.
fn unchecked_binary(frame: &ClientFrame) -> Vec<u8> {
    let archive = match frame {
        ClientFrame::CreateChat(body) => rkyv::to_bytes::<rancor::Error>(body),
        ClientFrame::Send(body) => rkyv::to_bytes::<rancor::Error>(body),
        ClientFrame::Sync(body) => rkyv::to_bytes::<rancor::Error>(body),
        ClientFrame::PresenceQuery(body) => rkyv::to_bytes::<rancor::Error>(body),
        other => panic!("{:?} has no limit to break", other.kind()),
    }
    .expect("archives");
    let mut bytes = vec![PROTOCOL_VERSION, frame.kind() as u8];
    bytes.extend_from_slice(&archive);
    bytes
}

/// One frame past each limit, with the client message id it carries.
fn frames_over_a_limit() -> Vec<(ClientFrame, u64)> {
    let create = |id, title: String, members: Vec<u64>| {
        ClientFrame::CreateChat(CreateChat {
            client_msg_id: id,
            kind: ChatKind::Group,
            title,
            members,
        })
    };
    let sync = |id, limit| {
        ClientFrame::Sync(SyncRequest {
            client_msg_id: id,
            chat_id: 1,
            after_seq: 0,
            limit,
            before_seq: None,
        })
    };
    vec![
        (
            ClientFrame::Send(SendMessage {
                chat_id: 1,
                client_msg_id: 101,
                body: "x".repeat(wire::limits::MAX_BODY_BYTES + 1),
            }),
            101,
        ),
        (create(102, "t".repeat(257), vec![2]), 102),
        (create(103, "team".into(), (1..=1001).collect()), 103),
        (sync(104, 0), 104),
        (sync(105, 201), 105),
        (
            ClientFrame::PresenceQuery(PresenceQuery {
                client_msg_id: 106,
                users: (1..=201).collect(),
            }),
            106,
        ),
        (
            ClientFrame::Send(SendMessage {
                chat_id: 1,
                client_msg_id: 107,
                body: "a\0b".into(),
            }),
            107,
        ),
    ]
}

async fn expect_error(client: &mut Client, code: ErrorCode, id: Option<u64>, what: &str) {
    match recv(client).await {
        ServerFrame::Error(error) => {
            assert_eq!(error.code, code.as_u16(), "{what}: {}", error.reason);
            assert_eq!(error.client_msg_id, id, "{what}: {}", error.reason);
        }
        other => panic!("{what}: expected an error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn limit_errors_echo_the_client_msg_id_in_both_encodings() {
    let gateway = start(1, &[]);
    let (mut client, _) = connect(&gateway, 1).await;
    for (frame, id) in frames_over_a_limit() {
        let code = if id == 107 {
            ErrorCode::MalformedFrame
        } else {
            ErrorCode::LimitExceeded
        };
        let what = format!("binary {:?} {id}", frame.kind());
        client
            .send(Message::Binary(Bytes::from(unchecked_binary(&frame))))
            .await
            .expect("send");
        expect_error(&mut client, code, Some(id), &what).await;
    }
    for (frame, id) in frames_over_a_limit() {
        let code = if id == 107 {
            ErrorCode::MalformedFrame
        } else {
            ErrorCode::LimitExceeded
        };
        let what = format!("JSON {:?} {id}", frame.kind());
        client
            .send(Message::Text(frame.to_json().into()))
            .await
            .expect("send");
        expect_error(&mut client, code, Some(id), &what).await;
    }
    // A JSON frame with one unreadable field still names its request when its id is
    // readable; one that names none, or is not JSON at all, gets null.
    for (text, id) in [
        (
            r#"{"type":"send","chat_id":-1,"client_msg_id":5,"body":"x"}"#,
            Some(5),
        ),
        (r#"{"type":"sync","client_msg_id":6}"#, Some(6)),
        (r#"{"type":"send","chat_id":1,"body":"x"}"#, None),
        (r#"{"type":"ping","client_msg_id":7}"#, None),
        (r#"{"type":"nope","client_msg_id":8}"#, None),
        ("not json", None),
    ] {
        client.send(Message::Text(text.into())).await.expect("send");
        expect_error(&mut client, ErrorCode::MalformedFrame, id, text).await;
    }
    gateway.begin_shutdown();
    gateway.join();
}

#[tokio::test]
async fn rate_limited_frames_echo_their_client_msg_id() {
    let gateway = start(1, &["--frames-per-second", "1", "--frame-burst", "2"]);
    let (mut client, _) = connect(&gateway, 1).await;
    let query = |id| {
        ClientFrame::PresenceQuery(PresenceQuery {
            client_msg_id: id,
            users: vec![2],
        })
    };
    send(&mut client, query(1)).await;
    send(&mut client, query(2)).await;
    send(&mut client, query(3)).await;
    send_json(&mut client, query(4)).await;
    for id in [1, 2] {
        assert!(
            matches!(recv(&mut client).await, ServerFrame::Presence(p) if p.client_msg_id == id)
        );
    }
    expect_error(&mut client, ErrorCode::RateLimited, Some(3), "binary").await;
    expect_error(&mut client, ErrorCode::RateLimited, Some(4), "JSON").await;
    gateway.begin_shutdown();
    gateway.join();
}

// ---- raw WebSocket clients ----

fn upgrade_head(user_id: u64) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {}\r\n\r\n",
        token(user_id)
    )
}

/// A client's masked frame.
fn client_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wsproto::encode_frame(Role::Client, opcode, true, payload, &mut out);
    out
}

fn ping_frame(nonce: u64) -> Vec<u8> {
    let ping = ClientFrame::Ping(wire::client::Ping { nonce })
        .encode()
        .expect("encodes");
    client_frame(OpCode::Binary, &ping)
}

/// A raw WebSocket client: the socket and the bytes read but not yet decoded.
struct RawClient {
    stream: TcpStream,
    buffer: Vec<u8>,
    decoder: wsproto::Decoder,
}

/// What a raw client saw next.
#[derive(Debug, PartialEq)]
enum Seen {
    Frame(ServerFrame),
    Close(Option<u16>),
    /// The server closed TCP cleanly (FIN).
    Eof,
    /// The connection was reset, or another socket error.
    Error(std::io::ErrorKind),
    /// Nothing within the time given.
    Nothing,
}

impl RawClient {
    /// Sends `head` plus `extra` in one write and reads up to the end of the 101.
    async fn upgrade(gateway: &gateway::Gateway, head: &str, extra: &[u8]) -> RawClient {
        let mut stream = TcpStream::connect(gateway.local_addr())
            .await
            .expect("connect");
        let mut request = head.as_bytes().to_vec();
        request.extend_from_slice(extra);
        stream.write_all(&request).await.expect("write head");
        let mut client = RawClient {
            stream,
            buffer: Vec::new(),
            decoder: wsproto::Decoder::new(Role::Client, 1 << 20),
        };
        let end = loop {
            if let Some(end) = client.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = client.stream.read(&mut chunk).await.expect("read head");
            assert!(n > 0, "closed during the upgrade");
            client.buffer.extend_from_slice(&chunk[..n]);
        };
        let head: Vec<u8> = client.buffer.drain(..end).collect();
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        client
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next thing the server did, waiting at most `wait`.
    async fn next(&mut self, wait: Duration) -> Seen {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let decoded = self.decoder.decode(&mut self.buffer).expect("valid frames");
            let consumed = decoded.consumed;
            let seen = match decoded.message {
                Some(wsproto::Message::Binary(bytes)) => Some(Seen::Frame(
                    ServerFrame::decode(bytes).expect("server frame"),
                )),
                Some(wsproto::Message::Text(text)) => Some(Seen::Frame(
                    serde_json::from_str(text).expect("JSON server frame"),
                )),
                Some(wsproto::Message::Close { code, .. }) => Some(Seen::Close(code)),
                Some(wsproto::Message::Ping(_) | wsproto::Message::Pong(_)) | None => None,
            };
            self.buffer.drain(..consumed);
            if let Some(seen) = seen {
                return seen;
            }
            if consumed > 0 {
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Seen::Nothing,
                Ok(Ok(0)) => return Seen::Eof,
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
                Ok(Err(error)) => return Seen::Error(error.kind()),
            }
        }
    }

    /// Reads past frames until the server's close frame, and returns its code.
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next(Duration::from_secs(10)).await {
                Seen::Frame(_) => continue,
                Seen::Close(code) => return code,
                other => panic!("expected a close frame, saw {other:?}"),
            }
        }
    }
}

// ---- F4: the closing handshake ----

/// After the server's close: it waits for ours, ignoring data meanwhile, and only then
/// closes TCP, cleanly.
async fn reply_to_the_close(client: &mut RawClient, code: u16) {
    assert_eq!(
        client.next(Duration::from_millis(300)).await,
        Seen::Nothing,
        "the server closed TCP without waiting for the client's close"
    );
    // Data after the server's close is read and dropped: no pong comes back.
    client.write(&ping_frame(5)).await.expect("write a frame");
    client
        .write(&client_frame(OpCode::Close, &code.to_be_bytes()))
        .await
        .expect("the close reply is written without EPIPE");
    assert_eq!(client.next(Duration::from_secs(3)).await, Seen::Eof);
}

#[tokio::test]
async fn the_server_waits_for_the_close_reply_after_a_rate_limit_close() {
    let gateway = start(1, &["--frames-per-second", "1", "--frame-burst", "1"]);
    let mut client = RawClient::upgrade(&gateway, &upgrade_head(1), &[]).await;
    let mut burst = Vec::new();
    for nonce in 0..4 {
        burst.extend_from_slice(&ping_frame(nonce));
    }
    client.write(&burst).await.expect("write");
    assert_eq!(client.close_code().await, Some(1008));
    reply_to_the_close(&mut client, 1008).await;
    gateway.begin_shutdown();
    gateway.join();
}

#[tokio::test]
async fn the_server_waits_for_the_close_reply_after_a_token_expires() {
    let gateway = start(1, &[]);
    let short = gateway::auth::mint_hs256(SECRET.as_bytes(), 1, now_secs() + 1);
    let head = upgrade_head(1).replace(&token(1), &short);
    let mut client = RawClient::upgrade(&gateway, &head, &[]).await;
    assert_eq!(client.close_code().await, Some(4002));
    reply_to_the_close(&mut client, 4002).await;
    gateway.begin_shutdown();
    gateway.join();
}

#[tokio::test]
async fn the_server_waits_for_the_close_reply_when_it_shuts_down() {
    let gateway = start(1, &["--shutdown-deadline", "5s"]);
    let mut client = RawClient::upgrade(&gateway, &upgrade_head(1), &[]).await;
    assert!(matches!(
        client.next(Duration::from_secs(5)).await,
        Seen::Frame(ServerFrame::Welcome(_))
    ));
    gateway.begin_shutdown();
    assert_eq!(client.close_code().await, Some(1001));
    reply_to_the_close(&mut client, 1001).await;
    gateway.join();
}

#[tokio::test]
async fn a_peer_that_never_answers_the_close_is_cut_off_within_the_bound() {
    let gateway = start(1, &["--frames-per-second", "1", "--frame-burst", "1"]);
    let mut client = RawClient::upgrade(&gateway, &upgrade_head(1), &[]).await;
    let mut burst = Vec::new();
    for nonce in 0..4 {
        burst.extend_from_slice(&ping_frame(nonce));
    }
    client.write(&burst).await.expect("write");
    assert_eq!(client.close_code().await, Some(1008));
    let closed_at = Instant::now();
    assert_eq!(client.next(Duration::from_secs(5)).await, Seen::Eof);
    let waited = closed_at.elapsed();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(3),
        "TCP closed {waited:?} after the close frame"
    );
    gateway.begin_shutdown();
    gateway.join();
}

// ---- L2: bytes pipelined behind the upgrade request ----

#[tokio::test]
async fn a_frame_pipelined_behind_the_upgrade_is_answered_at_once() {
    let gateway = start(1, &[]);
    let mut client = RawClient::upgrade(&gateway, &upgrade_head(1), &ping_frame(42)).await;
    assert!(matches!(
        client.next(Duration::from_secs(5)).await,
        Seen::Frame(ServerFrame::Welcome(_))
    ));
    match client.next(Duration::from_secs(2)).await {
        Seen::Frame(ServerFrame::Pong(pong)) => assert_eq!(pong.nonce, 42),
        other => panic!("expected the pong at once, saw {other:?}"),
    }
    gateway.begin_shutdown();
    gateway.join();
}

// ---- Frames across reads ----

/// A frame that arrives a byte at a time, and frames that straddle the receive buffers (1
/// KiB on the completion driver), are each answered once and in order.
#[tokio::test]
async fn frames_split_across_reads_are_answered_in_order() {
    let gateway = start(1, &["--frames-per-second", "1000", "--frame-burst", "1000"]);
    let mut client = RawClient::upgrade(&gateway, &upgrade_head(1), &[]).await;
    assert!(matches!(
        client.next(Duration::from_secs(5)).await,
        Seen::Frame(ServerFrame::Welcome(_))
    ));
    client.stream.set_nodelay(true).expect("nodelay");
    for byte in ping_frame(1) {
        client.write(&[byte]).await.expect("write a byte");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let burst: Vec<u8> = (2..=501).flat_map(ping_frame).collect();
    assert!(burst.len() > 4 * 1024, "the burst spans several buffers");
    client.write(&burst).await.expect("write the burst");
    for nonce in 1..=501 {
        match client.next(Duration::from_secs(5)).await {
            Seen::Frame(ServerFrame::Pong(pong)) => assert_eq!(pong.nonce, nonce),
            other => panic!("expected pong {nonce}, saw {other:?}"),
        }
    }
    gateway.begin_shutdown();
    gateway.join();
}

// ---- L7: HTTP versions ----

#[tokio::test]
async fn request_lines_of_other_http_versions_get_505() {
    let gateway = start(1, &[]);
    let head = upgrade_head(1);
    for version in ["HTTP/2.0", "HTTP/1.2", "HTTP/2", "HTTP/1.0", "HTTP/3.0"] {
        let request = head.replacen("HTTP/1.1", version, 1);
        assert_eq!(
            raw_status(&gateway, request.as_bytes()).await,
            505,
            "{version}"
        );
    }
    let request = head.replacen("HTTP/1.1", "FTP/1.1", 1);
    assert_eq!(raw_status(&gateway, request.as_bytes()).await, 400);
    gateway.begin_shutdown();
    gateway.join();
}

// ---- JWT: the maximum lifetime flag ----

#[tokio::test]
async fn tokens_living_longer_than_the_maximum_get_401() {
    let gateway = start(1, &["--jwt-max-lifetime", "1h"]);
    let long = gateway::auth::mint_hs256(SECRET.as_bytes(), 1, now_secs() + 2 * 3600);
    match connect_with(&gateway, &long).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401)
        }
        Err(other) => panic!("expected 401, got {other}"),
        Ok(_) => panic!("a two-hour token was accepted under a one-hour maximum"),
    }
    let short = gateway::auth::mint_hs256(SECRET.as_bytes(), 1, now_secs() + 1800);
    assert!(connect_with(&gateway, &short).await.is_ok());
    gateway.begin_shutdown();
    gateway.join();
}

// ---- 503 while shutting down ----

#[tokio::test]
async fn an_upgrade_during_shutdown_gets_503_with_retry_after() {
    let gateway = start(1, &["--shutdown-deadline", "5s"]);
    // Accepted before the shutdown; its request arrives after it began.
    let mut stream = TcpStream::connect(gateway.local_addr())
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(200)).await;
    gateway.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream
        .write_all(upgrade_head(1).as_bytes())
        .await
        .expect("write");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{response}"
    );
    assert!(
        response.to_ascii_lowercase().contains("\r\nretry-after: "),
        "{response}"
    );
    gateway.join();
}

// ---- M1: a client cannot pace its way around the rate limit's close ----

/// The issue's recipe, scaled down so that a slow (debug) server never reads two ticks'
/// frames at once: 40 pings every 15 ms, about 2,700 frames per second against a limit of
/// 100, with at least one frame accepted per tick. Replies are read as they come. Returns
/// the close code, or None if none came within 5 s.
async fn pace_pings(gateway: &gateway::Gateway) -> Option<u16> {
    let (client, _) = connect(gateway, 1).await;
    let (mut sink, mut stream) = client.split();
    let ping = Bytes::from(
        ClientFrame::Ping(wire::client::Ping { nonce: 1 })
            .encode()
            .expect("encodes"),
    );
    let writer = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(15));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            for _ in 0..40 {
                if sink.feed(Message::Binary(ping.clone())).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let code = loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => break None,
            Ok(Some(Ok(Message::Close(close)))) => break close.map(|c| u16::from(c.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => break None,
        }
    };
    writer.abort();
    code
}

#[tokio::test]
async fn pacing_cannot_dodge_the_rate_limit_close_on_the_memory_engine() {
    let gateway = start(1, &[]);
    assert_eq!(pace_pings(&gateway).await, Some(1008));
    gateway.begin_shutdown();
    gateway.join();
}

#[tokio::test]
async fn pacing_cannot_dodge_the_rate_limit_close_on_the_amqp_engine() {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos()
        ^ std::process::id();
    let prefix = format!("gw_rate_{nonce:x}");
    let node_id = 20_000 + nonce % 1_000_000;
    let node = node_id.to_string();
    let gateway = start(
        1,
        &[
            "--engine",
            "amqp",
            "--amqp-prefix",
            &prefix,
            "--redis-prefix",
            &prefix,
            "--shards",
            "1",
            "--node-id",
            &node,
            "--shutdown-deadline",
            "3s",
        ],
    );
    let code = pace_pings(&gateway).await;
    gateway.begin_shutdown();
    tokio::task::spawn_blocking(move || gateway.join())
        .await
        .expect("join");
    let amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    if let Ok(connection) = broker::connect(amqp_url, "gateway-test-cleanup").await
        && let Ok(channel) = connection.create_channel().await
    {
        let topology = broker::Topology { prefix, shards: 1 };
        let _ = topology.delete_all(&channel, &[node_id]).await;
    }
    assert_eq!(code, Some(1008));
}

// ---- L3: the per-IP limit holds across cores ----

#[tokio::test]
async fn the_per_ip_limit_is_exact_across_cores() {
    let gateway = start(2, &["--connections-per-ip-per-minute", "20"]);
    let mut cores = [0; 2];
    for user in 1..=20 {
        let (client, welcome) = connect_with(&gateway, &token(user))
            .await
            .unwrap_or_else(|error| panic!("connection {user} of 20 was refused: {error}"));
        cores[core_of(welcome.connection_id) as usize] += 1;
        drop(client);
    }
    assert!(
        cores.iter().all(|&n| n > 0),
        "both cores took connections: {cores:?}"
    );
    match connect_with(&gateway, &token(21)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429)
        }
        Err(other) => panic!("expected 429, got {other}"),
        Ok(_) => panic!("the 21st connection within a minute was accepted"),
    }
    gateway.begin_shutdown();
    gateway.join();
}

// ---- PROTOCOL.md quotes the gateway's numbers ----

#[test]
fn the_protocol_document_quotes_the_gateway_s_numbers() {
    use clap::Parser;
    let doc = include_str!("../../wire/PROTOCOL.md")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let defaults = gateway::Config::try_parse_from(["gateway"]).expect("defaults");
    for phrase in [
        format!("`Retry-After: {}`", wsproto::handshake::RETRY_AFTER_SECS),
        format!(
            "waits up to {} second",
            gateway::open_session::CLOSE_LINGER.as_secs()
        ),
        format!("per {} seconds", gateway::session::REFUSAL_WINDOW.as_secs()),
        format!(
            "{} frames per second on average, with bursts of up to {}",
            defaults.frames_per_second, defaults.frame_burst
        ),
        format!(
            "`heartbeat_ms` ({} s by default)",
            defaults.ping_interval.as_secs()
        ),
        format!(
            "idle timeout ({} s by default",
            defaults.idle_timeout.as_secs()
        ),
        format!(
            "A queue past {} frames or {} MiB",
            defaults.outbound_queue,
            defaults.outbound_queue_bytes / (1024 * 1024)
        ),
        format!(
            "nothing taken by its socket for {} seconds",
            defaults.slow_consumer_stall.as_secs()
        ),
        format!(
            "behind for {} seconds in all",
            defaults.slow_consumer_behind.as_secs()
        ),
        format!(
            "would pass {} frames or {} MiB",
            // Written with a thousands separator: 65,536.
            format_args!(
                "{},{:03}",
                defaults.outbound_queue_max / 1000,
                defaults.outbound_queue_max % 1000
            ),
            defaults.outbound_queue_max_bytes / (1024 * 1024)
        ),
        {
            let (per_second, burst) = defaults.user_frame_limits();
            format!("{per_second} frames per second, bursts of up to {burst}")
        },
        format!(
            "allows {} seconds of clock skew",
            gateway::auth::DEFAULT_LEEWAY_SECS
        ),
    ] {
        assert!(doc.contains(&phrase), "PROTOCOL.md lacks {phrase:?}");
    }
}
