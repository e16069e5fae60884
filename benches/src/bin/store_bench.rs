//! Store throughput and latency: appends and history-page reads, for each backend, in one run.
//!
//! ```text
//! scripts/cassandra/cassandra.sh start --port 19042
//! store-bench --cql-node 127.0.0.1:19042            # embedded and CQL, same workload
//! ```
//!
//! Appends go to `--chats` chats from `--concurrency` concurrent writers (closed loop: each
//! writer waits for its ack, which is what a router shard does per chat); reads fetch the
//! latest 50-event page of a random chat. Prints one JSON line per backend and the ratio.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use persistence::{Append, CqlConfig, CqlStore, EmbeddedConfig, EmbeddedStore, Mutation, NewChat, Page, Store};
use protocol::{ChatKind, Role};

#[derive(Debug, Parser)]
struct Args {
    /// Backends to measure, comma separated: embedded, cql.
    #[arg(long, value_delimiter = ',', default_value = "embedded,cql")]
    backends: Vec<String>,
    /// CQL contact point.
    #[arg(long, default_value = "127.0.0.1:19042")]
    cql_node: String,
    /// Chats written to.
    #[arg(long, default_value_t = 64)]
    chats: u64,
    /// Appends in total.
    #[arg(long, default_value_t = 5000)]
    appends: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// History page reads in total.
    #[arg(long, default_value_t = 2000)]
    reads: usize,
    /// Message body size, bytes.
    #[arg(long, default_value_t = 100)]
    body: usize,
}

struct Stats {
    per_second: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn stats(mut micros: Vec<u64>, elapsed: Duration) -> Stats {
    micros.sort_unstable();
    let at = |q: f64| micros[((micros.len() as f64 * q) as usize).min(micros.len() - 1)] as f64 / 1000.0;
    Stats {
        per_second: micros.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
        p999: at(0.999),
        max: at(1.0),
    }
}

async fn run(store: Arc<dyn Store>, args: &Args, base: u64) -> anyhow::Result<(Stats, Stats)> {
    for c in 0..args.chats {
        let members = vec![("bench".to_string(), Role::Admin)];
        let chat =
            NewChat { id: base + c, kind: ChatKind::Group, title: "b".into(), creator: "bench".into(), members, ts: 1 };
        store.create_chat(chat).await?;
    }
    let body = "x".repeat(args.body);
    let started = Instant::now();
    let per_writer = args.appends / args.concurrency.max(1);
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let (store, body, chats) = (store.clone(), body.clone(), args.chats);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_writer);
            for i in 0..per_writer {
                let chat = base + ((w * per_writer + i) as u64 % chats);
                let append = Append {
                    chat,
                    sender: "bench".into(),
                    ts: 1,
                    mutation: Mutation::Message { client_msg_id: format!("{w}-{i}"), text: body.clone() },
                };
                let t = Instant::now();
                store.append(append).await?;
                lat.push(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let appends = stats(lat, started.elapsed());
    let started = Instant::now();
    let mut tasks = Vec::new();
    let per_reader = args.reads / args.concurrency.max(1);
    for w in 0..args.concurrency {
        let (store, chats) = (store.clone(), args.chats);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_reader);
            for i in 0..per_reader {
                let chat = base + ((w * 7919 + i * 31) as u64 % chats);
                let t = Instant::now();
                store.history(chat, Page::Latest { limit: 50 }).await?;
                lat.push(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok((appends, stats(lat, started.elapsed())))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut results = Vec::new();
    for backend in &args.backends {
        let dir = tempfile_dir()?;
        let store: Arc<dyn Store> = match backend.as_str() {
            "embedded" => Arc::new(EmbeddedStore::open(EmbeddedConfig::new(dir.join("bench.redb")))?),
            "cql" => {
                let ks = format!("bench_{}", std::process::id());
                Arc::new(CqlStore::connect(&CqlConfig::local(&args.cql_node, ks)).await.context("connect")?)
            }
            other => anyhow::bail!("unknown backend {other}"),
        };
        let (a, r) = run(store, &args, 1_000_000).await?;
        println!(
            "{{\"backend\":\"{backend}\",\"appends_per_second\":{:.0},\"append_ms\":{{\"p50\":{:.2},\"p99\":{:.2},\"p999\":{:.2},\"max\":{:.2}}},\"reads_per_second\":{:.0},\"read_ms\":{{\"p50\":{:.2},\"p99\":{:.2},\"p999\":{:.2},\"max\":{:.2}}},\"concurrency\":{},\"chats\":{},\"body_bytes\":{}}}",
            a.per_second,
            a.p50,
            a.p99,
            a.p999,
            a.max,
            r.per_second,
            r.p50,
            r.p99,
            r.p999,
            r.max,
            args.concurrency,
            args.chats,
            args.body
        );
        results.push((backend.clone(), a.per_second, r.per_second));
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let [(b0, a0, r0), (b1, a1, r1)] = results.as_slice() {
        println!("{{\"ratio\":\"{b1}/{b0}\",\"appends\":{:.3},\"reads\":{:.3}}}", a1 / a0, r1 / r0);
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("store-bench-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}
