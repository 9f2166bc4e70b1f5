//! The shapes of `up` and `down`: a local single-machine cluster.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Directory for pid files, logs and the daemons' data
    /// (default: $XDG_DATA_HOME/pmcluster or ~/.local/share/pmcluster)
    #[arg(long, env = "PMCLUSTER_HOME", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the coordinator listens on (default: the one this data dir's last `up` gave it,
    /// after `down` or a crash too, else 127.0.0.1:7450)
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Name of the local node (default: the one the agent's data dir belongs to, else the
    /// hostname)
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Rename the node the agent's data dir belongs to to --node-name; the cluster moves its
    /// instances to the new name
    #[arg(long, requires = "node_name")]
    pub rename_node: bool,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Directory given to `pmcluster up`
    #[arg(long, env = "PMCLUSTER_HOME", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}
