//! The server side of the WebSocket upgrade (RFC 6455 section 4), without I/O.
//!
//! The runtime reads bytes into a buffer and calls [`parse_request`] after every read: it
//! answers "not yet" until the request head is complete, refuses as soon as the head is not
//! a well-formed upgrade or is too large, and otherwise returns the fields an application
//! decides on (the request target, the origin, the authorization header and the offered
//! subprotocols). Which path, which origins and which credentials are acceptable is the
//! application's decision. The runtime then writes either [`switching_protocols`] or a
//! [`refusal`]. The handshake's time limit is the caller's.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

/// Appended to the client's key before hashing (RFC 6455 section 1.3).
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Longest reason text a refusal carries: reasons are short, and a refusal must stay small.
const MAX_REFUSAL_REASON_CHARS: usize = 200;

/// Seconds a 503 refusal asks the client to wait before it tries again (`Retry-After`). A
/// 503 here means "this process cannot take you right now" (it is stopping, or it is out of
/// descriptors); another process or node usually can at once, so a short wait is enough.
pub const RETRY_AFTER_SECS: u32 = 1;

/// Bounds on the request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Largest request head, request line and headers, in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in the head.
    pub max_headers: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 8 * 1024,
            max_headers: 32,
        }
    }
}

/// A well-formed WebSocket upgrade request, borrowing the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The request target: the path, and the query after `?` if there is one.
    pub target: &'a str,
    /// `Sec-WebSocket-Key`, base64 of 16 bytes.
    pub key: &'a str,
    /// The `Host` header, never empty.
    pub host: &'a str,
    /// The `Origin` header; browsers always send one, other clients usually do not.
    pub origin: Option<&'a str>,
    /// The `Authorization` header, trimmed.
    pub authorization: Option<&'a str>,
    /// The entries of every `Sec-WebSocket-Protocol` header, in order.
    pub protocols: Vec<&'a str>,
}

impl Request<'_> {
    /// The path part of [`Self::target`].
    pub fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target, |(path, _)| path)
    }

    /// The query part of [`Self::target`], without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, query)| query)
    }
}

/// Why an upgrade request breaks RFC 6455 or HTTP/1.1. The display text is safe to send to
/// the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The head is not complete within the byte limit.
    #[error("request head exceeds {limit} bytes")]
    TooLarge {
        /// The byte limit.
        limit: usize,
    },
    /// The head has more header fields than allowed.
    #[error("request head has more than {limit} header fields")]
    TooManyHeaders {
        /// The header count limit.
        limit: usize,
    },
    /// Not a parsable HTTP request, or one this endpoint never accepts.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// Not a GET.
    #[error("method not allowed: the upgrade must be a GET")]
    BadMethod,
    /// Any HTTP version but 1.1 (HTTP/1.0, HTTP/1.2, HTTP/2.0, ...): the upgrade needs
    /// HTTP/1.1.
    #[error("HTTP/1.1 is required")]
    BadHttpVersion,
    /// `Upgrade: websocket` or `Connection: upgrade` is missing.
    #[error("not a WebSocket upgrade: {0}")]
    NotUpgrade(&'static str),
    /// `Sec-WebSocket-Version` is missing or not 13.
    #[error("unsupported WebSocket version: this server speaks version 13")]
    BadVersion,
    /// `Sec-WebSocket-Key` is missing or not base64 of 16 bytes.
    #[error("Sec-WebSocket-Key must be base64 of 16 bytes")]
    BadKey,
    /// No `Host` header.
    #[error("the Host header is missing")]
    NoHost,
    /// A header that must appear once appeared more often; which one is meant is ambiguous.
    #[error("duplicate {0} header")]
    DuplicateHeader(&'static str),
}

impl HandshakeError {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            Self::TooLarge { .. } | Self::TooManyHeaders { .. } => 431,
            Self::Malformed(_)
            | Self::NotUpgrade(_)
            | Self::BadKey
            | Self::NoHost
            | Self::DuplicateHeader(_) => 400,
            Self::BadMethod => 405,
            Self::BadHttpVersion => 505,
            Self::BadVersion => 426,
        }
    }

    /// A short name for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::TooManyHeaders { .. } => "too_many_headers",
            Self::Malformed(_) => "malformed",
            Self::BadMethod => "bad_method",
            Self::BadHttpVersion => "bad_http_version",
            Self::NotUpgrade(_) => "not_upgrade",
            Self::BadVersion => "bad_version",
            Self::BadKey => "bad_key",
            Self::NoHost => "no_host",
            Self::DuplicateHeader(_) => "duplicate_header",
        }
    }

    /// The complete HTTP response that refuses the request.
    pub fn refusal(&self) -> Vec<u8> {
        refusal(self.status(), &self.to_string())
    }
}

/// Parses the upgrade request at the start of `buf`.
///
/// `Ok(None)` while the head is incomplete and within `limits`. On success, the request and
/// the length of its head: bytes after it are the client's first WebSocket frames and belong
/// to the WebSocket stream.
pub fn parse_request<'a>(
    buf: &'a [u8],
    limits: &HandshakeLimits,
) -> Result<Option<(Request<'a>, usize)>, HandshakeError> {
    // Parsing at most the allowed bytes bounds the work, and a head that is still incomplete
    // there can only grow past the limit.
    let window = &buf[..buf.len().min(limits.max_header_bytes)];
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_header_bytes => {
            return Err(HandshakeError::TooLarge {
                limit: limits.max_header_bytes,
            });
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HandshakeError::TooManyHeaders {
                limit: limits.max_headers,
            });
        }
        Err(httparse::Error::Version) if names_another_http_version(window) => {
            return Err(HandshakeError::BadHttpVersion);
        }
        Err(_) => return Err(HandshakeError::Malformed("not an HTTP/1.1 request head")),
    };
    check_request(&request).map(|upgrade| Some((upgrade, head_len)))
}

/// Whether the request line's version is a well-formed HTTP version (`HTTP/` and digits,
/// with at most one dot) that httparse refused because it is not 1.0 or 1.1: RFC 9110
/// answers that with 505, while anything else in its place is a malformed request.
fn names_another_http_version(head: &[u8]) -> bool {
    let line = head
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let Some(version) = line.rsplit(|&b| b == b' ').next() else {
        return false;
    };
    let Some(number) = version.strip_prefix(b"HTTP/") else {
        return false;
    };
    let parts: Vec<&[u8]> = number.split(|&b| b == b'.').collect();
    parts.len() <= 2
        && parts
            .iter()
            .all(|part| !part.is_empty() && part.iter().all(u8::is_ascii_digit))
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`: base64 of the SHA-1 of the key
/// followed by the protocol's GUID.
pub fn accept_key(key: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(WS_GUID.as_bytes());
    STANDARD.encode(sha1.finalize())
}

/// The 101 response that completes the upgrade of the request with `key`, selecting
/// `protocol` (one the client offered) when there is one.
pub fn switching_protocols(key: &str, protocol: Option<&str>) -> Vec<u8> {
    let mut response = String::with_capacity(160);
    response.push_str("HTTP/1.1 101 Switching Protocols\r\n");
    response.push_str("Upgrade: websocket\r\nConnection: Upgrade\r\n");
    response.push_str("Sec-WebSocket-Accept: ");
    response.push_str(&accept_key(key));
    response.push_str("\r\n");
    if let Some(protocol) = protocol {
        response.push_str("Sec-WebSocket-Protocol: ");
        response.push_str(protocol);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    response.into_bytes()
}

/// A complete HTTP/1.1 response refusing the upgrade: `status` with `reason` as a plain text
/// body, and the connection closed after it.
///
/// A status outside 400..=599 becomes 500: a refusal must never read as success. The reason
/// is reduced to one short line of printable ASCII so that no caller can inject headers.
pub fn refusal(status: u16, reason: &str) -> Vec<u8> {
    let status = if (400..=599).contains(&status) {
        status
    } else {
        500
    };
    let reason = sanitize_reason(reason);
    let body = format!("{reason}\n");
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
        reason_phrase(status),
        body.len()
    );
    match status {
        401 => response.push_str(&format!(
            "WWW-Authenticate: Bearer error=\"invalid_token\", error_description=\"{reason}\"\r\n"
        )),
        405 => response.push_str("Allow: GET\r\n"),
        // RFC 6455 section 4.4 names the version the server speaks; RFC 9110 requires a 426
        // to name the protocol to upgrade to.
        426 => response.push_str("Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"),
        503 => response.push_str(&format!("Retry-After: {RETRY_AFTER_SECS}\r\n")),
        _ => {}
    }
    response.push_str("\r\n");
    response.push_str(&body);
    response.into_bytes()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// Reduces a reason to printable ASCII without `"` and `\`, which is what RFC 6750 allows
/// in `error_description`; the body carries the same text, so both say the same.
fn sanitize_reason(reason: &str) -> String {
    reason
        .chars()
        .take(MAX_REFUSAL_REASON_CHARS)
        .map(|c| match c {
            '"' => '\'',
            ' '..='~' if c != '\\' => c,
            _ => '?',
        })
        .collect()
}

/// The headers the upgrade looks at, collected in one pass.
#[derive(Default)]
struct UpgradeHeaders<'a> {
    host: Option<&'a str>,
    key: Option<&'a str>,
    version: Option<&'a str>,
    origin: Option<&'a str>,
    authorization: Option<&'a str>,
    upgrade_websocket: bool,
    connection_upgrade: bool,
    protocols: Vec<&'a str>,
}

impl<'a> UpgradeHeaders<'a> {
    fn collect(headers: &[httparse::Header<'a>]) -> Result<Self, HandshakeError> {
        let mut found = Self::default();
        for header in headers {
            let name = header.name;
            let value = || {
                std::str::from_utf8(header.value)
                    .map(str::trim)
                    .map_err(|_| HandshakeError::Malformed("header value is not UTF-8"))
            };
            if name.eq_ignore_ascii_case("host") {
                set_once(&mut found.host, value()?, "Host")?;
            } else if name.eq_ignore_ascii_case("sec-websocket-key") {
                set_once(&mut found.key, value()?, "Sec-WebSocket-Key")?;
            } else if name.eq_ignore_ascii_case("sec-websocket-version") {
                set_once(&mut found.version, value()?, "Sec-WebSocket-Version")?;
            } else if name.eq_ignore_ascii_case("origin") {
                set_once(&mut found.origin, value()?, "Origin")?;
            } else if name.eq_ignore_ascii_case("authorization") {
                set_once(&mut found.authorization, value()?, "Authorization")?;
            } else if name.eq_ignore_ascii_case("upgrade") {
                found.upgrade_websocket |= has_token(value()?, "websocket");
            } else if name.eq_ignore_ascii_case("connection") {
                found.connection_upgrade |= has_token(value()?, "upgrade");
            } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
                found.protocols.extend(list_tokens(value()?));
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                || (name.eq_ignore_ascii_case("content-length") && value()? != "0")
            {
                // Body bytes would be read as WebSocket frames: refuse rather than guess.
                return Err(HandshakeError::Malformed("an upgrade request has no body"));
            }
        }
        Ok(found)
    }
}

fn set_once<'a>(
    slot: &mut Option<&'a str>,
    value: &'a str,
    name: &'static str,
) -> Result<(), HandshakeError> {
    if slot.replace(value).is_some() {
        return Err(HandshakeError::DuplicateHeader(name));
    }
    Ok(())
}

/// The non-empty entries of a comma-separated header value.
fn list_tokens(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

fn has_token(value: &str, wanted: &str) -> bool {
    list_tokens(value).any(|token| token.eq_ignore_ascii_case(wanted))
}

fn check_request<'a>(request: &httparse::Request<'_, 'a>) -> Result<Request<'a>, HandshakeError> {
    if request.method != Some("GET") {
        return Err(HandshakeError::BadMethod);
    }
    if request.version != Some(1) {
        return Err(HandshakeError::BadHttpVersion);
    }
    let target = request.path.unwrap_or_default();
    let headers = UpgradeHeaders::collect(request.headers)?;
    if !headers.upgrade_websocket {
        return Err(HandshakeError::NotUpgrade(
            "the Upgrade header must name websocket",
        ));
    }
    if !headers.connection_upgrade {
        return Err(HandshakeError::NotUpgrade(
            "the Connection header must contain upgrade",
        ));
    }
    if headers.version != Some("13") {
        return Err(HandshakeError::BadVersion);
    }
    let key = headers.key.ok_or(HandshakeError::BadKey)?;
    // The standard engine demands canonical padding, so 16 bytes means exactly 24 characters.
    if STANDARD.decode(key).map(|bytes| bytes.len()) != Ok(16) {
        return Err(HandshakeError::BadKey);
    }
    let host = headers
        .host
        .filter(|host| !host.is_empty())
        .ok_or(HandshakeError::NoHost)?;
    Ok(Request {
        target,
        key,
        host,
        origin: headers.origin,
        authorization: headers.authorization,
        protocols: headers.protocols,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_one_line_of_safe_ascii() {
        assert_eq!(sanitize_reason("ok: fine (1)"), "ok: fine (1)");
        assert_eq!(sanitize_reason("a\r\nb\t\"c\"\\ü"), "a??b?'c'??");
        assert_eq!(
            sanitize_reason(&"x".repeat(1000)).len(),
            MAX_REFUSAL_REASON_CHARS
        );
    }

    #[test]
    fn list_tokens_trim_and_skip_empty_entries() {
        let tokens: Vec<_> = list_tokens(" a ,, b,c ,").collect();
        assert_eq!(tokens, ["a", "b", "c"]);
        assert!(has_token("keep-alive, Upgrade", "upgrade"));
        assert!(!has_token("upgrade-insecure", "upgrade"));
    }

    #[test]
    fn targets_split_into_path_and_query() {
        let head = "GET /ws?a=1&b HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
                    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                    Sec-WebSocket-Version: 13\r\n\r\n";
        let (request, _) = parse_request(head.as_bytes(), &HandshakeLimits::default())
            .expect("valid")
            .expect("complete");
        assert_eq!((request.path(), request.query()), ("/ws", Some("a=1&b")));
        let bare = Request {
            target: "/",
            ..request
        };
        assert_eq!((bare.path(), bare.query()), ("/", None));
    }

    #[test]
    fn labels_are_distinct() {
        let errors = [
            HandshakeError::TooLarge { limit: 1 },
            HandshakeError::TooManyHeaders { limit: 1 },
            HandshakeError::Malformed("x"),
            HandshakeError::BadMethod,
            HandshakeError::BadHttpVersion,
            HandshakeError::NotUpgrade("x"),
            HandshakeError::BadVersion,
            HandshakeError::BadKey,
            HandshakeError::NoHost,
            HandshakeError::DuplicateHeader("x"),
        ];
        let mut labels: Vec<_> = errors.iter().map(HandshakeError::label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), errors.len());
    }
}
