//! The CQL store's schema: versioned migrations, the keyspace's recorded bucket size, the
//! prepared statements, and the TLS settings of the session.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::{CqlConfig, corrupt, unavailable};
use crate::StoreError;

/// Versioned schema migrations. Each statement is idempotent (`IF NOT EXISTS`), so a
/// migration interrupted half way is simply run again; `{ks}` is the keyspace.
const MIGRATIONS: &[(i32, &str, &[&str])] = &[
    (
        1,
        "chats, members, events, idempotency, reads, direct chats, edits",
        &[
            "CREATE TABLE IF NOT EXISTS {ks}.chats (chat bigint PRIMARY KEY, kind tinyint, title text, creator text, created_ts bigint, last_seq bigint)",
            "CREATE TABLE IF NOT EXISTS {ks}.members (chat bigint, user text, role tinyint, PRIMARY KEY (chat, user))",
            "CREATE TABLE IF NOT EXISTS {ks}.user_chats (user text, chat bigint, PRIMARY KEY (user, chat))",
            "CREATE TABLE IF NOT EXISTS {ks}.events (chat bigint, bucket bigint, seq bigint, body blob, PRIMARY KEY ((chat, bucket), seq)) WITH CLUSTERING ORDER BY (seq DESC)",
            "CREATE TABLE IF NOT EXISTS {ks}.idempotency (chat bigint, sender text, client_msg_id text, seq bigint, ts bigint, PRIMARY KEY ((chat, sender, client_msg_id)))",
            "CREATE TABLE IF NOT EXISTS {ks}.reads (chat bigint, user text, seq bigint, PRIMARY KEY (chat, user))",
            "CREATE TABLE IF NOT EXISTS {ks}.direct_chats (pair text PRIMARY KEY, chat bigint)",
            "CREATE TABLE IF NOT EXISTS {ks}.edits (chat bigint, target bigint, seq bigint, PRIMARY KEY ((chat, target), seq))",
            "CREATE TABLE IF NOT EXISTS {ks}.settings (name text PRIMARY KEY, value bigint)",
        ],
    ),
    (
        2,
        "token revocations (each row expires by TTL when no token it matches can be valid)",
        &["CREATE TABLE IF NOT EXISTS {ks}.revocations (kind text, id text, body blob, PRIMARY KEY ((kind, id)))"],
    ),
];

pub(super) struct Statements {
    pub(super) insert_chat_lwt: PreparedStatement,
    pub(super) select_chat: PreparedStatement,
    pub(super) update_head: PreparedStatement,
    pub(super) insert_member: PreparedStatement,
    pub(super) delete_member: PreparedStatement,
    pub(super) select_role: PreparedStatement,
    pub(super) insert_user_chat: PreparedStatement,
    pub(super) delete_user_chat: PreparedStatement,
    pub(super) select_user_chats: PreparedStatement,
    pub(super) insert_event_lwt: PreparedStatement,
    pub(super) insert_event: PreparedStatement,
    pub(super) select_event: PreparedStatement,
    pub(super) select_latest: PreparedStatement,
    pub(super) select_after: PreparedStatement,
    pub(super) select_before: PreparedStatement,
    pub(super) insert_idem: PreparedStatement,
    pub(super) select_idem: PreparedStatement,
    pub(super) upsert_read: PreparedStatement,
    pub(super) select_read: PreparedStatement,
    pub(super) delete_read: PreparedStatement,
    pub(super) insert_direct_lwt: PreparedStatement,
    pub(super) select_direct: PreparedStatement,
    pub(super) insert_edit: PreparedStatement,
    pub(super) select_edits: PreparedStatement,
    pub(super) insert_revocation: PreparedStatement,
    pub(super) select_revocation: PreparedStatement,
    pub(super) select_revocations_first: PreparedStatement,
    pub(super) select_revocations_after: PreparedStatement,
}

/// Whether `ks` is a keyspace name the store accepts: 1-48 characters of `[a-z0-9_]`.
pub fn valid_keyspace(ks: &str) -> bool {
    !ks.is_empty() && ks.len() <= 48 && ks.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The session's TLS settings: the nodes verified against the CA file `ca`, and, with
/// `identity` (certificate chain and key files, PEM), a client certificate for nodes that
/// require one (`require_client_auth`). Built on ring explicitly, so it never depends on a
/// process-wide default provider.
pub(super) fn tls_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Arc<rustls::ClientConfig>, StoreError> {
    let bad = |path: &Path, e: &dyn std::fmt::Display| StoreError::Unavailable(format!("TLS file {path:?}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(ca, &e))? {
        roots.add(cert.map_err(|e| bad(ca, &e))?).map_err(|e| bad(ca, &e))?;
    }
    if roots.is_empty() {
        return Err(bad(ca, &"no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(unavailable)?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| bad(cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(cert, &e))?;
            if chain.is_empty() {
                return Err(bad(cert, &"no certificate"));
            }
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| bad(cert, &e))?
        }
    };
    Ok(Arc::new(config))
}

/// The keyspace's bucket size: the one recorded at creation, or `proposed` for a new keyspace.
pub(super) async fn bucket_size(session: &Session, ks: &str, proposed: u64) -> Result<u64, StoreError> {
    session
        .query_unpaged(
            format!("INSERT INTO {ks}.settings (name, value) VALUES ('events_per_bucket', ?) IF NOT EXISTS"),
            (proposed as i64,),
        )
        .await
        .map_err(unavailable)?;
    let result = session
        .query_unpaged(format!("SELECT value FROM {ks}.settings WHERE name = 'events_per_bucket'"), ())
        .await
        .map_err(unavailable)?;
    let rows = result.into_rows_result().map_err(unavailable)?;
    let (value,): (i64,) = rows.first_row().map_err(corrupt)?;
    if value <= 0 {
        return Err(StoreError::Corrupt(format!("events_per_bucket {value}")));
    }
    Ok(value as u64)
}

pub(super) async fn migrate(session: &Session, ks: &str) -> Result<(), StoreError> {
    session
        .query_unpaged(
            format!("CREATE TABLE IF NOT EXISTS {ks}.schema_migrations (version int PRIMARY KEY, description text)"),
            (),
        )
        .await
        .map_err(unavailable)?;
    let result =
        session.query_unpaged(format!("SELECT version FROM {ks}.schema_migrations"), ()).await.map_err(unavailable)?;
    let rows = result.into_rows_result().map_err(unavailable)?;
    let applied: Vec<i32> =
        rows.rows::<(i32,)>().map_err(corrupt)?.map(|r| r.map(|(v,)| v)).collect::<Result<_, _>>().map_err(corrupt)?;
    for (version, description, statements) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tracing::info!(version, description, "applying schema migration");
        for stmt in *statements {
            session.query_unpaged(stmt.replace("{ks}", ks), ()).await.map_err(unavailable)?;
        }
        session
            .query_unpaged(
                format!("INSERT INTO {ks}.schema_migrations (version, description) VALUES (?, ?)"),
                (*version, *description),
            )
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

impl Statements {
    pub(super) async fn prepare(session: &Session, ks: &str, config: &CqlConfig) -> Result<Self, StoreError> {
        let prep = |cql: String| async move {
            let mut p = session.prepare(cql).await.map_err(unavailable)?;
            p.set_consistency(config.consistency);
            p.set_serial_consistency(Some(config.serial_consistency));
            Ok::<_, StoreError>(p)
        };
        Ok(Statements {
            insert_chat_lwt: prep(format!("INSERT INTO {ks}.chats (chat, kind, title, creator, created_ts, last_seq) VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS")).await?,
            select_chat: prep(format!("SELECT kind, title, creator, created_ts, last_seq FROM {ks}.chats WHERE chat = ?")).await?,
            update_head: prep(format!("UPDATE {ks}.chats SET last_seq = ? WHERE chat = ?")).await?,
            insert_member: prep(format!("INSERT INTO {ks}.members (chat, user, role) VALUES (?, ?, ?)")).await?,
            delete_member: prep(format!("DELETE FROM {ks}.members WHERE chat = ? AND user = ?")).await?,
            select_role: prep(format!("SELECT role FROM {ks}.members WHERE chat = ? AND user = ?")).await?,
            insert_user_chat: prep(format!("INSERT INTO {ks}.user_chats (user, chat) VALUES (?, ?)")).await?,
            delete_user_chat: prep(format!("DELETE FROM {ks}.user_chats WHERE user = ? AND chat = ?")).await?,
            select_user_chats: prep(format!("SELECT chat FROM {ks}.user_chats WHERE user = ?")).await?,
            insert_event_lwt: prep(format!("INSERT INTO {ks}.events (chat, bucket, seq, body) VALUES (?, ?, ?, ?) IF NOT EXISTS")).await?,
            insert_event: prep(format!("INSERT INTO {ks}.events (chat, bucket, seq, body) VALUES (?, ?, ?, ?)")).await?,
            select_event: prep(format!("SELECT body FROM {ks}.events WHERE chat = ? AND bucket = ? AND seq = ?")).await?,
            select_latest: prep(format!("SELECT seq FROM {ks}.events WHERE chat = ? AND bucket = ? LIMIT 1")).await?,
            select_after: prep(format!("SELECT body FROM {ks}.events WHERE chat = ? AND bucket = ? AND seq > ? ORDER BY seq ASC LIMIT ?")).await?,
            select_before: prep(format!("SELECT body FROM {ks}.events WHERE chat = ? AND bucket = ? AND seq < ? ORDER BY seq DESC LIMIT ?")).await?,
            insert_idem: prep(format!("INSERT INTO {ks}.idempotency (chat, sender, client_msg_id, seq, ts) VALUES (?, ?, ?, ?, ?)")).await?,
            select_idem: prep(format!("SELECT seq, ts FROM {ks}.idempotency WHERE chat = ? AND sender = ? AND client_msg_id = ?")).await?,
            upsert_read: prep(format!("UPDATE {ks}.reads SET seq = ? WHERE chat = ? AND user = ?")).await?,
            select_read: prep(format!("SELECT seq FROM {ks}.reads WHERE chat = ? AND user = ?")).await?,
            delete_read: prep(format!("DELETE FROM {ks}.reads WHERE chat = ? AND user = ?")).await?,
            insert_direct_lwt: prep(format!("INSERT INTO {ks}.direct_chats (pair, chat) VALUES (?, ?) IF NOT EXISTS")).await?,
            select_direct: prep(format!("SELECT chat FROM {ks}.direct_chats WHERE pair = ?")).await?,
            insert_edit: prep(format!("INSERT INTO {ks}.edits (chat, target, seq) VALUES (?, ?, ?)")).await?,
            select_edits: prep(format!("SELECT seq FROM {ks}.edits WHERE chat = ? AND target = ?")).await?,
            insert_revocation: prep(format!("INSERT INTO {ks}.revocations (kind, id, body) VALUES (?, ?, ?) USING TTL ?")).await?,
            select_revocation: prep(format!("SELECT body FROM {ks}.revocations WHERE kind = ? AND id = ?")).await?,
            select_revocations_first: prep(format!("SELECT body FROM {ks}.revocations LIMIT ?")).await?,
            select_revocations_after: prep(format!("SELECT body FROM {ks}.revocations WHERE token(kind, id) > token(?, ?) LIMIT ?")).await?,
        })
    }
}
