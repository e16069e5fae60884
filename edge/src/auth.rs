//! Token verification: a pure function of the token, the configured keys and the time.

use std::sync::{Arc, RwLock};

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
    /// The key id (`kid`) tokens name it by; keys from a JWKS always have one.
    pub kid: Option<String>,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerificationKey({:?}, kid {:?})", self.algorithm, self.kid)
    }
}

/// Verifies tokens against an explicit allow-list of (algorithm, key) pairs: a token whose
/// header names any other algorithm (`none`, or HS256 against an RSA public key) is refused.
///
/// Two kinds of keys: static ones from the command line (chosen by the token's `alg`), and
/// a key set (JWKS, chosen by the token's `kid`, and its `alg` must be the key's) that can be
/// replaced while the node runs ([`Authenticator::set_key_set`]); clones share it.
#[derive(Debug, Clone)]
pub struct Authenticator {
    keys: Vec<VerificationKey>,
    key_set: Arc<RwLock<Arc<Vec<VerificationKey>>>>,
    /// Woken when a token names a `kid` the set lacks (a provider's new key, or garbage).
    key_missed: Arc<tokio::sync::Notify>,
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
    #[error("no verification key configured (give an HS256 secret, a public key or a JWKS)")]
    NoKeys,
    #[error("JWKS: {0}")]
    BadKeySet(String),
    #[error("HS256 secret must be at least 32 bytes")]
    WeakSecret,
    #[error("public key: {0}")]
    BadKey(String),
}

impl Authenticator {
    pub fn new(keys: Vec<VerificationKey>, issuer: Option<String>, audience: Option<String>) -> Result<Self, KeyError> {
        Self::with_key_set(keys, Vec::new(), issuer, audience)
    }

    /// With a key set (JWKS) besides the static keys; at least one key in all.
    pub fn with_key_set(
        keys: Vec<VerificationKey>,
        key_set: Vec<VerificationKey>,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Result<Self, KeyError> {
        if keys.is_empty() && key_set.is_empty() {
            return Err(KeyError::NoKeys);
        }
        Ok(Authenticator {
            keys,
            key_set: Arc::new(RwLock::new(Arc::new(key_set))),
            key_missed: Arc::new(tokio::sync::Notify::new()),
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

    /// Replaces the key set (a JWKS reloaded): tokens verified from now on use `keys`;
    /// connections already open are not affected.
    pub fn set_key_set(&self, keys: Vec<VerificationKey>) {
        *self.key_set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }

    /// Resolves when a token named a `kid` the key set lacks.
    pub async fn key_missed(&self) {
        self.key_missed.notified().await
    }

    /// The key ids of the current key set.
    pub fn key_ids(&self) -> Vec<String> {
        self.key_set.read().unwrap_or_else(|p| p.into_inner()).iter().filter_map(|k| k.kid.clone()).collect()
    }

    /// HS256 with a shared secret (development, or a trusted token service).
    pub fn hs256_key(secret: &[u8]) -> Result<VerificationKey, KeyError> {
        if secret.len() < 32 {
            return Err(KeyError::WeakSecret);
        }
        Ok(VerificationKey { algorithm: Algorithm::HS256, key: DecodingKey::from_secret(secret), kid: None })
    }

    /// A PEM public key: Ed25519 (EdDSA) or RSA (RS256), detected from the PEM.
    pub fn public_key(pem: &[u8]) -> Result<VerificationKey, KeyError> {
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            return Ok(VerificationKey { algorithm: Algorithm::EdDSA, key, kid: None });
        }
        DecodingKey::from_rsa_pem(pem)
            .map(|key| VerificationKey { algorithm: Algorithm::RS256, key, kid: None })
            .map_err(|e| KeyError::BadKey(e.to_string()))
    }

    /// The signing keys of a JWKS document (RFC 7517), as an OpenID provider publishes them.
    /// Keys marked `"use":"enc"` and of algorithms we do not verify are skipped; symmetric
    /// (`oct`) keys are refused outright, since a key set is public. Each key needs a `kid`.
    pub fn key_set(json: &[u8]) -> Result<Vec<VerificationKey>, KeyError> {
        use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| KeyError::BadKeySet(e.to_string()))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let Some(kid) = jwk.common.key_id.clone() else {
                return Err(KeyError::BadKeySet("a key without \"kid\"".into()));
            };
            let declared = jwk.common.key_algorithm;
            let algorithm = match (&jwk.algorithm, declared) {
                (AlgorithmParameters::OctetKey(_), _) => {
                    return Err(KeyError::BadKeySet(format!("key {kid:?} is symmetric; a key set holds public keys")));
                }
                (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
                (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS384)) => Algorithm::RS384,
                (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS512)) => Algorithm::RS512,
                (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::PS256)) => Algorithm::PS256,
                (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
                    if p.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES384))
                    if p.curve == EllipticCurve::P384 =>
                {
                    Algorithm::ES384
                }
                (AlgorithmParameters::OctetKeyPair(p), None | Some(KeyAlgorithm::EdDSA))
                    if p.curve == EllipticCurve::Ed25519 =>
                {
                    Algorithm::EdDSA
                }
                _ => {
                    tracing::warn!(kid, "JWKS key of an algorithm we do not verify: skipped");
                    continue;
                }
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| KeyError::BadKeySet(format!("key {kid:?}: {e}")))?;
            keys.push(VerificationKey { algorithm, key, kid: Some(kid) });
        }
        if keys.is_empty() {
            return Err(KeyError::BadKeySet("no signing key we can verify with".into()));
        }
        Ok(keys)
    }

    /// Verifies `token` at `now` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Verified, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        // A `kid` names a key of the set, whose algorithm must be the token's; otherwise (or
        // without a `kid`) the static key of the token's algorithm.
        let key_set = self.key_set.read().unwrap_or_else(|p| p.into_inner()).clone();
        let by_kid = header
            .kid
            .as_deref()
            .and_then(|kid| key_set.iter().find(|k| k.kid.as_deref() == Some(kid) && k.algorithm == header.alg));
        if by_kid.is_none() && header.kid.is_some() && !key_set.is_empty() {
            self.key_missed.notify_one();
        }
        let Some(vk) = by_kid.or_else(|| self.keys.iter().find(|k| k.algorithm == header.alg)) else {
            return Err(AuthError::Invalid(format!("no key for algorithm {:?} and kid {:?}", header.alg, header.kid)));
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

    const ED_JWK_X: &str = "LLnD4sBd--Wt5szvgwxixU69lavEWq50cRpJA9e5e1g";

    fn signed_with_kid(kid: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = kid.map(str::to_owned);
        let signing = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
        encode(&header, &C { sub: "dana", exp: 100 }, &signing).unwrap()
    }

    #[test]
    fn key_sets_choose_by_kid_and_can_be_replaced() {
        let jwks = |kid: &str| {
            format!(
                r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{ED_JWK_X}","kid":"{kid}","use":"sig"}},
                {{"kty":"RSA","use":"enc","kid":"enc-1","n":"AQAB","e":"AQAB","alg":"RSA-OAEP"}}]}}"#
            )
        };
        let set = Authenticator::key_set(jwks("2026-11").as_bytes()).unwrap();
        assert_eq!(set.len(), 1, "the encryption key is skipped");
        assert_eq!((set[0].algorithm, set[0].kid.as_deref()), (Algorithm::EdDSA, Some("2026-11")));
        let auth = Authenticator::with_key_set(vec![], set, None, None).unwrap();
        assert_eq!(auth.verify(&signed_with_kid(Some("2026-11")), 50).unwrap().user, "dana");
        assert!(auth.verify(&signed_with_kid(Some("other")), 50).is_err(), "unknown kid");
        assert!(auth.verify(&signed_with_kid(None), 50).is_err(), "a key set key needs the kid");
        // Rotation: the same key under a new kid, the old one gone; clones see it.
        let shared = auth.clone();
        auth.set_key_set(Authenticator::key_set(jwks("2026-12").as_bytes()).unwrap());
        assert_eq!(shared.key_ids(), vec!["2026-12".to_owned()]);
        assert!(shared.verify(&signed_with_kid(Some("2026-11")), 50).is_err());
        assert!(shared.verify(&signed_with_kid(Some("2026-12")), 50).is_ok());
    }

    #[test]
    fn key_sets_refuse_secrets_and_keys_without_ids() {
        let oct = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"s"}]}"#;
        assert!(matches!(Authenticator::key_set(oct.as_bytes()), Err(KeyError::BadKeySet(_))));
        let no_kid = format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{ED_JWK_X}"}}]}}"#);
        assert!(matches!(Authenticator::key_set(no_kid.as_bytes()), Err(KeyError::BadKeySet(_))));
        assert!(Authenticator::key_set(b"{\"keys\":[]}").is_err());
        assert!(Authenticator::key_set(b"not json").is_err());
    }

    #[test]
    fn weak_secret_is_refused() {
        assert!(Authenticator::hs256_key(b"short").is_err());
    }
}
