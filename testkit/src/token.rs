//! HS256 tokens as the edges accept them (`sub`, `iat`, `exp`), minted the way a deployment's
//! identity provider would, independently of the code under test.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde::Serialize;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).expect("clock after 1970")
}

/// A token for `user` signed with `secret` (HS256), valid from now for `ttl`.
pub fn mint_token(secret: &[u8], user: &str, ttl: Duration) -> String {
    let iat = now();
    mint_claims(secret, &Claims { sub: user, iat, exp: iat + ttl.as_secs() })
}

/// A token for `user` that expired in 1970, far beyond any clock-skew leeway.
pub fn mint_expired_token(secret: &[u8], user: &str) -> String {
    mint_claims(secret, &Claims { sub: user, iat: 0, exp: 1_000_000 })
}

/// A token with any claims (an issuer, an audience, `nbf`, a bad subject), signed with
/// `secret` (HS256).
pub fn mint_claims(secret: &[u8], claims: &impl Serialize) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).expect("encode a JWT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_the_user_and_expiry() {
        let token = mint_token(b"secret", "alice", Duration::from_secs(60));
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.required_spec_claims = ["exp", "sub"].into_iter().map(String::from).collect();
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"secret"),
            &validation,
        )
        .expect("valid token");
        assert_eq!(data.claims["sub"], "alice");
        let exp = data.claims["exp"].as_u64().expect("exp");
        assert!(exp >= now() + 59 && exp <= now() + 60);
        let expired = mint_expired_token(b"secret", "alice");
        let err = jsonwebtoken::decode::<serde_json::Value>(
            &expired,
            &jsonwebtoken::DecodingKey::from_secret(b"secret"),
            &validation,
        );
        assert!(err.is_err());
    }
}
