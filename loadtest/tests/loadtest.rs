//! The `loadtest` binary against a real standalone node (in this process, on free ports): each
//! scenario runs with several worker processes and must pass its own correctness check with
//! exact delivery counts; a lossy proxy in front of the node must make it fail; SLOs and bad
//! command lines must set the documented exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use edge::{Authenticator, EdgeConfig};
use futures_util::{SinkExt, StreamExt};
use protocol::codec::decode_server;
use protocol::{Encoding, EventBody, ServerFrame};
use router::RouterConfig;
use serde_json::Value;
use server::standalone::{self, StandaloneConfig};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "loadtest-secret-loadtest-secret-loadtest";

/// A standalone node on free ports in a temporary directory; stops when dropped.
struct Node {
    ws: String,
    admin: String,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut edge = EdgeConfig::default();
    // The load generator sends far faster per connection than a person.
    edge.flood.requests_per_second = 100_000;
    edge.flood.request_burst = 100_000;
    let auth = Authenticator::new(vec![Authenticator::hs256_key(SECRET.as_bytes()).unwrap()], None, None).unwrap();
    let config = StandaloneConfig {
        data_dir: dir.path().to_owned(),
        edge,
        router: RouterConfig::default(),
        store_max_batch: 256,
        cql: None,
        auth,
        shutdown_deadline: Duration::from_secs(5),
        audit: std::sync::Arc::new(audit::AuditLog::off()),
        admin_token: None,
        revocation_retention: router::Revoker::DEFAULT_RETENTION,
        tls: None,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ws, admin_addr) = (listener.local_addr().unwrap().to_string(), admin.local_addr().unwrap().to_string());
    // The node shares this test process: its memory is ours.
    let render: edge::admin::Render = Arc::new(|| {
        let rss = server::telemetry::resident_bytes().unwrap_or(0.0);
        let cpu = server::telemetry::cpu_seconds().unwrap_or(0.0);
        format!("process_resident_memory_bytes {rss}\nprocess_cpu_seconds_total {cpu}\n")
    });
    let stop = CancellationToken::new();
    tokio::spawn(standalone::run(config, listener, admin, render, stop.clone()));
    Node { ws, admin: admin_addr, stop, _dir: dir }
}

struct Outcome {
    code: i32,
    report: Value,
    stderr: String,
    out: tempfile::TempDir,
}

/// [`loadtest`] with the arguments in one whitespace-separated line.
async fn loadtest_line(line: &str) -> Outcome {
    loadtest(&line.split_whitespace().collect::<Vec<_>>()).await
}

/// Runs the loadtest binary with `args` (plus secret, output dir and --quiet).
async fn loadtest(args: &[&str]) -> Outcome {
    let out = tempfile::tempdir().unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(args)
            .args(["--quiet", "--name", "run", "--out", out.path().to_str().unwrap()])
            .env("MESSENGER_JWT_SECRET", SECRET)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("loadtest stops by itself")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    Outcome { code: output.status.code().unwrap_or(-1), report, stderr, out }
}

fn u(v: &Value, path: &str) -> u64 {
    path.split('.').fold(v, |v, k| &v[k]).as_u64().unwrap_or_else(|| panic!("{path} in {v}"))
}

fn assert_clean(o: &Outcome) {
    assert_eq!(o.code, 0, "stderr: {}\nreport: {}", o.stderr, o.report);
    let r = &o.report;
    assert_eq!(r["passed"], true);
    assert_eq!(r["correctness"]["passed"], true);
    for k in ["missing", "duplicates", "out_of_order", "gaps"] {
        assert_eq!(u(r, &format!("correctness.{k}")), 0, "{k}");
    }
    assert_eq!(u(r, "connections.failed"), 0);
    assert!(u(r, "throughput.sent") > 0 || r["scenario"] == "idle");
    // The two report files are written, the page with its charts.
    let json: Value = serde_json::from_slice(&std::fs::read(o.out.path().join("run.json")).unwrap()).unwrap();
    assert_eq!(json["plan"]["run_id"], r["plan"]["run_id"]);
    let html = std::fs::read_to_string(o.out.path().join("run.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Latency by percentile"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_chats_survive_a_reconnect_storm_across_two_workers() {
    let n = node().await;
    let o = loadtest_line(&format!(
        "--edges {} --workers 2 --duration 3s reconnect-storm --pairs 40 --rate 200 --percent 50",
        n.ws
    ))
    .await;
    assert_clean(&o);
    let r = &o.report;
    // Every scheduled send was made and acked once, and reached the one other member once.
    assert_eq!(u(r, "throughput.sent"), 600);
    assert_eq!(u(r, "throughput.acked"), 600);
    assert_eq!(u(r, "throughput.delivered"), 600);
    assert_eq!(u(r, "correctness.expected_deliveries"), 1200, "both members' connections");
    let dropped = u(r, "storm.dropped");
    assert!(dropped > 10, "{r}");
    assert_eq!(u(r, "storm.resumed"), dropped);
    assert_eq!(u(r, "latency_ms.reconnect.count"), dropped);
    assert_eq!(r["workers"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_every_subscriber_on_every_worker() {
    let n = node().await;
    let o = loadtest_line(&format!("--edges {} --workers 3 --duration 2s broadcast --subscribers 300 --rate 10", n.ws))
        .await;
    assert_clean(&o);
    let r = &o.report;
    assert_eq!(u(r, "throughput.acked"), 20);
    assert_eq!(u(r, "throughput.delivered"), 20 * 300);
    assert_eq!(u(r, "latency_ms.deliver.count"), 20 * 300);
    assert_eq!(u(r, "connections.opened"), 301);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_the_mix_pass_with_exact_counts() {
    let n = node().await;
    let o =
        loadtest_line(&format!("--edges {} --encoding json --duration 2s group --groups 5 --size 6 --rate 60", n.ws))
            .await;
    assert_clean(&o);
    assert_eq!(u(&o.report, "throughput.acked"), 120);
    assert_eq!(u(&o.report, "throughput.delivered"), 120 * 5);

    let o = loadtest_line(&format!(
        "--edges {} --workers 2 --duration 2s mix --connections 300 --rate 100 --broadcast-rate 5",
        n.ws
    ))
    .await;
    assert_clean(&o);
    let w = &o.report["plan"]["workload"];
    assert!(u(w, "direct_pairs") > 0 && u(w, "groups") > 0 && u(w, "broadcast_subscribers") > 0 && u(w, "idle") > 0);
    assert_eq!(u(&o.report, "connections.opened"), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_report_the_servers_memory() {
    let n = node().await;
    let o =
        loadtest_line(&format!("--edges {} --metrics {} --duration 1s idle --connections 300", n.ws, n.admin)).await;
    assert_clean(&o);
    let r = &o.report;
    assert_eq!(u(r, "connections.opened"), 300);
    assert_eq!(u(r, "connections.peak"), 300);
    assert!(r["server"]["bytes_per_connection"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["server"]["cpu_seconds"].as_f64().unwrap() >= 0.0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_slo_fails_the_run_with_exit_1() {
    let n = node().await;
    let o =
        loadtest_line(&format!("--edges {} --duration 1s --slo-p99-ms 0.001 direct --pairs 5 --rate 50", n.ws)).await;
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert_eq!(o.report["passed"], false);
    assert_eq!(o.report["correctness"]["passed"], true);
    let failed: Vec<&str> = o.report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["send→deliver p99 (ms)"]);
    assert!(o.stderr.contains("FAILED send→deliver p99"), "{}", o.stderr);
}

/// A WebSocket proxy that forwards everything except every `nth` message event to clients:
/// the kind of loss a broken fan-out would cause.
// tungstenite's handshake callback returns its (large) error response type by value.
#[allow(clippy::result_large_err)]
async fn lossy_proxy(upstream: String, nth: u64) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (upstream, seen) = (upstream.clone(), seen.clone());
            tokio::spawn(async move {
                let mut uri = String::new();
                let mut proto = None;
                let callback = |req: &Request, mut resp: Response| {
                    uri = req.uri().to_string();
                    proto = req.headers().get("sec-websocket-protocol").cloned();
                    if let Some(p) = &proto {
                        resp.headers_mut().insert("sec-websocket-protocol", p.clone());
                    }
                    Ok(resp)
                };
                let Ok(down) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else { return };
                let mut req = format!("ws://{upstream}{uri}").into_client_request().unwrap();
                req.headers_mut().insert(
                    "sec-websocket-protocol",
                    proto.unwrap_or_else(|| HeaderValue::from_static("msg.v1.bincode")),
                );
                let Ok((up, _)) = tokio_tungstenite::connect_async(req).await else { return };
                let (mut down_tx, mut down_rx) = down.split();
                let (mut up_tx, mut up_rx) = up.split();
                let to_server = async move {
                    while let Some(Ok(m)) = down_rx.next().await {
                        if up_tx.send(m).await.is_err() {
                            break;
                        }
                    }
                };
                let to_client = async move {
                    while let Some(Ok(m)) = up_rx.next().await {
                        if let Message::Binary(b) = &m
                            && let Ok(ServerFrame::Event { event, .. }) = decode_server(Encoding::Bincode, b)
                            && matches!(event.body, EventBody::Message { .. })
                            && seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % nth == nth - 1
                        {
                            continue;
                        }
                        if down_tx.send(m).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::select! { _ = to_server => {}, _ = to_client => {} }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_deliveries_are_caught_and_fail_the_run() {
    let n = node().await;
    let proxy = lossy_proxy(n.ws.clone(), 7).await;
    let o =
        loadtest_line(&format!("--edges {} --duration 2s --drain 2s group --groups 2 --size 4 --rate 40", proxy)).await;
    assert_eq!(o.code, 1, "{}\n{}", o.stderr, o.report);
    let c = &o.report["correctness"];
    assert_eq!(c["passed"], false);
    // Every 7th message event was dropped somewhere: each one is missing for its receiver, and
    // each drop that was followed by another event of the chat shows up as a gap.
    let delivered_events = u(&o.report, "correctness.expected_deliveries");
    let missing = u(&o.report, "correctness.missing");
    assert!(missing > 0 && missing <= delivered_events / 7 + 1, "{c}");
    assert!(u(&o.report, "correctness.gaps") > 0, "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_run_errors_have_their_exit_codes() {
    let bad = loadtest_line("direct --pairs many").await;
    assert_eq!(bad.code, 64, "{}", bad.stderr);
    let remote = loadtest_line("--edges 192.0.2.1:80 direct").await;
    assert_eq!(remote.code, 64, "{}", remote.stderr);
    assert!(remote.stderr.contains("--allow-remote"));
    let too_many = loadtest_line("--workers 1 idle --connections 40000").await;
    assert_eq!(too_many.code, 64, "{}", too_many.stderr);
    // Nothing listens on the port: the run cannot happen (exit 2), it does not hang.
    let port = format!("127.0.0.1:{}", testkit::free_port());
    let down = loadtest_line(&format!("--edges {} --duration 1s direct --pairs 2 --rate 2", port)).await;
    assert_eq!(down.code, 2, "{}", down.stderr);
    assert!(down.stderr.contains("no connection opened"), "{}", down.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_by_hand_joins_a_controller() {
    // The path a second machine takes: the controller waits on a known address and a worker
    // started separately (`loadtest worker --controller ...`) joins it.
    let n = node().await;
    let listen = format!("127.0.0.1:{}", testkit::free_port());
    let args = format!(
        "--edges {} --workers 1 --remote-workers 1 --listen {listen} --duration 2s direct --pairs 10 --rate 40",
        n.ws
    );
    let controller = loadtest_line(&args);
    // Retry until the controller listens.
    let worker = testkit::poll_until("the worker joins the controller", Duration::from_secs(30), async || {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(["worker", "--controller", &listen])
            .env("MESSENGER_JWT_SECRET", SECRET)
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        out.status.success()
    });
    let (o, ()) = tokio::join!(controller, worker);
    assert_clean(&o);
    assert_eq!(o.report["workers"], 2);
    assert_eq!(u(&o.report, "throughput.acked"), 80);
    assert_eq!(u(&o.report, "throughput.delivered"), 80);
}

/// A TCP proxy that closes the first `refuse` connections at once and pipes the rest.
async fn refusing_proxy(upstream: String, refuse: u64) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut seen = 0;
        while let Ok((mut down, _)) = listener.accept().await {
            seen += 1;
            if seen <= refuse {
                continue; // dropped: the client sees the connection closed during the upgrade
            }
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_connects_are_retried_when_asked() {
    let n = node().await;
    let proxy = refusing_proxy(n.ws.clone(), 5).await;
    let without = loadtest_line(&format!("--edges {proxy} --duration 1s idle --connections 20")).await;
    assert_eq!(without.code, 1, "{}", without.stderr);
    assert_eq!(u(&without.report, "connections.failed"), 5);

    let proxy = refusing_proxy(n.ws.clone(), 5).await;
    let with = loadtest_line(&format!("--edges {proxy} --connect-retries 3 --duration 1s idle --connections 20")).await;
    assert_clean(&with);
    assert_eq!(u(&with.report, "connections.opened"), 20);
    assert_eq!(u(&with.report, "errors.connect_retried"), 5);
}
