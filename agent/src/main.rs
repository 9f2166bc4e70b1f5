//! `pmcluster-agent`: parses flags, sets up logging and signals, runs the agent library and maps
//! its result to an exit code (0 ok, 1 failed, 2 usage).
//!
//! SIGTERM or SIGINT ends the agent. By default its instances keep running (a host's services
//! must not go down because their supervisor is restarted or upgraded) and the next agent started
//! with the same `--data-dir` adopts them; `--stop-instances-on-exit` stops them first.

use std::io::IsTerminal;
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
    /// Coordinator URL, or a comma-separated list for an HA pair: a standby's refusal names the
    /// leader, dialled at once; an unreachable one sends the agent to the next URL.
    #[arg(
        long,
        env = "PMCLUSTER_COORDINATOR",
        default_value = "http://127.0.0.1:7450"
    )]
    coordinator: String,
    /// Node name, unique in the cluster [default: the hostname].
    #[arg(long, env = "PMCLUSTER_NODE_NAME")]
    node_name: Option<String>,
    /// Directory for the agent's files: instance logs in DIR/logs, its local state (what runs,
    /// for adoption after a restart) in DIR/instances.
    #[arg(long, env = "PMCLUSTER_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// Node label, repeatable: --label zone=a --label disk=ssd.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = label)]
    labels: Vec<(String, String)>,
    /// On SIGTERM or SIGINT, stop every instance before exiting. Without it the agent exits and
    /// leaves its instances running; an agent started again with the same --data-dir adopts them.
    /// In the environment, any value but "", 0, false, f, no, off or n means on.
    #[arg(
        long,
        env = "PMCLUSTER_STOP_INSTANCES_ON_EXIT",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    stop_instances_on_exit: bool,
    /// At startup, how long to wait for the coordinator before starting the instances of the
    /// last desired set (kept in --data-dir) that are not running [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    coordinator_grace: Option<std::time::Duration>,
    /// Do not put each instance in a cgroup of its own. By default, when a writable cgroup2
    /// hierarchy is available, every instance runs in a cgroup under the agent's, so that a stop
    /// or crash ends everything it started, even processes that left its process group.
    #[arg(
        long,
        env = "PMCLUSTER_NO_CGROUPS",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    no_cgroups: bool,
    /// Start even though --data-dir belongs to another node name: that node is renamed to
    /// --node-name, and the coordinator moves its instances over, so they keep running. Without
    /// it such a start is refused (it would stop every instance the data dir holds).
    #[arg(long)]
    rename_node: bool,
    /// This node's certificate (PEM), from `pmcluster certs issue agent NODE`: dial the
    /// coordinator (https://) over mutual TLS. Needs --tls-key and --ca too.
    #[arg(long, env = "PMCLUSTER_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "PMCLUSTER_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// The cluster CA (PEM) that signed the coordinator's certificate.
    #[arg(long, env = "PMCLUSTER_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// The address (IP or host name) this node's instances are reached at: what `list`,
    /// `endpoints` and `${HOST}` give [default: the local address of the connection to the
    /// coordinator, as the coordinator sees it].
    #[arg(long, env = "PMCLUSTER_ADVERTISE_ADDRESS", value_name = "ADDR")]
    advertise_address: Option<String>,
}

/// `--label` for clap, which names the flag and value itself: only the reason is needed.
fn label(value: &str) -> Result<(String, String), String> {
    pmcluster_agent::config::parse_label(value).map_err(|e| match e {
        ConfigError::Label { reason, .. } => reason,
        other => other.to_string(),
    })
}

/// Internal: the agent runs one per instance (see `pmcluster_agent::logs`). Appends its stdin
/// (the instance's stdout pipe) to `--out` and what it reads on its stdout (the stderr pipe) to
/// `--err`, rotating the files as it writes.
#[derive(Debug, Parser)]
#[command(
    name = "pmcluster-agent log-pump",
    bin_name = "pmcluster-agent log-pump"
)]
struct PumpArgs {
    /// The log file for stdin.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The log file for what it reads on its stdout; without it, its stdout is not read.
    #[arg(long, value_name = "FILE")]
    err: Option<PathBuf>,
    /// Rotate a file (by rename) before a write would take it past this many bytes.
    #[arg(long, value_name = "BYTES")]
    max_bytes: Option<u64>,
    /// Rotated files to keep.
    #[arg(long, default_value_t = 0)]
    keep: u32,
    /// Stamp each line with the time it was read.
    #[arg(long)]
    timestamps: bool,
}

fn main() -> ExitCode {
    // A hidden subcommand, looked for before the agent's own flags so that it stays out of
    // --help and needs none of them.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == pmcluster_agent::logs::PUMP_COMMAND)
    {
        return log_pump(PumpArgs::parse_from(std::env::args_os().skip(1)));
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == pmcluster_agent::logs::HOST_COMMAND)
    {
        return log_pump_host();
    }
    let args = Args::parse();
    init_tracing();
    let raw = RawConfig {
        coordinator: args.coordinator,
        node_name: args.node_name,
        hostname: sysinfo::System::host_name().ok(),
        data_dir: args.data_dir,
        labels: args.labels,
        stop_instances_on_exit: args.stop_instances_on_exit,
        coordinator_grace: args.coordinator_grace,
        // A standalone agent reaps the orphans of its instances.
        subreaper: true,
        // Pumps are this very binary (see `Config::log_pump`).
        log_pump: Some(PathBuf::from("/proc/self/exe")),
        no_cgroups: args.no_cgroups,
        rename_node: args.rename_node,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        ca: args.ca,
        advertise_address: args.advertise_address,
    };
    let config = match raw.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pmcluster-agent: {e}");
            return ExitCode::from(2);
        }
    };
    for (key, value) in &config.labels {
        if let Some(why) = pmcluster_agent::config::label_unmatchable(key, value) {
            tracing::warn!("{why}");
        }
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pmcluster-agent: {e:#}");
            let config_error = e
                .downcast_ref::<pmcluster_agent::AgentError>()
                .is_some_and(pmcluster_agent::AgentError::is_config);
            ExitCode::from(if config_error { 64 } else { 1 })
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

/// Logging for a pump and the pump host. Their stderr is the agent's, which may be gone (a
/// closed terminal, a dead pipe): a failed write of a message must be dropped, not reported
/// with `eprintln!`, which would panic and end the pump, and with it the instance at its next
/// line.
fn init_pump_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in a log file or the journal.
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false)
        .init();
}

/// Internal: the helper that forks every log pump (see `pmcluster_agent::logs::host`).
fn log_pump_host() -> ExitCode {
    init_pump_tracing();
    match pmcluster_agent::logs::host_process() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("log pump host: {e}");
            ExitCode::from(1)
        }
    }
}

fn log_pump(args: PumpArgs) -> ExitCode {
    init_pump_tracing();
    let target = |path| pmcluster_agent::logs::PumpTarget {
        path,
        max_bytes: args.max_bytes.filter(|m| *m > 0),
        keep: args.keep,
        timestamps: args.timestamps,
    };
    let out = target(args.out.clone());
    let err = args.err.clone().map(target);
    match pmcluster_agent::logs::pump_process(out, err) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("log pump for {}: {e}", args.out.display());
            ExitCode::from(1)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in a log file or the journal.
        .with_ansi(std::io::stderr().is_terminal())
        // A log that can no longer be written (its reader gone: a closed pipe, a restarted
        // journal) drops lines rather than report it with `eprintln!`, which panics and would
        // end the agent.
        .log_internal_errors(false)
        .init();
}
