//! What one `pmcluster` run printed, and the entries of `pmcluster list -o json`.

use std::collections::BTreeMap;
use std::fmt;
use std::process::ExitStatus;

use serde_json::Value;

use crate::error::{Error, unexpected};
use crate::proc::pid_alive;

/// What one `pmcluster` run printed and how it exited.
#[derive(Debug, Clone)]
pub struct CliOutput {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics with the whole output unless it exited 0.
    #[track_caller]
    pub fn assert_ok(&self) -> &CliOutput {
        assert!(self.success(), "expected success from {self}");
        self
    }

    /// Panics unless it exited non-zero; returns stderr.
    #[track_caller]
    pub fn assert_failed(&self) -> &str {
        assert!(!self.success(), "expected failure from {self}");
        &self.stderr
    }

    /// Stdout as JSON.
    pub fn json(&self) -> Result<Value, Error> {
        serde_json::from_str(&self.stdout).map_err(|e| {
            unexpected(
                format!("parsing the output of pmcluster {}", self.args.join(" ")),
                format!("{e}: {self}"),
            )
        })
    }
}

impl fmt::Display for CliOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pmcluster {:?}: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.args, self.status, self.stdout, self.stderr
        )
    }
}

/// One entry of `pmcluster list -o json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub app: String,
    pub index: u32,
    pub id: String,
    pub node: Option<String>,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub status: String,
    pub restarts: u64,
    /// The whole JSON object, for fields the harness does not model.
    pub json: Value,
}

impl Instance {
    pub fn from_json(v: &Value) -> Result<Instance, Error> {
        let bad =
            |field: &str| unexpected("a list entry", format!("bad or missing {field} in {v}"));
        let opt_u64 = |field: &str| -> Result<Option<u64>, Error> {
            match v.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x.as_u64().map(Some).ok_or_else(|| bad(field)),
            }
        };
        let string = |field: &str| -> Result<String, Error> {
            v.get(field)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| bad(field))
        };
        Ok(Instance {
            app: string("app")?,
            index: opt_u64("index")?
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad("index"))?,
            id: string("id")?,
            node: match v.get("node") {
                None | Some(Value::Null) => None,
                Some(n) => Some(n.as_str().ok_or_else(|| bad("node"))?.to_string()),
            },
            pid: opt_u64("pid")?
                .map(|n| u32::try_from(n).map_err(|_| bad("pid")))
                .transpose()?,
            port: opt_u64("port")?
                .map(|n| u16::try_from(n).map_err(|_| bad("port")))
                .transpose()?,
            status: string("status")?,
            restarts: opt_u64("restarts")?.unwrap_or(0),
            json: v.clone(),
        })
    }

    /// Running and reported online, with a pid.
    pub fn online(&self) -> bool {
        self.status == "online" && self.pid.is_some()
    }

    /// Online, with a pid that is alive now: the list reflects the agents' last reports, so a
    /// pid listed right after a change may already be gone.
    pub fn live(&self) -> bool {
        self.online() && self.pid.is_some_and(pid_alive)
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_dash = |o: Option<String>| o.unwrap_or_else(|| "-".into());
        write!(
            f,
            "{}[{}] {} on {} pid={} port={} restarts={}",
            self.app,
            self.index,
            self.status,
            self.node.as_deref().unwrap_or("-"),
            or_dash(self.pid.map(|p| p.to_string())),
            or_dash(self.port.map(|p| p.to_string())),
            self.restarts
        )
    }
}

/// One line per instance, for "last observed" messages.
pub fn render(instances: &[Instance]) -> String {
    if instances.is_empty() {
        return "no instances".to_string();
    }
    let lines: Vec<String> = instances.iter().map(|i| format!("\n  {i}")).collect();
    lines.concat()
}

/// How many instances each node has.
pub fn per_node(instances: &[Instance]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in instances {
        let node = i.node.clone().unwrap_or_else(|| "-".to_string());
        *counts.entry(node).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_entries() {
        let v = serde_json::json!({
            "app": "web", "index": 3, "id": "x", "node": null, "pid": null, "port": 20003,
            "status": "pending", "restarts": 0
        });
        let i = Instance::from_json(&v).expect("parses");
        assert_eq!(
            i.to_string(),
            "web[3] pending on - pid=- port=20003 restarts=0"
        );
        assert!(!i.online());
        assert!(Instance::from_json(&serde_json::json!({"app": "web"})).is_err());
    }
}
