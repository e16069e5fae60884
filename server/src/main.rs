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
use server::{ListenerTls, control, keys, telemetry, token};
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
        Command::Revoke(args) => match revoke(args) {
            Ok(answer) => {
                println!("{answer}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        },
        Command::Standalone(args) => {
            let config = match standalone_config(&args) {
                Ok(c) => c,
                Err(err) => return config_error(err),
            };
            let (listen, admin, data_dir) = (args.node.listen, args.node.admin_listen, args.node.data_dir.clone());
            let backlog = args.node.listen_backlog;
            let key_set = key_set_watch(&args.node.auth, &config.auth);
            let scheme = if config.tls.is_some() { "wss" } else { "ws" };
            serve(&cli.log, compact, move |render, shutdown| async move {
                key_set(&shutdown);
                let listener = bind_clients(listen, backlog)?;
                let admin = bind(admin).await?;
                announce(&listener, &admin, scheme)?;
                println!(
                    "connect: {scheme}://{}/?token=$(messenger token --user alice --data-dir {})",
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
            let key_set = key_set_watch(&args.node.auth, &config.auth);
            let scheme = if config.tls.is_some() { "wss" } else { "ws" };
            serve(&cli.log, compact, move |render, shutdown| async move {
                key_set(&shutdown);
                let listener = bind_clients(listen, backlog)?;
                let admin = bind(admin).await?;
                announce(&listener, &admin, scheme)?;
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

/// Starts following `--jwt-jwks-file`, if given, once the runtime runs.
fn key_set_watch(args: &AuthArgs, auth: &Authenticator) -> impl FnOnce(&CancellationToken) + use<> {
    let (file, url, refresh, auth) =
        (args.jwt_jwks_file.clone(), args.jwt_jwks_url.clone(), args.jwt_jwks_refresh.0, auth.clone());
    move |shutdown: &CancellationToken| {
        if let Some(path) = file {
            // Registered now, before the node is ready: a SIGHUP must never end it.
            tokio::spawn(keys::watch(path, auth, edge::hangup::Hangup::new(), shutdown.clone()));
        } else if let Some(url) = url {
            tokio::spawn(keys::poll(url, auth, refresh, None, shutdown.clone()));
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

/// Fixtures and humans read this line; keep its shape (`tls=on` is added with TLS).
fn announce(ws: &TcpListener, admin: &TcpListener, scheme: &str) -> anyhow::Result<()> {
    let tls = if scheme == "wss" { " tls=on" } else { "" };
    println!("listening ws={} admin={}{tls}", ws.local_addr()?, admin.local_addr()?);
    Ok(())
}

/// The listener's TLS, loaded now so that a bad certificate stops the node at start (64).
fn listener_tls(args: &server::config::TlsArgs) -> anyhow::Result<Option<ListenerTls>> {
    let Some(files) = args.files().map_err(anyhow::Error::msg)? else { return Ok(None) };
    let tls = edge::tls::ServerTls::load(files).context("--tls-cert/--tls-key")?;
    Ok(Some(ListenerTls { tls: Arc::new(tls), reload_interval: args.tls_reload_interval.0 }))
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
    let to = token::Audience { issuer: args.issuer.as_deref(), audience: args.audience.as_deref() };
    token::mint(secret.as_bytes(), &args.user, args.ttl, to)
}

/// Sends a revocation (or asks for the list) to a node's admin port.
fn revoke(args: server::config::RevokeArgs) -> anyhow::Result<String> {
    let token = control::read_token(&args.admin_token_file)?;
    let body = match (&args.jti, &args.user, args.list) {
        (_, _, true) => None,
        (Some(jti), _, _) => Some(serde_json::json!({"kind": "token", "jti": jti, "until": args.until})),
        (None, Some(user), _) => {
            Some(serde_json::json!({"kind": "user", "user": user, "before": args.before, "until": args.until}))
        }
        (None, None, false) => anyhow::bail!("give --jti, --user or --list"),
    };
    let body = body.map(|b| b.to_string());
    let (status, answer) = control::call(&args.admin, &token, body.as_deref())?;
    if status != 200 {
        anyhow::bail!("the node answered {status}: {}", answer.trim());
    }
    Ok(answer.trim().to_owned())
}

/// The admin token named by `--admin-token-file`, if any.
fn admin_token(args: &server::config::RevocationArgs) -> anyhow::Result<Option<Vec<u8>>> {
    args.admin_token_file.as_deref().map(control::read_token).transpose()
}

fn authenticator(auth: &AuthArgs, data_dir: &std::path::Path) -> anyhow::Result<Authenticator> {
    let mut keys = Vec::new();
    let configured = auth.jwt_secret.is_some()
        || auth.jwt_public_key.is_some()
        || auth.jwt_jwks_file.is_some()
        || auth.jwt_jwks_url.is_some();
    if !auth.dev {
        if !configured {
            anyhow::bail!(
                "no token key: give --jwt-jwks-url, --jwt-jwks-file, --jwt-public-key or --jwt-secret \
                 (or --dev, on a laptop only, for a development secret in the data directory)"
            );
        }
        if auth.jwt_issuer.is_none() || auth.jwt_audience.is_none() {
            anyhow::bail!("--jwt-issuer and --jwt-audience are required (outside --dev)");
        }
    }
    let secret = match &auth.jwt_secret {
        Some(s) => Some(s.clone()),
        None if configured => None,
        None => {
            eprintln!(
                "WARNING: --dev without a token key: using the development secret in {}. \
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
    if auth.jwt_jwks_refresh.0 < std::time::Duration::from_secs(10) {
        anyhow::bail!("--jwt-jwks-refresh must be at least 10s");
    }
    let key_set = match (&auth.jwt_jwks_file, &auth.jwt_jwks_url) {
        (Some(path), _) => keys::load(path)?,
        (None, Some(url)) => keys::load_url(url)?.0,
        (None, None) => Vec::new(),
    };
    if auth.jwt_leeway.0 > std::time::Duration::from_secs(300) {
        anyhow::bail!("--jwt-leeway must be at most 5m");
    }
    if auth.jwt_max_lifetime.0 < std::time::Duration::from_secs(60) {
        anyhow::bail!("--jwt-max-lifetime must be at least 1m");
    }
    Ok(Authenticator::with_key_set(keys, key_set, auth.jwt_issuer.clone(), auth.jwt_audience.clone())?
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
        tls: listener_tls(&args.node.tls)?,
        audit: audit_log(&args.node.audit_log, "standalone")?,
        cql,
        data_dir: args.node.data_dir.clone(),
        edge,
        router: router_config_from(args.router_shards)?,
        store_max_batch: args.store_max_batch,
        auth,
        shutdown_deadline: args.node.shutdown_deadline,
        admin_token: admin_token(&args.revocation)?,
        revocation_retention: retention(&args.revocation, Some(&args.node.auth))?,
    })
}

/// `--revocation-retention`, checked against the token lifetime where this node verifies
/// tokens: a shorter retention would forget revocations of tokens still valid.
fn retention(args: &server::config::RevocationArgs, auth: Option<&AuthArgs>) -> anyhow::Result<std::time::Duration> {
    let retention = args.revocation_retention.0;
    if let Some(auth) = auth
        && retention < auth.jwt_max_lifetime.0 + auth.jwt_leeway.0
    {
        anyhow::bail!("--revocation-retention must be at least --jwt-max-lifetime + --jwt-leeway");
    }
    Ok(retention)
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
    let auth = &args.node.auth;
    if auth.jwt_secret.is_none()
        && auth.jwt_public_key.is_none()
        && auth.jwt_jwks_file.is_none()
        && auth.jwt_jwks_url.is_none()
    {
        anyhow::bail!(
            "an edge needs the cluster's token key: give --jwt-jwks-url, --jwt-jwks-file, --jwt-public-key or --jwt-secret"
        );
    }
    Ok(EdgeNodeConfig {
        tls: listener_tls(&args.node.tls)?,
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
        admin_token: admin_token(&args.revocation)?,
        revocation_retention: retention(&args.revocation, None)?,
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
