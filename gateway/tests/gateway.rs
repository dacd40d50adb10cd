//! The gateway over real sockets, with real WebSocket clients: auth, handshake limits, bad
//! frames, rate limits, chat across cores, sync, slow consumers, shutdown and TLS.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use wire::client::{CreateChat, Membership, SendMessage, SyncRequest};
use wire::{ChatKind, ClientFrame, ErrorCode, ServerFrame};

fn upgrade_status(error: tokio_tungstenite::tungstenite::Error) -> u16 {
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn tokens_are_refused_before_the_upgrade() {
    let gateway = start(1, &[]);
    // No token at all.
    let error = tokio_tungstenite::connect_async(url(&gateway))
        .await
        .expect_err("refused");
    assert_eq!(upgrade_status(error), 401);
    // Expired.
    let expired = gateway::auth::mint_hs256(SECRET.as_bytes(), 1, now_secs() - 3600);
    assert_eq!(
        upgrade_status(connect_with(&gateway, &expired).await.expect_err("expired")),
        401
    );
    // Signed with another secret.
    let forged = gateway::auth::mint_hs256(b"another-secret-entirely", 1, now_secs() + 3600);
    assert_eq!(
        upgrade_status(connect_with(&gateway, &forged).await.expect_err("forged")),
        401
    );
    // alg: none, with a valid-looking payload.
    let unsigned = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        base64_url(&format!("{{\"sub\":\"1\",\"exp\":{}}}", now_secs() + 3600))
    );
    assert_eq!(
        upgrade_status(
            connect_with(&gateway, &unsigned)
                .await
                .expect_err("alg none")
        ),
        401
    );
    let (_, metrics) = admin_get(&gateway, "/metrics").await;
    assert!(
        metrics.contains("gateway_handshakes_refused_total{reason=\"expired\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_handshakes_refused_total{reason=\"missing\"} 1"),
        "{metrics}"
    );
    gateway.begin_shutdown();
    gateway.join();
}

#[tokio::test]
async fn an_es256_gateway_refuses_hs256_tokens_made_with_its_public_key() {
    let public = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/es256.public.pem");
    let private = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/keys/es256.private.pem"
    ))
    .expect("key");
    let gateway = start(1, &["--jwt-alg", "es256", "--jwt-public-key", public]);
    let good = gateway::auth::mint_es256(&private, 42, now_secs() + 3600).expect("mint");
    let (_, welcome) = connect_with(&gateway, &good).await.expect("ES256 accepted");
    assert_eq!(welcome.user_id, 42);
    // The classic confusion attack: HMAC keyed with the public key's bytes.
    let public_bytes = std::fs::read(public).expect("public key");
    let confused = gateway::auth::mint_hs256(&public_bytes, 42, now_secs() + 3600);
    assert_eq!(
        upgrade_status(
            connect_with(&gateway, &confused)
                .await
                .expect_err("HS256 refused")
        ),
        401
    );
    gateway.begin_shutdown();
    gateway.join();
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn garbage_and_oversized_handshakes_get_http_errors() {
    let gateway = start(1, &["--max-header-bytes", "1024"]);
    assert_eq!(
        raw_status(&gateway, b"\x16\x03\x01garbage\r\n\r\n").await,
        400
    );
    let huge = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(4096)
    );
    let status = raw_status(&gateway, huge.as_bytes()).await;
    assert!(
        status == 431 || status == 400,
        "oversized head answered {status}"
    );
    let wrong_path = format!(
        "GET /other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {}\r\n\r\n",
        token(1)
    );
    assert_eq!(raw_status(&gateway, wrong_path.as_bytes()).await, 404);
    gateway.begin_shutdown();
    gateway.join();
}

#[tokio::test]
async fn a_silent_handshake_is_cut_off() {
    let gateway = start(1, &["--handshake-timeout", "300ms"]);
    let mut stream = TcpStream::connect(gateway.local_addr())
        .await
        .expect("connect");
    stream
        .write_all(b"GET /ws HTTP/1.1\r\n")
        .await
        .expect("partial head");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the slow client was disconnected"
    );
    gateway.begin_shutdown();
    gateway.join();
}

#[tokio::test]
async fn malformed_and_oversized_frames_are_answered_or_closed() {
    let gateway = start(1, &[]);
    let (mut client, _) = connect(&gateway, 1).await;
    client
        .send(Message::Binary(Bytes::from_static(&[1, 99, 0, 0])))
        .await
        .expect("send");
    match recv(&mut client).await {
        ServerFrame::Error(error) => assert_eq!(error.code, ErrorCode::UnknownKind.as_u16()),
        other => panic!("expected an error frame, got {other:?}"),
    }
    client
        .send(Message::Binary(Bytes::from_static(&[
            1, 4, 0xff, 0xff, 0xff,
        ])))
        .await
        .expect("send");
    match recv(&mut client).await {
        ServerFrame::Error(error) => assert_eq!(error.code, ErrorCode::MalformedFrame.as_u16()),
        other => panic!("expected an error frame, got {other:?}"),
    }
    client
        .send(Message::Text("{\"type\":\"send\"}".into()))
        .await
        .expect("send");
    match recv(&mut client).await {
        ServerFrame::Error(error) => assert_eq!(error.code, ErrorCode::MalformedFrame.as_u16()),
        other => panic!("expected an error frame, got {other:?}"),
    }
    // U+0000 in a stored text field is refused at the edge, before any engine sees it.
    client
        .send(Message::Text(
            r#"{"type":"send","chat_id":1,"client_msg_id":77,"body":"a\u0000b"}"#.into(),
        ))
        .await
        .expect("send");
    match recv(&mut client).await {
        ServerFrame::Error(error) => {
            assert_eq!(error.code, ErrorCode::MalformedFrame.as_u16());
            assert!(error.reason.contains("U+0000"), "{}", error.reason);
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
    // The session survived all of that.
    send(
        &mut client,
        ClientFrame::Ping(wire::client::Ping { nonce: 9 }),
    )
    .await;
    assert!(matches!(recv(&mut client).await, ServerFrame::Pong(pong) if pong.nonce == 9));
    // A message over the frame limit closes with 1009.
    client
        .send(Message::Binary(Bytes::from(vec![
            0u8;
            wire::limits::MAX_FRAME_BYTES
                + 1
        ])))
        .await
        .expect("send");
    assert!(is_code(close_code(&mut client).await, 1009));
    gateway.begin_shutdown();
    gateway.join();
}

#[tokio::test]
async fn an_unmasked_client_frame_closes_with_1002() {
    let gateway = start(1, &[]);
    let mut stream = raw_upgrade(&gateway, 1).await;
    let ping = ClientFrame::Ping(wire::client::Ping { nonce: 1 })
        .encode()
        .expect("encodes");
    let mut frame = vec![0x82, ping.len() as u8];
    frame.extend_from_slice(&ping);
    stream.write_all(&frame).await.expect("write");
    assert_eq!(raw_close_code(&mut stream).await, Some(1002));
    gateway.begin_shutdown();
    gateway.join();
}

#[tokio::test]
async fn frames_beyond_the_rate_limit_are_refused() {
    let gateway = start(1, &["--frames-per-second", "1", "--frame-burst", "5"]);
    let (mut client, _) = connect(&gateway, 1).await;
    for nonce in 0..8 {
        send(&mut client, ClientFrame::Ping(wire::client::Ping { nonce })).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    for _ in 0..8 {
        match recv(&mut client).await {
            ServerFrame::Pong(_) => pongs += 1,
            ServerFrame::Error(e) if e.code == ErrorCode::RateLimited.as_u16() => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((pongs, limited), (5, 3));
    // Ignoring a burst's worth of refusals gets the connection closed with 1008.
    for nonce in 0..10 {
        let _ = client
            .send(Message::Binary(Bytes::from(
                ClientFrame::Ping(wire::client::Ping { nonce })
                    .encode()
                    .expect("encodes"),
            )))
            .await;
    }
    assert!(is_code(close_code(&mut client).await, 1008));
    gateway.begin_shutdown();
    gateway.join();
}

/// Opens connections for `user_id` until one lands on `core`.
async fn connect_on_core(gateway: &gateway::Gateway, user_id: u64, core: u64) -> Client {
    for _ in 0..200 {
        let (client, welcome) = connect(gateway, user_id).await;
        if core_of(welcome.connection_id) == core {
            return client;
        }
    }
    panic!("the kernel never placed a connection on core {core}");
}

async fn create_group(client: &mut Client, members: Vec<u64>) -> u64 {
    send(
        client,
        ClientFrame::CreateChat(CreateChat {
            client_msg_id: 1,
            kind: ChatKind::Group,
            title: "team".into(),
            members,
        }),
    )
    .await;
    match recv(client).await {
        ServerFrame::ChatCreated(created) => created.chat_id,
        other => panic!("expected chat_created, got {other:?}"),
    }
}

#[tokio::test]
async fn users_on_different_cores_chat_through_a_group_and_sync_after_reconnect() {
    let gateway = start(2, &[]);
    let mut alice = connect_on_core(&gateway, 1, 0).await;
    let mut bob = connect_on_core(&gateway, 2, 1).await;
    let chat_id = create_group(&mut alice, vec![2]).await;
    assert!(matches!(recv(&mut bob).await, ServerFrame::ChatCreated(c) if c.chat_id == chat_id));

    send(
        &mut alice,
        ClientFrame::Send(SendMessage {
            chat_id,
            client_msg_id: 10,
            body: "hello bob".into(),
        }),
    )
    .await;
    match recv(&mut bob).await {
        ServerFrame::Message(m) => {
            assert_eq!(
                (m.chat_id, m.seq, m.sender, m.client_msg_id, m.body.as_str()),
                (chat_id, 1, 1, 10, "hello bob")
            );
        }
        other => panic!("expected a message, got {other:?}"),
    }
    match recv(&mut alice).await {
        ServerFrame::Receipt(r) => assert_eq!(
            (r.kind, r.seq, r.client_msg_id),
            (wire::ReceiptKind::Sent, 1, Some(10))
        ),
        other => panic!("expected a sent receipt, got {other:?}"),
    }

    // Bob goes away; alice sends three more; bob comes back on the other core and syncs.
    drop(bob);
    for (i, body) in ["two", "three", "four"].into_iter().enumerate() {
        send(
            &mut alice,
            ClientFrame::Send(SendMessage {
                chat_id,
                client_msg_id: 11 + i as u64,
                body: body.into(),
            }),
        )
        .await;
        assert!(matches!(recv(&mut alice).await, ServerFrame::Receipt(r) if r.seq == 2 + i as u64));
    }
    let mut bob = connect_on_core(&gateway, 2, 0).await;
    send(
        &mut bob,
        ClientFrame::Sync(SyncRequest {
            client_msg_id: 5,
            chat_id,
            after_seq: 1,
            limit: 2,
            before_seq: None,
        }),
    )
    .await;
    match recv(&mut bob).await {
        ServerFrame::SyncBatch(batch) => {
            let seqs: Vec<u64> = batch.messages.iter().map(|m| m.seq).collect();
            assert_eq!((seqs, batch.has_more), (vec![2, 3], true));
        }
        other => panic!("expected a sync batch, got {other:?}"),
    }
    send(
        &mut bob,
        ClientFrame::Sync(SyncRequest {
            client_msg_id: 6,
            chat_id,
            after_seq: 3,
            limit: 10,
            before_seq: None,
        }),
    )
    .await;
    match recv(&mut bob).await {
        ServerFrame::SyncBatch(batch) => {
            assert_eq!(
                batch
                    .messages
                    .iter()
                    .map(|m| m.body.as_str())
                    .collect::<Vec<_>>(),
                ["four"]
            );
            assert!(!batch.has_more);
        }
        other => panic!("expected a sync batch, got {other:?}"),
    }
    gateway.begin_shutdown();
    gateway.join();
}

#[tokio::test]
async fn json_and_binary_clients_chat_and_non_members_are_refused() {
    let gateway = start(2, &[]);
    let (mut alice, _) = connect(&gateway, 1).await;
    let (mut bob, _) = connect(&gateway, 2).await;
    let (mut mallory, _) = connect(&gateway, 3).await;
    send_json(
        &mut alice,
        ClientFrame::CreateChat(CreateChat {
            client_msg_id: 1,
            kind: ChatKind::Direct,
            title: String::new(),
            members: vec![2],
        }),
    )
    .await;
    let chat_id = match recv(&mut alice).await {
        ServerFrame::ChatCreated(created) => created.chat_id,
        other => panic!("expected chat_created, got {other:?}"),
    };
    assert!(matches!(recv(&mut bob).await, ServerFrame::ChatCreated(_)));
    // Alice speaks JSON, bob binary; each hears the other in their own encoding.
    send_json(
        &mut alice,
        ClientFrame::Send(SendMessage {
            chat_id,
            client_msg_id: 1,
            body: "hi in json".into(),
        }),
    )
    .await;
    assert!(matches!(recv(&mut bob).await, ServerFrame::Message(m) if m.body == "hi in json"));
    assert!(matches!(recv(&mut alice).await, ServerFrame::Receipt(_)));
    send(
        &mut bob,
        ClientFrame::Send(SendMessage {
            chat_id,
            client_msg_id: 1,
            body: "hi in rkyv".into(),
        }),
    )
    .await;
    let next = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::StreamExt::next(&mut alice),
    )
    .await
    .expect("frame");
    match next {
        Some(Ok(Message::Text(text))) => {
            assert!(text.as_str().contains("\"hi in rkyv\""), "{text}")
        }
        other => panic!("expected a JSON text frame, got {other:?}"),
    }
    // Mallory is not a member: an error frame that echoes her client message id.
    send(
        &mut mallory,
        ClientFrame::Send(SendMessage {
            chat_id,
            client_msg_id: 77,
            body: "let me in".into(),
        }),
    )
    .await;
    match recv(&mut mallory).await {
        ServerFrame::Error(e) => assert_eq!(
            (e.code, e.client_msg_id),
            (ErrorCode::NotMember.as_u16(), Some(77))
        ),
        other => panic!("expected an error, got {other:?}"),
    }
    // A direct chat takes nobody else.
    send(
        &mut mallory,
        ClientFrame::Join(Membership {
            client_msg_id: 78,
            chat_id,
        }),
    )
    .await;
    assert!(
        matches!(recv(&mut mallory).await, ServerFrame::Error(e) if e.code == ErrorCode::InvalidRequest.as_u16())
    );
    gateway.begin_shutdown();
    gateway.join();
}

#[tokio::test]
async fn a_resent_message_is_stored_and_delivered_once() {
    let gateway = start(1, &[]);
    let (mut alice, _) = connect(&gateway, 1).await;
    let (mut bob, _) = connect(&gateway, 2).await;
    let chat_id = create_group(&mut alice, vec![2]).await;
    assert!(matches!(recv(&mut bob).await, ServerFrame::ChatCreated(_)));
    for _ in 0..2 {
        send(
            &mut alice,
            ClientFrame::Send(SendMessage {
                chat_id,
                client_msg_id: 5,
                body: "once".into(),
            }),
        )
        .await;
        assert!(matches!(recv(&mut alice).await, ServerFrame::Receipt(r) if r.seq == 1));
    }
    send(
        &mut alice,
        ClientFrame::Send(SendMessage {
            chat_id,
            client_msg_id: 6,
            body: "twice?".into(),
        }),
    )
    .await;
    assert!(matches!(recv(&mut bob).await, ServerFrame::Message(m) if m.seq == 1));
    assert!(
        matches!(recv(&mut bob).await, ServerFrame::Message(m) if m.seq == 2 && m.body == "twice?")
    );
    gateway.begin_shutdown();
    gateway.join();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_a_slow_consumer() {
    let gateway = start(
        1,
        &[
            "--outbound-queue",
            "16",
            "--frames-per-second",
            "100000",
            "--frame-burst",
            "100000",
        ],
    );
    let (mut alice, _) = connect(&gateway, 1).await;
    let chat_id = create_group(&mut alice, vec![3]).await;
    // Carol upgrades through a raw socket and never reads again.
    let mut carol = raw_upgrade(&gateway, 3).await;
    let body = "x".repeat(4000);
    let mut closed = false;
    let mut sent = 0u64;
    // Loopback buffers absorb megabytes before the gateway's queue for carol fills.
    while !closed && sent < 20_000 {
        for _ in 0..200 {
            send(
                &mut alice,
                ClientFrame::Send(SendMessage {
                    chat_id,
                    client_msg_id: sent,
                    body: body.clone(),
                }),
            )
            .await;
            sent += 1;
        }
        let (_, metrics) = admin_get(&gateway, "/metrics").await;
        closed = metrics.contains("gateway_slow_consumer_closes_total 1\n");
    }
    // What was sent last may still be in the gateway's socket buffers, not yet read: the
    // close can follow the last send by the time the gateway takes to catch up.
    let caught_up = tokio::time::Instant::now() + Duration::from_secs(10);
    while !closed && tokio::time::Instant::now() < caught_up {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, metrics) = admin_get(&gateway, "/metrics").await;
        closed = metrics.contains("gateway_slow_consumer_closes_total 1\n");
    }
    assert!(
        closed,
        "carol was not closed as a slow consumer after {sent} messages"
    );
    assert_eq!(raw_close_code(&mut carol).await, Some(4000));
    // Alice, who reads, is unaffected: her receipts arrive in order, then her pong.
    send(
        &mut alice,
        ClientFrame::Ping(wire::client::Ping { nonce: 1 }),
    )
    .await;
    let mut receipts = 0;
    loop {
        match recv(&mut alice).await {
            ServerFrame::Receipt(r) => {
                receipts += 1;
                assert_eq!(r.seq, receipts);
            }
            ServerFrame::Pong(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(receipts, sent);
    gateway.begin_shutdown();
    gateway.join();
}

#[tokio::test]
async fn shutdown_closes_sessions_with_1001_and_ends() {
    let gateway = start(2, &["--shutdown-deadline", "5s"]);
    let (mut a, _) = connect(&gateway, 1).await;
    let (mut b, _) = connect(&gateway, 2).await;
    let (status, _) = admin_get(&gateway, "/readyz").await;
    assert_eq!(status, 200);
    gateway.begin_shutdown();
    assert!(is_code(close_code(&mut a).await, 1001));
    assert!(is_code(close_code(&mut b).await, 1001));
    let (status, _) = admin_get(&gateway, "/readyz").await;
    assert_eq!(status, 503);
    let joined = tokio::task::spawn_blocking(move || gateway.join());
    tokio::time::timeout(Duration::from_secs(10), joined)
        .await
        .expect("cores end in time")
        .expect("join");
}

/// A gateway on wss:// with a fresh self-signed certificate for `localhost`, and a client
/// configuration that trusts it; the files live in `dir` until the caller removes it.
fn start_wss(
    name: &str,
    args: &[&str],
) -> (
    gateway::Gateway,
    tokio_rustls::TlsConnector,
    std::path::PathBuf,
) {
    let dir = std::env::temp_dir().join(format!("gateway-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).expect("write cert");
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).expect("write key");
    let mut all_args = vec![
        "--tls-cert",
        cert_path.to_str().expect("utf8"),
        "--tls-key",
        key_path.to_str().expect("utf8"),
    ];
    all_args.extend_from_slice(args);
    let gateway = start(1, &all_args);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).expect("root");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    (gateway, connector, dir)
}

/// A TLS handshake with the gateway.
async fn tls_connect(
    gateway: &gateway::Gateway,
    connector: &tokio_rustls::TlsConnector,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(gateway.local_addr())
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await
}

#[tokio::test]
async fn wss_connections_work_over_tls_1_3() {
    let (gateway, connector, dir) = start_wss("tls", &[]);
    let tls = tls_connect(&gateway, &connector)
        .await
        .expect("TLS handshake");
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("wss://localhost:{}/ws", gateway.local_addr().port())
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", token(7)).parse().expect("header"),
    );
    let (mut client, _) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("upgrade over TLS");
    let message = futures_util::StreamExt::next(&mut client)
        .await
        .expect("frame")
        .expect("ok");
    match message {
        Message::Binary(bytes) => assert!(
            matches!(ServerFrame::decode(&bytes), Ok(ServerFrame::Welcome(w)) if w.user_id == 7)
        ),
        other => panic!("expected the welcome, got {other:?}"),
    }
    gateway.begin_shutdown();
    gateway.join();
    let _ = std::fs::remove_dir_all(dir);
}

/// Asserts the gateway counted one refusal for the per-IP rate.
async fn expect_one_ip_rate_refusal(gateway: &gateway::Gateway) {
    let (_, metrics) = admin_get(gateway, "/metrics").await;
    assert!(
        metrics.contains("gateway_handshakes_refused_total{reason=\"ip_rate\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_wss_client_over_the_per_ip_limit_gets_a_tls_alert() {
    let (gateway, connector, dir) =
        start_wss("tls-refused", &["--connections-per-ip-per-minute", "1"]);
    let _first = tls_connect(&gateway, &connector)
        .await
        .expect("first handshake");
    let error = tls_connect(&gateway, &connector)
        .await
        .expect_err("second refused");
    let alert = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    assert_eq!(
        alert,
        Some(&rustls::Error::AlertReceived(
            rustls::AlertDescription::InternalError
        )),
        "{error}"
    );
    expect_one_ip_rate_refusal(&gateway).await;
    gateway.begin_shutdown();
    gateway.join();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn new_connections_beyond_the_per_ip_limit_get_429() {
    let gateway = start(1, &["--connections-per-ip-per-minute", "2"]);
    let (_first, _) = connect(&gateway, 1).await;
    let (_second, _) = connect(&gateway, 2).await;
    let error = connect_with(&gateway, &token(3))
        .await
        .expect_err("third refused");
    assert_eq!(upgrade_status(error), 429);
    expect_one_ip_rate_refusal(&gateway).await;
    gateway.begin_shutdown();
    gateway.join();
}

#[tokio::test]
async fn the_epoll_driver_serves_the_same_chat_across_cores() {
    let gateway = start(2, &["--io-driver", "epoll"]);
    let mut alice = connect_on_core(&gateway, 1, 0).await;
    let mut bob = connect_on_core(&gateway, 2, 1).await;
    let chat_id = create_group(&mut alice, vec![2]).await;
    assert!(matches!(recv(&mut bob).await, ServerFrame::ChatCreated(c) if c.chat_id == chat_id));
    for client_msg_id in 1..=3 {
        send(
            &mut alice,
            ClientFrame::Send(SendMessage {
                chat_id,
                client_msg_id,
                body: format!("over epoll {client_msg_id}"),
            }),
        )
        .await;
        assert!(
            matches!(recv(&mut alice).await, ServerFrame::Receipt(r) if r.seq == client_msg_id)
        );
        match recv(&mut bob).await {
            ServerFrame::Message(m) => assert_eq!(
                (m.seq, m.body),
                (client_msg_id, format!("over epoll {client_msg_id}"))
            ),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    gateway.begin_shutdown();
    gateway.join();
}

/// The value of the sample `series` (name and labels, as exported) in a scrape.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

#[tokio::test]
async fn metrics_keep_labels_bounded_and_describe_the_process() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let gateway = start(2, &[]);
    let (mut polite, _) = connect(&gateway, 1).await;
    let (mut odd, _) = connect(&gateway, 2).await;
    let (_stays, _) = connect(&gateway, 3).await;
    for (client, code) in [(&mut polite, 1000), (&mut odd, 3999)] {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        client.close(Some(frame)).await.expect("closing");
    }
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = admin_get(&gateway, "/metrics").await.1;
        if sample(&metrics, "gateway_closes_total{code=\"other\"}") == Some(1.0)
            && sample(&metrics, "gateway_closes_total{code=\"1000\"}") == Some(1.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        sample(&metrics, "gateway_closes_total{code=\"1000\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "gateway_closes_total{code=\"other\"}"),
        Some(1.0),
        "a client-chosen code is counted as other: {metrics}"
    );
    assert!(!metrics.contains("3999"), "no label value from the client");

    // One series per core and no total beside them: sum() gives the node's count.
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("gateway_connections ")),
        "{metrics}"
    );
    let open: f64 = (0..2)
        .map(|core| {
            sample(&metrics, &format!("gateway_connections{{core=\"{core}\"}}"))
                .expect("a series per core")
        })
        .sum();
    assert_eq!(open, 1.0, "{metrics}");
    assert_eq!(
        sample(&metrics, "gateway_connections_opened_total"),
        Some(3.0)
    );

    assert_eq!(sample(&metrics, "gateway_ready"), Some(1.0));
    assert_eq!(sample(&metrics, "gateway_core_up{core=\"1\"}"), Some(1.0));
    assert!(sample(&metrics, "gateway_outbound_queue_max_frames").is_some());
    assert!(
        !metrics.contains("gateway_broker_connected"),
        "the memory engine has no broker"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sample(
            &metrics,
            &format!("gateway_build_info{{version=\"{version}\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );
    let fds = sample(&metrics, "process_open_fds").expect("open descriptors");
    let limit = sample(&metrics, "process_max_fds").expect("descriptor limit");
    assert!(fds > 0.0 && limit >= fds, "{fds} of {limit}");
    assert!(sample(&metrics, "process_resident_memory_bytes").expect("RSS") > 0.0);
    assert!(sample(&metrics, "process_start_time_seconds").expect("start time") > 1.7e9);
    gateway.begin_shutdown();
    gateway.join();
}

#[tokio::test]
async fn idle_and_trickling_admin_clients_do_not_delay_probes() {
    let gateway = start(1, &[]);
    let admin = gateway.admin_addr();
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(admin).await.expect("an idle client"));
    }
    let mut trickler = TcpStream::connect(admin).await.expect("a trickling client");
    let trickling = tokio::spawn(async move {
        for &byte in
            b"GET /metrics HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        {
            if trickler.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for path in ["/healthz", "/readyz"] {
        let started = std::time::Instant::now();
        let (status, _) = admin_get(&gateway, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{path} took {:?} beside idle and trickling clients",
            started.elapsed()
        );
    }
    trickling.abort();
    drop(idle);
    gateway.begin_shutdown();
    gateway.join();
}
