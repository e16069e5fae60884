//! `messenger`: configuration → tracing → metrics → run.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use edge::Authenticator;
use router::RouterConfig;
use server::config::{Cli, Command, EXIT_CONFIG, StandaloneArgs};
use server::standalone::{self, StandaloneConfig};
use server::{telemetry, token};
use tokio::net::TcpListener;
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
    match cli.command {
        Command::Token(args) => match mint(args) {
            Ok(t) => {
                println!("{t}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::from(EXIT_CONFIG as u8)
            }
        },
        Command::Standalone(args) => {
            let config = match standalone_config(&args) {
                Ok(c) => c,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    return ExitCode::from(EXIT_CONFIG as u8);
                }
            };
            if let Err(err) = telemetry::init_tracing(&cli.log, cli.log_format == "compact") {
                eprintln!("error: {err:#}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
            match serve(*args, config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err:#}");
                    ExitCode::FAILURE
                }
            }
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

fn standalone_config(args: &StandaloneArgs) -> anyhow::Result<StandaloneConfig> {
    let edge = args.edge.to_config().map_err(anyhow::Error::msg)?;
    let mut keys = Vec::new();
    let secret = match (&args.auth.jwt_secret, &args.auth.jwt_public_key) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(_)) => None,
        (None, None) => {
            eprintln!(
                "WARNING: no --jwt-secret or --jwt-public-key: using the development secret in {}. \
                 Anyone who can read that file can mint tokens. Do not run like this in production.",
                args.data_dir.join(token::DEV_SECRET_FILE).display()
            );
            Some(token::dev_secret(&args.data_dir, true)?)
        }
    };
    if let Some(secret) = secret {
        keys.push(Authenticator::hs256_key(secret.as_bytes())?);
    }
    if let Some(path) = &args.auth.jwt_public_key {
        let pem = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        keys.push(Authenticator::public_key(&pem)?);
    }
    let auth = Authenticator::new(keys, args.auth.jwt_issuer.clone(), args.auth.jwt_audience.clone())?;
    if args.router_shards == 0 || args.router_shards > 1024 {
        anyhow::bail!("--router-shards must be between 1 and 1024");
    }
    if args.store_max_batch == 0 {
        anyhow::bail!("--store-max-batch must be positive");
    }
    let cql = match args.store.as_str() {
        "cql" => Some(args.cql.to_config().map_err(anyhow::Error::msg)?),
        _ => None,
    };
    Ok(StandaloneConfig {
        cql,
        data_dir: args.data_dir.clone(),
        edge,
        router: RouterConfig { shards: args.router_shards, ..RouterConfig::default() },
        store_max_batch: args.store_max_batch,
        auth,
        shutdown_deadline: args.shutdown_deadline,
    })
}

fn serve(args: StandaloneArgs, config: StandaloneConfig) -> anyhow::Result<()> {
    let metrics = telemetry::init_metrics()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen).await.with_context(|| format!("bind {}", args.listen))?;
        let admin =
            TcpListener::bind(args.admin_listen).await.with_context(|| format!("bind {}", args.admin_listen))?;
        let (ws, http) = (listener.local_addr()?, admin.local_addr()?);
        // Fixtures and humans read this line; keep its shape.
        println!("listening ws={ws} admin={http}");
        println!("connect: ws://{ws}/?token=$(messenger token --user alice --data-dir {})", args.data_dir.display());
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        if let Some(limit) = telemetry::open_files_limit() {
            tracing::info!(limit, "open files limit: at most about this many connections");
        }
        // Histograms are aggregated when rendered or by this upkeep; without it, an unscraped
        // node would accumulate samples.
        let upkeep = metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        let render = Arc::new(move || {
            telemetry::sample_process();
            metrics.render()
        });
        standalone::run(config, listener, admin, render, shutdown).await
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
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
    // A second signal means "now": every acknowledged write is already durable.
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!("second signal: exiting without finishing the drain");
            std::process::exit(130);
        }
    }
}
