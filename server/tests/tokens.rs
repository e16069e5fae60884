//! Tokens end to end, against the real binary.
//!
//! Revocation: the `messenger revoke` command against a real node's admin port, open
//! connections cut off (4013), revoked tokens refused at connect and at refresh, and
//! revocations kept across restarts, on a standalone node and on a cluster (2 edges, a
//! router, real NATS and the CQL database). Key rotation: a JWKS file rewritten under a
//! running node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixture;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use client::{Client, ClientError};
use fixture::*;
use protocol::{ClientFrame, ServerFrame};

const ADMIN_TOKEN: &str = "admin-token-for-tests-admin-token-for-tests";
const REVOKED: u16 = 4013;
const WAIT: Duration = Duration::from_secs(10);

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// An HS256 token with an id and an issue time.
fn token(secret: &str, user: &str, jti: &str, iat: u64) -> String {
    let claims = serde_json::json!({ "sub": user, "jti": jti, "iat": iat, "exp": now() + 3600 });
    testkit::mint_claims(secret.as_bytes(), &claims)
}

fn admin_token_file(dir: &Path) -> PathBuf {
    let path = dir.join("admin-token");
    std::fs::write(&path, format!("{ADMIN_TOKEN}\n")).unwrap();
    path
}

/// `messenger revoke --admin ADDR --admin-token-file FILE ARGS`; panics unless it succeeds.
fn revoke(admin: &str, token_file: &Path, args: &[&str]) -> serde_json::Value {
    let file = token_file.to_str().unwrap();
    let mut full = vec!["revoke", "--admin", admin, "--admin-token-file", file];
    full.extend_from_slice(args);
    let (code, out, err) = run_command(&full);
    assert_eq!(code, 0, "revoke {args:?} failed: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("revoke printed {out:?}: {e}"))
}

/// The connection is refused with 4013: at the handshake, or (an edge that has not read the
/// list yet) as soon as it has.
async fn refused(ws: &str, token: &str) {
    match Client::connect(ws, token, Json).await {
        Err(ClientError::Closed { code: Some(REVOKED), .. }) => {}
        Ok(mut c) => assert_eq!(c.closed_code(WAIT).await, Some(REVOKED), "a revoked token kept its connection"),
        Err(other) => panic!("expected close {REVOKED}, got {other}"),
    }
}

async fn still_works(c: &mut Client) {
    let pong = c.request(|req| ClientFrame::Ping { req }).await.expect("the connection still answers");
    assert!(matches!(pong, ServerFrame::Pong { .. }), "{pong:?}");
}

#[tokio::test]
async fn a_revoked_token_is_cut_off_refused_at_connect_and_refresh_and_survives_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    let token_file = admin_token_file(temp.path());
    let dir = temp.path().join("node");
    let args = ["--admin-token-file", token_file.to_str().unwrap()];
    let server = TestServer::start_in(&dir, &args);
    let secret = server.secret().to_owned();
    let (t1, t2) = (token(&secret, "alice", "t1", now() - 10), token(&secret, "alice", "t2", now() - 10));
    let mut first = Client::connect(&server.ws, &t1, Json).await.unwrap();
    let mut second = Client::connect(&server.ws, &t2, Bincode).await.unwrap();

    let answer = revoke(&server.admin, &token_file, &["--jti", "t1"]);
    assert_eq!(answer["kind"], "token");
    assert_eq!(answer["jti"], "t1");
    assert!(answer["until"].as_u64().unwrap() > now(), "{answer}");

    assert_eq!(first.closed_code(WAIT).await, Some(REVOKED), "the revoked token's connection is closed");
    still_works(&mut second).await;
    refused(&server.ws, &t1).await;
    // An in-band refresh with the revoked token is refused; the connection stays.
    second.send(&ClientFrame::Auth { token: t1.clone() }).await.unwrap();
    let reply = second.wait_for(|f| matches!(f, ServerFrame::Error { .. })).await.unwrap();
    assert_eq!(error_code(&reply), "unauthenticated");
    still_works(&mut second).await;
    let list = revoke(&server.admin, &token_file, &["--list"]);
    assert!(list.as_array().unwrap().iter().any(|r| r["jti"] == "t1"), "{list}");

    // Durable: a new process on the same data directory still refuses it.
    drop(second);
    drop(server);
    let server = TestServer::start_in(&dir, &args);
    refused(&server.ws, &t1).await;
    let mut fine = Client::connect(&server.ws, &t2, Json).await.unwrap();
    still_works(&mut fine).await;
}

#[tokio::test]
async fn revoking_a_user_ends_every_session_issued_before_the_cut() {
    let temp = tempfile::tempdir().unwrap();
    let token_file = admin_token_file(temp.path());
    let server = TestServer::start(&["--admin-token-file", token_file.to_str().unwrap()]);
    let secret = server.secret().to_owned();
    let early = now() - 60;
    let mut phone = Client::connect(&server.ws, &token(&secret, "bob", "p", early), Json).await.unwrap();
    let mut laptop = Client::connect(&server.ws, &token(&secret, "bob", "l", early), Bincode).await.unwrap();
    let mut carol = Client::connect(&server.ws, &token(&secret, "carol", "c", early), Json).await.unwrap();

    let answer = revoke(&server.admin, &token_file, &["--user", "bob"]);
    assert_eq!(answer["kind"], "user");
    let cut = answer["before"].as_u64().unwrap();
    assert!(cut >= early + 60, "the cut defaults to now: {answer}");

    assert_eq!(phone.closed_code(WAIT).await, Some(REVOKED));
    assert_eq!(laptop.closed_code(WAIT).await, Some(REVOKED));
    still_works(&mut carol).await;
    refused(&server.ws, &token(&secret, "bob", "old", early)).await;
    // A token issued at or after the cut (signed in again) works.
    let mut again = Client::connect(&server.ws, &token(&secret, "bob", "new", cut), Json).await.unwrap();
    still_works(&mut again).await;
}

#[tokio::test]
async fn the_revocation_endpoint_wants_the_admin_token_and_a_valid_body() {
    let temp = tempfile::tempdir().unwrap();
    let token_file = admin_token_file(temp.path());
    let server = TestServer::start(&["--admin-token-file", token_file.to_str().unwrap()]);
    let wrong = temp.path().join("wrong");
    std::fs::write(&wrong, "x".repeat(40)).unwrap();
    let (code, _, err) =
        run_command(&["revoke", "--admin", &server.admin, "--admin-token-file", wrong.to_str().unwrap(), "--jti", "a"]);
    assert_ne!(code, 0);
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = run_command(&[
        "revoke",
        "--admin",
        &server.admin,
        "--admin-token-file",
        token_file.to_str().unwrap(),
        "--user",
        "not a user id",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("400"), "{err}");
    // A short admin token is a configuration error (exit 64), before anything is sent.
    let short = temp.path().join("short");
    std::fs::write(&short, "short").unwrap();
    let (code, _, err) =
        run_command(&["revoke", "--admin", &server.admin, "--admin-token-file", short.to_str().unwrap(), "--list"]);
    assert_ne!(code, 0, "{err}");
    // Without --admin-token-file the endpoint does not exist.
    let open = TestServer::start(&[]);
    assert_eq!(open.admin_get("/v1/revocations").await.0, 404);
    let list = revoke(&server.admin, &token_file, &["--list"]);
    assert_eq!(list, serde_json::json!([]));
}

/// Edges and routers as separate processes: a revocation given to one router reaches the
/// connections on every edge, and a restarted router and edge still refuse the token.
#[tokio::test]
async fn a_revocation_reaches_every_edge_of_a_cluster_and_survives_restarts() {
    const SECRET: &str = "cluster-test-secret-cluster-test-secret";
    let Some(cql) = cql_node() else { return };
    let temp = tempfile::tempdir().unwrap();
    let token_file = admin_token_file(temp.path());
    let router_args = ["--admin-token-file", token_file.to_str().unwrap()];
    let nats = NatsServer::builder().cluster_auth().required();
    let keyspace = unique_keyspace("rv");
    let _guard = KeyspaceGuard::new(&cql, &keyspace);
    let mut router = TestServer::start_router_with(&nats, &cql, &keyspace, &router_args);
    let mut edges = vec![TestServer::start_edge(&nats, SECRET, &[]), TestServer::start_edge(&nats, SECRET, &[])];
    let early = now() - 60;
    let dave = |jti: &str| token(SECRET, "dave", jti, early);
    let mut on_first = Client::connect(&edges[0].ws, &dave("d1"), Json).await.unwrap();
    let mut on_second = Client::connect(&edges[1].ws, &dave("d2"), Bincode).await.unwrap();
    let mut erin = Client::connect(&edges[1].ws, &token(SECRET, "erin", "e1", early), Json).await.unwrap();
    // An edge holds no store: it takes no revocations.
    assert_eq!(edges[0].admin_get("/v1/revocations").await.0, 404);

    let started = std::time::Instant::now();
    revoke(&router.admin, &token_file, &["--user", "dave"]);
    assert_eq!(on_first.closed_code(WAIT).await, Some(REVOKED));
    assert_eq!(on_second.closed_code(WAIT).await, Some(REVOKED));
    eprintln!("revocation reached both edges in {:?}", started.elapsed());
    still_works(&mut erin).await;
    revoke(&router.admin, &token_file, &["--jti", "e1"]);
    assert_eq!(erin.closed_code(WAIT).await, Some(REVOKED));

    // Restart the router and an edge: the new edge reads the list from the new router.
    router.kill9();
    let router = TestServer::start_router_with(&nats, &cql, &keyspace, &router_args);
    edges[0].kill9();
    edges[0] = TestServer::start_edge(&nats, SECRET, &[]);
    refused(&edges[0].ws, &dave("d1")).await;
    refused(&edges[0].ws, &token(SECRET, "erin", "e1", early)).await;
    refused(&edges[1].ws, &dave("d3")).await;
    let mut fresh = Client::connect(&edges[0].ws, &token(SECRET, "erin", "e2", now()), Json).await.unwrap();
    still_works(&mut fresh).await;
    drop(edges);
    drop(router);
}

/// A fresh Ed25519 key: the signing half, and the public half as a JWK `x`.
fn ed25519_key() -> (jsonwebtoken::EncodingKey, String) {
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    (jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref()), base64url(pair.public_key().as_ref()))
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn jwks(keys: &[(&str, &str)]) -> String {
    let keys: Vec<_> = keys
        .iter()
        .map(|(kid, x)| serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig" }))
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

const ISSUER: &str = "https://id.example.com/realms/chat";
const AUDIENCE: &str = "messenger";

fn signed(key: &jsonwebtoken::EncodingKey, kid: &str, user: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    let claims = serde_json::json!({ "sub": user, "iat": now(), "exp": now() + 600, "iss": ISSUER, "aud": AUDIENCE });
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

/// A standalone node outside `--dev` (no development secret), with `extra` flags.
fn production_node(data: impl AsRef<Path>, extra: &[&str]) -> TestServer {
    let data = data.as_ref().to_str().unwrap();
    let mut args = vec!["standalone", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir", data];
    args.extend_from_slice(extra);
    TestServer::spawn(&args, None)
}

/// Whether `token` gets a session now.
async fn accepted(ws: &str, token: &str) -> bool {
    Client::connect(ws, token, Json).await.is_ok()
}

#[tokio::test]
async fn a_jwks_file_rotated_under_a_running_node_switches_keys_without_dropping_connections() {
    let temp = tempfile::tempdir().unwrap();
    let file = temp.path().join("jwks.json");
    let (old, old_x) = ed25519_key();
    let (new, new_x) = ed25519_key();
    std::fs::write(&file, jwks(&[("old", &old_x)])).unwrap();
    let data = temp.path().join("data");
    // Production mode (no --dev): a key set, an issuer and an audience.
    let server = production_node(
        &data,
        &["--jwt-jwks-file", file.to_str().unwrap(), "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE],
    );
    assert!(!data.join("dev-jwt-secret").exists(), "no development secret outside --dev");
    let mut open = Client::connect(&server.ws, &signed(&old, "old", "fay"), Json).await.unwrap();
    assert!(!accepted(&server.ws, &signed(&new, "new", "fay")).await, "the new key is not published yet");

    // Publish the new key beside the old one: picked up on SIGHUP.
    std::fs::write(&file, jwks(&[("old", &old_x), ("new", &new_x)])).unwrap();
    server.signal("HUP");
    let fresh = signed(&new, "new", "fay");
    testkit::poll_until("the new key", WAIT, async || accepted(&server.ws, &fresh).await.then_some(())).await;
    assert!(accepted(&server.ws, &signed(&old, "old", "fay")).await);

    // Retire the old key, this time without a signal: the file watch notices.
    std::fs::write(&file, jwks(&[("new", &new_x)])).unwrap();
    let stale = signed(&old, "old", "fay");
    testkit::poll_until("the old key retired", Duration::from_secs(30), async || {
        (!accepted(&server.ws, &stale).await).then_some(())
    })
    .await;
    assert!(accepted(&server.ws, &signed(&new, "new", "fay")).await);
    // The connection opened with the old key is still up.
    still_works(&mut open).await;

    // A broken file is refused and the last good set stays.
    std::fs::write(&file, "{ not json").unwrap();
    server.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(accepted(&server.ws, &signed(&new, "new", "fay")).await);
    let (_, metrics) = server.admin_get("/metrics").await;
    assert!(metrics.contains("auth_key_set_reloads_total{result=\"error\"}"), "{metrics}");
}

/// Serves `doc` at any path over HTTP/1.1, one request per connection, like an OpenID
/// provider's JWKS endpoint; counts the requests.
async fn jwks_endpoint(
    doc: std::sync::Arc<std::sync::Mutex<String>>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/realms/chat/protocol/openid-connect/certs", listener.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = doc.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    (url, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_is_fetched_at_start_and_polled_for_new_keys() {
    let (old, old_x) = ed25519_key();
    let (new, new_x) = ed25519_key();
    let doc = std::sync::Arc::new(std::sync::Mutex::new(jwks(&[("old", &old_x)])));
    let (url, hits) = jwks_endpoint(doc.clone()).await;
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let server = production_node(
        &data,
        &["--jwt-jwks-url", &url, "--jwt-jwks-refresh", "10s", "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE],
    );
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) >= 1, "fetched at start");
    let mut open = Client::connect(&server.ws, &signed(&old, "old", "gil"), Json).await.unwrap();
    // The provider rotates: the new key only.
    *doc.lock().unwrap() = jwks(&[("new", &new_x)]);
    let fresh = signed(&new, "new", "gil");
    testkit::poll_until("the provider's new key", Duration::from_secs(40), async || {
        accepted(&server.ws, &fresh).await.then_some(())
    })
    .await;
    assert!(!accepted(&server.ws, &signed(&old, "old", "gil")).await, "the retired key is gone");
    still_works(&mut open).await;
}

/// Outside --dev, tokens must carry the configured issuer and audience; `messenger token`
/// mints such tokens, each with its own `jti`.
#[tokio::test]
async fn outside_dev_mode_tokens_need_the_issuer_and_the_audience() {
    const SECRET: &str = "production-like-secret-production-like";
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().to_str().unwrap();
    let server = production_node(data, &["--jwt-secret", SECRET, "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE]);
    let mint = |extra: &[&str]| {
        let mut args = vec!["token", "--user", "hal", "--secret", SECRET];
        args.extend_from_slice(extra);
        let (code, out, err) = run_command(&args);
        assert_eq!(code, 0, "{err}");
        out.trim().to_owned()
    };
    let good = mint(&["--issuer", ISSUER, "--audience", AUDIENCE]);
    assert_ne!(good, mint(&["--issuer", ISSUER, "--audience", AUDIENCE]), "each token has its own jti");
    let mut c = Client::connect(&server.ws, &good, Json).await.unwrap();
    still_works(&mut c).await;
    for bare in [mint(&[]), mint(&["--issuer", ISSUER]), mint(&["--issuer", ISSUER, "--audience", "other"])] {
        match Client::connect(&server.ws, &bare, Json).await {
            Err(ClientError::Closed { code: Some(4001), .. }) => {}
            other => panic!("expected 4001, got {:?}", other.map(|_| "a session")),
        }
    }
}
