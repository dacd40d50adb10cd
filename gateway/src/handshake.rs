//! The gateway's side of the WebSocket upgrade, without I/O.
//!
//! [`wsproto::handshake`] checks that a request is a well-formed RFC 6455 upgrade; this
//! module adds what only the gateway decides: the one path that upgrades, where a client may
//! put its token (a bearer header, the query, or a subprotocol offered beside
//! [`EDGE_PROTOCOL`]), the frame format it asks for, and which origins may connect. Whether
//! the token is valid is [`crate::auth`]'s decision.

use std::fmt;

use wsproto::handshake::{HandshakeError, HandshakeLimits, refusal};

/// The only path that upgrades.
pub const WS_PATH: &str = "/ws";

/// The application subprotocol. A browser that carries its token in a subprotocol offers
/// this one beside it, and the server selects this one, so the token is never echoed.
pub const EDGE_PROTOCOL: &str = "edge.v1";

/// Prefix of the subprotocol that carries a token: `bearer.<jwt>`.
const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

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

/// A WebSocket upgrade request the gateway can decide on. Whether its token is valid and its
/// origin allowed is for the caller to decide ([`crate::auth`], [`origin_allowed`]).
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

/// Why the gateway refuses an upgrade request before looking at its token's validity. The
/// display text is safe to send to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    /// Not a well-formed WebSocket upgrade.
    #[error(transparent)]
    Protocol(#[from] HandshakeError),
    /// Any path but [`WS_PATH`].
    #[error("not found: the WebSocket endpoint is {WS_PATH}")]
    BadPath,
    /// A credential was presented in a form that cannot be a token.
    #[error("invalid credentials: {0}")]
    BadCredentials(&'static str),
}

impl UpgradeError {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            Self::Protocol(error) => error.status(),
            Self::BadPath => 404,
            Self::BadCredentials(_) => 401,
        }
    }

    /// A short name for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Protocol(error) => error.label(),
            Self::BadPath => "bad_path",
            Self::BadCredentials(_) => "bad_credentials",
        }
    }

    /// The complete HTTP response that refuses the request.
    pub fn refusal(&self) -> Vec<u8> {
        refusal(self.status(), &self.to_string())
    }
}

/// Parses the upgrade request at the start of `buf` and reads the gateway's parts of it.
///
/// `Ok(None)` while the head is incomplete and within `limits`. On success, the request and
/// the length of its head: bytes after it are the client's first WebSocket frames and belong
/// to the WebSocket stream.
pub fn parse_upgrade(
    buf: &[u8],
    limits: &HandshakeLimits,
) -> Result<Option<(UpgradeRequest, usize)>, UpgradeError> {
    let Some((request, head_len)) = wsproto::handshake::parse_request(buf, limits)? else {
        return Ok(None);
    };
    if request.path() != WS_PATH {
        return Err(UpgradeError::BadPath);
    }
    let query = request.query();
    let offers_edge_protocol = request.protocols.contains(&EDGE_PROTOCOL);
    // Sources are consulted in order and only until one has a token, so a stale or odd
    // lower-priority source cannot refuse a request that carries a proper header.
    let credential = match token_from_authorization(request.authorization)? {
        Some(credential) => Some(credential),
        None => match token_from_query(query)? {
            Some(credential) => Some(credential),
            None => token_from_subprotocols(&request.protocols, offers_edge_protocol)?,
        },
    };
    let (token, token_source) = credential.unzip();
    let wants_json = match single_query_param(query, "format")? {
        None | Some("binary") => false,
        Some("json") => true,
        Some(_) => {
            return Err(HandshakeError::Malformed("format must be json or binary").into());
        }
    };
    let upgrade = UpgradeRequest {
        key: request.key.to_owned(),
        host: request.host.to_owned(),
        origin: request.origin.map(str::to_owned),
        token,
        token_source,
        offers_edge_protocol,
        wants_json,
    };
    Ok(Some((upgrade, head_len)))
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

/// The 101 response that completes the upgrade, selecting [`EDGE_PROTOCOL`] when the client
/// offered it.
pub fn switching_protocols(request: &UpgradeRequest) -> Vec<u8> {
    wsproto::handshake::switching_protocols(
        &request.key,
        request.offers_edge_protocol.then_some(EDGE_PROTOCOL),
    )
}

/// The raw value of query parameter `name`, refusing a repeated one: two values would
/// leave it to chance which one counts.
fn single_query_param<'a>(
    query: Option<&'a str>,
    name: &'static str,
) -> Result<Option<&'a str>, UpgradeError> {
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
        return Err(UpgradeError::Protocol(HandshakeError::Malformed(
            "a query parameter appears twice",
        )));
    }
    Ok(value)
}

type Credential = Option<(String, TokenSource)>;

fn token_from_authorization(value: Option<&str>) -> Result<Credential, UpgradeError> {
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
        _ => Err(UpgradeError::BadCredentials(
            "Authorization must be Bearer <token>",
        )),
    }
}

fn token_from_query(query: Option<&str>) -> Result<Credential, UpgradeError> {
    let Some(raw) = single_query_param(query, "token")? else {
        return Ok(None);
    };
    let token = decode_query_token(raw).ok_or(UpgradeError::BadCredentials(
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
) -> Result<Credential, UpgradeError> {
    let mut tokens = protocols
        .iter()
        .filter_map(|protocol| protocol.strip_prefix(BEARER_PROTOCOL_PREFIX));
    let Some(token) = tokens.next() else {
        return Ok(None);
    };
    if tokens.next().is_some() {
        return Err(UpgradeError::BadCredentials(
            "more than one bearer subprotocol",
        ));
    }
    if token.is_empty() {
        return Err(UpgradeError::BadCredentials(
            "the bearer subprotocol carries no token",
        ));
    }
    // The response must select an offered subprotocol without echoing the token, and
    // edge.v1 is the one it can select.
    if !offers_edge_protocol {
        return Err(UpgradeError::BadCredentials(
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
    fn labels_are_distinct_and_include_the_protocol_ones() {
        let errors = [
            UpgradeError::BadPath,
            UpgradeError::BadCredentials("x"),
            UpgradeError::Protocol(HandshakeError::BadKey),
        ];
        let mut labels: Vec<_> = errors.iter().map(UpgradeError::label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), errors.len());
        assert_eq!(UpgradeError::Protocol(HandshakeError::BadKey).status(), 400);
    }
}
