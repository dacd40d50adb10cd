//! The upgrade handshake and token verification, driven with bytes and tokens only.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway::auth::{self, AuthError, Claims, Verifier};
use gateway::handshake::{
    self, TokenSource, UpgradeError, UpgradeRequest, origin_allowed, parse_upgrade,
    switching_protocols,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{Value, json};
use wsproto::handshake::{HandshakeError, HandshakeLimits, refusal};

// Key pairs made for these tests alone (openssl, P-256 and P-384); never deploy them.
const ES256_PRIVATE: &[u8] = include_bytes!("keys/es256.private.pem");
const ES256_PUBLIC: &[u8] = include_bytes!("keys/es256.public.pem");
const OTHER_ES256_PRIVATE: &[u8] = include_bytes!("keys/es256_other.private.pem");
const P384_PUBLIC: &[u8] = include_bytes!("keys/p384.public.pem");

const SECRET: &[u8] = b"a test secret of at least thirty-two bytes";
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A valid upgrade request for `target` with `extra` header lines (each ending in CRLF).
fn request(target: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: edge.example.com\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

fn parse(head: &str) -> Result<Option<(UpgradeRequest, usize)>, UpgradeError> {
    parse_upgrade(head.as_bytes(), &HandshakeLimits::default())
}

fn parse_complete(head: &str) -> UpgradeRequest {
    let (upgrade, consumed) = parse(head).expect("valid request").expect("complete head");
    assert_eq!(consumed, head.len());
    upgrade
}

fn response_text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("responses are ASCII")
}

// ---- handshake: accepted requests ----

#[test]
fn upgrade_with_authorization_header() {
    let upgrade = parse_complete(&request(
        "/ws",
        &format!("Authorization: Bearer {JWT}\r\nOrigin: https://app.example.com\r\n"),
    ));
    assert_eq!(upgrade.key, KEY);
    assert_eq!(upgrade.host, "edge.example.com");
    assert_eq!(upgrade.origin.as_deref(), Some("https://app.example.com"));
    assert_eq!(upgrade.token.as_deref(), Some(JWT));
    assert_eq!(upgrade.token_source, Some(TokenSource::AuthorizationHeader));
    assert!(!upgrade.offers_edge_protocol);
}

#[test]
fn upgrade_with_query_token() {
    let upgrade = parse_complete(&request(&format!("/ws?v=1&token={JWT}&x"), ""));
    assert_eq!(upgrade.token.as_deref(), Some(JWT));
    assert_eq!(upgrade.token_source, Some(TokenSource::QueryParameter));
    assert_eq!(upgrade.origin, None);
}

#[test]
fn query_token_escapes_of_the_jwt_alphabet_are_decoded() {
    let escaped = JWT.replace('.', "%2E").replacen("%2E", "%2e", 1);
    let upgrade = parse_complete(&request(&format!("/ws?token={escaped}"), ""));
    assert_eq!(upgrade.token.as_deref(), Some(JWT));
}

#[test]
fn upgrade_with_subprotocol_token_selects_edge_protocol_without_echoing_the_token() {
    let upgrade = parse_complete(&request(
        "/ws",
        &format!("Sec-WebSocket-Protocol: edge.v1, bearer.{JWT}\r\n"),
    ));
    assert_eq!(upgrade.token.as_deref(), Some(JWT));
    assert_eq!(upgrade.token_source, Some(TokenSource::Subprotocol));
    assert!(upgrade.offers_edge_protocol);

    let response = response_text(&switching_protocols(&upgrade));
    assert!(
        response.contains("\r\nSec-WebSocket-Protocol: edge.v1\r\n"),
        "{response}"
    );
    assert!(!response.contains(JWT));
    assert!(!response.contains("bearer"));
}

#[test]
fn subprotocols_may_be_split_over_header_lines() {
    let upgrade = parse_complete(&request(
        "/ws",
        &format!("Sec-WebSocket-Protocol: bearer.{JWT}\r\nSec-WebSocket-Protocol: edge.v1\r\n"),
    ));
    assert_eq!(upgrade.token_source, Some(TokenSource::Subprotocol));
    assert!(upgrade.offers_edge_protocol);
}

#[test]
fn upgrade_without_token_is_parsed_and_left_to_auth() {
    let upgrade = parse_complete(&request("/ws", "Sec-WebSocket-Protocol: edge.v1\r\n"));
    assert_eq!(upgrade.token, None);
    assert_eq!(upgrade.token_source, None);
    assert!(upgrade.offers_edge_protocol);
}

#[test]
fn format_parameter_selects_json() {
    assert!(!parse_complete(&request("/ws", "")).wants_json);
    assert!(!parse_complete(&request("/ws?format=binary", "")).wants_json);
    let upgrade = parse_complete(&request(&format!("/ws?format=json&token={JWT}"), ""));
    assert!(upgrade.wants_json);
    assert_eq!(upgrade.token.as_deref(), Some(JWT));
}

#[test]
fn token_sources_are_consulted_in_order() {
    let upgrade = parse_complete(&request(
        "/ws?token=%25%25",
        &format!("Authorization: bearer {JWT}\r\nSec-WebSocket-Protocol: bearer.x\r\n"),
    ));
    assert_eq!(upgrade.token.as_deref(), Some(JWT));
    assert_eq!(upgrade.token_source, Some(TokenSource::AuthorizationHeader));

    let upgrade = parse_complete(&request(
        "/ws?token=from.the.query",
        "Sec-WebSocket-Protocol: edge.v1, bearer.from.the.protocol\r\n",
    ));
    assert_eq!(upgrade.token.as_deref(), Some("from.the.query"));
    assert_eq!(upgrade.token_source, Some(TokenSource::QueryParameter));
}

#[test]
fn header_tokens_are_case_insensitive_lists() {
    let head = format!(
        "GET /ws HTTP/1.1\r\nhost: h\r\nUPGRADE: WebSocket\r\nconnection: keep-alive, Upgrade\r\n\
         sec-websocket-key: {KEY}\r\nsec-websocket-version: 13\r\n\r\n"
    );
    let upgrade = parse_complete(&head);
    assert_eq!(upgrade.host, "h");
}

#[test]
fn debug_output_never_shows_the_token() {
    let upgrade = parse_complete(&request("/ws", &format!("Authorization: Bearer {JWT}\r\n")));
    let debug = format!("{upgrade:?}");
    assert!(!debug.contains(JWT), "{debug}");
    assert!(debug.contains("redacted"));
}

// ---- handshake: refusals ----

#[test]
fn each_refusal_has_its_label_and_status() {
    let cases: Vec<(String, &str, u16)> = vec![
        (
            request("/ws", "").replacen("GET", "POST", 1),
            "bad_method",
            405,
        ),
        (
            request("/ws", "").replacen("HTTP/1.1", "HTTP/1.0", 1),
            "bad_http_version",
            505,
        ),
        (
            request("/ws", "").replacen("HTTP/1.1", "HTTP/1.2", 1),
            "bad_http_version",
            505,
        ),
        (
            request("/ws", "").replacen("HTTP/1.1", "HTTP/2.0", 1),
            "bad_http_version",
            505,
        ),
        (
            request("/ws", "").replacen("HTTP/1.1", "HTTP/2", 1),
            "bad_http_version",
            505,
        ),
        (
            request("/ws", "").replacen("HTTP/1.1", "HTTP/10.0", 1),
            "bad_http_version",
            505,
        ),
        (
            request("/ws", "").replacen("HTTP/1.1", "HTTP/1.1.1", 1),
            "malformed",
            400,
        ),
        (
            request("/ws", "").replacen("HTTP/1.1", "HTTP/x", 1),
            "malformed",
            400,
        ),
        (
            request("/ws", "").replacen("HTTP/1.1", "HTTQ/1.1", 1),
            "malformed",
            400,
        ),
        (request("/chat", ""), "bad_path", 404),
        (request("/ws/", ""), "bad_path", 404),
        (request("/", ""), "bad_path", 404),
        (
            request("/ws", "").replace("Upgrade: websocket\r\n", ""),
            "not_upgrade",
            400,
        ),
        (
            request("/ws", "").replace("Upgrade: websocket", "Upgrade: h2c"),
            "not_upgrade",
            400,
        ),
        (
            request("/ws", "").replace("Connection: Upgrade", "Connection: keep-alive"),
            "not_upgrade",
            400,
        ),
        (
            request("/ws", "").replace("Sec-WebSocket-Version: 13\r\n", ""),
            "bad_version",
            426,
        ),
        (
            request("/ws", "").replace("Version: 13", "Version: 8"),
            "bad_version",
            426,
        ),
        (
            request("/ws", "").replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), ""),
            "bad_key",
            400,
        ),
        (
            request("/ws", "").replace(KEY, "dGhlIHNhbXBsZSBub25jZQ"),
            "bad_key",
            400,
        ),
        (request("/ws", "").replace(KEY, "c2hvcnQ="), "bad_key", 400),
        (
            request("/ws", "").replace(KEY, "not base64 at all!!!!!!="),
            "bad_key",
            400,
        ),
        (
            request("/ws", "").replace("Host: edge.example.com\r\n", ""),
            "no_host",
            400,
        ),
        (
            request("/ws", "").replace("Host: edge.example.com", "Host: "),
            "no_host",
            400,
        ),
        (
            request("/ws", "Host: other.example.com\r\n"),
            "duplicate_header",
            400,
        ),
        (
            request("/ws", &format!("Sec-WebSocket-Key: {KEY}\r\n")),
            "duplicate_header",
            400,
        ),
        (request("/ws", "Content-Length: 5\r\n"), "malformed", 400),
        (
            request("/ws", "Transfer-Encoding: chunked\r\n"),
            "malformed",
            400,
        ),
        (
            request("/ws", "Authorization: Basic dXNlcjpwYXNz\r\n"),
            "bad_credentials",
            401,
        ),
        (
            request("/ws", "Authorization: Bearer \r\n"),
            "bad_credentials",
            401,
        ),
        (request("/ws?token=a+b", ""), "bad_credentials", 401),
        (request("/ws?token=a%20b", ""), "bad_credentials", 401),
        (request("/ws?token=a%2", ""), "bad_credentials", 401),
        (request("/ws?token=", ""), "bad_credentials", 401),
        (request("/ws?token=a.b.c&token=d.e.f", ""), "malformed", 400),
        (request("/ws?format=xml", ""), "malformed", 400),
        (
            request("/ws?format=json&format=binary", ""),
            "malformed",
            400,
        ),
        (
            request("/ws", "Sec-WebSocket-Protocol: bearer.a.b.c\r\n"),
            "bad_credentials",
            401,
        ),
        (
            request("/ws", "Sec-WebSocket-Protocol: edge.v1, bearer.\r\n"),
            "bad_credentials",
            401,
        ),
        (
            request(
                "/ws",
                "Sec-WebSocket-Protocol: edge.v1, bearer.a.b.c, bearer.d.e.f\r\n",
            ),
            "bad_credentials",
            401,
        ),
        (
            "GET /ws HTTP/1.1\r\nHost\r\n\r\n".to_owned(),
            "malformed",
            400,
        ),
        (
            "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03".to_owned(),
            "malformed",
            400,
        ),
    ];
    for (head, label, status) in cases {
        let error = parse(&head).expect_err(&head);
        assert_eq!(
            (error.label(), error.status()),
            (label, status),
            "{head:?}: {error}"
        );
        let response = response_text(&error.refusal());
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status} ")),
            "{response}"
        );
    }
}

#[test]
fn too_many_headers_is_refused() {
    let limits = HandshakeLimits {
        max_headers: 8,
        ..HandshakeLimits::default()
    };
    let extra: String = (0..8).map(|i| format!("X-Filler-{i}: x\r\n")).collect();
    let head = request("/ws", &extra);
    let error = parse_upgrade(head.as_bytes(), &limits).expect_err("too many headers");
    assert_eq!((error.label(), error.status()), ("too_many_headers", 431));
    assert!(parse_upgrade(request("/ws", "").as_bytes(), &limits).is_ok());
}

#[test]
fn version_refusal_names_the_supported_version() {
    let error = parse(&request("/ws", "").replace("Version: 13", "Version: 8")).unwrap_err();
    let response = response_text(&error.refusal());
    assert!(
        response.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{response}"
    );
    assert!(response.contains("\r\nSec-WebSocket-Version: 13\r\n"));
    assert!(response.contains("\r\nUpgrade: websocket\r\n"));
}

// ---- handshake: incremental input and limits ----

#[test]
fn partial_head_is_none_until_complete() {
    let head = request("/ws", &format!("Authorization: Bearer {JWT}\r\n"));
    for end in 0..head.len() {
        assert_eq!(parse(&head[..end]), Ok(None), "prefix of {end} bytes");
    }
    let upgrade = parse_complete(&head);
    assert_eq!(upgrade.token.as_deref(), Some(JWT));
}

#[test]
fn bytes_after_the_head_are_not_consumed() {
    let head = request("/ws", "");
    let frame = [0x82, 0x85, 1, 2, 3, 4, b'h', b'e', b'l', b'l', b'o'];
    let mut buf = head.clone().into_bytes();
    buf.extend_from_slice(&frame);
    let (_, consumed) = parse_upgrade(&buf, &HandshakeLimits::default())
        .unwrap()
        .unwrap();
    assert_eq!(consumed, head.len());
    assert_eq!(&buf[consumed..], &frame);
}

#[test]
fn oversize_head_is_refused_once_past_the_limit() {
    let limits = HandshakeLimits {
        max_header_bytes: 256,
        ..HandshakeLimits::default()
    };
    let filler = format!("X-Filler: {}\r\n", "a".repeat(300));
    let head = request("/ws", &filler);
    assert_eq!(parse_upgrade(&head.as_bytes()[..256], &limits), Ok(None));
    let error = parse_upgrade(&head.as_bytes()[..257], &limits).unwrap_err();
    assert_eq!(
        error,
        UpgradeError::Protocol(HandshakeError::TooLarge { limit: 256 })
    );
    assert_eq!((error.label(), error.status()), ("too_large", 431));
    assert_eq!(parse_upgrade(head.as_bytes(), &limits), Err(error));
}

#[test]
fn head_of_exactly_the_limit_with_trailing_bytes_is_accepted() {
    let head = request("/ws", "");
    let limits = HandshakeLimits {
        max_header_bytes: head.len(),
        ..HandshakeLimits::default()
    };
    let mut buf = head.clone().into_bytes();
    buf.extend_from_slice(&[0u8; 1000]);
    let (_, consumed) = parse_upgrade(&buf, &limits).unwrap().unwrap();
    assert_eq!(consumed, head.len());
}

// ---- handshake: responses ----

#[test]
fn switching_protocols_response() {
    let upgrade = parse_complete(&request("/ws", ""));
    let response = response_text(&switching_protocols(&upgrade));
    assert_eq!(
        response,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    );
}

#[test]
fn origins() {
    let allow = vec![
        "https://app.example.com".to_owned(),
        " https://admin.example.com/ ".to_owned(),
    ];
    assert!(origin_allowed(None, &allow));
    assert!(origin_allowed(Some("https://app.example.com"), &allow));
    assert!(origin_allowed(Some("HTTPS://APP.Example.com"), &allow));
    assert!(origin_allowed(Some("https://admin.example.com"), &allow));
    assert!(!origin_allowed(Some("https://evil.example.com"), &allow));
    assert!(!origin_allowed(Some("http://app.example.com"), &allow));
    assert!(!origin_allowed(
        Some("https://app.example.com.evil.com"),
        &allow
    ));
    assert!(!origin_allowed(Some("null"), &allow));
    assert!(origin_allowed(Some("https://anything.example"), &[]));
    assert!(origin_allowed(None, &[]));
}

#[test]
fn constants_name_the_endpoint() {
    assert_eq!(handshake::WS_PATH, "/ws");
    assert_eq!(handshake::EDGE_PROTOCOL, "edge.v1");
    assert_eq!(
        HandshakeLimits::default(),
        HandshakeLimits {
            max_header_bytes: 8192,
            max_headers: 32
        }
    );
}

// ---- auth ----

fn b64(json: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
}

fn hs256_with_claims(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn es256_verifier() -> Verifier {
    Verifier::es256_from_pem(ES256_PUBLIC).expect("valid P-256 public key")
}

#[test]
fn hs256_token_verifies() {
    let exp = now() + 600;
    let token = auth::mint_hs256(SECRET, 42, exp);
    assert_eq!(
        Verifier::hs256(SECRET).verify(&token),
        Ok(Claims { user_id: 42, exp })
    );
}

#[test]
fn round_trips_extreme_user_ids() {
    let exp = now() + 600;
    for user_id in [0, 1, u64::MAX] {
        let token = auth::mint_hs256(SECRET, user_id, exp);
        assert_eq!(
            Verifier::hs256(SECRET).verify(&token).map(|c| c.user_id),
            Ok(user_id)
        );
    }
}

#[test]
fn expired_token_is_refused() {
    let verifier = Verifier::hs256(SECRET);
    let token = auth::mint_hs256(SECRET, 42, now() - 3600);
    assert_eq!(verifier.verify(&token), Err(AuthError::Expired));
    assert_eq!(AuthError::Expired.label(), "expired");
}

#[test]
fn leeway_is_configurable() {
    let token = auth::mint_hs256(SECRET, 42, now() - 30);
    assert_eq!(
        Verifier::hs256(SECRET).with_leeway(0).verify(&token),
        Err(AuthError::Expired)
    );
    assert!(
        Verifier::hs256(SECRET)
            .with_leeway(300)
            .verify(&token)
            .is_ok()
    );
    assert_eq!(auth::DEFAULT_LEEWAY_SECS, 5);
}

#[test]
fn wrong_secret_is_a_bad_signature() {
    let token = auth::mint_hs256(b"another secret entirely, also long", 42, now() + 600);
    let error = Verifier::hs256(SECRET).verify(&token).unwrap_err();
    assert_eq!(
        (error.clone(), error.label()),
        (AuthError::BadSignature, "bad_signature")
    );
}

#[test]
fn tampered_payload_is_a_bad_signature() {
    let token = auth::mint_hs256(SECRET, 42, now() + 600);
    let parts: Vec<&str> = token.split('.').collect();
    let forged = b64(&json!({ "sub": "1", "exp": now() + 600 }));
    let forged = format!("{}.{forged}.{}", parts[0], parts[2]);
    assert_eq!(
        Verifier::hs256(SECRET).verify(&forged),
        Err(AuthError::BadSignature)
    );
}

#[test]
fn alg_none_is_refused() {
    let payload = b64(&json!({ "sub": "42", "exp": now() + 600 }));
    for header in [
        "eyJhbGciOiJub25lIn0".to_owned(),
        b64(&json!({ "alg": "None" })),
    ] {
        let token = format!("{header}.{payload}.");
        for verifier in [Verifier::hs256(SECRET), es256_verifier()] {
            let error = verifier.verify(&token).unwrap_err();
            assert_eq!(
                (error.clone(), error.label()),
                (AuthError::WrongAlgorithm, "wrong_algorithm")
            );
        }
    }
}

#[test]
fn header_without_alg_or_with_other_algorithms_is_refused() {
    let payload = b64(&json!({ "sub": "42", "exp": now() + 600 }));
    for header in [
        json!({}),
        json!({ "alg": 256 }),
        json!({ "alg": "hs256" }),
        json!({ "alg": "HS512" }),
    ] {
        let token = format!("{}.{payload}.c2ln", b64(&header));
        assert_eq!(
            Verifier::hs256(SECRET).verify(&token),
            Err(AuthError::WrongAlgorithm),
            "{header}"
        );
    }
}

#[test]
fn hs256_token_keyed_with_the_es256_public_key_is_refused_by_es256() {
    let exp = now() + 600;
    let forged = auth::mint_hs256(ES256_PUBLIC, 42, exp);
    assert_eq!(
        es256_verifier().verify(&forged),
        Err(AuthError::WrongAlgorithm)
    );
}

#[test]
fn es256_token_verifies() {
    let exp = now() + 600;
    let token = auth::mint_es256(ES256_PRIVATE, 7, exp).expect("valid private key");
    assert_eq!(
        es256_verifier().verify(&token),
        Ok(Claims { user_id: 7, exp })
    );
}

/// An HS256 token with a hand-made header, signed for real.
fn hs256_with_header(header: &Value, claims: &Value) -> String {
    let signed = format!("{}.{}", b64(header), b64(claims));
    let signature = jsonwebtoken::crypto::sign(
        signed.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{signed}.{signature}")
}

#[test]
fn nbf_in_the_future_is_refused_within_the_leeway_of_exp() {
    let verifier = Verifier::hs256(SECRET);
    let exp = now() + 600;
    let with_nbf = |nbf: Value| hs256_with_claims(&json!({ "sub": "42", "exp": exp, "nbf": nbf }));
    let error = verifier.verify(&with_nbf(json!(now() + 60))).unwrap_err();
    assert_eq!(
        (error.clone(), error.label()),
        (AuthError::NotYetValid, "not_yet_valid")
    );
    // The leeway that forgives an issuer's clock for exp forgives it for nbf too.
    assert!(verifier.verify(&with_nbf(json!(now() + 3))).is_ok());
    assert!(verifier.verify(&with_nbf(json!(now() - 60))).is_ok());
    assert_eq!(
        Verifier::hs256(SECRET)
            .with_leeway(0)
            .verify(&with_nbf(json!(now() + 3))),
        Err(AuthError::NotYetValid)
    );
    assert!(matches!(
        verifier.verify(&with_nbf(json!("tomorrow"))),
        Err(AuthError::Malformed(_))
    ));
}

#[test]
fn a_header_with_critical_extensions_is_refused() {
    let claims = json!({ "sub": "42", "exp": now() + 600 });
    assert!(
        Verifier::hs256(SECRET)
            .verify(&hs256_with_header(&json!({ "alg": "HS256" }), &claims))
            .is_ok()
    );
    for crit in [
        json!(["b64"]),
        json!(["exp"]),
        json!(["http://example.com/ext"]),
        json!([]),
        json!(null),
        json!("b64"),
    ] {
        let header = json!({ "alg": "HS256", "crit": crit, "b64": false });
        let error = Verifier::hs256(SECRET)
            .verify(&hs256_with_header(&header, &claims))
            .unwrap_err();
        assert_eq!(
            (error.clone(), error.label()),
            (AuthError::CriticalExtension, "critical_extension"),
            "{header}"
        );
    }
}

/// `token` with the twin of its ES256 signature: (r, n - s).
fn with_twin_signature(token: &str) -> String {
    let (signed, encoded) = token.rsplit_once('.').unwrap();
    let signature =
        p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(encoded).unwrap()).unwrap();
    let (r, s) = signature.split_scalars();
    let twin = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-s).to_bytes()).unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(twin.to_bytes()))
}

#[test]
fn high_s_es256_signatures_are_refused_and_low_s_accepted() {
    let verifier = es256_verifier();
    let key = jsonwebtoken::DecodingKey::from_ec_pem(ES256_PUBLIC).unwrap();
    for user in 0..16 {
        // mint_es256 writes low-S signatures; their twins are high-S.
        let low = auth::mint_es256(ES256_PRIVATE, user, now() + 600).unwrap();
        assert!(verifier.verify(&low).is_ok(), "user {user}");
        let high = with_twin_signature(&low);
        let (signed, signature) = high.rsplit_once('.').unwrap();
        assert_eq!(
            jsonwebtoken::crypto::verify(signature, signed.as_bytes(), &key, Algorithm::ES256),
            Ok(true),
            "the twin verifies as an ECDSA signature"
        );
        let error = verifier.verify(&high).unwrap_err();
        assert_eq!((error.clone(), error.label()), (AuthError::HighS, "high_s"));
    }
}

#[test]
fn the_maximum_lifetime_bounds_exp_after_iat_or_after_now() {
    let hour = 3600;
    let verifier =
        Verifier::hs256(SECRET).with_max_lifetime(Some(std::time::Duration::from_secs(hour)));
    let now = now();
    let verify = |claims: Value| verifier.verify(&hs256_with_claims(&claims));
    assert!(verify(json!({ "sub": "1", "iat": now, "exp": now + hour })).is_ok());
    assert!(verify(json!({ "sub": "1", "exp": now + hour / 2 })).is_ok());
    // Issued long ago, expiring soon: the lifetime is what the issuer granted.
    assert!(verify(json!({ "sub": "1", "iat": now - hour / 2, "exp": now + hour / 4 })).is_ok());
    for claims in [
        json!({ "sub": "1", "iat": now, "exp": now + hour + 60 }),
        json!({ "sub": "1", "exp": now + 2 * hour }),
        json!({ "sub": "1", "iat": now - 2 * hour, "exp": now + 600 }),
        // A future iat does not stretch the bound: the lifetime counts from now.
        json!({ "sub": "1", "iat": now + hour, "exp": now + 3 * hour / 2 }),
    ] {
        let error = verify(claims.clone()).unwrap_err();
        assert_eq!(
            (error.clone(), error.label()),
            (AuthError::TooLongLived, "too_long_lived"),
            "{claims}"
        );
    }
    assert!(matches!(
        verify(json!({ "sub": "1", "iat": "today", "exp": now + 60 })),
        Err(AuthError::Malformed(_))
    ));
    // Without the option, any lifetime goes.
    assert!(
        Verifier::hs256(SECRET)
            .verify(&hs256_with_claims(
                &json!({ "sub": "1", "iat": now, "exp": now + 365 * 24 * hour })
            ))
            .is_ok()
    );
}

#[test]
fn the_maximum_lifetime_flag_is_documented_in_help() {
    use clap::CommandFactory;
    let help = gateway::Config::command().render_long_help().to_string();
    assert!(help.contains("--jwt-max-lifetime"), "{help}");
    assert!(help.contains("GATEWAY_JWT_MAX_LIFETIME"), "{help}");
}

#[test]
fn es256_token_is_refused_by_hs256() {
    let token = auth::mint_es256(ES256_PRIVATE, 7, now() + 600).unwrap();
    assert_eq!(
        Verifier::hs256(SECRET).verify(&token),
        Err(AuthError::WrongAlgorithm)
    );
    // Even when the HMAC secret is the public key's own bytes.
    assert_eq!(
        Verifier::hs256(ES256_PUBLIC).verify(&token),
        Err(AuthError::WrongAlgorithm)
    );
}

#[test]
fn es256_token_from_another_key_is_a_bad_signature() {
    let token = auth::mint_es256(OTHER_ES256_PRIVATE, 7, now() + 600).unwrap();
    assert_eq!(
        es256_verifier().verify(&token),
        Err(AuthError::BadSignature)
    );
}

#[test]
fn es256_keys_are_checked_at_construction() {
    assert!(Verifier::es256_from_pem(b"not a pem").is_err());
    assert!(Verifier::es256_from_pem(ES256_PRIVATE).is_err());
    assert!(Verifier::es256_from_pem(P384_PUBLIC).is_err());
    assert!(auth::mint_es256(ES256_PUBLIC, 1, now() + 600).is_err());
}

#[test]
fn subject_must_be_a_decimal_user_id() {
    let verifier = Verifier::hs256(SECRET);
    let exp = now() + 600;
    for claims in [
        json!({ "sub": "alice", "exp": exp }),
        json!({ "sub": "-1", "exp": exp }),
        json!({ "sub": "007", "exp": exp }),
        json!({ "sub": "18446744073709551616", "exp": exp }),
        json!({ "sub": 42, "exp": exp }),
        json!({ "sub": null, "exp": exp }),
        json!({ "exp": exp }),
    ] {
        let error = verifier.verify(&hs256_with_claims(&claims)).unwrap_err();
        assert_eq!(
            (error.clone(), error.label()),
            (AuthError::BadSubject, "bad_subject"),
            "{claims}"
        );
    }
}

#[test]
fn exp_is_required() {
    let verifier = Verifier::hs256(SECRET);
    for claims in [
        json!({ "sub": "42" }),
        json!({ "sub": "42", "exp": "tomorrow" }),
    ] {
        let error = verifier.verify(&hs256_with_claims(&claims)).unwrap_err();
        assert_eq!(error.label(), "malformed", "{claims}: {error}");
    }
}

#[test]
fn malformed_tokens_are_refused() {
    let verifier = Verifier::hs256(SECRET);
    let valid = auth::mint_hs256(SECRET, 42, now() + 600);
    let header = valid.split('.').next().unwrap();
    for token in [
        "abc".to_owned(),
        "a.b".to_owned(),
        "!!!.e30.sig".to_owned(),
        format!("{}.e30.sig", b64(&json!("not an object"))),
        format!("{header}.e30"),
        format!("{header}.%%%.sig"),
        format!(
            "{header}.{}.{}",
            b64(&json!([1, 2])),
            valid.rsplit('.').next().unwrap()
        ),
        format!("{valid}.extra"),
        format!("{}!", &valid),
    ] {
        let error = verifier.verify(&token).unwrap_err();
        assert!(
            matches!(error, AuthError::Malformed(_) | AuthError::BadSignature),
            "{token}: {error:?}"
        );
    }
    assert_eq!(verifier.verify(""), Err(AuthError::Missing));
    assert_eq!(AuthError::Missing.label(), "missing");
}

#[test]
fn refusal_for_an_auth_error_is_a_401() {
    let response = response_text(&refusal(401, &AuthError::Expired.to_string()));
    assert!(
        response.contains("error_description=\"token expired\""),
        "{response}"
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_upgrade(&bytes, &HandshakeLimits::default());
        let _ = parse_upgrade(&bytes, &HandshakeLimits { max_header_bytes: 64, max_headers: 2 });
    }

    #[test]
    fn request_like_input_never_panics(
        target in "/ws(\\?[a-z%0-9=&.+]{0,40})?",
        name in "[A-Za-z-]{1,24}",
        value in "[ -~]{0,60}",
    ) {
        let head = request(&target, &format!("{name}: {value}\r\n"));
        if let Ok(Some((_, consumed))) = parse(&head) {
            prop_assert_eq!(consumed, head.len());
        }
    }

    #[test]
    fn consumed_count_excludes_trailing_bytes(trailing in proptest::collection::vec(any::<u8>(), 0..512)) {
        let head = request("/ws", "");
        let mut buf = head.clone().into_bytes();
        buf.extend_from_slice(&trailing);
        let (_, consumed) = parse_upgrade(&buf, &HandshakeLimits::default()).unwrap().unwrap();
        prop_assert_eq!(consumed, head.len());
    }

    #[test]
    fn arbitrary_tokens_never_verify_or_panic(token in "[A-Za-z0-9._-]{0,300}") {
        prop_assert!(Verifier::hs256(SECRET).verify(&token).is_err());
    }
}
