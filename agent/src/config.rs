//! Agent configuration: the raw values `main` collects from flags and environment, and their
//! validation into the [`Config`] that [`crate::run`] takes.
//!
//! Errors name the flag at fault. Nothing here reads the environment or touches files; `main`
//! does that and passes the values in.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use pmcluster_spec::limits::{MAX_NAME_BYTES, check_text};

/// Default of `--coordinator-grace`.
pub const DEFAULT_COORDINATOR_GRACE: Duration = Duration::from_secs(30);

/// Values as given on the command line, before any check.
#[derive(Debug, Clone, Default)]
pub struct RawConfig {
    /// One URL, or a comma-separated list (an HA pair).
    pub coordinator: String,
    /// `None`: use `hostname`.
    pub node_name: Option<String>,
    /// The host's name, the default node name.
    pub hostname: Option<String>,
    pub data_dir: PathBuf,
    /// `KEY=VALUE` pairs, already split by [`parse_label`].
    pub labels: Vec<(String, String)>,
    pub stop_instances_on_exit: bool,
    /// `None`: the default.
    pub coordinator_grace: Option<Duration>,
    pub subreaper: bool,
    /// See [`Config::log_pump`].
    pub log_pump: Option<PathBuf>,
    /// `--no-cgroups`.
    pub no_cgroups: bool,
    /// `--rename-node`.
    pub rename_node: bool,
    /// `--tls-cert`, `--tls-key`, `--ca`: all three or none.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    /// `--advertise-address`.
    pub advertise_address: Option<String>,
}

/// The files of mutual TLS on the link: this node's certificate and key (from `pmcluster certs
/// issue agent NODE`) and the cluster CA that signed the coordinator's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Checked agent settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Coordinator URLs (`https://` with `tls`, else `http://`), dialled in this order; an HA
    /// pair has two. Never empty.
    pub coordinators: Vec<String>,
    pub node_name: String,
    /// Where the agent keeps its files (`logs/` for instance output).
    pub data_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// On SIGTERM/SIGINT, stop every instance before exiting. Off by default: the agent exits
    /// and leaves its instances running, and the next agent with this data dir adopts them.
    pub stop_instances_on_exit: bool,
    /// At startup, how long to wait for the coordinator's desired set before starting the
    /// instances of the local state that are not running.
    pub coordinator_grace: Duration,
    /// Become a child subreaper (`PR_SET_CHILD_SUBREAPER`) and reap every child, so the orphans
    /// of instances are reaped (and killed with their instance). Off for an agent embedded in
    /// another process (tests), which must leave that process's other children alone.
    pub subreaper: bool,
    /// The program that runs as `PROGRAM log-pump ...` to stamp the output of instances with
    /// `log_timestamps` (see [`crate::logs`]): the agent binary, which passes `/proc/self/exe`
    /// (the very binary that runs, even once an upgrade replaced the file). `None`: pump in
    /// threads of this process, which end with it (an agent embedded in a test).
    pub log_pump: Option<PathBuf>,
    /// Run each instance in a cgroup of its own (see [`crate::cgroup`]) when a writable cgroup2
    /// hierarchy is available. On by default; `--no-cgroups` turns it off.
    pub cgroups: bool,
    /// The data dir may belong to another node name: rename that node to `node_name` (see
    /// [`crate::identity`]). Without it such a start is refused.
    pub rename_node: bool,
    /// Dial the coordinator over mutual TLS with these files. `None`: plaintext.
    pub tls: Option<TlsFiles>,
    /// The address this node's instances are reached at (an IP address or a host name), sent at
    /// registration. `None`: the coordinator takes the source address of the connection.
    pub advertise_address: Option<String>,
}

impl Config {
    /// Settings for an agent embedded in a test: it stops its instances when cancelled and
    /// reaps only its own children.
    pub fn embedded(coordinator: &str, node_name: &str, data_dir: PathBuf) -> Config {
        Config {
            coordinators: vec![coordinator.to_string()],
            node_name: node_name.to_string(),
            data_dir,
            labels: BTreeMap::new(),
            stop_instances_on_exit: true,
            coordinator_grace: DEFAULT_COORDINATOR_GRACE,
            subreaper: false,
            log_pump: None,
            cgroups: true,
            rename_node: false,
            tls: None,
            advertise_address: None,
        }
    }
}

/// A flag value that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--coordinator {url:?}: {reason}")]
    Coordinator { url: String, reason: String },
    #[error("--node-name {}: {reason}", pmcluster_spec::echo(name))]
    NodeName { name: String, reason: String },
    #[error("--node-name is not set and the hostname cannot be read; pass --node-name")]
    NoNodeName,
    #[error("--label {}: {reason}", pmcluster_spec::echo(value))]
    Label { value: String, reason: String },
    #[error("--data-dir is empty")]
    DataDir,
    #[error("--advertise-address {0}")]
    AdvertiseAddress(String),
    #[error("{0}")]
    Tls(String),
}

/// Splits one `--label` value, `KEY=VALUE`. Usable as a clap value parser.
pub fn parse_label(value: &str) -> Result<(String, String), ConfigError> {
    let Some((key, val)) = value.split_once('=') else {
        return Err(ConfigError::Label {
            value: value.to_string(),
            reason: "expected KEY=VALUE, e.g. --label zone=a".to_string(),
        });
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(ConfigError::Label {
            value: value.to_string(),
            reason: "the key before '=' is empty".to_string(),
        });
    }
    let val = val.trim();
    // The coordinator stores labels and placement compares them with constraints, which are
    // bounded alike: a label no constraint could name is refused here, not at registration.
    for (part, text) in [("key", key), ("value", val)] {
        if let Err(e) = check_text(part, text, MAX_NAME_BYTES) {
            return Err(ConfigError::Label {
                value: value.to_string(),
                reason: format!("the {part} {}", e.message),
            });
        }
    }
    Ok((key.to_string(), val.to_string()))
}

/// Why no placement constraint can name the label `key=value`, if none can: labels take any
/// text (refusing one would keep an upgraded agent from starting), but a constraint's key is
/// ASCII and its value holds no space, comma, parenthesis, `=`, `!` or quote: no constraint
/// names such a key at all, and such a value only through its key's presence. Said once at
/// start, where the operator looks.
pub fn label_unmatchable(key: &str, value: &str) -> Option<String> {
    pmcluster_spec::placement::label_fault(key, value).map(|why| {
        let label = pmcluster_spec::echo(&format!("{key}={value}"));
        format!(
            "--label {label}: no placement constraint can match it (it {why}); label keys \
             take ASCII letters, digits and . _ - /, values anything but spaces, commas, \
             parentheses, = ! and quotes"
        )
    })
}

impl RawConfig {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let coordinators = validate_urls(&self.coordinator)?;
        let node_name = match self.node_name {
            Some(n) => n,
            None => self
                .hostname
                .filter(|h| !h.is_empty())
                .ok_or(ConfigError::NoNodeName)?,
        };
        validate_node_name(&node_name)?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::DataDir);
        }
        let mut labels = BTreeMap::new();
        for (key, value) in self.labels {
            if labels.contains_key(&key) {
                return Err(ConfigError::Label {
                    value: format!("{key}={value}"),
                    reason: format!("key {key:?} is given twice"),
                });
            }
            labels.insert(key, value);
        }
        if let Some(a) = &self.advertise_address {
            pmcluster_spec::address::validate_address("--advertise-address", a)
                .map_err(|e| ConfigError::AdvertiseAddress(e.message))?;
        }
        let tls = match (self.tls_cert, self.tls_key, self.ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(TlsFiles { cert, key, ca }),
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    (cert.is_none(), "--tls-cert"),
                    (key.is_none(), "--tls-key"),
                    (ca.is_none(), "--ca"),
                ]
                .into_iter()
                .filter_map(|(gone, flag)| gone.then_some(flag))
                .collect();
                return Err(ConfigError::Tls(format!(
                    "{} missing: --tls-cert, --tls-key and --ca go together (all three or none)",
                    missing.join(" and ")
                )));
            }
        };
        // One scheme for the whole list: a plaintext URL would send the node's desired set
        // (env values included) in clear, and https without a CA cannot verify anything.
        for url in &coordinators {
            let https = url.starts_with("https://");
            if https && tls.is_none() {
                return Err(ConfigError::Coordinator {
                    url: url.clone(),
                    reason: "https:// needs --tls-cert, --tls-key and --ca".to_string(),
                });
            }
            if !https && tls.is_some() {
                return Err(ConfigError::Coordinator {
                    url: url.clone(),
                    reason: "with --tls-cert, dial https://".to_string(),
                });
            }
        }
        Ok(Config {
            coordinators,
            node_name,
            data_dir: self.data_dir,
            labels,
            stop_instances_on_exit: self.stop_instances_on_exit,
            coordinator_grace: self.coordinator_grace.unwrap_or(DEFAULT_COORDINATOR_GRACE),
            subreaper: self.subreaper,
            log_pump: self.log_pump,
            cgroups: !self.no_cgroups,
            rename_node: self.rename_node,
            tls,
            advertise_address: self.advertise_address,
        })
    }
}

/// Splits `--coordinator` at commas, checking each item; each URL is kept once, in order.
fn validate_urls(input: &str) -> Result<Vec<String>, ConfigError> {
    let mut urls: Vec<String> = Vec::new();
    for (n, item) in input.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            return Err(ConfigError::Coordinator {
                url: input.to_string(),
                reason: format!(
                    "item {} is empty; give one URL or several separated by commas, e.g. \
                     http://10.0.0.1:7450,http://10.0.0.2:7450",
                    n + 1
                ),
            });
        }
        let url = validate_url(item.to_string())?;
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    Ok(urls)
}

/// One coordinator URL; also checks the leader a standby names.
pub(crate) fn validate_url(url: String) -> Result<String, ConfigError> {
    let bad = |reason: &str| ConfigError::Coordinator {
        url: url.clone(),
        reason: reason.to_string(),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad("expected a URL such as http://127.0.0.1:7450"));
    };
    if scheme != "http" && scheme != "https" {
        return Err(bad("the scheme must be http or https"));
    }
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("the URL has no host"));
    }
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(url.clone()) else {
        return Err(bad("not a valid URL"));
    };
    // The URI parser takes any digits as a port; one out of range would only fail at every
    // dial, forever.
    if let Some(authority) = endpoint.uri().authority() {
        let host_port = authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, h)| h);
        let after_host = host_port
            .rfind(']')
            .map_or(host_port, |i| &host_port[i + 1..]);
        if let Some((_, port)) = after_host.rsplit_once(':')
            && !matches!(port.parse::<u16>(), Ok(1..))
        {
            return Err(bad(&format!("port {port:?} is not one of 1-65535")));
        }
    }
    Ok(url)
}

/// Node names follow the coordinator's pattern (`pmcluster_spec::app::validate_node_name`), so
/// a name it would refuse at every registration is refused before the agent starts.
fn validate_node_name(name: &str) -> Result<(), ConfigError> {
    pmcluster_spec::app::validate_node_name(name).map_err(|e| ConfigError::NodeName {
        name: name.to_string(),
        reason: e
            .message
            .split_once(": ")
            .map(|(_, how)| how.to_string())
            .unwrap_or(e.message),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawConfig {
        RawConfig {
            coordinator: "http://127.0.0.1:7450".into(),
            node_name: Some("n1".into()),
            hostname: None,
            data_dir: "/tmp/x".into(),
            labels: vec![],
            ..RawConfig::default()
        }
    }

    #[test]
    fn labels() {
        type Case<'a> = (&'a str, Result<(&'a str, &'a str), &'a str>);
        let big_value = format!("k={}", "v".repeat(1 << 20));
        let cases: &[Case] = &[
            ("zone=a", Ok(("zone", "a"))),
            ("k=", Ok(("k", ""))),
            ("k=a=b", Ok(("k", "a=b"))),
            ("k", Err("--label \"k\": expected KEY=VALUE")),
            ("=v", Err("key before '=' is empty")),
            ("k=a\0b", Err("the value \"a\\0b\" contains a NUL byte")),
            ("k\0=v", Err("the key \"k\\0\" contains a NUL byte")),
            (&big_value, Err("bytes, more than the limit of 256")),
        ];
        for (input, want) in cases {
            let got = parse_label(input);
            match (want, got) {
                (Ok((k, v)), Ok((gk, gv))) => assert_eq!((*k, *v), (gk.as_str(), gv.as_str())),
                (Err(w), Err(e)) => assert!(e.to_string().contains(w), "{input}: {e}"),
                (w, g) => panic!("{input}: want {w:?} got {g:?}"),
            }
        }
    }

    #[test]
    fn tls_flags_go_together_and_with_https() {
        let tls = |cert: Option<&str>, key: Option<&str>, ca: Option<&str>, url: &str| {
            RawConfig {
                coordinator: url.into(),
                tls_cert: cert.map(PathBuf::from),
                tls_key: key.map(PathBuf::from),
                ca: ca.map(PathBuf::from),
                ..raw()
            }
            .validate()
        };
        let all = tls(Some("c"), Some("k"), Some("ca"), "https://127.0.0.1:1").map(|c| c.tls);
        assert_eq!(
            all,
            Ok(Some(TlsFiles {
                cert: "c".into(),
                key: "k".into(),
                ca: "ca".into()
            }))
        );
        let e = tls(Some("c"), None, Some("ca"), "https://127.0.0.1:1").unwrap_err();
        assert!(e.to_string().starts_with("--tls-key missing"), "{e}");
        let e = tls(None, None, None, "https://127.0.0.1:1").unwrap_err();
        assert!(e.to_string().contains("https:// needs --tls-cert"), "{e}");
        let e = tls(Some("c"), Some("k"), Some("ca"), "http://127.0.0.1:1").unwrap_err();
        assert!(
            e.to_string().contains("with --tls-cert, dial https://"),
            "{e}"
        );
    }

    #[test]
    fn validation() {
        assert!(raw().validate().is_ok());
        for ok in ["10.0.0.7", "fd00::7", "node-a.lan"] {
            let c = RawConfig {
                advertise_address: Some(ok.into()),
                ..raw()
            }
            .validate()
            .map(|c| c.advertise_address);
            assert_eq!(c, Ok(Some(ok.to_string())));
        }
        let cases: Vec<(RawConfig, &str)> = vec![
            (
                RawConfig {
                    coordinator: "127.0.0.1:7450".into(),
                    ..raw()
                },
                "--coordinator",
            ),
            (
                RawConfig {
                    coordinator: "ftp://x".into(),
                    ..raw()
                },
                "scheme",
            ),
            (
                RawConfig {
                    coordinator: "http://a:1,,http://b:1".into(),
                    ..raw()
                },
                "--coordinator \"http://a:1,,http://b:1\": item 2 is empty",
            ),
            (
                RawConfig {
                    coordinator: "http://a:1,b:1".into(),
                    ..raw()
                },
                "--coordinator \"b:1\": expected a URL",
            ),
            (
                RawConfig {
                    coordinator: "http://127.0.0.1:99999".into(),
                    ..raw()
                },
                "--coordinator \"http://127.0.0.1:99999\": port \"99999\" is not one of 1-65535",
            ),
            (
                RawConfig {
                    coordinator: "http://[::1]:0".into(),
                    ..raw()
                },
                "port \"0\" is not one of 1-65535",
            ),
            (
                RawConfig {
                    node_name: Some("a b".into()),
                    ..raw()
                },
                "--node-name",
            ),
            (
                RawConfig {
                    node_name: Some("../etc".into()),
                    ..raw()
                },
                "--node-name \"../etc\": use 1-64 letters",
            ),
            (
                RawConfig {
                    node_name: Some("n".repeat(65)),
                    ..raw()
                },
                "--node-name",
            ),
            (
                RawConfig {
                    node_name: None,
                    ..raw()
                },
                "pass --node-name",
            ),
            (
                RawConfig {
                    advertise_address: Some("http://10.0.0.7".into()),
                    ..raw()
                },
                "--advertise-address \"http://10.0.0.7\" holds a character",
            ),
            (
                RawConfig {
                    labels: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
                    ..raw()
                },
                "given twice",
            ),
            (
                RawConfig {
                    data_dir: "".into(),
                    ..raw()
                },
                "--data-dir",
            ),
        ];
        for (input, want) in cases {
            let got = input.clone().validate();
            match got {
                Err(e) => assert!(e.to_string().contains(want), "{input:?}: {e}"),
                Ok(c) => panic!("{input:?}: accepted as {c:?}"),
            }
        }
        let defaulted = RawConfig {
            node_name: None,
            hostname: Some("host-1".into()),
            ..raw()
        }
        .validate();
        assert_eq!(defaulted.map(|c| c.node_name), Ok("host-1".to_string()));
        let pair = RawConfig {
            coordinator: "http://a:7450, http://b:7450,http://a:7450".into(),
            ..raw()
        }
        .validate()
        .map(|c| c.coordinators);
        assert_eq!(
            pair,
            Ok(vec![
                "http://a:7450".to_string(),
                "http://b:7450".to_string()
            ])
        );
    }

    #[test]
    fn labels_no_constraint_can_name_are_said() {
        for (key, value) in [("zone", "a"), ("kernel", "6.1.0+deb12"), ("rack", "r1:u3")] {
            assert_eq!(label_unmatchable(key, value), None, "{key}={value}");
        }
        for (key, value, want) in [
            ("zone", "eu west", "whitespace"),
            ("zone", "a; b", "whitespace in its value \"a; b\")"),
            ("k8s:zone", "a", "bad label key \"k8s:zone\")"),
            ("tier", "a,b", "','"),
            ("my zone", "a", "bad label key"),
        ] {
            let why = label_unmatchable(key, value).unwrap_or_default();
            assert!(
                why.contains("no placement constraint can match it") && why.contains(want),
                "{key}={value}: {why}"
            );
            assert!(!why.contains("write key=value"), "{why}");
        }
    }
}
