//! `pmcluster-coordinator`: parses flags, validates them before binding, serves until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use pmcluster_coordinator::control::ControlConfig;
use pmcluster_coordinator::server::{self, Config};

/// The pmcluster coordinator: stores apps, places instances on agents, serves the gRPC API.
#[derive(Debug, Parser)]
#[command(name = "pmcluster-coordinator", version)]
struct Args {
    /// Address to serve gRPC on (the CLI and agents connect here). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7450", env = "PMCLUSTER_LISTEN")]
    listen: String,
    /// Directory for the state file (state.redb).
    #[arg(long, env = "PMCLUSTER_DATA_DIR")]
    data_dir: PathBuf,
    /// A node that has not reported for this long is down, e.g. "10s".
    #[arg(long, default_value = "10s")]
    heartbeat_timeout: String,
    /// How often agents report, e.g. "1s".
    #[arg(long, default_value = "1s")]
    heartbeat_interval: String,
    /// On SIGTERM/SIGINT, how long in-flight calls may take to finish before the coordinator
    /// exits anyway, e.g. "5s". Agent sessions close at once; agents keep their instances.
    #[arg(long, default_value = "5s", env = "PMCLUSTER_SHUTDOWN_GRACE")]
    shutdown_grace: String,
}

fn duration(flag: &str, s: &str) -> anyhow::Result<Duration> {
    let d = humantime::parse_duration(s)
        .with_context(|| format!("--{flag}: {s:?} is not a duration like \"10s\""))?;
    anyhow::ensure!(!d.is_zero(), "--{flag}: must be more than zero");
    // Deadlines are added to clock readings, which a huge value overflows.
    const MAX: Duration = Duration::from_secs(24 * 3600);
    anyhow::ensure!(d <= MAX, "--{flag}: must be at most 1 day");
    Ok(d)
}

fn validate(args: Args) -> anyhow::Result<Config> {
    let listen: SocketAddr = args.listen.parse().with_context(|| {
        format!(
            "--listen: {:?} is not an address like 127.0.0.1:7450",
            args.listen
        )
    })?;
    let heartbeat_timeout = duration("heartbeat-timeout", &args.heartbeat_timeout)?;
    let heartbeat_interval = duration("heartbeat-interval", &args.heartbeat_interval)?;
    anyhow::ensure!(
        heartbeat_interval < heartbeat_timeout,
        "--heartbeat-interval must be shorter than --heartbeat-timeout"
    );
    let shutdown_grace = duration("shutdown-grace", &args.shutdown_grace)?;
    // A service manager kills what outlives its stop timeout (systemd: 90 s by default); a grace
    // longer than that would never be honoured.
    anyhow::ensure!(
        shutdown_grace <= Duration::from_secs(60),
        "--shutdown-grace: {} is more than 60s; give at most 60s",
        args.shutdown_grace
    );
    Ok(Config {
        listen,
        data_dir: args.data_dir,
        control: ControlConfig {
            heartbeat_interval,
            heartbeat_timeout,
        },
        shutdown_grace,
    })
}

fn is_store_error(e: &anyhow::Error) -> bool {
    use pmcluster_coordinator::control::ControlError;
    use pmcluster_coordinator::server::ServeError;
    matches!(
        e.downcast_ref::<ServeError>(),
        Some(
            ServeError::DataDir { .. }
                | ServeError::Store(_)
                | ServeError::Control(ControlError::Store(_))
        )
    )
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
}

async fn run(config: Config) -> anyhow::Result<()> {
    let control = server::open_control(&config)?;
    let listener = server::bind(config.listen).await?;
    let addr = listener.local_addr().context("reading the bound address")?;
    // Tests and `pmcluster up` read this line to learn the port.
    println!("pmcluster-coordinator listening on {addr}");
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "serving");
    server::serve(control, listener, shutdown_signal(), config.shutdown_grace).await?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match validate(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(config));
    // Whatever still runs after the grace (a stuck call) must not hold the exit, nor the store.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A data dir or state file that cannot be used is the operator's to fix, like a bad
            // flag: 64, so a supervisor can tell it from a crash.
            if is_store_error(&e) {
                ExitCode::from(64)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
