//! The WebSocket upgrade (RFC 6455 section 4) without I/O.
//!
//! The runtime reads bytes into a buffer and calls [`parse_upgrade`] after every read: it
//! answers "not yet" until the request head is complete, refuses as soon as the head is
//! wrong or too large, and otherwise returns what the gateway needs to decide (the key, the
//! origin, the token and where it came from). The runtime then writes either
//! [`switching_protocols`] or a [`refusal`]. The handshake's time limit is the caller's.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

/// The only path that upgrades.
pub const WS_PATH: &str = "/ws";

/// The application subprotocol. A browser that carries its token in a subprotocol offers
/// this one beside it, and the server selects this one, so the token is never echoed.
pub const EDGE_PROTOCOL: &str = "edge.v1";

/// Prefix of the subprotocol that carries a token: `bearer.<jwt>`.
const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

/// Appended to the client's key before hashing (RFC 6455 section 1.3).
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Longest reason text a refusal carries: reasons are short, and a refusal must stay small.
const MAX_REFUSAL_REASON_CHARS: usize = 200;

/// Seconds a 503 (the gateway is shutting down) asks the client to wait before it tries
/// again. Only connections caught in the moment a process stops get one; under systemd
/// the socket stays open and the next process (or another node) takes the retry, so a
/// short wait is enough.
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

/// Where the client put its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <jwt>`.
    AuthorizationHeader,
    /// The `token` query parameter of the request target.
    QueryParameter,
    /// A `bearer.<jwt>` entry of `Sec-WebSocket-Protocol`, offered with [`EDGE_PROTOCOL`].
    Subprotocol,
}

impl TokenSource {
    /// A short name for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::AuthorizationHeader => "header",
            Self::QueryParameter => "query",
            Self::Subprotocol => "subprotocol",
        }
    }
}

/// A well-formed WebSocket upgrade request. Whether its token is valid and its origin
/// allowed is for the caller to decide ([`crate::auth`], [`origin_allowed`]).
#[derive(Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// `Sec-WebSocket-Key`, base64 of 16 bytes.
    pub key: String,
    /// The `Host` header.
    pub host: String,
    /// The `Origin` header; browsers always send one, other clients usually do not.
    pub origin: Option<String>,
    /// The JWT, from the first source that has one (header, then query, then subprotocol).
    pub token: Option<String>,
    /// Where [`Self::token`] came from; `Some` exactly when the token is.
    pub token_source: Option<TokenSource>,
    /// Whether the client offered [`EDGE_PROTOCOL`]; the 101 response then selects it.
    pub offers_edge_protocol: bool,
    /// Whether the client asked for JSON text frames (`format=json` in the query) rather
    /// than binary ones; it decides the encoding of the frames sent before the client's
    /// first message.
    pub wants_json: bool,
}

// By hand so that logging a request never writes a credential.
impl fmt::Debug for UpgradeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpgradeRequest")
            .field("key", &self.key)
            .field("host", &self.host)
            .field("origin", &self.origin)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_source", &self.token_source)
            .field("offers_edge_protocol", &self.offers_edge_protocol)
            .field("wants_json", &self.wants_json)
            .finish()
    }
}

/// Why an upgrade request was refused. The display text is safe to send to the client.
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
    /// Any path but [`WS_PATH`].
    #[error("not found: the WebSocket endpoint is {WS_PATH}")]
    BadPath,
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
    /// A credential was presented in a form that cannot be a token.
    #[error("invalid credentials: {0}")]
    BadCredentials(&'static str),
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
            Self::BadPath => 404,
            Self::BadVersion => 426,
            Self::BadCredentials(_) => 401,
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
            Self::BadPath => "bad_path",
            Self::NotUpgrade(_) => "not_upgrade",
            Self::BadVersion => "bad_version",
            Self::BadKey => "bad_key",
            Self::NoHost => "no_host",
            Self::DuplicateHeader(_) => "duplicate_header",
            Self::BadCredentials(_) => "bad_credentials",
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
pub fn parse_upgrade(
    buf: &[u8],
    limits: &HandshakeLimits,
) -> Result<Option<(UpgradeRequest, usize)>, HandshakeError> {
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

/// Whether a request from `origin` may connect. An empty allow list allows every origin; a
/// request without an Origin header (not a browser) is always allowed, since the check only
/// defends browsers against pages of other sites.
pub fn origin_allowed(origin: Option<&str>, allow_list: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let origin = origin.trim();
    allow_list.is_empty()
        || allow_list.iter().any(|allowed| {
            // Browsers send an origin without a trailing slash; one in the configuration is a
            // typo that would otherwise refuse every browser silently.
            let allowed = allowed.trim();
            let allowed = allowed.strip_suffix('/').unwrap_or(allowed);
            allowed.eq_ignore_ascii_case(origin)
        })
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`: base64 of the SHA-1 of the key
/// followed by the protocol's GUID.
pub fn accept_key(key: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(WS_GUID.as_bytes());
    STANDARD.encode(sha1.finalize())
}

/// The 101 response that completes the upgrade.
pub fn switching_protocols(req: &UpgradeRequest) -> Vec<u8> {
    let mut response = String::with_capacity(160);
    response.push_str("HTTP/1.1 101 Switching Protocols\r\n");
    response.push_str("Upgrade: websocket\r\nConnection: Upgrade\r\n");
    response.push_str("Sec-WebSocket-Accept: ");
    response.push_str(&accept_key(&req.key));
    response.push_str("\r\n");
    if req.offers_edge_protocol {
        response.push_str("Sec-WebSocket-Protocol: ");
        response.push_str(EDGE_PROTOCOL);
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

fn check_request(request: &httparse::Request<'_, '_>) -> Result<UpgradeRequest, HandshakeError> {
    if request.method != Some("GET") {
        return Err(HandshakeError::BadMethod);
    }
    if request.version != Some(1) {
        return Err(HandshakeError::BadHttpVersion);
    }
    let target = request.path.unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if path != WS_PATH {
        return Err(HandshakeError::BadPath);
    }

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

    let offers_edge_protocol = headers.protocols.contains(&EDGE_PROTOCOL);
    // Sources are consulted in order and only until one has a token, so a stale or odd
    // lower-priority source cannot refuse a request that carries a proper header.
    let credential = match token_from_authorization(headers.authorization)? {
        Some(credential) => Some(credential),
        None => match token_from_query(query)? {
            Some(credential) => Some(credential),
            None => token_from_subprotocols(&headers.protocols, offers_edge_protocol)?,
        },
    };
    let (token, token_source) = credential.unzip();
    let wants_json = match single_query_param(query, "format")? {
        None | Some("binary") => false,
        Some("json") => true,
        Some(_) => return Err(HandshakeError::Malformed("format must be json or binary")),
    };

    Ok(UpgradeRequest {
        key: key.to_owned(),
        host: host.to_owned(),
        origin: headers.origin.map(str::to_owned),
        token,
        token_source,
        offers_edge_protocol,
        wants_json,
    })
}

/// The raw value of query parameter `name`, refusing a repeated one: two values would
/// leave it to chance which one counts.
fn single_query_param<'a>(
    query: Option<&'a str>,
    name: &'static str,
) -> Result<Option<&'a str>, HandshakeError> {
    let mut values = query
        .into_iter()
        .flat_map(|query| query.split('&'))
        .filter_map(|pair| match pair.split_once('=') {
            Some((key, value)) if key == name => Some(value),
            None if pair == name => Some(""),
            _ => None,
        });
    let value = values.next();
    if values.next().is_some() {
        return Err(HandshakeError::Malformed("a query parameter appears twice"));
    }
    Ok(value)
}

type Credential = Option<(String, TokenSource)>;

fn token_from_authorization(value: Option<&str>) -> Result<Credential, HandshakeError> {
    let Some(value) = value else {
        return Ok(None);
    };
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some((
                token.trim().to_owned(),
                TokenSource::AuthorizationHeader,
            )))
        }
        _ => Err(HandshakeError::BadCredentials(
            "Authorization must be Bearer <token>",
        )),
    }
}

fn token_from_query(query: Option<&str>) -> Result<Credential, HandshakeError> {
    let Some(raw) = single_query_param(query, "token")? else {
        return Ok(None);
    };
    let token = decode_query_token(raw).ok_or(HandshakeError::BadCredentials(
        "the token parameter must be a JWT (letters, digits, '-', '_', '.', or their %XX escapes)",
    ))?;
    Ok(Some((token, TokenSource::QueryParameter)))
}

/// Percent-decodes a query token. A JWT needs no escaping, but some clients escape `.` or
/// `-` anyway, so escapes of the JWT alphabet are decoded; any other byte, escaped or not,
/// cannot be part of a JWT and refuses the token.
fn decode_query_token(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut token = String::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let byte = if bytes[at] == b'%' {
            let high = hex_digit(*bytes.get(at + 1)?)?;
            let low = hex_digit(*bytes.get(at + 2)?)?;
            at += 3;
            high << 4 | low
        } else {
            at += 1;
            bytes[at - 1]
        };
        if !(byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.')) {
            return None;
        }
        token.push(char::from(byte));
    }
    (!token.is_empty()).then_some(token)
}

fn hex_digit(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|digit| u8::try_from(digit).ok())
}

fn token_from_subprotocols(
    protocols: &[&str],
    offers_edge_protocol: bool,
) -> Result<Credential, HandshakeError> {
    let mut tokens = protocols
        .iter()
        .filter_map(|protocol| protocol.strip_prefix(BEARER_PROTOCOL_PREFIX));
    let Some(token) = tokens.next() else {
        return Ok(None);
    };
    if tokens.next().is_some() {
        return Err(HandshakeError::BadCredentials(
            "more than one bearer subprotocol",
        ));
    }
    if token.is_empty() {
        return Err(HandshakeError::BadCredentials(
            "the bearer subprotocol carries no token",
        ));
    }
    // The response must select an offered subprotocol without echoing the token, and
    // edge.v1 is the one it can select.
    if !offers_edge_protocol {
        return Err(HandshakeError::BadCredentials(
            "the bearer subprotocol must be offered together with edge.v1",
        ));
    }
    Ok(Some((token.to_owned(), TokenSource::Subprotocol)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_tokens_decode_only_the_jwt_alphabet() {
        assert_eq!(decode_query_token("a.b-c_D9").as_deref(), Some("a.b-c_D9"));
        assert_eq!(
            decode_query_token("a%2Eb%2ec%2D%5f%41").as_deref(),
            Some("a.b.c-_A")
        );
        for refused in [
            "", "a+b", "a%20b", "a%2", "a%", "a%zz", "a%+2", "%2F", "é", "a%00",
        ] {
            assert_eq!(decode_query_token(refused), None, "{refused:?}");
        }
    }

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
    fn query_params_are_exact_and_single() {
        assert_eq!(single_query_param(None, "format"), Ok(None));
        assert_eq!(
            single_query_param(Some("xformat=json&format_=1"), "format"),
            Ok(None)
        );
        assert_eq!(
            single_query_param(Some("a=1&format=json"), "format"),
            Ok(Some("json"))
        );
        assert_eq!(single_query_param(Some("format"), "format"), Ok(Some("")));
        assert!(single_query_param(Some("format=a&format=b"), "format").is_err());
    }

    #[test]
    fn labels_are_distinct() {
        let errors = [
            HandshakeError::TooLarge { limit: 1 },
            HandshakeError::TooManyHeaders { limit: 1 },
            HandshakeError::Malformed("x"),
            HandshakeError::BadMethod,
            HandshakeError::BadHttpVersion,
            HandshakeError::BadPath,
            HandshakeError::NotUpgrade("x"),
            HandshakeError::BadVersion,
            HandshakeError::BadKey,
            HandshakeError::NoHost,
            HandshakeError::DuplicateHeader("x"),
            HandshakeError::BadCredentials("x"),
        ];
        let mut labels: Vec<_> = errors.iter().map(HandshakeError::label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), errors.len());
    }
}
