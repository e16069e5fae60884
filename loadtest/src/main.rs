//! `loadtest <scenario> [options]` runs a controller with local workers; `loadtest worker`
//! is what the controller starts (or what another machine runs to join).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use loadtest::cli::{Cli, Run};
use loadtest::report::{EXIT_FAILED_SLO, EXIT_RUN_ERROR, EXIT_USAGE};
use loadtest::{controller, html, worker};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE as u8 } else { 0 });
        }
    };
    let run = match cli.into_run() {
        Ok(run) => run,
        Err(e) => {
            eprintln!("loadtest: {e}");
            return ExitCode::from(EXIT_USAGE as u8);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUN_ERROR as u8);
        }
    };
    match runtime.block_on(execute(run)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::from(EXIT_RUN_ERROR as u8)
        }
    }
}

async fn execute(run: Run) -> anyhow::Result<i32> {
    match run {
        Run::Worker { controller, secret } => {
            worker::run(&controller, secret).await?;
            Ok(0)
        }
        Run::Controller { config, out, name } => {
            let report = controller::run(*config).await?;
            std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
            let json = serde_json::to_string_pretty(&report)?;
            let (json_path, html_path) = (out.join(format!("{name}.json")), out.join(format!("{name}.html")));
            std::fs::write(&json_path, &json).with_context(|| format!("write {}", json_path.display()))?;
            std::fs::write(&html_path, html::render(&report))
                .with_context(|| format!("write {}", html_path.display()))?;
            println!("{}", serde_json::to_string(&report)?);
            let (t, d) = (&report.throughput, &report.latency_ms.deliver);
            eprintln!(
                "loadtest: {} {}: {:.0}/{:.0} sends/s, {:.0} deliveries/s, deliver p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms, {} violations; reports {} and {}",
                report.scenario,
                if report.passed { "passed" } else { "FAILED" },
                t.achieved_sends_per_second,
                t.target_sends_per_second,
                t.deliveries_per_second,
                d.p50,
                d.p99,
                d.p999,
                d.max,
                report.correctness.violations(),
                json_path.display(),
                html_path.display()
            );
            for c in report.checks.iter().filter(|c| !c.passed) {
                eprintln!("loadtest: FAILED {}: {} (limit {})", c.name, c.actual, c.limit);
            }
            Ok(if report.passed { 0 } else { EXIT_FAILED_SLO })
        }
    }
}
