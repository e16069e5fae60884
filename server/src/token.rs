//! Development tokens: the standalone node's secret and minting with it.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde::Serialize;

/// File in the data directory holding the development HS256 secret.
pub const DEV_SECRET_FILE: &str = "dev-jwt-secret";

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    /// Random, so that the token can be revoked alone.
    jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// What a minted token says besides its user.
#[derive(Debug, Clone, Copy, Default)]
pub struct Audience<'a> {
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
}

/// Mints an HS256 token for `user`, valid for `ttl`, with a random `jti`.
pub fn mint(secret: &[u8], user: &str, ttl: Duration, to: Audience<'_>) -> anyhow::Result<String> {
    let iat = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let jti = (0..16).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    let claims = Claims { sub: user, iat, exp: iat + ttl.as_secs(), jti, iss: to.issuer, aud: to.audience };
    Ok(encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))?)
}

/// Reads the development secret from `data_dir`, creating it (random, mode 0600) if absent.
pub fn dev_secret(data_dir: &Path, create: bool) -> anyhow::Result<String> {
    let path = data_dir.join(DEV_SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(s.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            persistence::embedded::create_private_dir(data_dir)
                .with_context(|| format!("create {}", data_dir.display()))?;
            let secret: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
            write_private(&path, &secret).with_context(|| format!("write {}", path.display()))?;
            Ok(secret)
        }
        Err(e) => Err(e)
            .with_context(|| format!("read {} (start the standalone node once, or pass --secret)", path.display())),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}
