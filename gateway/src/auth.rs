//! Token verification: the user id of a connection comes from here and nowhere else.
//!
//! A [`Verifier`] accepts exactly one algorithm, fixed by configuration, and refuses any token
//! whose header names another before touching its signature: that covers `alg: none` and the
//! HS/ES confusion where an HMAC token is "signed" with the ECDSA public key as its secret.
//! It also refuses a header with `crit` (RFC 7515 section 4.1.11: the gateway understands no
//! extension), and an ES256 signature whose `s` is not in its low half (each token has one
//! valid signature, not two). Tokens must carry `exp` and may carry `nbf`, both enforced
//! with the same small leeway, and `sub`, the user id as a canonical decimal u64. An
//! optional maximum lifetime bounds `exp - iat`.
//!
//! jsonwebtoken checks the signature, `exp` and `nbf`; it parses `crit` but does not act on
//! it, and its P-256 verifier accepts both forms of `s`, so those two checks are made here.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto::{CryptoProvider, rust_crypto};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use wire::UserId;

/// Clock skew tolerated between the token issuer and the gateway when checking `exp`, `nbf`
/// and the maximum lifetime, in seconds. Small, because an expired token must stop working
/// promptly; issuers' clocks are expected to be NTP-synchronised.
pub const DEFAULT_LEEWAY_SECS: u64 = 5;

/// What a verified token asserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    /// The user, from `sub`.
    pub user_id: UserId,
    /// Expiry, Unix seconds, from `exp`; the session ends when it passes.
    pub exp: u64,
}

/// Why a token was refused. The display text is safe to send to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error("no token presented")]
    Missing,
    /// Not a well-formed JWS with the claims this gateway requires.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is still in the future (beyond the leeway).
    #[error("token not valid yet")]
    NotYetValid,
    /// `exp` lies further after `iat` (or after now, without `iat`) than the configured
    /// maximum lifetime allows.
    #[error("token lifetime exceeds the maximum")]
    TooLongLived,
    /// The header lists critical extensions (`crit`), none of which this gateway implements.
    #[error("token header has critical extensions")]
    CriticalExtension,
    /// The signature does not verify with the configured key.
    #[error("bad token signature")]
    BadSignature,
    /// An ES256 signature whose `s` is in the high half: valid, but the malleable twin of
    /// the low-S signature. Signers must normalise `s` to at most n/2.
    #[error("ES256 signature is not in low-S form")]
    HighS,
    /// The header names an algorithm other than the configured one.
    #[error("token algorithm not accepted")]
    WrongAlgorithm,
    /// `sub` is missing or not a canonical decimal u64.
    #[error("token subject is not a user id")]
    BadSubject,
}

impl AuthError {
    /// A short name for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::TooLongLived => "too_long_lived",
            Self::CriticalExtension => "critical_extension",
            Self::BadSignature => "bad_signature",
            Self::HighS => "high_s",
            Self::WrongAlgorithm => "wrong_algorithm",
            Self::BadSubject => "bad_subject",
        }
    }
}

/// A key that cannot be used for the pinned algorithm.
#[derive(Debug, thiserror::Error)]
#[error("unusable {what}: {source}")]
pub struct KeyError {
    what: &'static str,
    #[source]
    source: jsonwebtoken::errors::Error,
}

/// Verifies tokens signed with one pinned algorithm and key.
#[derive(Debug, Clone)]
pub struct Verifier {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
    /// Longest `exp - iat` accepted, in seconds; `None` for no bound.
    max_lifetime_secs: Option<u64>,
}

impl Verifier {
    /// Accepts HS256 tokens signed with `secret`. The secret should be at least 32 random
    /// bytes; checking that is the configuration's job.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::new(Algorithm::HS256, DecodingKey::from_secret(secret))
    }

    /// Accepts ES256 tokens signed by the private half of a P-256 public key in PEM
    /// (`-----BEGIN PUBLIC KEY-----`, as `openssl ec -pubout` writes it).
    pub fn es256_from_pem(public_key_pem: &[u8]) -> Result<Self, KeyError> {
        let invalid = |source| KeyError {
            what: "ES256 public key",
            source,
        };
        let key = DecodingKey::from_ec_pem(public_key_pem).map_err(invalid)?;
        install_crypto_provider();
        // The PEM parser accepts any EC key; only building a P-256 verifier tells whether
        // this one fits ES256, and that should fail at startup rather than on every token.
        jsonwebtoken::crypto::verify("", b"", &key, Algorithm::ES256).map_err(invalid)?;
        Ok(Self::new(Algorithm::ES256, key))
    }

    fn new(algorithm: Algorithm, key: DecodingKey) -> Self {
        install_crypto_provider();
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_exp = true;
        // RFC 7519 section 4.1.5: a token is not to be accepted before its `nbf`.
        validation.validate_nbf = true;
        validation.leeway = DEFAULT_LEEWAY_SECS;
        // No audience is configured: a key dedicated to this service scopes its tokens.
        // Left on, jsonwebtoken would refuse every token that happens to carry `aud`.
        validation.validate_aud = false;
        Self {
            algorithm,
            key,
            validation,
            max_lifetime_secs: None,
        }
    }

    /// Sets the tolerated clock skew for `exp`, `nbf` and the maximum lifetime, in seconds
    /// (default [`DEFAULT_LEEWAY_SECS`]).
    pub fn with_leeway(mut self, leeway_secs: u64) -> Self {
        self.validation.leeway = leeway_secs;
        self
    }

    /// Refuses tokens whose `exp` lies more than `max` (plus the leeway) after their `iat`,
    /// or after now when they carry no `iat` or one in the future; `None` removes the bound.
    pub fn with_max_lifetime(mut self, max: Option<Duration>) -> Self {
        self.max_lifetime_secs = max.map(|max| max.as_secs());
        self
    }

    /// Verifies `token` and returns what it asserts. An empty token counts as missing.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        self.check_header(token)?;
        if self.algorithm == Algorithm::ES256 {
            check_low_s(token)?;
        }
        let data = jsonwebtoken::decode::<TokenClaims>(token, &self.key, &self.validation)
            .map_err(|error| classify(error.kind()))?;
        let user_id = user_id_from_subject(data.claims.sub.as_ref())?;
        let exp = data
            .claims
            .exp
            .as_ref()
            .and_then(numeric_date)
            .ok_or(AuthError::Malformed("exp is not a NumericDate"))?;
        self.check_lifetime(data.claims.iat.as_ref(), exp)?;
        Ok(Claims { user_id, exp })
    }

    /// Reads the header's `alg` as a plain string, so that names jsonwebtoken does not know
    /// (`none`) are refused as the wrong algorithm rather than as unparsable headers, and
    /// refuses any `crit`: RFC 7515 section 4.1.11 requires a recipient to refuse a token
    /// whose critical extensions it does not understand, and this gateway understands none.
    fn check_header(&self, token: &str) -> Result<(), AuthError> {
        let (encoded_header, _) = token
            .split_once('.')
            .ok_or(AuthError::Malformed("not three dot-separated parts"))?;
        let header = URL_SAFE_NO_PAD
            .decode(encoded_header)
            .map_err(|_| AuthError::Malformed("header is not base64url"))?;
        let header: Map<String, Value> = serde_json::from_slice(&header)
            .map_err(|_| AuthError::Malformed("header is not a JSON object"))?;
        match header.get("alg").and_then(Value::as_str) {
            Some(alg) if alg.parse::<Algorithm>().ok() == Some(self.algorithm) => {}
            _ => return Err(AuthError::WrongAlgorithm),
        }
        // Present in any form, even `null` or `[]` (which RFC 7515 forbids outright).
        if header.contains_key("crit") {
            return Err(AuthError::CriticalExtension);
        }
        Ok(())
    }

    /// The maximum lifetime, counted from `iat`, or from now when `iat` is absent or in the
    /// future (a future `iat` must not stretch the bound).
    fn check_lifetime(&self, iat: Option<&Value>, exp: u64) -> Result<(), AuthError> {
        let Some(max) = self.max_lifetime_secs else {
            return Ok(());
        };
        let now = jsonwebtoken::get_current_timestamp();
        let issued = match iat {
            None => now,
            Some(iat) => numeric_date(iat)
                .ok_or(AuthError::Malformed("iat is not a NumericDate"))?
                .min(now),
        };
        if exp.saturating_sub(issued) > max.saturating_add(self.validation.leeway) {
            return Err(AuthError::TooLongLived);
        }
        Ok(())
    }
}

/// An ECDSA signature `(r, s)` has a twin, `(r, n - s)`, that verifies as well; P-256
/// verifiers (jsonwebtoken's included) accept both. Only the low-S one is accepted here, so
/// that a token has exactly one valid form.
fn check_low_s(token: &str) -> Result<(), AuthError> {
    let (_, encoded) = token
        .rsplit_once('.')
        .ok_or(AuthError::Malformed("not three dot-separated parts"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| AuthError::Malformed("signature is not base64url"))?;
    let signature =
        p256::ecdsa::Signature::from_slice(&bytes).map_err(|_| AuthError::BadSignature)?;
    match signature.normalize_s() {
        None => Ok(()),
        Some(_) => Err(AuthError::HighS),
    }
}

/// Mints an HS256 token for `user_id` expiring at `exp_unix_secs`. For `gateway token`, the
/// examples and the tests, which share the gateway's secret. (The load tester mints its own,
/// so that it shares no code with the server it tests.)
pub fn mint_hs256(secret: &[u8], user_id: UserId, exp_unix_secs: u64) -> String {
    install_crypto_provider();
    let claims = TokenClaimsOut {
        sub: user_id.to_string(),
        exp: exp_unix_secs,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HMAC takes a key of any length and these claims always serialise")
}

/// Mints an ES256 token for `user_id` expiring at `exp_unix_secs`, signed with a P-256
/// private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
pub fn mint_es256(
    private_key_pem: &[u8],
    user_id: UserId,
    exp_unix_secs: u64,
) -> Result<String, KeyError> {
    install_crypto_provider();
    let invalid = |source| KeyError {
        what: "ES256 private key",
        source,
    };
    let key = EncodingKey::from_ec_pem(private_key_pem).map_err(invalid)?;
    let claims = TokenClaimsOut {
        sub: user_id.to_string(),
        exp: exp_unix_secs,
    };
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).map_err(invalid)?;
    Ok(with_low_s(token))
}

/// The token with its ES256 signature in low-S form: jsonwebtoken's signer leaves `s` as
/// it comes, and the gateway accepts only the low half.
fn with_low_s(token: String) -> String {
    let Some((signed, encoded)) = token.rsplit_once('.') else {
        return token;
    };
    let high = URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()
        .and_then(|bytes| p256::ecdsa::Signature::from_slice(&bytes).ok())
        .and_then(|signature| signature.normalize_s());
    match high {
        Some(low) => format!("{signed}.{}", URL_SAFE_NO_PAD.encode(low.to_bytes())),
        None => token,
    }
}

/// jsonwebtoken picks its provider from its crate features, and with `rust_crypto` alone it
/// would pick RustCrypto by itself. Installing it explicitly keeps verification working if
/// feature unification ever also enables `aws_lc_rs`, where jsonwebtoken can no longer
/// choose and would panic on first use. Installing is idempotent: once any provider is
/// installed, later calls change nothing.
fn install_crypto_provider() {
    let _already_installed = CryptoProvider::install_default(&rust_crypto::DEFAULT_PROVIDER);
}

/// The claims as they arrive. All are raw JSON so that a token with a numeric or absent
/// `sub` is reported as a bad subject, not as an undecodable token.
#[derive(Deserialize)]
struct TokenClaims {
    sub: Option<Value>,
    exp: Option<Value>,
    iat: Option<Value>,
}

#[derive(Serialize)]
struct TokenClaimsOut {
    sub: String,
    exp: u64,
}

fn classify(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => AuthError::WrongAlgorithm,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
            AuthError::Malformed("exp must be present, and exp and nbf NumericDates")
        }
        _ => AuthError::Malformed("not a well-formed JWS"),
    }
}

/// `sub` as a user id: a string of decimal digits without sign, spaces or leading zeros, so
/// that each user has exactly one spelling, within u64.
fn user_id_from_subject(sub: Option<&Value>) -> Result<UserId, AuthError> {
    let Some(Value::String(sub)) = sub else {
        return Err(AuthError::BadSubject);
    };
    let canonical = !sub.is_empty()
        && sub.bytes().all(|byte| byte.is_ascii_digit())
        && (sub == "0" || !sub.starts_with('0'));
    if !canonical {
        return Err(AuthError::BadSubject);
    }
    sub.parse().map_err(|_| AuthError::BadSubject)
}

/// A NumericDate (RFC 7519): seconds, possibly fractional, as jsonwebtoken accepted it.
fn numeric_date(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        let secs = value.as_f64()?;
        // Saturating float-to-int conversion; jsonwebtoken already refused negative and
        // non-finite values.
        (secs.is_finite() && secs >= 0.0).then(|| secs.round() as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_must_be_canonical_decimal() {
        let sub = |s: &str| user_id_from_subject(Some(&Value::String(s.to_owned())));
        assert_eq!(sub("0"), Ok(0));
        assert_eq!(sub("42"), Ok(42));
        assert_eq!(sub("18446744073709551615"), Ok(u64::MAX));
        for bad in [
            "",
            "042",
            "+42",
            "-1",
            " 42",
            "42 ",
            "4x2",
            "18446744073709551616",
            "1e3",
        ] {
            assert_eq!(sub(bad), Err(AuthError::BadSubject), "{bad:?}");
        }
        assert_eq!(
            user_id_from_subject(Some(&Value::from(42))),
            Err(AuthError::BadSubject)
        );
        assert_eq!(user_id_from_subject(None), Err(AuthError::BadSubject));
    }

    #[test]
    fn numeric_dates_round_like_jsonwebtoken() {
        assert_eq!(
            numeric_date(&Value::from(1_700_000_000u64)),
            Some(1_700_000_000)
        );
        assert_eq!(
            numeric_date(&Value::from(1_700_000_000.6)),
            Some(1_700_000_001)
        );
        assert_eq!(numeric_date(&Value::from(-1)), None);
        assert_eq!(numeric_date(&Value::from("1700000000")), None);
    }

    #[test]
    fn labels_are_distinct() {
        let errors = [
            AuthError::Missing,
            AuthError::Malformed("x"),
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::TooLongLived,
            AuthError::CriticalExtension,
            AuthError::BadSignature,
            AuthError::HighS,
            AuthError::WrongAlgorithm,
            AuthError::BadSubject,
        ];
        let mut labels: Vec<_> = errors.iter().map(AuthError::label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), errors.len());
    }
}
