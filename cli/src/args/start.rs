//! `start`'s command line: the program or app, and the flags that make its spec.

use clap::Args;

use super::{UpdateFlags, WaitFlags};

#[derive(Debug, Clone, Args)]
pub struct StartArgs {
    /// The command line to run ("node server.js"), or the name of an existing app to start again
    #[arg(value_name = "COMMAND|APP")]
    pub target: String,

    /// App name (default: the program's file name)
    #[arg(short = 'n', long)]
    pub name: Option<String>,

    /// Number of instances, or max for one per CPU core of the eligible nodes
    #[arg(short = 'i', long, value_name = "N", allow_negative_numbers = true)]
    pub instances: Option<String>,

    /// Ports: 3000 (one instance), 3000-3003 (instance i gets 3000+i) or auto:3000-3100
    #[arg(short = 'p', long, value_name = "PORTS")]
    pub port: Option<String>,

    /// Environment variable for every instance; repeat for more
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Environment variable whose value is secret: the instance gets it, every output shows
    /// "<secret>"; repeat for more
    #[arg(long = "secret-env", value_name = "KEY=VALUE")]
    pub secret_env: Vec<String>,

    /// Working directory of each instance on its host
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,

    /// Extra environment variable that receives the instance index
    #[arg(long, value_name = "VAR")]
    pub instance_var: Option<String>,

    /// Run the command line through /bin/sh -c (needed for |, &&, ;, redirections)
    #[arg(long)]
    pub shell: bool,

    /// Leave instances down when they exit
    #[arg(long)]
    pub no_autorestart: bool,

    /// Delay before a crashed instance is restarted, e.g. 2s or 500ms
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub restart_delay: Option<String>,

    /// Time between the stop signal and SIGKILL, e.g. 5s
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub kill_timeout: Option<String>,

    /// Restart an instance whose process tree's resident memory exceeds this, e.g. 300M (PM2's
    /// flag; --memory is a placement reservation, not a limit)
    #[arg(long, value_name = "SIZE")]
    pub max_memory_restart: Option<String>,

    /// Restart every instance on this five-field cron schedule, e.g. "0 3 * * *"
    #[arg(long, visible_alias = "cron", value_name = "EXPR")]
    pub cron_restart: Option<String>,

    /// Quick crashes (sooner than --min-uptime) allowed within a minute before an instance is
    /// left errored (default 15; 0: never give up)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub max_restarts: Option<String>,

    /// An exit sooner than this after start counts as a crash toward --max-restarts (default 1s)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub min_uptime: Option<String>,

    /// Prefix each log line with the time it was written (PM2's --time)
    #[arg(long)]
    pub time: bool,

    /// With an app name: start only the instance with this index
    #[arg(long, value_name = "INDEX")]
    pub instance: Option<u32>,

    /// Node label constraint, e.g. region=eu, disk!=hdd, "zone in (a,b)"; repeat for more
    #[arg(long = "constraint", value_name = "EXPR", help_heading = "Placement")]
    pub constraints: Vec<String>,

    /// spread (default) or binpack
    #[arg(long, value_name = "STRATEGY", help_heading = "Placement")]
    pub strategy: Option<String>,

    /// At most one instance per node
    #[arg(long, help_heading = "Placement")]
    pub distinct_hosts: bool,

    /// At most N instances per node
    #[arg(
        long,
        value_name = "N",
        help_heading = "Placement",
        allow_negative_numbers = true
    )]
    pub max_per_node: Option<u32>,

    /// CPU each instance reserves: cores (0.5) or millicores (500m)
    #[arg(long, value_name = "CPU", help_heading = "Placement")]
    pub cpu: Option<String>,

    /// Memory each instance reserves, e.g. 512M
    #[arg(long, value_name = "SIZE", help_heading = "Placement")]
    pub memory: Option<String>,

    /// Place beyond node capacity
    #[arg(long, help_heading = "Placement")]
    pub overcommit: bool,

    /// How long a node may be down before its instances move elsewhere (default 30s), or never
    #[arg(
        long,
        value_name = "DURATION|never",
        help_heading = "Placement",
        allow_hyphen_values = true
    )]
    pub reschedule_after: Option<String>,

    #[command(flatten)]
    pub update: UpdateFlags,

    #[command(flatten)]
    pub wait: WaitFlags,

    /// Arguments appended to the command line, as given (after --)
    #[arg(last = true, value_name = "ARGS")]
    pub extra_args: Vec<String>,
}
