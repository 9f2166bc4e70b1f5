//! `pmcluster-coordinator`: parses flags, validates them before binding, serves until SIGTERM.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use pmcluster_coordinator::control::ControlConfig;
use pmcluster_coordinator::core::leak::LeakPolicy;
use pmcluster_coordinator::core::quota::{self, Caps, WriteRate};
use pmcluster_coordinator::lead::{Seat, StoreInfo};
use pmcluster_coordinator::server::{self, Config, ServeOptions, StoreChoice};
use pmcluster_coordinator::throttle::{self, Limits};
use pmcluster_coordinator::tls::{EtcdTlsFiles, TlsFiles};

/// The pmcluster coordinator: stores apps, places instances on agents, serves the gRPC API.
#[derive(Debug, Parser)]
#[command(name = "pmcluster-coordinator", version)]
struct Args {
    /// Address to serve gRPC on (the CLI and agents connect here). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7450", env = "PMCLUSTER_LISTEN")]
    listen: String,
    /// Directory for the state file (state.redb). Needed with the embedded store.
    #[arg(long, env = "PMCLUSTER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where the cluster's state lives: "embedded" (one file in --data-dir, one coordinator) or
    /// "etcd" (shared by an HA pair of coordinators, which elect their leader there).
    #[arg(long, default_value = "embedded", env = "PMCLUSTER_STORE")]
    store: String,
    /// With --store etcd: etcd's client URLs, comma-separated, e.g.
    /// "http://h1:2379,http://h2:2379,http://h3:2379".
    #[arg(long, env = "PMCLUSTER_ETCD_ENDPOINTS")]
    etcd_endpoints: Option<String>,
    /// With --store etcd: the key prefix of this cluster; coordinators with the same prefix form
    /// one pair.
    #[arg(
        long,
        default_value = "/pmcluster/default",
        env = "PMCLUSTER_ETCD_PREFIX"
    )]
    etcd_prefix: String,
    /// With --store etcd: the CA (PEM) that signed etcd's server certificate. With --etcd-cert
    /// and --etcd-key, the connection to etcd is TLS (https:// endpoints).
    #[arg(long, env = "PMCLUSTER_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// With --store etcd: the client certificate (PEM) presented to etcd, which must trust its
    /// CA (etcd's --trusted-ca-file); the coordinator's own from `pmcluster certs issue
    /// coordinator` will do.
    #[arg(long, env = "PMCLUSTER_ETCD_CERT")]
    etcd_cert: Option<PathBuf>,
    /// The private key (PEM) of --etcd-cert.
    #[arg(long, env = "PMCLUSTER_ETCD_KEY")]
    etcd_key: Option<PathBuf>,
    /// The URL clients and agents should dial to reach this coordinator, e.g.
    /// "http://10.0.0.2:7450". A standby hands it out as the leader's address. Defaults to
    /// http:// and the bound address (which must then not be 0.0.0.0 with --store etcd).
    #[arg(long, env = "PMCLUSTER_ADVERTISE")]
    advertise: Option<String>,
    /// With --store etcd: the TTL of this coordinator's etcd lease, in whole seconds (at least
    /// 2, etcd's minimum). A leader that cannot renew it within about two thirds of it steps
    /// down; a standby takes over at most about this long after the leader is lost.
    #[arg(long, default_value = "2s")]
    lease_ttl: String,
    /// A node that has not reported for this long is down, e.g. "10s".
    #[arg(long, default_value = "10s")]
    heartbeat_timeout: String,
    /// How often agents report, e.g. "1s".
    #[arg(long, default_value = "1s")]
    heartbeat_interval: String,
    /// An instance whose memory grew steadily over this long is reported as a suspected leak
    /// (event `instance.leak_suspected`, `list` and `info`), e.g. "5m".
    #[arg(long, default_value = "5m")]
    leak_window: String,
    /// Slower growth than this much a minute is never a suspected leak, e.g. "1M" or "512K".
    #[arg(long, default_value = "1M")]
    leak_min_growth: String,
    /// On SIGTERM/SIGINT, how long in-flight calls may take to finish before the coordinator
    /// exits anyway, e.g. "5s". Agent sessions close at once; agents keep their instances.
    #[arg(long, default_value = "5s", env = "PMCLUSTER_SHUTDOWN_GRACE")]
    shutdown_grace: String,
    /// Serve mutual TLS with this certificate (PEM), e.g. from `pmcluster certs issue
    /// coordinator`. Needs --tls-key and --client-ca too.
    #[arg(long, env = "PMCLUSTER_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "PMCLUSTER_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The CA (PEM) every client certificate must be signed by: the cluster CA (`ca.pem`).
    /// Connections without such a certificate are refused.
    #[arg(long, env = "PMCLUSTER_CLIENT_CA")]
    client_ca: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP, no authentication), e.g.
    /// 127.0.0.1:9450. The figures hold names and counts, never env values or secrets; a
    /// non-loopback address lets anyone who reaches it read them.
    #[arg(long, env = "PMCLUSTER_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Serve plaintext on a non-loopback --listen address: anyone who reaches the port can
    /// then run commands on every host. Without TLS and without this flag, such a coordinator
    /// refuses to start.
    /// In the environment, any value but "", 0, false, f, no, off or n means on.
    #[arg(
        long,
        env = "PMCLUSTER_INSECURE",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    insecure: bool,

    // Limits: a request over one is refused (RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED) with a
    // message naming the flag.
    /// Most apps the cluster holds; applying a new app past it is refused.
    #[arg(long, default_value_t = quota::DEFAULT_MAX_APPS, env = "PMCLUSTER_MAX_APPS", help_heading = "Limits")]
    max_apps: u32,
    /// Most instances of one app (its count, or its autoscaling maximum), at most 100000. At the
    /// default every instance of an app whose spec is under 12 KiB fits on one node.
    #[arg(
        long,
        default_value_t = quota::DEFAULT_MAX_INSTANCES_PER_APP,
        env = "PMCLUSTER_MAX_INSTANCES_PER_APP",
        help_heading = "Limits"
    )]
    max_instances_per_app: u32,
    /// Most calls open at once on one client connection (HTTP/2 max concurrent streams: each
    /// `logs -f`, `events` or endpoints watch holds one). Clients queue calls past it.
    #[arg(
        long,
        default_value_t = throttle::DEFAULT_MAX_STREAMS_PER_CONNECTION,
        env = "PMCLUSTER_MAX_STREAMS_PER_CONNECTION",
        help_heading = "Limits"
    )]
    max_streams_per_connection: u32,
    /// How long a unary call may take before it fails with DEADLINE_EXCEEDED, e.g. "30s" or
    /// "30" (seconds). Streams (logs -f, events, endpoints, agent sessions) are not cut.
    #[arg(
        long,
        default_value = "30s",
        env = "PMCLUSTER_REQUEST_TIMEOUT",
        help_heading = "Limits"
    )]
    request_timeout: String,
    /// Writes (every call that changes state: apply, scale, start/stop/restart, delete, drain,
    /// rollout and autoscale commands...) per second, on average, across all clients; reads are
    /// not limited. 0 turns the limit off.
    #[arg(
        long,
        default_value_t = quota::DEFAULT_WRITE_RATE,
        env = "PMCLUSTER_WRITE_RATE",
        help_heading = "Limits"
    )]
    write_rate: u32,
    /// Writes that may come at once before --write-rate applies.
    #[arg(
        long,
        default_value_t = quota::DEFAULT_WRITE_BURST,
        env = "PMCLUSTER_WRITE_BURST",
        help_heading = "Limits"
    )]
    write_burst: u32,
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

/// `--etcd-ca`, `--etcd-cert` and `--etcd-key`: all three or none.
fn etcd_tls(
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> anyhow::Result<Option<EtcdTlsFiles>> {
    match (ca, cert, key) {
        (None, None, None) => Ok(None),
        (Some(ca), Some(cert), Some(key)) => Ok(Some(EtcdTlsFiles { ca, cert, key })),
        (ca, cert, key) => {
            let missing: Vec<&str> = [
                (ca.is_none(), "--etcd-ca"),
                (cert.is_none(), "--etcd-cert"),
                (key.is_none(), "--etcd-key"),
            ]
            .into_iter()
            .filter_map(|(gone, flag)| gone.then_some(flag))
            .collect();
            anyhow::bail!(
                "{} missing: --etcd-ca, --etcd-cert and --etcd-key go together (all three or \
                 none)",
                missing.join(" and ")
            );
        }
    }
}

/// The limits flags, checked.
fn limits(args: &Args) -> anyhow::Result<(Caps, Limits)> {
    anyhow::ensure!(args.max_apps >= 1, "--max-apps: must be at least 1");
    let most = pmcluster_spec::app::MAX_INSTANCES;
    anyhow::ensure!(
        (1..=most).contains(&args.max_instances_per_app),
        "--max-instances-per-app: {} is not between 1 and {most}",
        args.max_instances_per_app
    );
    anyhow::ensure!(
        args.max_streams_per_connection >= 1,
        "--max-streams-per-connection: must be at least 1"
    );
    // A bare number is seconds, as in the flag's name.
    let timeout = match args.request_timeout.trim().parse::<u64>() {
        Ok(secs) => format!("{secs}s"),
        Err(_) => args.request_timeout.clone(),
    };
    let request_timeout = duration("request-timeout", &timeout)?;
    let write_rate = if args.write_rate == 0 {
        None
    } else {
        anyhow::ensure!(
            args.write_burst >= 1,
            "--write-burst: must be at least 1 (or turn the limit off with --write-rate 0)"
        );
        Some(WriteRate {
            per_sec: args.write_rate,
            burst: args.write_burst,
        })
    };
    let caps = Caps {
        max_apps: args.max_apps,
        max_instances_per_app: args.max_instances_per_app,
    };
    let limits = Limits {
        max_streams_per_connection: args.max_streams_per_connection,
        request_timeout,
        write_rate,
    };
    Ok((caps, limits))
}

fn validate(args: Args) -> anyhow::Result<Config> {
    let (caps, limits) = limits(&args)?;
    let listen: SocketAddr = args.listen.parse().with_context(|| {
        format!(
            "--listen: {:?} is not an address like 127.0.0.1:7450",
            args.listen
        )
    })?;
    let metrics_listen = match &args.metrics_listen {
        None => None,
        Some(a) => Some(a.parse::<SocketAddr>().with_context(|| {
            format!("--metrics-listen: {a:?} is not an address like 127.0.0.1:9450")
        })?),
    };
    // Else the gRPC bind, which comes second, fails as if another process held the port.
    if let Some(addr) = metrics_listen
        && addr == listen
        && addr.port() != 0
    {
        anyhow::bail!(
            "--metrics-listen {addr} is the --listen address too: give one of them another port"
        );
    }
    if let Some(addr) = metrics_listen
        && !addr.ip().is_loopback()
    {
        tracing::warn!(
            %addr,
            "serving /metrics on a non-loopback address (--metrics-listen): anyone who can \
             reach it can read the cluster's app, node and instance figures"
        );
    }
    let heartbeat_timeout = duration("heartbeat-timeout", &args.heartbeat_timeout)?;
    let heartbeat_interval = duration("heartbeat-interval", &args.heartbeat_interval)?;
    anyhow::ensure!(
        heartbeat_interval < heartbeat_timeout,
        "--heartbeat-interval must be shorter than --heartbeat-timeout"
    );
    let shutdown_grace = duration("shutdown-grace", &args.shutdown_grace)?;
    let leak_window = duration("leak-window", &args.leak_window)?;
    let leak_min_growth =
        pmcluster_spec::placement::parse_memory("leak_min_growth", &args.leak_min_growth)
            .map_err(|e| anyhow::anyhow!("--leak-min-growth: {e}"))?;
    let leak = LeakPolicy {
        window_ms: i64::try_from(leak_window.as_millis()).unwrap_or(i64::MAX),
        min_growth_per_min: leak_min_growth as f64,
        ..LeakPolicy::default()
    };
    // A service manager kills what outlives its stop timeout (systemd: 90 s by default); a grace
    // longer than that would never be honoured.
    anyhow::ensure!(
        shutdown_grace <= Duration::from_secs(60),
        "--shutdown-grace: {} is more than 60s; give at most 60s",
        args.shutdown_grace
    );
    let etcd_tls = etcd_tls(args.etcd_ca, args.etcd_cert, args.etcd_key)?;
    let store = match args.store.as_str() {
        "embedded" => {
            anyhow::ensure!(
                etcd_tls.is_none(),
                "--etcd-ca, --etcd-cert and --etcd-key need --store etcd; the embedded store \
                 does not connect to etcd"
            );
            let Some(dir) = args.data_dir else {
                anyhow::bail!("--data-dir is required with --store embedded (the default)");
            };
            StoreChoice::Embedded { data_dir: dir }
        }
        "etcd" => {
            let raw = args.etcd_endpoints.unwrap_or_default();
            let endpoints: Vec<String> = raw
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect();
            anyhow::ensure!(
                !endpoints.is_empty(),
                "--etcd-endpoints is required with --store etcd, e.g. http://127.0.0.1:2379"
            );
            for e in &endpoints {
                anyhow::ensure!(
                    e.starts_with("http://") || e.starts_with("https://"),
                    "--etcd-endpoints: {e:?} is not a URL like http://HOST:2379"
                );
                if e.starts_with("https://") && etcd_tls.is_none() {
                    anyhow::bail!(
                        "--etcd-endpoints: {e} is https:// but there is no TLS to etcd: add \
                         --etcd-ca (the CA of etcd's certificate), --etcd-cert and --etcd-key \
                         (a client certificate etcd trusts, e.g. from `pmcluster certs issue \
                         coordinator`)"
                    );
                }
                if e.starts_with("http://") && etcd_tls.is_some() {
                    anyhow::bail!(
                        "--etcd-endpoints: {e} is plaintext http:// but --etcd-ca, --etcd-cert \
                         and --etcd-key ask for TLS; give https:// endpoints"
                    );
                }
            }
            let prefix = args.etcd_prefix.trim_end_matches('/').to_string();
            anyhow::ensure!(
                prefix.starts_with('/') && prefix.len() > 1,
                "--etcd-prefix: {:?} must start with / and name the cluster, e.g. /pmcluster/prod",
                args.etcd_prefix
            );
            let ttl = duration("lease-ttl", &args.lease_ttl)?;
            anyhow::ensure!(
                ttl >= Duration::from_secs(2)
                    && ttl.subsec_nanos() == 0
                    && ttl <= Duration::from_secs(60),
                "--lease-ttl: {} must be whole seconds from 2s (etcd's minimum) to 60s",
                args.lease_ttl
            );
            StoreChoice::Etcd {
                endpoints,
                prefix,
                lease_ttl: ttl,
                tls: etcd_tls,
            }
        }
        other => anyhow::bail!("--store: {other:?} is not a store; use embedded or etcd"),
    };
    if let Some(url) = &args.advertise {
        anyhow::ensure!(
            url.starts_with("http://") || url.starts_with("https://"),
            "--advertise: {url:?} is not a URL like http://HOST:7450"
        );
    } else if matches!(store, StoreChoice::Etcd { .. }) && listen.ip().is_unspecified() {
        anyhow::bail!(
            "--advertise is required when --listen is {listen} with --store etcd: a standby \
             hands it to clients as the leader's address, e.g. --advertise http://10.0.0.2:{}",
            listen.port()
        );
    }
    let tls = match (args.tls_cert, args.tls_key, args.client_ca) {
        (None, None, None) => None,
        (Some(cert), Some(key), Some(client_ca)) => Some(TlsFiles {
            cert,
            key,
            client_ca,
        }),
        (cert, key, ca) => {
            let missing: Vec<&str> = [
                (cert.is_none(), "--tls-cert"),
                (key.is_none(), "--tls-key"),
                (ca.is_none(), "--client-ca"),
            ]
            .into_iter()
            .filter_map(|(gone, flag)| gone.then_some(flag))
            .collect();
            anyhow::bail!(
                "{} missing: --tls-cert, --tls-key and --client-ca go together (all three or \
                 none)",
                missing.join(" and ")
            );
        }
    };
    if tls.is_none() && !listen.ip().is_loopback() {
        anyhow::ensure!(
            args.insecure,
            "--listen {listen} is reachable from other hosts but there is no TLS: anyone who \
             reaches it can run commands on every host. Give --tls-cert, --tls-key and \
             --client-ca (see `pmcluster certs`), or --insecure to serve plaintext anyway"
        );
        tracing::warn!(
            %listen,
            "INSECURE: serving plaintext gRPC on a non-loopback address (--insecure); anyone \
             who can reach this port can run any command on every host of the cluster"
        );
    }
    Ok(Config {
        listen,
        store,
        tls,
        advertise: args.advertise,
        control: ControlConfig {
            heartbeat_interval,
            heartbeat_timeout,
            caps,
            leak,
        },
        shutdown_grace,
        limits,
        metrics_listen,
    })
}

/// Whether `e` is the operator's to fix (a data dir, state file or TLS file that cannot be used).
fn is_store_error(e: &anyhow::Error) -> bool {
    use pmcluster_coordinator::control::ControlError;
    use pmcluster_coordinator::server::ServeError;
    use pmcluster_coordinator::tls::TlsError;
    // Files given by the TLS flags that cannot be used, read before anything is served.
    if matches!(
        e.downcast_ref::<TlsError>(),
        Some(TlsError::File { .. } | TlsError::Config(_))
    ) {
        return true;
    }
    matches!(
        e.downcast_ref::<ServeError>(),
        Some(
            ServeError::DataDir { .. }
                | ServeError::Tls(_)
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
    match &config.store {
        StoreChoice::Embedded { data_dir } => {
            let tls = match &config.tls {
                Some(files) => Some(pmcluster_coordinator::tls::server_config(files)?),
                None => None,
            };
            let metrics = server::bind_metrics(config.metrics_listen).await?;
            let control =
                server::open_control(data_dir, &config.control, metrics.as_ref().map(|(m, _)| m))?;
            let listener = server::bind(config.listen, "--listen").await?;
            let addr = listener.local_addr().context("reading the bound address")?;
            // Tests and `pmcluster up` read this line to learn the port.
            server::announce(&format!("pmcluster-coordinator listening on {addr}"));
            tracing::info!(%addr, data_dir = %data_dir.display(), "serving");
            let scheme = if tls.is_some() { "https" } else { "http" };
            let advertise = config
                .advertise
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{addr}"));
            let store = StoreInfo {
                kind: "embedded".into(),
                location: data_dir.join("state.redb").display().to_string(),
            };
            let seat = Seat::single(control, advertise, store);
            let options = ServeOptions {
                grace: config.shutdown_grace,
                limits: config.limits,
                metrics,
            };
            server::serve_tls(seat, None, tls, listener, shutdown_signal(), options).await?;
            Ok(())
        }
        StoreChoice::Etcd { .. } => run_pair(config).await,
    }
}

#[cfg(feature = "etcd")]
async fn run_pair(config: Config) -> anyhow::Result<()> {
    pmcluster_coordinator::lead::etcd::serve_pair(config, shutdown_signal()).await
}

#[cfg(not(feature = "etcd"))]
async fn run_pair(_: Config) -> anyhow::Result<()> {
    anyhow::bail!(
        "--store etcd: this pmcluster-coordinator was built without etcd support; build it \
         with 'cargo build --release --features etcd'"
    )
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in a log file or the journal.
        .with_ansi(std::io::stderr().is_terminal())
        // A log that can no longer be written (its reader gone: a closed pipe, a restarted
        // journal) drops lines rather than report it with `eprintln!`, which panics.
        .log_internal_errors(false)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn validated(extra: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["pmcluster-coordinator", "--data-dir", "d"];
        argv.extend_from_slice(extra);
        let args = Args::try_parse_from(argv).map_err(|e| e.to_string())?;
        validate(args).map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn tls_flags_go_together() {
        let all = ["--tls-cert", "c", "--tls-key", "k", "--client-ca", "ca"];
        assert!(validated(&all).is_ok_and(|c| c.tls.is_some()));
        let e = validated(&["--tls-cert", "c", "--client-ca", "ca"]).unwrap_err();
        assert!(e.starts_with("--tls-key missing"), "{e}");
        let e = validated(&["--tls-key", "k"]).unwrap_err();
        assert!(e.starts_with("--tls-cert and --client-ca missing"), "{e}");
    }

    fn etcd(endpoints: &str, extra: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["--store", "etcd", "--etcd-endpoints", endpoints];
        argv.extend_from_slice(extra);
        validated(&argv)
    }

    #[test]
    fn etcd_tls_flags_go_together_and_fit_the_endpoints() {
        let all = ["--etcd-ca", "ca", "--etcd-cert", "c", "--etcd-key", "k"];
        let tls_of = |c: Config| match c.store {
            StoreChoice::Etcd { tls, .. } => tls,
            StoreChoice::Embedded { .. } => None,
        };
        let c = etcd("https://127.0.0.1:2379", &all).expect("valid");
        assert!(tls_of(c).is_some_and(|t| t.ca.as_path() == std::path::Path::new("ca")));
        let c = etcd("http://127.0.0.1:2379", &[]).expect("valid");
        assert!(tls_of(c).is_none());

        let e = etcd("https://e:2379", &["--etcd-ca", "ca", "--etcd-cert", "c"]).unwrap_err();
        assert!(e.starts_with("--etcd-key missing"), "{e}");
        let e = etcd("https://e:2379", &["--etcd-key", "k"]).unwrap_err();
        assert!(e.starts_with("--etcd-ca and --etcd-cert missing"), "{e}");

        let e = etcd("http://a:2379,https://b:2379", &[]).unwrap_err();
        assert!(
            e.contains("https://b:2379") && e.contains("add --etcd-ca"),
            "{e}"
        );
        let e = etcd("https://a:2379,http://b:2379", &all).unwrap_err();
        assert!(
            e.contains("http://b:2379") && e.contains("give https://"),
            "{e}"
        );

        let e = validated(&all).unwrap_err();
        assert!(e.contains("need --store etcd"), "{e}");
    }

    #[test]
    fn limits_have_defaults_and_are_checked() {
        let c = validated(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.control.caps, Caps::default());
        assert_eq!(c.limits, Limits::default());
        let c = validated(&[
            "--max-apps",
            "2",
            "--max-instances-per-app",
            "3",
            "--max-streams-per-connection",
            "4",
            "--request-timeout",
            "5",
            "--write-rate",
            "6",
            "--write-burst",
            "7",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (
                c.control.caps.max_apps,
                c.control.caps.max_instances_per_app
            ),
            (2, 3)
        );
        assert_eq!(c.limits.max_streams_per_connection, 4);
        assert_eq!(c.limits.request_timeout, Duration::from_secs(5));
        assert_eq!(
            c.limits.write_rate,
            Some(WriteRate {
                per_sec: 6,
                burst: 7
            })
        );
        let off = validated(&["--write-rate", "0", "--write-burst", "0"]);
        assert!(off.is_ok_and(|c| c.limits.write_rate.is_none()));
        let ms = validated(&["--request-timeout", "1500ms"]);
        assert!(ms.is_ok_and(|c| c.limits.request_timeout == Duration::from_millis(1500)));
        for (args, flag) in [
            (["--max-apps", "0"], "--max-apps"),
            (["--max-instances-per-app", "0"], "--max-instances-per-app"),
            (
                ["--max-instances-per-app", "100001"],
                "--max-instances-per-app",
            ),
            (
                ["--max-streams-per-connection", "0"],
                "--max-streams-per-connection",
            ),
            (["--request-timeout", "0"], "--request-timeout"),
            (["--request-timeout", "soon"], "--request-timeout"),
            (["--write-burst", "0"], "--write-burst"),
        ] {
            let e = validated(&args).expect_err(flag);
            assert!(e.starts_with(flag), "{e}");
        }
    }

    #[test]
    fn plaintext_off_loopback_needs_insecure() {
        assert!(validated(&[]).is_ok_and(|c| c.tls.is_none()));
        assert!(validated(&["--listen", "[::1]:7450"]).is_ok());
        let e = validated(&["--listen", "0.0.0.0:7450"]).unwrap_err();
        assert!(e.contains("--insecure"), "{e}");
        assert!(validated(&["--listen", "0.0.0.0:7450", "--insecure"]).is_ok());
        let tls = ["--tls-cert", "c", "--tls-key", "k", "--client-ca", "ca"];
        let mut on_all = vec!["--listen", "0.0.0.0:7450"];
        on_all.extend_from_slice(&tls);
        assert!(validated(&on_all).is_ok());
    }
}
