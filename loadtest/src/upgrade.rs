//! The client side of the WebSocket upgrade, without I/O: the request, and the check of
//! the server's answer (status 101 and the accept key [`wsproto::handshake::accept_key`]
//! computes, as every RFC 6455 server must).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::target::Target;

/// Largest response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// Why an upgrade failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    /// The server answered with another status.
    #[error("HTTP {0}")]
    Status(u16),
    /// Not an HTTP response.
    #[error("malformed upgrade response")]
    Malformed,
    /// A 101 whose `Sec-WebSocket-Accept` does not match the key.
    #[error("wrong Sec-WebSocket-Accept")]
    BadAccept,
    /// The head did not end within the limit.
    #[error("upgrade response head over {MAX_RESPONSE_HEAD} bytes")]
    TooLarge,
}

impl UpgradeError {
    /// A short label for the error counts.
    pub fn label(&self) -> String {
        match self {
            UpgradeError::Status(status) => format!("http_{status}"),
            UpgradeError::Malformed => "malformed_response".to_owned(),
            UpgradeError::BadAccept => "bad_accept".to_owned(),
            UpgradeError::TooLarge => "response_too_large".to_owned(),
        }
    }
}

/// A `Sec-WebSocket-Key` from 16 random bytes.
pub fn key(random: u128) -> String {
    STANDARD.encode(random.to_le_bytes())
}

/// The upgrade request, with the token as a bearer header when there is one and the raw
/// broadcast group, if any, added to the query as `group=`.
pub fn request(target: &Target, key: &str, token: Option<&str>, group: Option<u64>) -> Vec<u8> {
    let path = match group {
        Some(group) if target.path.contains('?') => format!("{}&group={group}", target.path),
        Some(group) => format!("{}?group={group}", target.path),
        None => target.path.clone(),
    };
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n",
        target.host
    );
    if let Some(token) = token {
        head.push_str("Authorization: Bearer ");
        head.push_str(token);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Checks the response at the front of `buf`: `Ok(None)` while the head is incomplete,
/// else the head's length (bytes after it are the server's first frames).
pub fn response(buf: &[u8], key: &str) -> Result<Option<usize>, UpgradeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err(UpgradeError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(UpgradeError::Malformed),
    };
    match response.code {
        Some(101) => {}
        Some(status) => return Err(UpgradeError::Status(status)),
        None => return Err(UpgradeError::Malformed),
    }
    let expected = wsproto::handshake::accept_key(key);
    let accepted = response.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("sec-websocket-accept")
            && h.value.trim_ascii() == expected.as_bytes()
    });
    if accepted {
        Ok(Some(len))
    } else {
        Err(UpgradeError::BadAccept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsproto::handshake::{HandshakeLimits, parse_request, refusal, switching_protocols};

    fn target() -> Target {
        Target::parse("ws://127.0.0.1:9/ws?format=binary").expect("target")
    }

    #[test]
    fn a_server_accepts_our_request_and_we_accept_its_answer() {
        let key = key(7);
        let request = request(&target(), &key, Some("abc.def.ghi"), None);
        let (parsed, len) = parse_request(&request, &HandshakeLimits::default())
            .expect("valid")
            .expect("complete");
        assert_eq!(len, request.len());
        assert_eq!(parsed.authorization, Some("Bearer abc.def.ghi"));
        let mut answer = switching_protocols(parsed.key, None);
        let head = answer.len();
        answer.extend_from_slice(&[0x82, 0]);
        assert_eq!(response(&answer, &key), Ok(Some(head)));
        assert_eq!(response(&answer[..head - 1], &key), Ok(None));
        assert_eq!(response(&answer, "another"), Err(UpgradeError::BadAccept));
    }

    #[test]
    fn a_raw_broadcast_group_joins_the_query() {
        let with_query = request(&target(), &key(1), None, Some(3));
        assert!(with_query.starts_with(b"GET /ws?format=binary&group=3 HTTP/1.1\r\n"));
        let bare = Target::parse("ws://127.0.0.1:9/ws").expect("target");
        assert!(
            request(&bare, &key(1), None, Some(0)).starts_with(b"GET /ws?group=0 HTTP/1.1\r\n")
        );
    }

    #[test]
    fn refusals_carry_their_status() {
        let refusal = refusal(401, "no token");
        assert_eq!(response(&refusal, "k"), Err(UpgradeError::Status(401)));
        assert_eq!(
            response(b"\x16\x03garbage\r\n\r\n", "k"),
            Err(UpgradeError::Malformed)
        );
        assert_eq!(
            response(&vec![b'a'; MAX_RESPONSE_HEAD + 1], "k"),
            Err(UpgradeError::Malformed)
        );
        let mut long = b"HTTP/1.1 101 OK\r\nX: ".to_vec();
        long.resize(MAX_RESPONSE_HEAD + 1, b'a');
        assert_eq!(response(&long, "k"), Err(UpgradeError::TooLarge));
        assert_eq!(UpgradeError::Status(503).label(), "http_503");
    }
}
