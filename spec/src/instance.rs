//! What makes one instance different from its siblings: its index, its port, its node's address,
//! and the environment and arguments derived from them.

use std::path::Path;

use crate::AppSpec;

/// Environment variables that carry the instance index, always set.
pub const INDEX_VARS: [&str; 3] = [
    "PMCLUSTER_INSTANCE_ID",
    "PM2_INSTANCE_ID",
    "NODE_APP_INSTANCE",
];

/// The instance id of an instance process (the agent's markers: with [`NODE_VAR`] and
/// [`AGENT_KEY_VAR`], how the agent, and `pmcluster down`, know its processes).
pub const INSTANCE_UUID_VAR: &str = "PMCLUSTER_INSTANCE_UUID";
/// The node name of the agent that started it.
pub const NODE_VAR: &str = "PMCLUSTER_NODE";
/// The key of the agent that started it (see [`agent_key`]).
pub const AGENT_KEY_VAR: &str = "PMCLUSTER_AGENT_KEY";
/// On a log pump, in place of [`INSTANCE_UUID_VAR`]: the instance id it pumps for.
pub const PUMP_VAR: &str = "PMCLUSTER_PUMP_FOR";

/// An agent's key: 16 hex digits of a hash (FNV-1a, stable across builds) of its data dir's
/// absolute path, which the caller resolves (the agent and `pmcluster down` alike, so both
/// arrive at the same key). The same after the directory is wiped and made again, another for
/// another agent on the host.
pub fn agent_key(absolute_data_dir: &Path) -> String {
    format!(
        "{:016x}",
        fnv1a(absolute_data_dir.as_os_str().as_encoded_bytes())
    )
}

/// The name of the cgroup an agent puts its instances' cgroups in (under its own cgroup): named
/// after the node and the [`agent_key`], so that no other agent shares it and `pmcluster down`
/// can tell it is this agent's before it ends what is in it.
pub fn cgroup_name(node: &str, key: &str) -> String {
    format!("pmcluster-{node}-{key}")
}

/// The file in an agent's data dir that holds the path of that cgroup (one line) while it may
/// exist: `pmcluster down` reads it to end what a killed or dead agent left in it.
pub const CGROUP_RECORD_FILE: &str = "cgroup-base";

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Replaces `${PORT}`, `${HOST}` and `${INSTANCE_ID}` in `s`. Without a port, `${PORT}` becomes
/// empty. `host` is the address the node's instances are reached at (the agent's advertised
/// address, else the one the coordinator sees); empty while the agent has never learnt it.
pub fn expand(s: &str, index: u32, port: Option<u16>, host: &str) -> String {
    let port = port.map(|p| p.to_string()).unwrap_or_default();
    s.replace("${PORT}", &port)
        .replace("${HOST}", host)
        .replace("${INSTANCE_ID}", &index.to_string())
}

/// The port `${PORT}` stands for in an instance's command line and env: its own, else, for an
/// app given no port, a number its `env` sets as `PORT` (as PM2 users write it), so that the
/// command line and the `PORT` the process gets agree, where `${PORT}` used to become empty.
/// The health check's `${PORT}` and TCP probe use it too.
pub fn port_of(spec: &AppSpec, port: Option<u16>) -> Option<u16> {
    port.or_else(|| spec.env.get("PORT")?.trim().parse().ok())
}

/// The environment an instance gets on top of the agent's: the spec's `env` (expanded), the index
/// variables, the spec's `instance_var`, and `PORT` when it has a port. Later entries win.
pub fn instance_env(
    spec: &AppSpec,
    index: u32,
    port: Option<u16>,
    host: &str,
) -> Vec<(String, String)> {
    let expanding = port_of(spec, port);
    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), expand(v, index, expanding, host)))
        .collect();
    let idx = index.to_string();
    for var in INDEX_VARS {
        env.push((var.to_string(), idx.clone()));
    }
    if let Some(var) = &spec.instance_var {
        env.push((var.clone(), idx.clone()));
    }
    if let Some(p) = port {
        env.push(("PORT".to_string(), p.to_string()));
    }
    env.push(("PMCLUSTER_APP".to_string(), spec.name.clone()));
    env
}

/// The argv an instance runs: `script args...` expanded, or `/bin/sh -c "script args..."` when the
/// spec asks for a shell.
pub fn instance_argv(spec: &AppSpec, index: u32, port: Option<u16>, host: &str) -> Vec<String> {
    let port = port_of(spec, port);
    let script = expand(&spec.script, index, port, host);
    let args = spec.args.iter().map(|a| expand(a, index, port, host));
    if spec.shell {
        let mut line = script;
        for a in args {
            line.push(' ');
            line.push_str(&a);
        }
        vec!["/bin/sh".to_string(), "-c".to_string(), line]
    } else {
        std::iter::once(script).chain(args).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PortSpec;

    #[test]
    fn agent_keys_are_stable() {
        // Stable across builds and versions: instances started by an older agent carry it.
        assert_eq!(agent_key(Path::new("/var/lib/a")), "14e2166354dfafb7");
        assert_ne!(
            agent_key(Path::new("/var/lib/a")),
            agent_key(Path::new("/var/lib/b"))
        );
    }

    #[test]
    fn cgroup_names() {
        assert_eq!(
            cgroup_name("web-1", "14e2166354dfafb7"),
            "pmcluster-web-1-14e2166354dfafb7"
        );
    }

    #[test]
    fn expansion() {
        let cases = [
            ("--port=${PORT}", 2, Some(4102), "--port=4102"),
            ("id-${INSTANCE_ID}-${INSTANCE_ID}", 7, None, "id-7-7"),
            ("${PORT}", 0, None, ""),
            ("plain", 1, Some(1), "plain"),
            ("${port}", 1, Some(1), "${port}"),
            (
                "--bind=${HOST}:${PORT}",
                1,
                Some(4101),
                "--bind=10.0.0.7:4101",
            ),
            ("${host}", 1, None, "${host}"),
        ];
        for (input, index, port, want) in cases {
            assert_eq!(expand(input, index, port, "10.0.0.7"), want, "{input}");
        }
        assert_eq!(expand("${HOST}", 0, None, ""), "");
    }

    #[test]
    fn env_and_argv() {
        let mut spec = AppSpec::new("web", "node", &["server.js", "--port=${PORT}"]);
        spec.instance_var = Some("INSTANCE_ID".into());
        spec.env
            .insert("URL".into(), "http://localhost:${PORT}/".into());
        spec.port = PortSpec::Range(4100, 4199);
        spec.env.insert("BIND".into(), "${HOST}".into());
        let env = instance_env(&spec, 2, spec.port.port_for(2), "node-a.lan");
        let get = |k: &str| {
            env.iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("PMCLUSTER_INSTANCE_ID"), Some("2"));
        assert_eq!(get("PM2_INSTANCE_ID"), Some("2"));
        assert_eq!(get("NODE_APP_INSTANCE"), Some("2"));
        assert_eq!(get("INSTANCE_ID"), Some("2"));
        assert_eq!(get("PORT"), Some("4102"));
        assert_eq!(get("URL"), Some("http://localhost:4102/"));
        assert_eq!(get("BIND"), Some("node-a.lan"));
        assert_eq!(
            instance_argv(&spec, 2, Some(4102), "node-a.lan"),
            vec!["node", "server.js", "--port=4102"]
        );
        spec.shell = true;
        assert_eq!(
            instance_argv(&spec, 2, Some(4102), "node-a.lan"),
            vec!["/bin/sh", "-c", "node server.js --port=4102"]
        );
    }

    /// An app given no port but `env.PORT` (as PM2 apps are): `${PORT}` is that port, in the
    /// command line and in the env, as the process's `PORT` is. A port of its own wins over it.
    #[test]
    fn without_a_port_env_port_stands_for_port() {
        let mut spec = AppSpec::new("web", "python3", &["-m", "http.server", "${PORT}"]);
        spec.env.insert("PORT".into(), " 8080".into());
        spec.env
            .insert("URL".into(), "http://localhost:${PORT}/".into());
        let argv = instance_argv(&spec, 0, None, "");
        assert_eq!(argv, ["python3", "-m", "http.server", "8080"]);
        let env = instance_env(&spec, 0, None, "");
        let url = env
            .iter()
            .find(|(k, _)| k == "URL")
            .map(|(_, v)| v.as_str());
        assert_eq!(url, Some("http://localhost:8080/"));
        assert_eq!(instance_argv(&spec, 0, Some(4100), "")[3], "4100");
        // Not a number: nothing to stand for, as without it.
        spec.env.insert("PORT".into(), "${PORT}".into());
        assert_eq!(instance_argv(&spec, 0, None, "")[3], "");
    }
}
