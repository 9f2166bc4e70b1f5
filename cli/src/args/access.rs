//! The shapes of `certs` and `token`: the cluster's certificates and API tokens.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// Validity of an issued certificate when --days is not given.
pub const DEFAULT_CERT_DAYS: u32 = 365;
/// Validity of a CA when --days is not given.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// The longest --days accepted: a hundred years is already more than anyone should want.
pub const MAX_CERT_DAYS: i64 = 36_500;

#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub action: CertsAction,
}

#[derive(Debug, Subcommand)]
pub enum CertsAction {
    /// Make the CA: DIR/ca.pem and DIR/ca-key.pem (DIR is created, mode 0700)
    Init(CertsInitArgs),
    /// Issue a certificate signed by the CA in DIR
    #[command(subcommand)]
    Issue(IssueKind),
}

#[derive(Debug, Args)]
pub struct CertsInitArgs {
    /// Directory for the CA's files
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Days the CA is valid
    #[arg(long, default_value_t = DEFAULT_CA_DAYS, value_parser = clap::value_parser!(u32).range(1..=MAX_CERT_DAYS))]
    pub days: u32,
    /// Replace an existing CA (every certificate it signed stops being trusted)
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum IssueKind {
    /// The coordinator's certificate: DIR/coordinator.pem and DIR/coordinator-key.pem
    Coordinator {
        #[command(flatten)]
        common: IssueArgs,
        /// A DNS name or IP address clients reach the coordinator by (repeat, or separate
        /// with commas)
        #[arg(long, value_name = "HOST_OR_IP", required = true, num_args = 1.., value_delimiter = ',')]
        san: Vec<String>,
    },
    /// An agent's certificate, for node NODE: DIR/agent-NODE.pem and DIR/agent-NODE-key.pem
    Agent {
        /// The node name the agent runs as (its --node-name)
        node: String,
        #[command(flatten)]
        common: IssueArgs,
    },
    /// A user's certificate: DIR/user-NAME.pem and DIR/user-NAME-key.pem
    User {
        /// The user's name
        name: String,
        /// What the certificate may do: read, operate or admin (as `token create --role`)
        #[arg(long, value_parser = ["read", "operate", "admin"])]
        role: String,
        /// For operate: the apps it may change, as a glob (e.g. 'web*'); default every app
        #[arg(long, value_name = "GLOB")]
        app: Option<String>,
        #[command(flatten)]
        common: IssueArgs,
    },
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Directory holding the CA (from `certs init`); the certificate is written there
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Days the certificate is valid (never past the CA's own expiry)
    #[arg(long, default_value_t = DEFAULT_CERT_DAYS, value_parser = clap::value_parser!(u32).range(1..=MAX_CERT_DAYS))]
    pub days: u32,
    /// Replace an existing certificate and key of that name
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; it is printed once, and the coordinator keeps only its hash
    Create {
        /// read: sees state, no logs or env values; operate: also changes apps (scale, start,
        /// stop, restart, apply, rollouts) and reads their logs; admin: everything
        #[arg(long, value_parser = ["read", "operate", "admin"])]
        role: String,
        /// For operate: the apps it may change, as a glob (e.g. 'web*'); default every app
        #[arg(long, value_name = "GLOB")]
        app: Option<String>,
        /// A note on who or what uses it
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List the tokens (ids and roles; never their secrets)
    List,
    /// Revoke a token by id: calls carrying it are refused from now on
    Revoke {
        /// The token's id (the part after pmc_, as `token list` shows it)
        id: String,
    },
}
