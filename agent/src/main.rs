//! `pmcluster-agent`: parses flags, sets up logging and signals, runs the agent library and maps
//! its result to an exit code (0 ok, 1 failed, 2 usage).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use pmcluster_agent::{ConfigError, RawConfig, ShutdownSignals};
use tokio_util::sync::CancellationToken;

/// Supervises the instances of this host for a pmcluster coordinator.
#[derive(Debug, Parser)]
#[command(name = "pmcluster-agent", version)]
struct Args {
    /// Coordinator URL.
    #[arg(
        long,
        env = "PMCLUSTER_COORDINATOR",
        default_value = "http://127.0.0.1:7450"
    )]
    coordinator: String,
    /// Node name, unique in the cluster [default: the hostname].
    #[arg(long)]
    node_name: Option<String>,
    /// Directory for the agent's files (instance logs go to DIR/logs).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Node label, repeatable: --label zone=a --label disk=ssd.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = label)]
    labels: Vec<(String, String)>,
}

/// `--label` for clap, which names the flag and value itself: only the reason is needed.
fn label(value: &str) -> Result<(String, String), String> {
    pmcluster_agent::config::parse_label(value).map_err(|e| match e {
        ConfigError::Label { reason, .. } => reason,
        other => other.to_string(),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let raw = RawConfig {
        coordinator: args.coordinator,
        node_name: args.node_name,
        hostname: sysinfo::System::host_name().ok(),
        data_dir: args.data_dir,
        labels: args.labels,
    };
    let config = match raw.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pmcluster-agent: {e}");
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pmcluster-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(config: pmcluster_agent::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut signals = ShutdownSignals::install().context("cannot install signal handlers")?;
        let shutdown = CancellationToken::new();
        let agent = pmcluster_agent::run(config, shutdown.clone());
        tokio::pin!(agent);
        tokio::select! {
            result = &mut agent => return Ok(result?),
            name = signals.recv() => {
                tracing::info!("received {name}; shutting down");
                shutdown.cancel();
            }
        }
        agent.await?;
        Ok(())
    })
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
