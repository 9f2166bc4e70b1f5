//! Table tests of the PM2 conversion: input text, the apps written, the warnings given.
use super::*;

/// Converts `input` and compares the apps and the warnings (each warning by a substring).
#[track_caller]
fn check(input: Value, want_apps: Value, want_warnings: &[&str]) {
    let got = convert(&input.to_string(), "in.json").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.config["apps"], want_apps, "{input}");
    assert_eq!(
        got.warnings.len(),
        want_warnings.len(),
        "{input}: {:#?}",
        got.warnings
    );
    for (w, want) in got.warnings.iter().zip(want_warnings) {
        assert!(w.contains(want), "{w:?} lacks {want:?}");
    }
}

#[track_caller]
fn refused(input: &str, want: &str) {
    let err = convert(input, "in.json").expect_err(input).to_string();
    assert!(err.contains(want), "{err:?} lacks {want:?}");
}

#[test]
fn ecosystem_apps() {
    // A cluster app with a shared PORT: one port per instance.
    check(
        json!({"apps": [{"name": "api", "script": "server.js", "instances": 4,
            "exec_mode": "cluster", "env": {"PORT": 3000, "NODE_ENV": "production"},
            "max_memory_restart": "300M", "autorestart": true, "cwd": "/srv/api"}]}),
        json!([{"name": "api", "script": "node", "args": ["server.js"], "cwd": "/srv/api",
            "port": "3000-3003", "env": {"NODE_ENV": "production"}, "instances": 4,
            "exec_mode": "cluster", "max_memory_restart": "300M", "autorestart": true}]),
        &["env.PORT: 3000 is shared by PM2's 4 cluster workers"],
    );
    // One instance keeps its port; args and interpreter args as strings; interpreter none.
    check(
        json!({"apps": [{"name": "bin", "script": "./serve", "interpreter": "none",
            "args": "--a 'b c'", "env": {"PORT": "8080"}}]}),
        json!([{"name": "bin", "script": "./serve", "args": ["--a", "b c"], "port": "8080",
            "instances": 1}]),
        &[],
    );
    check(
        json!({"apps": [{"name": "w", "script": "w.py", "interpreter": "/usr/bin/python3.11",
            "interpreter_args": ["-u"], "args": ["--q", 1], "time": true, "uid": "www",
            "min_uptime": "10s", "max_restarts": 10, "restart_delay": 2000,
            "kill_timeout": 1600, "cron_restart": "0 0 * * *", "merge_logs": true,
            "instance_var": "INSTANCE_ID", "watch": false}]}),
        json!([{"name": "w", "script": "/usr/bin/python3.11", "args": ["-u", "w.py", "--q", "1"],
            "instances": 1, "min_uptime": "10s", "max_restarts": 10, "restart_delay": 2000,
            "kill_timeout": 1600, "cron_restart": "0 0 * * *", "merge_logs": true,
            "log_timestamps": true, "user": "www", "instance_var": "INSTANCE_ID"}]),
        &[],
    );
    // "max", 0 and -1; node_args before the script; extension defaults.
    check(
        json!({"apps": [
            {"name": "a", "script": "a.js", "instances": "max", "node_args": "--max-old-space-size=512"},
            {"name": "b", "script": "b.sh", "instances": 0},
            {"name": "c", "script": "c.py", "instances": -1},
        ]}),
        json!([
            {"name": "a", "script": "node", "args": ["--max-old-space-size=512", "a.js"], "instances": "max"},
            {"name": "b", "script": "bash", "args": ["b.sh"], "instances": "max"},
            {"name": "c", "script": "python3", "args": ["c.py"], "instances": "max"},
        ]),
        &["app c: instances: -1 (every core but 1) has no pmcluster equivalent"],
    );
    // What has no equivalent is named, one warning per field.
    check(
        json!({"apps": [{"script": "/opt/x/run", "watch": true, "ignore_watch": ["node_modules"],
            "env_production": {"A": "1"}, "log_date_format": "YYYY", "error_file": "e.log",
            "frobnicate": 1, "env": {"OBJ": {"a": 1}}}]}),
        json!([{"name": "run", "script": "/opt/x/run", "instances": 1}]),
        &[
            "apps[0]: name: missing; named \"run\"",
            "app run: env_production: PM2's --env variants are not imported",
            "app run: error_file: not supported by pmcluster",
            "app run: frobnicate: unknown to pmcluster's import",
            "app run: ignore_watch: not supported",
            "app run: log_date_format: not supported",
            "app run: watch: not supported",
            "app run: env.OBJ: not a string, number or boolean",
        ],
    );
    // One app object without `apps`.
    check(
        json!({"name": "one", "script": "one.js"}),
        json!([{"name": "one", "script": "node", "args": ["one.js"], "instances": 1}]),
        &[],
    );
}

fn jlist_proc(name: &str, pm_id: u32, extra: Value) -> Value {
    let mut env = json!({
        "name": name, "pm_id": pm_id, "status": "online", "pm_uptime": 1_700_000_000_000u64,
        "restart_time": 0, "unstable_restarts": 0, "created_at": 1_700_000_000_000u64,
        "exec_mode": "cluster_mode", "instances": 2, "pm_exec_path": "/srv/api/server.js",
        "pm_cwd": "/srv/api", "exec_interpreter": "node", "node_args": [], "args": ["--v"],
        "autorestart": true, "watch": false, "namespace": "default", "vizion": true,
        "instance_var": "NODE_APP_INSTANCE", "kill_timeout": 1600, "max_memory_restart": 314572800,
        "pm_out_log_path": "/root/.pm2/logs/api-out.log",
        "env": {"PATH": "/usr/bin", "HOME": "/root", "PM2_HOME": "/root/.pm2",
            "NODE_APP_INSTANCE": pm_id, "unique_id": "u", "LC_ALL": "C",
            "NODE_ENV": "production"},
    });
    env["env"][name] = json!(format!("{{\"name\":\"{name}\"}}"));
    if let (Some(env), Value::Object(extra)) = (env.as_object_mut(), extra) {
        env.extend(extra);
    }
    json!({"pid": 100 + pm_id, "name": name, "pm_id": pm_id, "monit": {"memory": 1, "cpu": 0},
        "pm2_env": env})
}

#[test]
fn jlist_groups_workers_by_name() {
    let api_env = json!({"NODE_ENV": "production"});
    check(
        json!([
            jlist_proc("api", 0, json!({})),
            jlist_proc("api", 1, json!({})),
            jlist_proc(
                "worker",
                2,
                json!({"exec_mode": "fork_mode", "instances": 1,
                "pm_exec_path": "/srv/w/run.sh", "exec_interpreter": "none", "args": [],
                "watch": true})
            ),
        ]),
        json!([
            {"name": "api", "script": "node", "args": ["/srv/api/server.js", "--v"],
                "cwd": "/srv/api", "env": api_env, "instances": 2, "exec_mode": "cluster",
                "max_memory_restart": 314572800, "autorestart": true, "kill_timeout": 1600},
            {"name": "worker", "script": "/srv/w/run.sh", "cwd": "/srv/api", "env": api_env,
                "instances": 1, "exec_mode": "fork", "max_memory_restart": 314572800,
                "autorestart": true, "kill_timeout": 1600},
        ]),
        &[
            "app api: env: left out the PM2 daemon's own environment (HOME, LC_ALL, NODE_APP_INSTANCE, PATH, PM2_HOME, unique_id)",
            "app worker: watch: not supported",
            "app worker: env: left out the PM2 daemon's own environment",
        ],
    );
    // instances "max" in pm2_env wins over the number of listed workers.
    let got = convert(
        &json!([jlist_proc("api", 0, json!({"instances": "max"}))]).to_string(),
        "j",
    )
    .expect("converts");
    assert_eq!(got.config["apps"][0]["instances"], "max");
}

#[test]
fn refusals_name_the_cause() {
    // Named by content, in a file whose name is not a script's: the hint names the usual file.
    refused(
        "module.exports = { apps: [] }",
        "import('./ecosystem.config.js')",
    );
    refused(
        "{\"apps\": [{\"name\": \"x\"}]}",
        "apps[0]: script: is missing",
    );
    refused("{\"apps\": []}", "no app to import");
    refused("{\"apps\": {}}", "apps: is not a list");
    refused("{\"nothing\": 1}", "neither `pm2 jlist` output");
    refused("[{\"name\": \"x\"}]", "[0]: pm2_env: is missing");
    refused(
        "{\"apps\": [{\"name\": \"x\", \"script\": \"x\", \"instances\": \"many\"}]}",
        "app x: instances: \"many\" is not a number",
    );
    refused(
        "{\"apps\": [{\"name\": \"x\", \"script\": \"x\", \"args\": {\"a\": 1}}]}",
        "app x: args: not a string or a list of strings",
    );
    // What pmcluster's own parser refuses comes back naming the field.
    refused(
        "{\"apps\": [{\"name\": \"x\", \"script\": \"x\", \"max_memory_restart\": \"lots\"}]}",
        "max_memory_restart",
    );
    refused(
        "{\"apps\": [{\"name\": \"bad name!\", \"script\": \"x\"}]}",
        "not valid for pmcluster",
    );
    for js in [
        "ecosystem.config.js",
        "eco.CJS",
        "x.mjs",
        "/srv/app/pm2.config.ts",
    ] {
        let err = refuse_js(js).expect_err(js).to_string();
        assert!(err.contains(&js_hint(js)), "{err}");
    }
    assert!(refuse_js("eco.json").is_ok());
}

/// The hint loads CommonJS and ES modules alike (a dynamic import, not `require()`), names the
/// refused file when a shell can take its name as it is, and the usual file otherwise.
#[test]
fn the_js_hint_names_the_file_and_imports_it() {
    for (path, name) in [
        ("ecosystem.config.js", "ecosystem.config.js"),
        ("dir/ecosystem.config.mjs", "ecosystem.config.mjs"),
        ("pm2.CJS", "pm2.CJS"),
        ("my eco.js", "ecosystem.config.js"),
        ("$(rm -rf x).js", "ecosystem.config.js"),
        ("-", "ecosystem.config.js"),
        ("eco.json", "ecosystem.config.js"),
    ] {
        let hint = js_hint(path);
        assert!(
            hint.contains(&format!("import('./{name}')")),
            "{path}: {hint}"
        );
        assert!(hint.starts_with("node --input-type=module -e \""), "{hint}");
        assert!(hint.contains("JSON.stringify(m.default)"), "{hint}");
        assert!(!hint.contains("require("), "{hint}");
    }
}

/// `apply -f` and `reload -f` refuse a JavaScript ecosystem file as `import pm2` does: by its
/// name, or by what it holds when it is not JSON, with the way to convert it.
#[test]
fn apply_refuses_javascript_with_the_hint() {
    let js = "module.exports = { apps: [{ name: 'api', script: 'server.js' }] }\n";
    for path in ["ecosystem.config.js", "dir/pm2.config.cjs", "eco.MJS"] {
        let err = config_apps(js, Format::from_path(path), path, path)
            .expect_err(path)
            .to_string();
        assert!(err.contains(&js_hint(path)), "{err}");
        assert!(err.contains("then: pmcluster import pm2 eco.json"), "{err}");
        assert!(!err.contains("expected value"), "{err}");
    }
    // By content: standard input, or a file with another name.
    for text in [
        js,
        "// pm2\nmodule.exports = {}",
        "/* eco */ export default { apps: [] }",
        "const apps = [];\nmodule.exports = { apps };",
    ] {
        let err = config_apps(text, Format::Json, "-", "<stdin>")
            .expect_err(text)
            .to_string();
        assert!(err.starts_with("<stdin> is JavaScript"), "{err}");
        assert!(err.contains(&js_hint(DEFAULT_JS)), "{err}");
    }
    // A config that is not JSON for another reason keeps the parser's message, and a good one
    // is read.
    let err = config_apps("{\"name\": ", Format::Json, "a.json", "a.json")
        .expect_err("broken")
        .to_string();
    assert!(err.starts_with("a.json: file: "), "{err}");
    let err = config_apps(
        "{\"name\": \"a\", \"script\": \"x\", \"shell\": 1}",
        Format::Json,
        "a.json",
        "a.json",
    )
    .expect_err("bad type")
    .to_string();
    assert!(
        err.starts_with("a.json: app \"a\": shell: invalid type"),
        "{err}"
    );
    let apps =
        config_apps("name: a\nscript: x\n", Format::Yaml, "a.yaml", "a.yaml").expect("reads");
    assert_eq!(apps[0].name, "a");
}

/// PM2's six-field cron (seconds first): a `0` seconds field goes; what pmcluster's cron cannot
/// run is left out of that app with a warning, and every app still converts.
#[test]
fn cron_restart_with_seconds() {
    check(
        json!({"apps": [
            {"name": "a", "script": "./a", "cron_restart": "0 0 3 * * *"},
            {"name": "b", "script": "./b", "cron_restart": "*/30 * * * * *"},
            {"name": "c", "script": "./c", "cron_restart": "0 25 * * *"},
            {"name": "d", "script": "./d", "cron_restart": 5},
            {"name": "e", "script": "./e", "cron_restart": "@daily"},
            {"name": "f", "script": "./f", "cron_restart": ""},
        ]}),
        json!([
            {"name": "a", "script": "./a", "instances": 1, "cron_restart": "0 3 * * *"},
            {"name": "b", "script": "./b", "instances": 1},
            {"name": "c", "script": "./c", "instances": 1},
            {"name": "d", "script": "./d", "instances": 1},
            {"name": "e", "script": "./e", "instances": 1, "cron_restart": "@daily"},
            {"name": "f", "script": "./f", "instances": 1},
        ]),
        &[
            "app b: cron_restart: \"*/30 * * * * *\" restarts at second */30 of a minute; \
             pmcluster's cron_restart has no seconds field",
            "app c: cron_restart: \"0 25 * * *\": ",
            "app d: cron_restart: 5 is not a cron expression; left out",
        ],
    );
    // From `pm2 jlist` too.
    let got = convert(
        &json!([jlist_proc(
            "api",
            0,
            json!({"cron_restart": "0 30 2 * * 1", "instances": 1})
        )])
        .to_string(),
        "j",
    )
    .expect("converts");
    assert_eq!(got.config["apps"][0]["cron_restart"], "30 2 * * 1");
}

/// `apply` starts what it is given: a process PM2 has stopped (or that errored) is named.
#[test]
fn stopped_pm2_apps_are_named() {
    let got = convert(
        &json!([
            jlist_proc("api", 0, json!({"status": "stopped"})),
            jlist_proc("api", 1, json!({})),
            jlist_proc("w", 2, json!({"status": "stopped", "instances": 1})),
            jlist_proc("x", 3, json!({"status": "errored", "instances": 1})),
        ])
        .to_string(),
        "j",
    )
    .expect("converts");
    let status: Vec<&String> = got
        .warnings
        .iter()
        .filter(|w| w.contains("status:"))
        .collect();
    assert_eq!(status.len(), 3, "{:#?}", got.warnings);
    assert!(
        status[0].starts_with(
            "app api: status: stopped in PM2 (1 of its 2 processes); pmcluster apply starts it"
        ),
        "{}",
        status[0]
    );
    assert!(
        status[1].starts_with("app w: status: stopped in PM2; pmcluster apply starts it"),
        "{}",
        status[1]
    );
    assert!(status[1].contains("pmcluster stop w"), "{}", status[1]);
    assert!(
        status[2].starts_with("app x: status: errored in PM2;"),
        "{}",
        status[2]
    );
    // Every app converts all the same.
    assert_eq!(got.config["apps"].as_array().map(Vec::len), Some(3));
}

/// `apply -f` of an ecosystem file as PM2 users write it: a shared PORT warns, with the range
/// that fixes it; one instance, a port range or one per node does not.
#[test]
fn shared_port_warnings_name_the_fix() {
    let warned = |text: &str| {
        let specs = config_apps(text, Format::Json, "apps.json", "apps.json")
            .unwrap_or_else(|e| panic!("{e}"));
        shared_port_warnings(&specs)
    };
    let app = |extra: &str| {
        format!(
            r#"{{"apps": [{{"name": "api", "script": "node", "args": "server.js",
                "exec_mode": "cluster", "env": {{"PORT": "3000"}}{extra}}}]}}"#
        )
    };
    let w = warned(&app(r#", "instances": 4"#));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("app \"api\": every instance gets env.PORT 3000")
            && w[0].contains(r#""port": "3000-3003""#)
            && w[0].contains("pmcluster import pm2 FILE"),
        "{w:?}"
    );
    let max = warned(&app(r#", "instances": "max""#));
    assert!(max[0].contains(r#""port": "auto:3000-3099""#), "{max:?}");
    for fine in [
        "",
        r#", "instances": 1"#,
        r#", "instances": 4, "port": "3000-3003""#,
        r#", "instances": 4, "placement": {"max_per_node": 1}"#,
    ] {
        assert_eq!(warned(&app(fine)), Vec::<String>::new(), "{fine}");
    }
}

/// `apply -f` of a PM2 ecosystem file fails on the first PM2-only key, and says how to convert
/// the file; an unknown key of no PM2 meaning gets no such hint.
#[test]
fn apply_of_a_pm2_file_points_to_import() {
    let pm2 = r#"{"apps": [{"name": "api", "script": "x", "env_production": {"A": "1"}}]}"#;
    let err = config_apps(pm2, Format::Json, "eco.json", "eco.json")
        .expect_err("a PM2 key")
        .to_string();
    assert!(
        err.contains("env_production is a PM2 ecosystem setting")
            && err.contains("`pmcluster import pm2 eco.json`"),
        "{err}"
    );
    let other = r#"{"apps": [{"name": "api", "script": "x", "colour": "red"}]}"#;
    let err = config_apps(other, Format::Json, "eco.json", "eco.json")
        .expect_err("an unknown key")
        .to_string();
    assert!(!err.contains("import pm2"), "{err}");
}

/// A trial's `"max_memory_restart": 100` (bytes, as in PM2) restarted its app every second
/// without a word: `apply -f` warns of a limit under 1 MiB, and guesses M for a small number.
#[test]
fn a_memory_limit_under_a_mebibyte_warns() {
    let warned = |limit: &str| {
        let text = format!(
            r#"{{"name": "mm", "script": "sleep", "args": "100", "max_memory_restart": {limit}}}"#
        );
        let specs = config_apps(&text, Format::Json, "mm.json", "mm.json")
            .unwrap_or_else(|e| panic!("{e}"));
        apply_warnings(&specs)
    };
    assert_eq!(
        warned("100"),
        vec![
            "app \"mm\": max_memory_restart 100 B is below 1 MiB: every process is restarted \
             within a second (did you mean 100M?)"
                .to_string()
        ]
    );
    let kib = warned(r#""512K""#);
    assert_eq!(kib.len(), 1, "{kib:?}");
    assert!(kib[0].contains("512 KiB is below 1 MiB") && !kib[0].contains("did you mean"));
    for fine in [r#""1M""#, r#""150M""#, "314572800"] {
        assert_eq!(warned(fine), Vec::<String>::new(), "{fine}");
    }
}

/// A config is read up to a bound: an endless stream or a huge file is refused, not read into
/// memory whole; a file that is not text says so.
#[test]
fn config_files_are_read_up_to_a_bound() -> Result<(), Box<dyn std::error::Error>> {
    let e = read_config("/dev/zero").expect_err("an endless stream");
    assert!(
        e.to_string().contains("/dev/zero holds more than 16 MiB"),
        "{e}"
    );
    let dir = tempfile::tempdir()?;
    let big = dir.path().join("big.json");
    std::fs::File::create(&big)?.set_len(MAX_CONFIG_BYTES + 1)?;
    let big = big.to_string_lossy();
    assert!(read_config(&big).is_err());
    let binary = dir.path().join("bin.json");
    std::fs::write(&binary, b"{\"name\": \"\xff\"}")?;
    let e = read_config(&binary.to_string_lossy()).expect_err("not UTF-8");
    assert!(
        e.to_string()
            .contains("not UTF-8 text (the byte at offset 10 is not)"),
        "{e}"
    );
    let ok = dir.path().join("ok.json");
    std::fs::write(&ok, "{\"name\": \"a\"}")?;
    assert_eq!(read_config(&ok.to_string_lossy())?, "{\"name\": \"a\"}");
    let missing = read_config("/nonexistent/apps.json").expect_err("missing");
    assert!(
        missing
            .to_string()
            .starts_with("cannot read /nonexistent/apps.json: "),
        "{missing}"
    );
    Ok(())
}

/// `${PORT}` with no port to stand for is warned of; with a port, or an `env.PORT` number (which
/// it then stands for), it is not.
#[test]
fn a_port_variable_without_a_port_is_warned_of() {
    let mut spec =
        pmcluster_spec::AppSpec::new("files", "python3", &["-m", "http.server", "${PORT}"]);
    let warned = no_port_warnings(std::slice::from_ref(&spec));
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0]
            .starts_with("app \"files\": its command line uses ${PORT}, but the app has no port"),
        "{warned:?}"
    );
    spec.env.insert("PORT".into(), "8000".into());
    assert!(no_port_warnings(std::slice::from_ref(&spec)).is_empty());
    spec.env.clear();
    spec.port = pmcluster_spec::PortSpec::Range(8000, 8001);
    assert!(no_port_warnings(std::slice::from_ref(&spec)).is_empty());
    assert!(apply_warnings(std::slice::from_ref(&spec)).is_empty());
}

/// A PM2 file is read as a config file is: a byte-order mark skipped, a key given twice refused.
#[test]
fn pm2_files_with_a_bom_or_a_key_twice() {
    let bom = "\u{feff}{\"apps\": [{\"name\": \"a\", \"script\": \"x.js\"}]}";
    let got = convert(bom, "eco.json").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.config["apps"][0]["name"], "a");
    let twice = r#"{"apps": [{"name": "a", "script": "x.js", "instances": 1, "instances": 4}]}"#;
    let e = convert(twice, "eco.json")
        .expect_err("a key twice")
        .to_string();
    assert!(e.contains("the key \"instances\" is given twice"), "{e}");
}
