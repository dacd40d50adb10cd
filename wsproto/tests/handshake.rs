//! The server side of the upgrade's HTTP: the accept key, the 101 and the refusals, and the
//! request parser against arbitrary bytes.

use proptest::prelude::*;
use wsproto::handshake::{
    HandshakeError, HandshakeLimits, RETRY_AFTER_SECS, accept_key, parse_request, refusal,
    switching_protocols,
};

fn response_text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("responses are ASCII")
}

#[test]
fn accept_key_matches_rfc_6455_example() {
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn switching_protocols_selects_only_the_protocol_given() {
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let plain = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";
    assert_eq!(
        response_text(&switching_protocols(key, None)),
        format!("{plain}\r\n")
    );
    assert_eq!(
        response_text(&switching_protocols(key, Some("chat"))),
        format!("{plain}Sec-WebSocket-Protocol: chat\r\n\r\n")
    );
}

/// Splits a response into status line, headers and body, checking the framing.
fn split_response(bytes: &[u8]) -> (String, Vec<String>, String) {
    let text = response_text(bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("head ends with an empty line");
    let mut lines = head.split("\r\n").map(str::to_owned);
    let status_line = lines.next().expect("status line");
    let headers: Vec<String> = lines.collect();
    let length: usize = headers
        .iter()
        .find_map(|h| h.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .expect("numeric Content-Length");
    assert_eq!(length, body.len());
    (status_line, headers, body.to_owned())
}

#[test]
fn refusals_are_complete_responses() {
    for (status, phrase) in [
        (400, "Bad Request"),
        (401, "Unauthorized"),
        (403, "Forbidden"),
        (404, "Not Found"),
        (405, "Method Not Allowed"),
        (426, "Upgrade Required"),
        (429, "Too Many Requests"),
        (503, "Service Unavailable"),
    ] {
        let (status_line, headers, body) = split_response(&refusal(status, "why"));
        assert_eq!(status_line, format!("HTTP/1.1 {status} {phrase}"));
        assert!(
            headers.contains(&"Connection: close".to_owned()),
            "{headers:?}"
        );
        assert!(
            headers.contains(&"Content-Type: text/plain".to_owned()),
            "{headers:?}"
        );
        assert_eq!(body, "why\n");
        let challenge = headers.iter().any(|h| h.starts_with("WWW-Authenticate: "));
        assert_eq!(challenge, status == 401);
        let retry_after = headers.iter().any(|h| h.starts_with("Retry-After: "));
        assert_eq!(retry_after, status == 503);
    }
    let (_, headers, _) = split_response(&refusal(503, "shutting down"));
    assert!(
        headers.contains(&format!("Retry-After: {}", RETRY_AFTER_SECS)),
        "{headers:?}"
    );
}

#[test]
fn unauthorized_refusal_carries_a_bearer_challenge() {
    let (_, headers, _) = split_response(&refusal(401, "token expired"));
    assert!(headers.contains(
        &"WWW-Authenticate: Bearer error=\"invalid_token\", error_description=\"token expired\""
            .to_owned()
    ));
    let (_, headers, _) = split_response(&refusal(405, "GET only"));
    assert!(headers.contains(&"Allow: GET".to_owned()));
}

#[test]
fn refusal_reason_cannot_inject_headers() {
    let (_, headers, body) =
        split_response(&refusal(401, "bad\r\nSet-Cookie: a=b \"quoted\" \\ né"));
    assert!(
        headers.iter().all(|h| !h.starts_with("Set-Cookie")),
        "{headers:?}"
    );
    assert_eq!(body, "bad??Set-Cookie: a=b 'quoted' ? n?\n");
    let challenge = headers
        .iter()
        .find(|h| h.starts_with("WWW-Authenticate"))
        .unwrap();
    assert!(challenge.ends_with("error_description=\"bad??Set-Cookie: a=b 'quoted' ? n?\""));
}

#[test]
fn refusal_never_reads_as_success() {
    let (status_line, _, _) = split_response(&refusal(200, "oops"));
    assert_eq!(status_line, "HTTP/1.1 500 Internal Server Error");
}

/// A valid upgrade request for `target` with `extra` header lines (each ending in CRLF).
fn request(target: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

#[test]
fn any_path_and_the_application_headers_are_left_to_the_caller() {
    let head = request(
        "/any/path?x=1",
        "Origin: https://a.example\r\nAuthorization: Bearer t\r\nSec-WebSocket-Protocol: a, b\r\n\
         Sec-WebSocket-Protocol: c\r\n",
    );
    let (parsed, consumed) = parse_request(head.as_bytes(), &HandshakeLimits::default())
        .expect("valid")
        .expect("complete");
    assert_eq!(consumed, head.len());
    assert_eq!(parsed.target, "/any/path?x=1");
    assert_eq!(parsed.host, "h");
    assert_eq!(parsed.origin, Some("https://a.example"));
    assert_eq!(parsed.authorization, Some("Bearer t"));
    assert_eq!(parsed.protocols, ["a", "b", "c"]);
}

#[test]
fn protocol_errors_carry_their_status() {
    let cases = [
        (request("/", "").replacen("GET", "POST", 1), 405),
        (request("/", "").replacen("HTTP/1.1", "HTTP/1.0", 1), 505),
        (request("/", "").replace("Upgrade: websocket\r\n", ""), 400),
        (
            request("/", "").replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
            426,
        ),
        (
            request("/", "").replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="),
            400,
        ),
        (request("/", "").replace("Host: h\r\n", ""), 400),
        (request("/", "Host: again\r\n"), 400),
        (request("/", "Transfer-Encoding: chunked\r\n"), 400),
    ];
    for (head, status) in cases {
        let error = parse_request(head.as_bytes(), &HandshakeLimits::default()).unwrap_err();
        assert_eq!(error.status(), status, "{head:?}: {error}");
        assert!(response_text(&error.refusal()).starts_with(&format!("HTTP/1.1 {status} ")));
    }
    let head = request("/", "");
    let tight = HandshakeLimits {
        max_header_bytes: 16,
        max_headers: 32,
    };
    assert_eq!(
        parse_request(head.as_bytes(), &tight),
        Err(HandshakeError::TooLarge { limit: 16 })
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_request(&bytes, &HandshakeLimits::default());
        let _ = parse_request(&bytes, &HandshakeLimits { max_header_bytes: 64, max_headers: 2 });
    }
}
