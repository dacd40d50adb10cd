//! The tester's own HS256 tokens, minted with the secret it shares with the gateway.
//!
//! The claims are the ones the gateway requires (`sub`, the user id in decimal, and `exp`);
//! the tester signs them itself rather than borrowing the gateway's code, so a change to what
//! the gateway accepts shows up as refused connections instead of passing unnoticed.

use jsonwebtoken::crypto::{CryptoProvider, rust_crypto};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use wire::UserId;

#[derive(Serialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// An HS256 token for `user_id` expiring at `exp_unix_secs`.
pub fn mint_hs256(secret: &[u8], user_id: UserId, exp_unix_secs: u64) -> String {
    // jsonwebtoken signs through a process-wide provider; installing it again is a no-op.
    let _already_installed = CryptoProvider::install_default(&rust_crypto::DEFAULT_PROVIDER);
    let claims = Claims {
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

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::mint_hs256;

    #[test]
    fn the_token_carries_the_claims_the_gateway_requires() {
        let token = mint_hs256(b"secret", 42, 1_900_000_000);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |part: &str| {
            let bytes = URL_SAFE_NO_PAD.decode(part).expect("base64url");
            serde_json::from_slice::<serde_json::Value>(&bytes).expect("JSON")
        };
        assert_eq!(decode(parts[0])["alg"], "HS256");
        assert_eq!(
            decode(parts[1]),
            serde_json::json!({"sub": "42", "exp": 1_900_000_000u64})
        );
    }
}
