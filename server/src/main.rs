//! `messenger`: configuration → tracing → metrics → run.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use edge::Authenticator;
use edge::admin::Render;
use router::RouterConfig;
use server::cluster::{self, EdgeNodeConfig, RouterNodeConfig};
use server::config::{AuthArgs, Cli, Command, EXIT_CONFIG, NatsRole, StandaloneArgs};
use server::standalone::{self, StandaloneConfig};
use server::{telemetry, token};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = err.print();
            return ExitCode::from(code as u8);
        }
    };
    let compact = cli.log_format == "compact";
    match cli.command {
        Command::Token(args) => match mint(args) {
            Ok(t) => {
                println!("{t}");
                ExitCode::SUCCESS
            }
            Err(err) => config_error(err),
        },
        Command::Standalone(args) => {
            let config = match standalone_config(&args) {
                Ok(c) => c,
                Err(err) => return config_error(err),
            };
            let (listen, admin, data_dir) = (args.node.listen, args.node.admin_listen, args.node.data_dir.clone());
            let backlog = args.node.listen_backlog;
            serve(&cli.log, compact, move |render, shutdown| async move {
                let listener = bind_clients(listen, backlog)?;
                let admin = bind(admin).await?;
                announce(&listener, &admin)?;
                println!(
                    "connect: ws://{}/?token=$(messenger token --user alice --data-dir {})",
                    listener.local_addr()?,
                    data_dir.display()
                );
                standalone::run(config, listener, admin, render, shutdown).await
            })
        }
        Command::Edge(args) => {
            let config = match edge_config(&args) {
                Ok(c) => c,
                Err(err) => return config_error(err),
            };
            let (listen, admin, backlog) = (args.node.listen, args.node.admin_listen, args.node.listen_backlog);
            serve(&cli.log, compact, move |render, shutdown| async move {
                let listener = bind_clients(listen, backlog)?;
                let admin = bind(admin).await?;
                announce(&listener, &admin)?;
                cluster::run_edge(config, listener, admin, render, shutdown).await
            })
        }
        Command::Router(args) => {
            let config = match router_config(&args) {
                Ok(c) => c,
                Err(err) => return config_error(err),
            };
            let admin = args.admin_listen;
            serve(&cli.log, compact, move |render, shutdown| async move {
                let admin = bind(admin).await?;
                println!("listening admin={}", admin.local_addr()?);
                cluster::run_router(config, admin, render, shutdown).await
            })
        }
    }
}

fn config_error(err: anyhow::Error) -> ExitCode {
    eprintln!("error: {err:#}");
    ExitCode::from(EXIT_CONFIG as u8)
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))
}

/// The client listener, with an explicit accept backlog (see `--listen-backlog`).
fn bind_clients(addr: SocketAddr, backlog: u32) -> anyhow::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.context("socket")?;
    // As TcpListener::bind does: a restarted node rebinds while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr).with_context(|| format!("bind {addr}"))?;
    socket.listen(backlog).with_context(|| format!("listen on {addr}"))
}

/// Fixtures and humans read this line; keep its shape.
fn announce(ws: &TcpListener, admin: &TcpListener) -> anyhow::Result<()> {
    println!("listening ws={} admin={}", ws.local_addr()?, admin.local_addr()?);
    Ok(())
}

/// Starts tracing, metrics and the runtime, then runs `node` until a signal.
fn serve<F, Fut>(log: &str, compact: bool, node: F) -> ExitCode
where
    F: FnOnce(Render, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if let Err(err) = telemetry::init_tracing(log, compact) {
        return config_error(err);
    }
    let result = (|| {
        let metrics = telemetry::init_metrics()?;
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        runtime.block_on(async move {
            if let Some(limit) = telemetry::open_files_limit() {
                tracing::info!(limit, "open files limit: at most about this many connections");
            }
            // Histograms are aggregated when rendered or by this upkeep; without it, an
            // unscraped node would accumulate samples.
            let upkeep = metrics.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    upkeep.run_upkeep();
                }
            });
            let render: Render = Arc::new(move || {
                telemetry::sample_process();
                metrics.render()
            });
            let shutdown = CancellationToken::new();
            tokio::spawn(on_signal(shutdown.clone()));
            node(render, shutdown).await
        })
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

fn mint(args: server::config::TokenArgs) -> anyhow::Result<String> {
    let secret = match args.secret {
        Some(s) => s,
        None => token::dev_secret(&args.data_dir, false)?,
    };
    if !protocol::ids::valid_user_id(&args.user) {
        anyhow::bail!("user ids are 1-64 bytes of [A-Za-z0-9._@-]");
    }
    token::mint(secret.as_bytes(), &args.user, args.ttl)
}

fn authenticator(auth: &AuthArgs, data_dir: &std::path::Path) -> anyhow::Result<Authenticator> {
    let mut keys = Vec::new();
    let secret = match (&auth.jwt_secret, &auth.jwt_public_key) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(_)) => None,
        (None, None) => {
            eprintln!(
                "WARNING: no --jwt-secret or --jwt-public-key: using the development secret in {}. \
                 Anyone who can read that file can mint tokens. Do not run like this in production.",
                data_dir.join(token::DEV_SECRET_FILE).display()
            );
            Some(token::dev_secret(data_dir, true)?)
        }
    };
    if let Some(secret) = secret {
        keys.push(Authenticator::hs256_key(secret.as_bytes())?);
    }
    if let Some(path) = &auth.jwt_public_key {
        let pem = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        keys.push(Authenticator::public_key(&pem)?);
    }
    if auth.jwt_leeway.0 > std::time::Duration::from_secs(300) {
        anyhow::bail!("--jwt-leeway must be at most 5m");
    }
    if auth.jwt_max_lifetime.0 < std::time::Duration::from_secs(60) {
        anyhow::bail!("--jwt-max-lifetime must be at least 1m");
    }
    Ok(Authenticator::new(keys, auth.jwt_issuer.clone(), auth.jwt_audience.clone())?
        .with_limits(auth.jwt_leeway.0.as_secs(), auth.jwt_max_lifetime.0.as_secs()))
}

fn router_config_from(shards: usize) -> anyhow::Result<RouterConfig> {
    if shards == 0 || shards > 1024 {
        anyhow::bail!("--router-shards must be between 1 and 1024");
    }
    Ok(RouterConfig { shards, ..RouterConfig::default() })
}

fn standalone_config(args: &StandaloneArgs) -> anyhow::Result<StandaloneConfig> {
    let edge = args.node.edge.to_config().map_err(anyhow::Error::msg)?;
    let auth = authenticator(&args.node.auth, &args.node.data_dir)?;
    if args.store_max_batch == 0 {
        anyhow::bail!("--store-max-batch must be positive");
    }
    let cql = match args.store.as_str() {
        "cql" => Some(args.cql.to_config().map_err(anyhow::Error::msg)?),
        _ => None,
    };
    Ok(StandaloneConfig {
        audit: audit_log(&args.node.audit_log, "standalone")?,
        cql,
        data_dir: args.node.data_dir.clone(),
        edge,
        router: router_config_from(args.router_shards)?,
        store_max_batch: args.store_max_batch,
        auth,
        shutdown_deadline: args.node.shutdown_deadline,
    })
}

/// The audit sink named by `--audit-log`.
fn audit_log(spec: &str, node: &str) -> anyhow::Result<Arc<audit::AuditLog>> {
    Ok(Arc::new(match spec {
        "off" => audit::AuditLog::off(),
        "stdout" | "-" => audit::AuditLog::stdout(node),
        path => audit::AuditLog::file(std::path::Path::new(path), node)
            .with_context(|| format!("open the audit log {path}"))?,
    }))
}

fn edge_config(args: &server::config::EdgeNodeArgs) -> anyhow::Result<EdgeNodeConfig> {
    // A cluster edge never makes up a development secret of its own: every token minted by
    // the cluster's token service would fail on it, silently.
    if args.node.auth.jwt_secret.is_none() && args.node.auth.jwt_public_key.is_none() {
        anyhow::bail!("an edge needs the cluster's token key: give --jwt-secret or --jwt-public-key");
    }
    Ok(EdgeNodeConfig {
        audit: audit_log(&args.node.audit_log, &format!("edge-{}", args.node.listen))?,
        edge: args.node.edge.to_config().map_err(anyhow::Error::msg)?,
        auth: authenticator(&args.node.auth, &args.node.data_dir)?,
        nats: args.nats.to_config(&format!("edge-{}", args.node.listen), NatsRole::Edge).map_err(anyhow::Error::msg)?,
        shutdown_deadline: args.node.shutdown_deadline,
    })
}

fn router_config(args: &server::config::RouterNodeArgs) -> anyhow::Result<RouterNodeConfig> {
    Ok(RouterNodeConfig {
        audit: audit_log(&args.audit_log, "router")?,
        router: router_config_from(args.router_shards)?,
        cql: args.cql.to_config().map_err(anyhow::Error::msg)?,
        nats: args.nats.to_config("router", NatsRole::Router).map_err(anyhow::Error::msg)?,
        shutdown_deadline: args.shutdown_deadline,
    })
}

async fn on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
        shutdown.cancel();
        // A second signal means "now": every acknowledged write is already durable.
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting without finishing the drain");
        std::process::exit(130);
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    }
}
