//! The test CQL database (Apache Cassandra 5 in tests, ScyllaDB in production) and throwaway
//! keyspaces on it.

use std::time::Duration;

/// The environment variable naming the test database, `host:port`. `scripts/test.sh` starts
/// one (`scripts/cassandra/cassandra.sh start --port 19042`) and sets it.
pub const CQL_ENV: &str = "MESSENGER_TEST_CQL";

/// The test CQL database from `MESSENGER_TEST_CQL`, or `None` (loudly) when it is unset
/// outside CI. In CI its absence panics: the CQL tests must run there.
pub fn cql_node() -> Option<String> {
    match std::env::var(CQL_ENV) {
        Ok(node) if !node.trim().is_empty() => Some(node.trim().to_owned()),
        _ => crate::skip(&format!(
            "no CQL database ({CQL_ENV} is unset; start one with scripts/cassandra/cassandra.sh start \
             --port 19042 and set {CQL_ENV}=127.0.0.1:19042)"
        )),
    }
}

/// The environment variable naming the directory of the test database's TLS files (`ca.pem`,
/// `client.pem`, `client-key.pem`): `scripts/cassandra/cassandra.sh` makes them and serves TLS
/// with client certificates on the same port; `scripts/test.sh` sets it
/// (`cassandra.sh tls-dir --port 19042`).
pub const CQL_TLS_ENV: &str = "MESSENGER_TEST_CQL_TLS";

/// The test database and the directory of its TLS files, or `None` (loudly) outside CI when
/// either is not configured; in CI that panics.
pub fn cql_tls() -> Option<(String, std::path::PathBuf)> {
    let node = cql_node()?;
    match std::env::var_os(CQL_TLS_ENV) {
        Some(dir) if std::path::Path::new(&dir).join("ca.pem").is_file() => Some((node, dir.into())),
        _ => crate::skip(&format!(
            "no TLS files of the CQL database ({CQL_TLS_ENV} is unset or has no ca.pem; with a database \
             started by scripts/cassandra/cassandra.sh set {CQL_TLS_ENV}=$(scripts/cassandra/cassandra.sh tls-dir \
             --port 19042))"
        )),
    }
}

/// A keyspace name no other test (in this or another process) uses: `PREFIX_` and 16 random
/// hex digits. The prefix (letters, digits, `_`; at most 31 characters) tells which suite
/// left a keyspace behind.
pub fn unique_keyspace(prefix: &str) -> String {
    assert!(
        !prefix.is_empty()
            && prefix.len() <= 31
            && prefix.starts_with(|c: char| c.is_ascii_alphabetic())
            && prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "keyspace prefix {prefix:?}: a letter, then letters, digits or _, at most 31 in all"
    );
    format!("{prefix}_{:016x}", rand::random::<u64>())
}

/// Drops its keyspace when dropped, whether the test passed or panicked: a test database that
/// accumulates keyspaces (ten tables each) runs out of heap.
///
/// The drop runs on its own thread and runtime, since guards are dropped inside the test's
/// runtime; it waits for the database (at most a minute) and reports a failure on stderr.
/// Declare the guard before whatever uses the keyspace, so that it drops last.
#[derive(Debug)]
pub struct KeyspaceGuard {
    pub node: String,
    pub keyspace: String,
}

impl KeyspaceGuard {
    /// Guards `keyspace` on `node` (created by the code under test, or not at all).
    pub fn new(node: &str, keyspace: &str) -> KeyspaceGuard {
        KeyspaceGuard { node: node.to_owned(), keyspace: keyspace.to_owned() }
    }

    /// Guards a fresh [`unique_keyspace`] on `node`.
    pub fn unique(node: &str, prefix: &str) -> KeyspaceGuard {
        KeyspaceGuard::new(node, &unique_keyspace(prefix))
    }

    /// A fresh keyspace on the test database ([`cql_node`]), or `None` when there is none
    /// outside CI.
    pub fn on_test_database(prefix: &str) -> Option<KeyspaceGuard> {
        Some(KeyspaceGuard::unique(&cql_node()?, prefix))
    }
}

impl Drop for KeyspaceGuard {
    fn drop(&mut self) {
        let (node, keyspace) = (self.node.clone(), self.keyspace.clone());
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(60), async {
                    let session = scylla::client::session_builder::SessionBuilder::new()
                        .known_node(&node)
                        .build()
                        .await
                        .map_err(|e| format!("connect to {node}: {e}"))?;
                    session
                        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
                .await
                .map_err(|_| "timed out after 60 s".to_owned())?
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("testkit: could not drop keyspace {} on {}: {e}", self.keyspace, self.node),
            Err(_) => eprintln!("testkit: dropping keyspace {} on {} panicked", self.keyspace, self.node),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_names_are_unique_valid_identifiers() {
        let a = unique_keyspace("t");
        let b = unique_keyspace("t");
        assert_ne!(a, b);
        assert!(a.len() <= 48 && a.starts_with("t_"));
    }

    /// Against the test database when there is one: the guard's drop removes the keyspace, from
    /// inside a runtime as tests drop it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_guard_drops_its_keyspace() {
        let Some(guard) = KeyspaceGuard::on_test_database("testkit") else { return };
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_node(&guard.node)
            .build()
            .await
            .expect("connect to the test database");
        let ks = guard.keyspace.clone();
        session
            .query_unpaged(
                format!(
                    "CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
                ),
                (),
            )
            .await
            .expect("create keyspace");
        let exists = async || {
            let rows = session
                .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?", (&ks,))
                .await
                .expect("query keyspaces")
                .into_rows_result()
                .expect("rows");
            rows.rows_num() == 1
        };
        assert!(exists().await);
        drop(guard);
        assert!(!exists().await, "keyspace {ks} still there");
    }

    #[test]
    #[should_panic(expected = "keyspace prefix")]
    fn a_bad_prefix_is_refused() {
        unique_keyspace("no-dashes");
    }
}
