//! The CQL store over TLS with a client certificate, against the test database: it serves
//! plain and TLS clients on one port and requires a certificate its CA signed from the latter
//! (`require_client_auth`; see `scripts/cassandra/cassandra.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use persistence::{CqlConfig, CqlStore, NewChat, Store};
use protocol::{ChatKind, Role};
use testkit::{KeyspaceGuard, TestCa, cql_tls, unique_keyspace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_with_a_client_certificate_and_not_without() {
    let Some((node, dir)) = cql_tls() else { return };
    let guard = KeyspaceGuard::new(&node, &unique_keyspace("tls"));
    let mut config = CqlConfig::local(node, guard.keyspace.clone());
    config.connect_timeout = Duration::from_secs(5);
    config.tls_ca = Some(dir.join("ca.pem"));
    config.tls_cert = Some(dir.join("client.pem"));
    config.tls_key = Some(dir.join("client-key.pem"));

    let store = CqlStore::connect(&config).await.unwrap();
    let chat = NewChat {
        id: 7,
        kind: ChatKind::Group,
        title: "over TLS".into(),
        creator: "alice".into(),
        members: vec![("alice".into(), Role::Admin)],
        ts: 1,
    };
    store.create_chat(chat).await.unwrap();
    assert_eq!(store.chat(7).await.unwrap().unwrap().title, "over TLS");
    drop(store);

    // TLS without a client certificate: the node refuses the session.
    let res = CqlStore::connect(&CqlConfig { tls_cert: None, tls_key: None, ..config.clone() }).await;
    assert!(res.is_err(), "connected without a client certificate");
    // A client certificate the node's CA did not sign: refused too.
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = TestCa::new("not the node's CA").client("intruder").write(files.path(), "intruder");
    let res = CqlStore::connect(&CqlConfig { tls_cert: Some(cert), tls_key: Some(key), ..config.clone() }).await;
    assert!(res.is_err(), "connected with a foreign client certificate");
    // A node certificate our CA did not sign: we refuse the node.
    let other_ca = TestCa::new("not the node's CA").write(files.path(), "other-ca.pem");
    let res = CqlStore::connect(&CqlConfig { tls_ca: Some(other_ca), ..config.clone() }).await;
    assert!(res.is_err(), "trusted a node certificate from an unknown CA");
}
