//! Token verification: a pure function of the token, the configured keys and the time.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use protocol::ids::valid_user_id;
use protocol::limits::MAX_TOKEN_BYTES;
use serde::Deserialize;
use thiserror::Error;

/// The claims we read. Others are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch. Required.
    pub exp: u64,
    #[serde(default)]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: Option<u64>,
    /// The token's id, for the audit trail.
    #[serde(default)]
    pub jti: Option<String>,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user: String,
    /// Expiry, seconds since the Unix epoch: the connection ends at `exp` + the leeway unless
    /// the client sends a fresh token before.
    pub exp: u64,
    /// The token's id (`jti`), when it has one.
    pub jti: Option<String>,
    /// Issued at (`iat`), seconds since the Unix epoch, when the token says.
    pub iat: Option<u64>,
}

/// Why a token was refused. The client only ever sees "unauthorized" (4001); the variant is
/// for logs and metrics.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("token too large")]
    TooLarge,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token subject is not a valid user id")]
    BadSubject,
    #[error("token lifetime exceeds the maximum")]
    TooLong,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("token rejected: {0}")]
    Invalid(String),
}

impl AuthError {
    /// Metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::TooLarge => "too_large",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadSubject => "bad_subject",
            AuthError::TooLong => "too_long",
            AuthError::IssuedInFuture => "issued_in_future",
            AuthError::Invalid(_) => "invalid",
        }
    }
}

/// One accepted key and the single algorithm it may be used with.
#[derive(Clone)]
pub struct VerificationKey {
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerificationKey({:?})", self.algorithm)
    }
}

/// Verifies tokens against an explicit allow-list of (algorithm, key) pairs: a token whose
/// header names any other algorithm (`none`, or HS256 against an RSA public key) is refused.
#[derive(Debug, Clone)]
pub struct Authenticator {
    keys: Vec<VerificationKey>,
    issuer: Option<String>,
    audience: Option<String>,
    /// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.
    leeway: u64,
    /// Longest lifetime a token may claim (`exp - iat`, or `exp - now` without `iat`).
    max_lifetime: u64,
}

impl Authenticator {
    /// Default clock-skew tolerance, seconds.
    pub const DEFAULT_LEEWAY: u64 = 30;
    /// Default longest token lifetime, seconds (24 h).
    pub const DEFAULT_MAX_LIFETIME: u64 = 24 * 3600;
}

/// Errors building an [`Authenticator`] from configuration.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("no verification key configured (give an HS256 secret or a public key)")]
    NoKeys,
    #[error("HS256 secret must be at least 32 bytes")]
    WeakSecret,
    #[error("public key: {0}")]
    BadKey(String),
}

impl Authenticator {
    pub fn new(keys: Vec<VerificationKey>, issuer: Option<String>, audience: Option<String>) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        Ok(Authenticator {
            keys,
            issuer,
            audience,
            leeway: Self::DEFAULT_LEEWAY,
            max_lifetime: Self::DEFAULT_MAX_LIFETIME,
        })
    }

    /// Sets the clock-skew tolerance and the longest token lifetime, in seconds.
    pub fn with_limits(mut self, leeway: u64, max_lifetime: u64) -> Self {
        self.leeway = leeway;
        self.max_lifetime = max_lifetime;
        self
    }

    /// Seconds of clock skew tolerated.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    /// Longest token lifetime accepted, seconds.
    pub fn max_lifetime(&self) -> u64 {
        self.max_lifetime
    }

    /// HS256 with a shared secret (development, or a trusted token service).
    pub fn hs256_key(secret: &[u8]) -> Result<VerificationKey, KeyError> {
        if secret.len() < 32 {
            return Err(KeyError::WeakSecret);
        }
        Ok(VerificationKey { algorithm: Algorithm::HS256, key: DecodingKey::from_secret(secret) })
    }

    /// A PEM public key: Ed25519 (EdDSA) or RSA (RS256), detected from the PEM.
    pub fn public_key(pem: &[u8]) -> Result<VerificationKey, KeyError> {
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            return Ok(VerificationKey { algorithm: Algorithm::EdDSA, key });
        }
        DecodingKey::from_rsa_pem(pem)
            .map(|key| VerificationKey { algorithm: Algorithm::RS256, key })
            .map_err(|e| KeyError::BadKey(e.to_string()))
    }

    /// Verifies `token` at `now` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Verified, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let Some(vk) = self.keys.iter().find(|k| k.algorithm == header.alg) else {
            return Err(AuthError::Invalid(format!("algorithm {:?} not allowed", header.alg)));
        };
        // Time checks are ours (against the `now` we were given), so the library's are off.
        let mut validation = Validation::new(vk.algorithm);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.required_spec_claims.insert("exp".into());
        validation.required_spec_claims.insert("sub".into());
        // A configured issuer or audience must be present, not merely right when present.
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Claims>(token, &vk.key, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        if claims.exp.saturating_add(self.leeway) <= now {
            return Err(AuthError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now.saturating_add(self.leeway)) {
            return Err(AuthError::NotYetValid);
        }
        if claims.iat.is_some_and(|iat| iat > now.saturating_add(self.leeway)) {
            return Err(AuthError::IssuedInFuture);
        }
        // A token that claims to live longer than the maximum is refused whole, not trimmed:
        // its issuer is misconfigured, or it was minted to outlive revocation.
        let issued = claims.iat.unwrap_or(now).min(now);
        if claims.exp.saturating_sub(issued) > self.max_lifetime.saturating_add(self.leeway) {
            return Err(AuthError::TooLong);
        }
        if !valid_user_id(&claims.sub) {
            return Err(AuthError::BadSubject);
        }
        Ok(Verified { user: claims.sub, exp: claims.exp, jti: claims.jti, iat: claims.iat })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde::Serialize;

    #[derive(Serialize)]
    struct C<'a> {
        sub: &'a str,
        exp: u64,
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn token(alg: Algorithm, sub: &str, exp: u64) -> String {
        encode(&Header::new(alg), &C { sub, exp }, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn auth() -> Authenticator {
        Authenticator::new(vec![Authenticator::hs256_key(SECRET).unwrap()], None, None).unwrap()
    }

    #[test]
    fn valid_token() {
        let v = auth().verify(&token(Algorithm::HS256, "alice", 1000), 500).unwrap();
        assert_eq!(v, Verified { user: "alice".into(), exp: 1000, jti: None, iat: None });
    }

    #[test]
    fn lifetimes_are_capped_and_iat_honoured() {
        #[derive(Serialize)]
        struct Issued<'a> {
            sub: &'a str,
            iat: u64,
            exp: u64,
        }
        let issued = |iat, exp| {
            encode(&Header::new(Algorithm::HS256), &Issued { sub: "a", iat, exp }, &EncodingKey::from_secret(SECRET))
                .unwrap()
        };
        let a = auth().with_limits(0, 3600);
        assert!(a.verify(&issued(1000, 4600), 1000).is_ok(), "exactly the maximum");
        assert_eq!(a.verify(&issued(1000, 4601), 1000), Err(AuthError::TooLong));
        // exp = 2^64-1: the "never expires" token is refused.
        assert_eq!(a.verify(&token(Algorithm::HS256, "a", u64::MAX), 1000), Err(AuthError::TooLong));
        // Without iat the lifetime counts from now.
        assert!(a.verify(&token(Algorithm::HS256, "a", 4600), 1000).is_ok());
        assert_eq!(a.verify(&token(Algorithm::HS256, "a", 4601), 1000), Err(AuthError::TooLong));
        assert_eq!(a.verify(&issued(1001, 2000), 1000), Err(AuthError::IssuedInFuture));
        let skew = auth().with_limits(30, 3600);
        assert!(skew.verify(&issued(1020, 2000), 1000).is_ok(), "within the leeway");
        assert_eq!(skew.leeway(), 30);
    }

    #[test]
    fn expiry_is_enforced_with_leeway() {
        assert_eq!(auth().verify(&token(Algorithm::HS256, "alice", 1000), 1031), Err(AuthError::Expired));
        assert!(auth().verify(&token(Algorithm::HS256, "alice", 1000), 1020).is_ok());
    }

    #[test]
    fn algorithm_not_in_allow_list() {
        assert!(matches!(auth().verify(&token(Algorithm::HS384, "alice", 1000), 0), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn wrong_secret_and_garbage() {
        let other = encode(
            &Header::new(Algorithm::HS256),
            &C { sub: "alice", exp: 1000 },
            &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        )
        .unwrap();
        assert!(matches!(auth().verify(&other, 0), Err(AuthError::Invalid(_))));
        assert!(matches!(auth().verify("not.a.jwt", 0), Err(AuthError::Invalid(_))));
        assert_eq!(auth().verify(&"x".repeat(MAX_TOKEN_BYTES + 1), 0), Err(AuthError::TooLarge));
    }

    #[test]
    fn unsafe_subjects_are_refused() {
        assert_eq!(auth().verify(&token(Algorithm::HS256, "a b", 1000), 0), Err(AuthError::BadSubject));
    }

    /// A throwaway Ed25519 key pair, generated for this test with `openssl genpkey`.
    const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIF2F7pyBYHBWyMXLIVwAZYYIhqWcrRgwSuWowDgEB1XR\n-----END PRIVATE KEY-----\n";
    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEALLnD4sBd++Wt5szvgwxixU69lavEWq50cRpJA9e5e1g=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn eddsa_public_key_verification() {
        let key = Authenticator::public_key(ED_PUBLIC.as_bytes()).unwrap();
        assert_eq!(key.algorithm, Algorithm::EdDSA);
        let auth = Authenticator::new(vec![key], Some("issuer".into()), Some("chat".into())).unwrap();
        #[derive(Serialize)]
        struct Full<'a> {
            sub: &'a str,
            exp: u64,
            iss: &'a str,
            aud: &'a str,
        }
        let signing = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
        let good = encode(
            &Header::new(Algorithm::EdDSA),
            &Full { sub: "bob", exp: 100, iss: "issuer", aud: "chat" },
            &signing,
        )
        .unwrap();
        assert_eq!(auth.verify(&good, 50).unwrap().user, "bob");
        let wrong_aud =
            encode(&Header::new(Algorithm::EdDSA), &Full { sub: "bob", exp: 100, iss: "issuer", aud: "x" }, &signing)
                .unwrap();
        assert!(auth.verify(&wrong_aud, 50).is_err());
        #[derive(Serialize)]
        struct Bare<'a> {
            sub: &'a str,
            exp: u64,
        }
        let no_claims = encode(&Header::new(Algorithm::EdDSA), &Bare { sub: "bob", exp: 100 }, &signing).unwrap();
        assert!(auth.verify(&no_claims, 50).is_err(), "configured iss/aud are required");
        // An HS256 token "signed" with the public key as a secret (algorithm confusion) fails.
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &Full { sub: "bob", exp: 100, iss: "issuer", aud: "chat" },
            &EncodingKey::from_secret(ED_PUBLIC.as_bytes()),
        )
        .unwrap();
        assert!(matches!(auth.verify(&confused, 50), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn weak_secret_is_refused() {
        assert!(Authenticator::hs256_key(b"short").is_err());
    }
}
