//! Issue 15, PM2 users move over: `pmcluster import pm2` of a `pm2 jlist` dump and of a JSON
//! ecosystem file, whose output `apply -f` runs on a live cluster, with warnings for what does
//! not carry over and a clear refusal of a JavaScript ecosystem file.

use std::fs;
use std::process::Command;

use pmcluster_tests::{Cluster, free_port_range, http_get};
use serde_json::{Value, json};

use crate::wait_online;

/// One process of `pm2 jlist`, as PM2 6 prints it (trimmed to what matters, plus bookkeeping).
fn jlist_proc(
    name: &str,
    pm_id: u32,
    mode: &str,
    instances: u32,
    script: &str,
    port: u16,
) -> Value {
    json!({
        "pid": 4000 + pm_id, "name": name, "pm_id": pm_id,
        "monit": {"memory": 40_000_000, "cpu": 0},
        "pm2_env": {
            "name": name, "pm_id": pm_id, "status": "online", "restart_time": 0,
            "pm_uptime": 1_700_000_000_000u64, "created_at": 1_700_000_000_000u64,
            "exec_mode": mode, "instances": instances, "pm_exec_path": script,
            "exec_interpreter": "none", "node_args": [], "args": [], "pm_cwd": "/",
            "autorestart": true, "watch": false, "namespace": "default", "vizion": true,
            "instance_var": "NODE_APP_INSTANCE", "kill_timeout": 1600,
            "max_memory_restart": 1_073_741_824u64, "log_date_format": "YYYY-MM-DD",
            "pm_out_log_path": format!("/root/.pm2/logs/{name}-out.log"),
            "env": {
                "PORT": port.to_string(), "TESTAPP_VERSION": name, "PATH": "/usr/bin:/bin",
                "HOME": "/root", "PM2_HOME": "/root/.pm2", "NODE_APP_INSTANCE": pm_id,
                name: format!("{{\"name\":\"{name}\"}}"),
            },
        },
    })
}

/// The `version` each instance of `app` answers with, by asking it on its port.
fn versions(c: &Cluster, app: &str) -> Vec<String> {
    c.instances(app)
        .expect("list")
        .iter()
        .filter_map(|i| http_get(i.port?, "/").ok()?.json().ok())
        .map(|v: Value| v["version"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn pm2_apps_import_and_run() {
    let c = Cluster::start(2).expect("cluster starts");
    let testapp = c.testapp().display().to_string();
    let dir = c.root().join("pm2");
    fs::create_dir_all(&dir).expect("dir");

    // pm2 jlist: a cluster app listed once per worker, and a fork-mode app.
    let api = free_port_range(2).expect("ports");
    let solo = free_port_range(1).expect("ports");
    let jlist = json!([
        jlist_proc("api", 0, "cluster_mode", 2, &testapp, api),
        jlist_proc("api", 1, "cluster_mode", 2, &testapp, api),
        jlist_proc("solo", 2, "fork_mode", 1, &testapp, solo),
    ]);
    let jlist_file = dir.join("jlist.json");
    fs::write(&jlist_file, jlist.to_string()).expect("write");
    let out_file = dir.join("from-jlist.yaml");
    let imported = c.cli(&[
        "import",
        "pm2",
        &jlist_file.display().to_string(),
        "--out",
        &out_file.display().to_string(),
    ]);
    imported.assert_ok();
    assert!(imported.stdout.contains("wrote 2 apps"), "{imported}");
    for field in ["log_date_format", "env.PORT", "PATH"] {
        assert!(imported.stderr.contains(field), "{field}: {imported}");
    }
    let yaml = fs::read_to_string(&out_file).expect("read the config");
    assert!(!yaml.contains("PM2_HOME"), "{yaml}");
    c.cli(&["apply", "-f", &out_file.display().to_string()])
        .assert_ok();

    // A JSON ecosystem file, converted to standard output.
    let eco_port = free_port_range(3).expect("ports");
    let eco = json!({"apps": [{
        "name": "eco", "script": testapp, "interpreter": "none", "instances": 3,
        "exec_mode": "cluster", "env": {"PORT": eco_port, "TESTAPP_VERSION": "eco"},
        "max_memory_restart": "1G", "watch": true, "error_file": "/var/log/eco.err",
    }]});
    let eco_file = dir.join("ecosystem.json");
    fs::write(&eco_file, eco.to_string()).expect("write");
    let converted = c.cli(&["import", "pm2", &eco_file.display().to_string()]);
    converted.assert_ok();
    for field in ["app eco: watch", "app eco: error_file"] {
        assert!(converted.stderr.contains(field), "{field}: {converted}");
    }
    let config = converted.json().expect("a JSON config");
    assert_eq!(
        config["apps"][0]["port"],
        format!("{eco_port}-{}", eco_port + 2)
    );
    let eco_config = dir.join("eco-pmcluster.json");
    fs::write(&eco_config, &converted.stdout).expect("write");
    c.cli(&["apply", "-f", &eco_config.display().to_string()])
        .assert_ok();

    wait_online(&c, "api", 2);
    wait_online(&c, "solo", 1);
    wait_online(&c, "eco", 3);
    assert_eq!(versions(&c, "api"), ["api", "api"]);
    assert_eq!(versions(&c, "eco"), ["eco", "eco", "eco"]);
    let ports: Vec<Option<u16>> = c
        .instances("api")
        .expect("list")
        .iter()
        .map(|i| i.port)
        .collect();
    assert_eq!(ports, [Some(api), Some(api + 1)]);

    // A JavaScript ecosystem file is refused with the way to convert it.
    let js = dir.join("ecosystem.config.js");
    fs::write(&js, "module.exports = { apps: [] }").expect("write");
    let refused = c
        .try_cli(&["import", "pm2", &js.display().to_string()])
        .expect("pmcluster runs");
    assert_eq!(refused.code(), Some(2), "{refused}");
    assert!(
        refused
            .stderr
            .contains("await import('./ecosystem.config.js')"),
        "{refused}"
    );
}

/// The conversion `import pm2` prints for a JavaScript ecosystem file, run as printed in the
/// file's directory, makes JSON that `import pm2` takes: for CommonJS (`.js`, `.cjs`) and ES
/// modules (`.mjs`, and `.js` in a `"type": "module"` package) alike.
#[test]
fn the_printed_conversion_works_for_commonjs_and_es_modules() {
    let Some(_node) = crate::verbs::program("node", "node") else {
        return;
    };
    let cli = pmcluster_tests::Bins::locate()
        .expect("workspace binaries built")
        .cli;
    let root = tempfile::tempdir().expect("a temp dir");
    let common = "module.exports = { apps: [{ name: 'NAME', script: 'server.js' }] };";
    let module = "export default { apps: [{ name: 'NAME', script: 'server.js' }] };";
    let cases = [
        ("cjs", "ecosystem.config.js", common, None),
        ("cjs2", "ecosystem.config.cjs", common, None),
        ("esm", "ecosystem.config.mjs", module, None),
        (
            "typed",
            "ecosystem.config.js",
            module,
            Some(r#"{"type": "module"}"#),
        ),
    ];
    for (name, file, source, package) in cases {
        let dir = root.path().join(name);
        fs::create_dir_all(&dir).expect("a dir");
        fs::write(dir.join(file), source.replace("NAME", name)).expect("write");
        if let Some(package) = package {
            fs::write(dir.join("package.json"), package).expect("write");
        }
        let refused = pmcluster_tests::run_bounded(
            Command::new(&cli)
                .args(["import", "pm2", file])
                .current_dir(&dir),
            root.path(),
            "import",
            &[file],
            crate::DEADLINE,
        )
        .expect("pmcluster runs");
        assert_eq!(refused.code(), Some(2), "{refused}");
        let hint = refused
            .stderr
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("node "))
            .unwrap_or_else(|| panic!("no conversion printed: {refused}"));
        let converted = pmcluster_tests::run_bounded(
            Command::new("sh").args(["-c", hint]).current_dir(&dir),
            root.path(),
            "convert",
            &[hint],
            crate::DEADLINE,
        )
        .expect("sh runs");
        converted.assert_ok();
        let imported = pmcluster_tests::run_bounded(
            Command::new(&cli)
                .args(["import", "pm2", "eco.json"])
                .current_dir(&dir),
            root.path(),
            "import",
            &["eco.json"],
            crate::DEADLINE,
        )
        .expect("pmcluster runs");
        imported.assert_ok();
        let config: Value = serde_json::from_str(&imported.stdout)
            .unwrap_or_else(|e| panic!("{name}: {e}: {imported}"));
        assert_eq!(config["apps"][0]["name"], name, "{file}: {config}");
    }
}
