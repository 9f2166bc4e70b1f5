//! The command line as clap sees it: verbs, flags, help text and defaults.
//!
//! Only shapes live here. Values that need domain checks (instance counts, ports, durations,
//! `KEY=VALUE` pairs) stay strings so that `commands` can validate them with errors that name the
//! flag at fault, the same way config files name the field.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod access;
mod check;
mod local;
mod start;

pub use access::{
    CertsAction, CertsArgs, CertsInitArgs, DEFAULT_CA_DAYS, DEFAULT_CERT_DAYS, IssueArgs,
    IssueKind, MAX_CERT_DAYS, TokenArgs, TokenCommand,
};
pub use check::parse_from;
pub use local::{DownArgs, UpArgs};
pub use start::StartArgs;

/// Address of the coordinator when neither `--coordinator` nor the environment says otherwise.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7450";
/// The help heading of the flags that say which coordinator to reach and how: every verb
/// takes them, and a verb's help lists its own flags apart from them.
const CONNECTION: &str = "Connection options";

/// Where `pmcluster up` makes the local coordinator listen by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7450";

#[derive(Debug, Parser)]
#[command(
    name = "pmcluster",
    version,
    about = "PM2-style process management across many machines",
    long_about = "PM2-style process management across many machines.\n\n\
        Start a local cluster with `pmcluster up`, then run apps on it:\n  \
        pmcluster start \"node server.js\" --name web --instances 4 --port 3000-3003\n  \
        pmcluster scale web 8\n  \
        pmcluster list",
    propagate_version = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// Coordinator to talk to: http://HOST:PORT, https://HOST:PORT (with --ca, --cert, --key) or
    /// HOST:PORT; for an HA pair, a comma-separated
    /// list (calls follow a standby's pointer to the leader, else go to the next URL)
    #[arg(
        long,
        global = true,
        help_heading = CONNECTION,
        env = "PMCLUSTER_COORDINATOR",
        default_value = DEFAULT_COORDINATOR,
        value_name = "URL"
    )]
    pub coordinator: String,

    /// `coordinator` is the default: neither the flag nor the environment gave one (set by
    /// [`parse_from`]; the CLI then looks for the coordinator `pmcluster up` started).
    #[arg(skip)]
    pub coordinator_defaulted: bool,

    /// The cluster CA (PEM) that signed the coordinator's certificate; needed for https://
    /// coordinators
    #[arg(
        long,
        global = true,
        help_heading = CONNECTION,
        env = "PMCLUSTER_CA",
        value_name = "FILE"
    )]
    pub ca: Option<std::path::PathBuf>,

    /// Your client certificate (PEM), e.g. from `pmcluster certs issue user NAME`; with --key
    #[arg(
        long,
        global = true,
        help_heading = CONNECTION,
        env = "PMCLUSTER_CERT",
        value_name = "FILE"
    )]
    pub cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --cert
    #[arg(
        long,
        global = true,
        help_heading = CONNECTION,
        env = "PMCLUSTER_KEY",
        value_name = "FILE"
    )]
    pub key: Option<std::path::PathBuf>,

    /// An API token (from `pmcluster token create`), sent as a bearer token with every call;
    /// instead of, or besides, --cert/--key
    #[arg(
        long,
        global = true,
        help_heading = CONNECTION,
        env = "PMCLUSTER_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Output format: human tables, or JSON or YAML for scripts (logs and events: one JSON
    /// object per line, or one YAML document per item)
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Yaml,
    /// `endpoints` only: an nginx upstream block
    Nginx,
    /// `endpoints` only: an HAProxy backend section
    Haproxy,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command line as an app, or start a stopped app again
    #[command(after_help = "Examples:\n  \
        pmcluster start \"node server.js\" --name web --instances 4 --port 3000-3003\n  \
        pmcluster start \"python worker.py --queue default\" --name worker -i 2\n  \
        pmcluster start \"./serve.sh | tee out.log\" --name served --shell\n  \
        pmcluster start web               # start a stopped app again\n  \
        pmcluster start web --instance 2  # start one stopped instance")]
    Start(Box<StartArgs>),

    /// Create or update the apps of a config file (JSON, YAML or TOML)
    Apply(ApplyArgs),

    /// Set the number of instances of an app
    Scale(ScaleArgs),

    /// List instances: where they run and how they are doing
    #[command(visible_aliases = ["ls", "ps"])]
    List(ListArgs),

    /// Show an app: its spec, version and instances (--instance N: only that one's row)
    #[command(visible_aliases = ["describe", "show"])]
    Info(TargetArgs),

    /// Stop an app's instances (they stay in the app until started again); `all`: every app
    Stop(StopArgs),

    /// Restart an app's instances: in place, or in waves with --rolling; `all`: every app
    #[command(after_help = "Examples:\n  \
        pmcluster restart web                 # every instance at once, in place\n  \
        pmcluster restart web --instance 2\n  \
        pmcluster restart web --rolling       # in waves, under the app's update policy\n  \
        pmcluster restart web --rolling --max-surge 2 --shutdown-delay 5s  # change it first")]
    Restart(RestartArgs),

    /// Send a signal to the main process of an app's running instances
    #[command(after_help = "Examples:\n  \
        pmcluster signal web SIGUSR2              # every running instance\n  \
        pmcluster signal web --instance 2 HUP\n  \
        pmcluster signal web 12")]
    Signal(SignalArgs),

    /// Hand a one-line message to an app's instances: all (broadcast) or one (unicast)
    #[command(
        after_help = "An instance receives it on the unix socket named by its \
        PMCLUSTER_MESSAGES environment variable (see the README).\n\nExamples:\n  \
        pmcluster send web 'flush-cache'          # every running instance\n  \
        pmcluster send web --instance 0 '{\"cmd\":\"reload-config\"}'"
    )]
    Send(SendArgs),

    /// Take an instance out of rotation (off the endpoints) without stopping it
    #[command(after_help = "Examples:\n  \
        pmcluster disable web --instance 1\n  \
        pmcluster enable web --instance 1")]
    Disable(OneInstanceArgs),

    /// Put a disabled instance (or, without --instance, every one) back in rotation
    Enable(TargetArgs),

    /// Roll out a new version: from a file, from --set changes, or with a new count; with no
    /// option at all, restart in waves without downtime (PM2's reload)
    #[command(after_help = "Examples:\n  \
        pmcluster reload web                               # a rolling restart, as pm2 reload\n  \
        pmcluster reload web --set env.FEATURE=on          # shows the diff, asks, rolls out\n  \
        pmcluster reload web -f apps.json --yes\n  \
        pmcluster reload web --set update.max_surge=2 --set args='[\"server.js\",\"--v2\"]'\n  \
        pmcluster reload web --set env.V=2 --max-surge 2 --canary 1 --yes")]
    Reload(ReloadArgs),

    /// Follow and steer rolling updates: status, pause, resume, promote, history, undo
    Rollout(RolloutArgs),

    /// The app's online, healthy endpoints (host:port), as text, JSON, YAML, nginx or HAProxy config
    #[command(after_help = "Examples:\n  \
        pmcluster endpoints web -o nginx\n  \
        pmcluster endpoints web -o haproxy --watch --file /etc/haproxy/web.cfg \\\n      \
        --exec 'kill -USR2 $(cat /run/haproxy.pid)'")]
    Endpoints(EndpointsArgs),

    /// Stop every instance of an app and forget the app; `all`: every app
    #[command(visible_aliases = ["del", "rm"])]
    Delete(DeleteArgs),

    /// Show the recent output of an app (or of every app), and follow it with -f
    Logs(LogsArgs),

    /// An app's figures in one block: CPU and memory totals, averages and extremes, restarts,
    /// uptimes, instances per node
    Stats(AppArg),

    /// An app's instances side by side: CPU and memory against the app's mean, restarts, uptime
    Compare(AppArg),

    /// List the nodes (hosts running an agent); adopt or forget one
    Nodes(NodesArgs),

    /// List the apps with their versions and instance counts
    Apps,

    /// Print apps as a config file that `apply -f` takes back (all apps, or one)
    #[command(
        after_help = "Examples:\n  pmcluster export -o yaml > apps.yaml   # every app, \
        as it is now\n  pmcluster apply -f apps.yaml             # back, here or on another \
        cluster\n\nJSON unless -o yaml. Secret env values are not exported: they read \
        {\"secret\": \"<secret>\"}, which apply takes as \"keep the stored value\" for an app \
        that has one; set them again for a new one."
    )]
    Export(ExportArgs),

    /// Show the coordinators (leader or standby, term, how long each has held its lease, agents) and the store's
    /// health
    #[command(
        after_help = "Exits 0 when a coordinator leads, answers, and the store is healthy; 3 when they answered \
        that the cluster cannot serve (none leads, the leader did not answer, or the store is unhealthy; the \
        table is shown all the same); 1 when none answered."
    )]
    Status,

    /// Show nodes with their instances as a tree
    Topology(TopologyArgs),

    /// Move every instance off a node, one at a time, and keep new ones away
    #[command(
        after_help = "Each replacement starts on another node and must be online before \
        the instance it replaces is stopped.\nUndo with: pmcluster undrain NODE"
    )]
    Drain(NodeArg),

    /// Make a drained node eligible for new instances again
    Undrain(NodeArg),

    /// Print recent cluster events, then new ones as they happen, until Ctrl-C
    Events(EventsArgs),

    /// A live terminal view: instances with CPU and memory sparklines, nodes, and logs
    #[command(
        after_help = "Keys: ↑/↓ (or j/k) select an instance, whose logs show below; Home/End; \
        Tab switches between instances and nodes; q, Esc or Ctrl-C quits."
    )]
    Monit(MonitArgs),

    /// Scale an app from its CPU or memory, within bounds; without options, show its state
    #[command(after_help = "Examples:\n  \
        pmcluster autoscale web --min 2 --max 10 --cpu-threshold 70\n  \
        pmcluster autoscale web --mode target --cpu-threshold 60 --cooldown 30s\n  \
        pmcluster autoscale web            # policy, current metrics, last decisions\n  \
        pmcluster autoscale web --off")]
    Autoscale(AutoscaleArgs),

    /// Start a local coordinator and agent in the background
    Up(UpArgs),

    /// Stop the local coordinator and agent started by `up`
    Down(DownArgs),

    /// Make the cluster's CA and the certificates it signs, as files in --dir
    #[command(after_help = "Examples:\n  \
        pmcluster certs init --dir pki\n  \
        pmcluster certs issue coordinator --dir pki --san coord.example --san 10.0.0.5\n  \
        pmcluster certs issue agent host-a --dir pki\n  \
        pmcluster certs issue user alice --role admin --dir pki\n  \
        pmcluster certs issue user ci --role operate --app 'web*' --dir pki")]
    Certs(CertsArgs),

    /// Make, list and revoke API tokens (admin only)
    #[command(after_help = "Examples:\n  \
        pmcluster token create --role read --description dashboards\n  \
        pmcluster token create --role operate --app 'web*'\n  \
        pmcluster token list\n  \
        pmcluster token revoke 3f9a1c0d5e7b\n\n\
        Use a token with --token TOKEN or PMCLUSTER_TOKEN=TOKEN.")]
    Token(TokenArgs),

    /// Show who the coordinator takes you for, and your role
    Whoami,

    /// Convert another process manager's apps into a pmcluster config file
    #[command(subcommand)]
    Import(ImportSource),

    /// Print a shell completion script for bash, zsh or fish
    #[command(after_help = "Examples:\n  \
        source <(pmcluster completions bash)\n  \
        pmcluster completions zsh > \"${fpath[1]}/_pmcluster\"\n  \
        pmcluster completions fish > ~/.config/fish/completions/pmcluster.fish")]
    Completions(CompletionsArgs),

    /// Write man pages, one per command and subcommand, into a directory
    #[command(after_help = "Example:\n  \
        pmcluster man --dir /usr/local/share/man/man1 && man pmcluster-start")]
    Man(ManArgs),
}

#[derive(Debug, Subcommand)]
pub enum ImportSource {
    /// From `pm2 jlist` output or a JSON ecosystem file; writes the config `apply -f` reads
    #[command(after_help = "Examples:\n  \
        pm2 jlist > pm2.json && pmcluster import pm2 pm2.json --out apps.json\n  \
        pmcluster import pm2 ecosystem.json -o yaml > apps.yaml\n  \
        pmcluster apply -f apps.json\n\n\
        A JavaScript ecosystem file must be turned into JSON first:\n  \
        node -e \"console.log(JSON.stringify(require('./ecosystem.config.js')))\" > eco.json\n\n\
        Settings pmcluster cannot honour are named in warnings on standard error.")]
    Pm2 {
        /// `pm2 jlist` output or a JSON ecosystem file; - for standard input
        file: String,
        /// Write the config to this file instead of standard output (YAML for .yaml/.yml,
        /// else JSON; -o yaml also picks YAML)
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The shells `completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory for the pages (pmcluster.1, pmcluster-start.1, ...); created if missing
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Replace the instances in waves under the app's update policy: no downtime where a
    /// replacement can start beside the one it replaces (auto: ports, room in the port range,
    /// another node); with a fixed port on one host each instance is stopped, then started
    #[arg(long, conflicts_with = "instance")]
    pub rolling: bool,

    // With --rolling: the app's update policy is changed first, then the restart follows it.
    #[command(flatten)]
    pub update: UpdateFlags,

    #[command(flatten)]
    pub wait: WaitFlags,
}

/// The app's update policy (the config's `update` block), as flags of `start`, `reload` and
/// `restart --rolling`. Strings, so that `validate::PolicyChanges` names the flag at fault.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Update policy (flags left out keep the current values)")]
pub struct UpdateFlags {
    /// Replacements started next to the instances they replace, per wave (default 1)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_surge: Option<String>,

    /// Instances that may be replaced stop-then-start at once (default 0)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_unavailable: Option<String>,

    /// How long a replacement must be online and healthy before it counts, e.g. 5s (default 5s;
    /// a plain number is milliseconds)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub min_healthy_time: Option<String>,

    /// A replacement not healthy within this long fails the rollout (default 5m)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub healthy_deadline: Option<String>,

    /// The rollout fails when no instance is replaced within this long (default 10m)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub progress_deadline: Option<String>,

    /// Roll back to the previous version when the rollout fails (default true)
    #[arg(
        long,
        value_name = "true|false",
        allow_hyphen_values = true,
        conflicts_with = "no_auto_rollback"
    )]
    pub auto_rollback: Option<String>,

    /// Same as --auto-rollback false
    #[arg(long)]
    pub no_auto_rollback: bool,

    /// Replace N instances first, then wait for `pmcluster rollout promote` (default 0: none)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub canary: Option<String>,

    /// How long a replaced instance is out of the endpoints before its stop signal (default 0s)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub shutdown_delay: Option<String>,
}

impl UpdateFlags {
    /// Whether any update-policy flag was given.
    pub fn any(&self) -> bool {
        self.max_surge.is_some()
            || self.max_unavailable.is_some()
            || self.min_healthy_time.is_some()
            || self.healthy_deadline.is_some()
            || self.progress_deadline.is_some()
            || self.auto_rollback.is_some()
            || self.no_auto_rollback
            || self.canary.is_some()
            || self.shutdown_delay.is_some()
    }
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// App name
    pub app: String,

    /// Take the app's new spec from this config file
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "instances"
    )]
    pub file: Option<String>,

    /// Change one field (dotted for blocks: env.NODE_ENV=prod, update.max_surge=2); repeat
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,

    /// New instance count
    #[arg(long, value_name = "N")]
    pub instances: Option<u32>,

    /// Apply without asking (the diff is still shown in table output)
    #[arg(short = 'y', long)]
    pub yes: bool,

    /// Accepted as PMDaemon writes it (`reload web --rolling --instances 6`): a reload always
    /// rolls
    #[arg(long)]
    pub rolling: bool,

    // Applied after -f and --set. A policy change alone restarts nothing: it applies to the next
    // rollout.
    #[command(flatten)]
    pub update: UpdateFlags,

    #[command(flatten)]
    pub wait: WaitFlags,
}

#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// The current rollout; --wait follows it to the end (exit 1 if it fails)
    Status {
        app: String,
        #[arg(long)]
        wait: bool,
    },
    /// Start no more replacements (those in progress finish)
    Pause { app: String },
    /// Continue a paused rollout
    Resume { app: String },
    /// Continue past the canaries
    Promote { app: String },
    /// Past rollouts and the versions kept for undo
    History { app: String },
    /// Roll back to the previous version (after a failed rollout left standing: the version
    /// still serving), or --to-version N
    Undo {
        app: String,
        #[arg(long, value_name = "N")]
        to_version: Option<u64>,
    },
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Only this app (default: every app)
    pub app: Option<String>,
}

#[derive(Debug, Args)]
pub struct EndpointsArgs {
    /// App name
    pub app: String,

    /// Keep running and rewrite the output on every change
    #[arg(long)]
    pub watch: bool,

    /// Write to this file (atomically) instead of standard output
    #[arg(long, value_name = "FILE")]
    pub file: Option<String>,

    /// With --watch: run this shell command after each change (e.g. reload the load balancer)
    #[arg(long, value_name = "CMD", requires = "watch")]
    pub exec: Option<String>,

    /// With -o nginx or -o haproxy: how the load balancer picks an instance (default
    /// roundrobin); sticky keeps each client address on one instance
    #[arg(long, value_enum, value_name = "POLICY")]
    pub balance: Option<Balance>,
}

/// Load-balancing policies of `endpoints -o nginx|haproxy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Balance {
    /// In turn (nginx's and HAProxy's default)
    #[default]
    Roundrobin,
    /// To the instance with the fewest active connections
    Leastconn,
    /// By a hash of the client's address, so a client keeps its instance
    Sticky,
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    #[command(subcommand)]
    pub action: Option<NodesAction>,
}

#[derive(Debug, Subcommand)]
pub enum NodesAction {
    /// Adopt a quarantined node into this cluster: the instances it runs become this cluster's
    #[command(
        after_help = "A node is quarantined when its agent served another cluster, or applied \
        newer desired sets than this coordinator's store knows (a lost or restored state file). \
        Its instances keep running and are listed; nothing is sent to it until it is adopted. \
        Apps it runs that this cluster does not have are created from the agent's specs."
    )]
    Adopt(AdoptArgs),
    /// Forget a node that is not connected: its instances are placed elsewhere at once
    #[command(visible_aliases = ["rm"])]
    Forget(NodeArg),
}

#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// Node name, as `pmcluster nodes` shows it
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub node: Option<String>,
    /// Adopt every quarantined node, in one step (so no index is placed twice meanwhile)
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct NodeArg {
    /// Node name, as `pmcluster nodes` shows it
    pub node: String,
}

#[derive(Debug, Args)]
pub struct TopologyArgs {
    /// Only this app's instances
    pub app: Option<String>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Config file, or - for standard input
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: String,

    /// File format (default: from the file extension, JSON for stdin)
    #[arg(long, value_enum)]
    pub format: Option<FileFormat>,

    #[command(flatten)]
    pub wait: WaitFlags,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FileFormat {
    Json,
    Yaml,
    Toml,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// App name
    pub app: String,
    /// New number of instances (0 or more), or +N / -N to add or remove N
    // A string, so "-1" and "abc" reach our own message instead of clap's.
    #[arg(value_name = "N", allow_negative_numbers = true)]
    pub instances: String,

    #[command(flatten)]
    pub wait: WaitFlags,
}

/// `--wait` of the verbs that start or stop instances.
#[derive(Debug, Clone, Args)]
pub struct WaitFlags {
    /// Return once every instance is online (and healthy, with a health check); exit 1 if one
    /// errors or time runs out
    #[arg(long)]
    pub wait: bool,

    /// How long --wait waits
    #[arg(long, value_name = "DURATION", default_value = WAIT_TIMEOUT, value_parser = parse_interval,
          requires = "wait")]
    pub wait_timeout: std::time::Duration,
}

/// `--wait-timeout` when not given, for every verb that has it.
pub const WAIT_TIMEOUT: &str = "60s";

impl Default for WaitFlags {
    /// No `--wait`, and `--wait-timeout` as clap sets it when not given.
    fn default() -> WaitFlags {
        WaitFlags {
            wait: false,
            // A constant that clap parses on every run of these verbs (and a test checks).
            wait_timeout: parse_interval(WAIT_TIMEOUT).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this app's instances
    pub app: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// App name
    pub app: String,

    /// Return once every process of the app has ended; exit 1 if time runs out
    #[arg(long)]
    pub wait: bool,

    /// How long --wait waits
    #[arg(long, value_name = "DURATION", default_value = WAIT_TIMEOUT, value_parser = parse_interval,
          requires = "wait")]
    pub wait_timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Return once every instance stopped is reported stopped (its process ended); exit 1 if
    /// time runs out
    #[arg(long)]
    pub wait: bool,

    /// How long --wait waits
    #[arg(long, value_name = "DURATION", default_value = WAIT_TIMEOUT, value_parser = parse_interval,
          requires = "wait")]
    pub wait_timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct AppArg {
    /// App name
    pub app: String,
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// App name
    pub app: String,
    /// Only the instance with this index
    #[arg(long, value_name = "INDEX")]
    pub instance: Option<u32>,
}

#[derive(Debug, Args)]
pub struct SignalArgs {
    /// App name
    pub app: String,
    /// Only the instance with this index
    #[arg(long, value_name = "INDEX")]
    pub instance: Option<u32>,
    /// A signal name with or without SIG (SIGUSR2, USR2) or its number (12)
    pub signal: String,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// App name
    pub app: String,
    /// Only the instance with this index (unicast); without it, every instance (broadcast)
    #[arg(long, value_name = "INDEX")]
    pub instance: Option<u32>,
    /// One line of text, at most 64 KiB
    pub message: String,
}

#[derive(Debug, Args)]
pub struct OneInstanceArgs {
    /// App name
    pub app: String,
    /// The instance's index
    #[arg(long, value_name = "INDEX")]
    pub instance: u32,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// App name; every app's when left out or `all` (unless an app is named `all`)
    pub app: Option<String>,
    /// Only the instance with this index
    #[arg(long, value_name = "INDEX")]
    pub instance: Option<u32>,
    /// Lines of history per instance and stream (default 20, at most 10000); 0 for none: with
    /// -f, only what is written from now on
    #[arg(short = 'n', long, value_name = "N", allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub lines: Option<u32>,
    /// Keep printing new lines until Ctrl-C
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Print only the lines, without the app[index] prefix
    #[arg(long)]
    pub raw: bool,
    /// Only what the instances wrote to stderr (PM2's --err)
    #[arg(long, conflicts_with = "out")]
    pub err: bool,
    /// Only what the instances wrote to stdout (PM2's --out)
    #[arg(long)]
    pub out: bool,
}

#[derive(Debug, Args)]
pub struct MonitArgs {
    /// Only this app's instances
    pub app: Option<String>,

    /// Only the app's instance with this index
    #[arg(long, value_name = "INDEX", requires = "app")]
    pub instance: Option<u32>,

    /// How often to refresh the figures (at least 100ms)
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
    pub interval: std::time::Duration,
}

fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. 500ms, 2s)"))
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this app's events
    pub app: Option<String>,

    /// Show up to N recent events first (of the last 1,000 the leader keeps in memory since it
    /// started leading)
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub history: u32,

    /// Keep printing new events until Ctrl-C (the default; the spelling of PM2 and kubectl)
    #[arg(short = 'f', long, conflicts_with = "no_follow")]
    pub follow: bool,

    /// Exit after the recent events instead of following new ones
    #[arg(long)]
    pub no_follow: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("change").multiple(true).args([
    "min", "max", "cpu_threshold", "memory_threshold", "mode", "cooldown",
    "scale_down_fraction", "tolerance", "up_stabilization", "down_stabilization",
])))]
pub struct AutoscaleArgs {
    /// App name
    pub app: String,

    /// Turn autoscaling off (the instance count stays where it is)
    #[arg(long, conflicts_with = "change")]
    pub off: bool,

    /// Fewest instances
    #[arg(long, value_name = "N")]
    pub min: Option<u32>,

    /// Most instances
    #[arg(long, value_name = "N")]
    pub max: Option<u32>,

    /// Average CPU per instance, percent of one core, e.g. 70
    #[arg(long, value_name = "PERCENT")]
    pub cpu_threshold: Option<f64>,

    /// Average memory per instance: percent of its limit (80) or a size (512M)
    #[arg(long, value_name = "PERCENT|SIZE")]
    pub memory_threshold: Option<String>,

    /// threshold (+1/-1, the default) or target (proportional, like Kubernetes' HPA)
    #[arg(long, value_name = "MODE")]
    pub mode: Option<String>,

    /// Minimum time between two changes, e.g. 60s
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub cooldown: Option<String>,

    /// Threshold mode: scale down below this fraction of the threshold (default 0.5)
    #[arg(long, value_name = "FRACTION")]
    pub scale_down_fraction: Option<f64>,

    /// Target mode: no change within 1 +- this of the target (default 0.1)
    #[arg(long, value_name = "FRACTION")]
    pub tolerance: Option<f64>,

    /// How long the load must stay high before scaling up (default 0s)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub up_stabilization: Option<String>,

    /// How long the load must stay low before scaling down (default 5m)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub down_stabilization: Option<String>,
}

#[cfg(test)]
mod tests;
