//! Apps: their table, their spec and `info`, as text and as JSON.

use super::*;

fn spec_of(app: &pb::App) -> pb::AppSpec {
    app.spec.clone().unwrap_or_default()
}

/// The app table of `apps`: instances read `online/desired`, then the other states a user waits
/// out or acts on (a trial's errored app read "0/1, 0 pending, 0 stopped" and nothing more).
pub fn apps_table(apps: &[pb::App]) -> String {
    let rows = apps
        .iter()
        .map(|a| {
            let spec = spec_of(a);
            vec![
                spec.name.clone(),
                a.version.to_string(),
                format!("{}/{}", a.online, spec.instances),
                a.pending.to_string(),
                a.stopped.to_string(),
                a.restarting.to_string(),
                a.errored.to_string(),
                a.exited.to_string(),
                if spec.port.is_empty() {
                    NONE.to_string()
                } else {
                    spec.port.clone()
                },
                command_line(&spec),
            ]
        })
        .collect();
    render_table(
        &[
            "app",
            "version",
            "online",
            "pending",
            "stopped",
            "restarting",
            "errored",
            "exited",
            "port",
            "command",
        ],
        rows,
        &[1, 2, 3, 4, 5, 6, 7],
    )
}

/// The command line as typed: a `--shell` app's script is the line the shell parses, shown
/// as it is (quoting it again would show quotes the user never typed).
pub fn command_line(spec: &pb::AppSpec) -> String {
    if spec.shell {
        return std::iter::once(spec.script.as_str())
            .chain(spec.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
    }
    shell_words::join(std::iter::once(&spec.script).chain(&spec.args))
}

pub fn spec_json(s: &pb::AppSpec) -> Value {
    let env: serde_json::Map<String, Value> = sorted_pairs(&s.env)
        .into_iter()
        .map(|(k, v)| (k.clone(), json!(shown(k, v, &s.secret_env))))
        .collect();
    let mut legacy = json!({
        "name": s.name,
        "script": s.script,
        "args": s.args,
        "cwd": empty_as_null(&s.cwd),
        "env": env,
        "secret_env": s.secret_env,
        "instances": s.instances,
        "port": empty_as_null(&s.port),
        "instance_var": empty_as_null(&s.instance_var),
        "shell": s.shell,
        "autorestart": s.autorestart.unwrap_or(true),
        "restart_delay_ms": s.restart_delay_ms,
        "kill_timeout_ms": s.kill_timeout_ms,
        "exec_mode": empty_as_null(&s.exec_mode),
        "merge_logs": s.merge_logs,
        "instances_max": s.instances_max,
        "placement": s.placement.as_ref().map(|p| json!({
            "strategy": empty_as_null(&p.strategy),
            "constraints": p.constraints,
            "affinities": p.affinities.iter().map(|a| json!({"expr": a.expr, "weight": a.weight})).collect::<Vec<_>>(),
            "distinct_hosts": p.distinct_hosts,
            "max_per_node": zero_as_null(p.max_per_node),
        })),
        "resources": s.resources.as_ref().map(|r| json!({
            "cpu_millis": r.cpu_millis,
            "memory_bytes": r.memory_bytes,
            "overcommit": r.overcommit,
        })),
        "reschedule_after_ms": s.reschedule_after_ms,
        "wait_for_node": s.wait_for_node,
    });
    // The rest of the spec (supervision, health check, update policy, autoscaling, logs) in
    // the names and shapes of a config file, as `reload` shows a spec; the fields above keep
    // the shapes they always had.
    if let (Some(fields), Ok(spec)) = (
        legacy.as_object_mut(),
        pmcluster_spec::AppSpec::try_from(s.clone()),
    ) {
        let Value::Object(config) = to_config(&spec) else {
            return legacy;
        };
        for (key, value) in config {
            fields.entry(key).or_insert(value);
        }
        // Unset options are null (and empty lists empty) rather than missing.
        for key in OPTIONAL_CONFIG_KEYS {
            fields.entry(key).or_insert(Value::Null);
        }
        fields.entry("cpu_affinity").or_insert(json!([]));
        fields.entry("limits").or_insert(json!({}));
    }
    legacy
}

/// Config-file options that [`to_config`] leaves out when unset.
const OPTIONAL_CONFIG_KEYS: [&str; 6] = [
    "health_check",
    "max_memory_restart",
    "user",
    "group",
    "cron_restart",
    "autoscale",
];

/// `info`'s placement line: `spread; zone=a, disk!=hdd; prefers zone=b (50); 1 per node`.
pub(super) fn placement_text(p: Option<&pb::Placement>) -> String {
    let Some(p) = p else {
        return "spread".to_string();
    };
    let mut parts = vec![if p.strategy.is_empty() {
        "spread".to_string()
    } else {
        p.strategy.clone()
    }];
    if !p.constraints.is_empty() {
        parts.push(format!("only {}", p.constraints.join(", ")));
    }
    if !p.affinities.is_empty() {
        let prefs: Vec<String> = p
            .affinities
            .iter()
            .map(|a| format!("{} ({})", a.expr, a.weight))
            .collect();
        parts.push(format!("prefers {}", prefs.join(", ")));
    }
    if p.distinct_hosts {
        parts.push("1 per node".to_string());
    } else if p.max_per_node > 0 {
        parts.push(format!("at most {} per node", p.max_per_node));
    }
    parts.join("; ")
}

/// `info`'s resources line: `500m cpu, 256.0 MiB (overcommit)`, or `-` for none reserved.
pub(super) fn resources_text(r: Option<&pb::Resources>) -> String {
    let Some(r) = r.filter(|r| r.cpu_millis > 0 || r.memory_bytes > 0) else {
        return NONE.to_string();
    };
    let mut parts = Vec::new();
    if r.cpu_millis > 0 {
        parts.push(format!("{}m cpu", r.cpu_millis));
    }
    if r.memory_bytes > 0 {
        parts.push(human_bytes(r.memory_bytes));
    }
    let mut text = parts.join(", ");
    if r.overcommit {
        text.push_str(" (overcommit)");
    }
    text
}

/// `info`'s reschedule line.
fn reschedule_text(s: &pb::AppSpec) -> String {
    if s.wait_for_node {
        "never: waits for its node to come back".to_string()
    } else {
        format!(
            "after its node is down {}",
            human_millis(s.reschedule_after_ms.unwrap_or(30_000))
        )
    }
}

pub fn app_json(a: &pb::App) -> Value {
    let spec = spec_of(a);
    json!({
        "name": spec.name,
        "version": a.version,
        "updated_at_ms": a.updated_at_ms,
        "instances": spec.instances,
        "online": a.online,
        "pending": a.pending,
        "stopped": a.stopped,
        "restarting": a.restarting,
        "errored": a.errored,
        "exited": a.exited,
        "spec": spec_json(&spec),
    })
}

pub fn apps_json(apps: &[pb::App]) -> Value {
    Value::Array(apps.iter().map(app_json).collect())
}

/// `; 2 of 3 instances run version 1` when some instances run another version than `version`.
fn other_versions(version: u64, instances: &[pb::Instance]) -> String {
    let live: Vec<&pb::Instance> = instances
        .iter()
        .filter(|i| !i.removed && !i.unmanaged)
        .collect();
    let mut others: Vec<u64> = live
        .iter()
        .map(|i| i.app_version)
        .filter(|v| *v != version && *v != 0)
        .collect();
    let count = others.len();
    if count == 0 {
        return String::new();
    }
    others.sort_unstable();
    others.dedup();
    let list: Vec<String> = others.iter().map(u64::to_string).collect();
    let (verb, versions) = match (count, others.len()) {
        (1, _) => ("runs", "version"),
        (_, 1) => ("run", "version"),
        _ => ("run", "versions"),
    };
    let of = match live.len() {
        1 => "1 instance".to_string(),
        n => format!("{n} instances"),
    };
    format!("; {count} of {of} {verb} {versions} {}", list.join(", "))
}

/// `, 1 restarting, 2 errored`: the counts of `info` beyond online, pending and stopped, the
/// ones that are not 0 (most apps have none, and six numbers to read past on every app).
fn not_running(app: &pb::App) -> String {
    [
        (app.restarting, "restarting"),
        (app.errored, "errored"),
        (app.exited, "exited"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, state)| format!(", {n} {state}"))
    .collect()
}

/// `info`: the app's fields, one per line, then its instances.
pub fn app_info_text(app: &pb::App, instances: &[pb::Instance], now_ms: i64) -> String {
    let s = spec_of(app);
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    let or_dash = |v: &str| {
        if v.is_empty() {
            NONE.to_string()
        } else {
            v.to_string()
        }
    };
    let mut updated = if app.updated_at_ms > 0 {
        format!(
            "{} (updated {} ago)",
            app.version,
            human_age(now_ms - app.updated_at_ms)
        )
    } else {
        app.version.to_string()
    };
    // The app's version is what it should run; during a rollout, or after a failed one left
    // standing, some instances run another (a trial read the failed version here as running).
    updated.push_str(&other_versions(app.version, instances));
    let env = sorted_pairs(&s.env)
        .into_iter()
        .map(|(k, v)| format!("{k}={}", shown(k, v, &s.secret_env)))
        .collect::<Vec<_>>();
    let kill_timeout = s
        .kill_timeout_ms
        .map_or_else(|| "5s".to_string(), human_millis);
    let mut fields: Vec<(&str, String)> = vec![
        ("app", s.name.clone()),
        ("version", updated),
        (
            "instances",
            format!(
                "{}{} desired: {} online, {} pending, {} stopped{}",
                s.instances,
                if s.instances_max { " (max)" } else { "" },
                app.online,
                app.pending,
                app.stopped,
                not_running(app)
            ),
        ),
        ("script", s.script.clone()),
        ("args", or_dash(&shell_words::join(&s.args))),
        ("port", or_dash(&s.port)),
        ("cwd", or_dash(&s.cwd)),
        (
            "env",
            if env.is_empty() {
                NONE.to_string()
            } else {
                env.join("\n")
            },
        ),
        ("placement", placement_text(s.placement.as_ref())),
        ("resources", resources_text(s.resources.as_ref())),
        ("reschedule", reschedule_text(&s)),
        ("instance var", or_dash(&s.instance_var)),
        ("shell", yes_no(s.shell)),
        ("autorestart", yes_no(s.autorestart.unwrap_or(true))),
        ("restart delay", human_millis(s.restart_delay_ms)),
        ("kill timeout", kill_timeout),
        (
            "exec mode",
            if s.exec_mode.is_empty() {
                "fork".to_string()
            } else {
                s.exec_mode.clone()
            },
        ),
    ];
    match pmcluster_spec::AppSpec::try_from(s.clone()) {
        Ok(spec) => fields.extend(supervision_fields(&spec)),
        Err(e) => fields.push(("supervision", format!("- (not readable: {e})"))),
    }
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    let mut text = String::new();
    for (key, value) in fields {
        // Multi-line values (env) continue under the value column.
        for (n, line) in value.lines().enumerate() {
            let label = if n == 0 {
                format!("{key}:")
            } else {
                String::new()
            };
            text.push_str(&format!("{label:<width$}{line}\n"));
        }
    }
    text.push('\n');
    if instances.is_empty() {
        text.push_str("no instances\n");
    } else {
        text.push_str(&instances_table(instances, now_ms));
    }
    // The trend itself does not fit the table's status column.
    for i in instances.iter().filter(|i| !i.leak.is_empty()) {
        text.push_str(&format!(
            "{}[{}]: memory leak suspected: {}\n",
            i.app, i.index, i.leak
        ));
    }
    text
}

/// `info`'s lines for supervision, health check, logs, update policy and autoscaling. Options
/// that are off or unset read `-`; lines for rarely set ones (CPU affinity, rlimits) appear only
/// when set.
fn supervision_fields(spec: &pmcluster_spec::AppSpec) -> Vec<(&'static str, String)> {
    let sv = &spec.supervision;
    let dur = |d: Duration| humantime::format_duration(d).to_string();
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| NONE.to_string());
    let mut fields = vec![
        ("min uptime", dur(sv.min_uptime)),
        (
            "max restarts",
            format!(
                // Only runs shorter than `min_uptime` count, as in PM2: a trial read the
                // bare "2 in 1m" as a cap, and saw an app that ran 2 s restarted for ever.
                "{} in {} of runs shorter than min uptime (backoff up to {})",
                sv.max_restarts,
                dur(sv.restart_window),
                dur(sv.restart_backoff_max)
            ),
        ),
        (
            "max memory",
            or_dash(
                sv.max_memory_restart
                    .map(|b| format!("{} (restart above)", human_bytes(b))),
            ),
        ),
        ("cron restart", or_dash(sv.cron_restart.clone())),
        ("listen timeout", dur(sv.listen_timeout)),
        ("stop signal", sv.stop_signal.name().to_string()),
        (
            "health check",
            or_dash(sv.health_check.as_ref().map(health_text)),
        ),
        (
            "user",
            match (&sv.user, &sv.group) {
                (None, None) => NONE.to_string(),
                (Some(u), None) => u.clone(),
                (None, Some(g)) => format!("(agent's user), group {g}"),
                (Some(u), Some(g)) => format!("{u}, group {g}"),
            },
        ),
    ];
    if !sv.cpu_affinity.is_empty() {
        let cpus: Vec<String> = sv.cpu_affinity.iter().map(u32::to_string).collect();
        fields.push(("cpu affinity", cpus.join(",")));
    }
    if !sv.limits.is_empty() {
        let limits: Vec<String> = sv.limits.iter().map(|(k, v)| format!("{k}={v}")).collect();
        fields.push(("limits", limits.join(", ")));
    }
    let mut logs = vec![match sv.log_max_bytes {
        Some(b) => format!("rotate at {}, keep {}", human_bytes(b), sv.log_keep),
        None => "not rotated".to_string(),
    }];
    if sv.log_timestamps {
        logs.push("timestamps".to_string());
    }
    fields.push(("logs", logs.join(", ")));
    let u = &spec.update;
    let mut update = vec![
        format!("surge {}", u.max_surge),
        format!("unavailable {}", u.max_unavailable),
        format!("min healthy {}", dur(u.min_healthy_time)),
        format!("healthy deadline {}", dur(u.healthy_deadline)),
        format!("progress deadline {}", dur(u.progress_deadline)),
        format!(
            "auto rollback {}",
            if u.auto_rollback { "on" } else { "off" }
        ),
    ];
    if u.canary > 0 {
        update.push(format!("canary {}", u.canary));
    }
    if !u.shutdown_delay.is_zero() {
        update.push(format!("shutdown delay {}", dur(u.shutdown_delay)));
    }
    fields.push(("update", update.join(", ")));
    fields.push((
        "autoscale",
        or_dash(spec.autoscale.as_ref().map(autoscale_policy_text)),
    ));
    fields
}

/// `info`'s health check line: `http http://127.0.0.1:${PORT}/health every 10s, timeout 5s,
/// unhealthy after 3 failures, restarts unhealthy`.
fn health_text(h: &pmcluster_spec::supervise::HealthCheck) -> String {
    use pmcluster_spec::supervise::Probe;
    let dur = |d: Duration| humantime::format_duration(d).to_string();
    let probe = match &h.probe {
        Probe::Http {
            url,
            expected_status: Some(code),
        } => format!("http {url} (expects {code})"),
        Probe::Http { url, .. } => format!("http {url}"),
        Probe::Tcp => "tcp on its port".to_string(),
        Probe::Exec { command } => format!("exec {command}"),
    };
    let mut text = format!(
        "{probe} every {}, timeout {}, unhealthy after {} failures",
        dur(h.interval),
        dur(h.timeout),
        h.retries
    );
    if h.restart_unhealthy {
        text.push_str(", restarts unhealthy");
    }
    text
}

/// `info`'s autoscale line: `2-10 instances, threshold: cpu 70%, memory 80%, cooldown 15s, ...`.
fn autoscale_policy_text(a: &pmcluster_spec::autoscale::AutoscalePolicy) -> String {
    use pmcluster_spec::autoscale::MemoryThreshold;
    let dur = |d: Duration| humantime::format_duration(d).to_string();
    let mut parts = vec![format!(
        "{}-{} instances, {}",
        a.min,
        a.max,
        a.mode.as_str()
    )];
    if let Some(cpu) = a.cpu_threshold {
        parts.push(format!("cpu {cpu}%"));
    }
    match a.memory_threshold {
        Some(MemoryThreshold::Percent(p)) => parts.push(format!("memory {p}%")),
        Some(MemoryThreshold::Bytes(b)) => parts.push(format!("memory {}", human_bytes(b))),
        None => {}
    }
    parts.push(format!("scale down by {}", a.scale_down_fraction));
    parts.push(format!("tolerance {}", a.tolerance));
    parts.push(format!("cooldown {}", dur(a.cooldown)));
    parts.push(format!(
        "stabilization {} up, {} down",
        dur(a.up_stabilization),
        dur(a.down_stabilization)
    ));
    parts.join(", ")
}

/// `info -o json`: `{"app": {...}, "instances": [...]}`.
pub fn app_info_json(app: &pb::App, instances: &[pb::Instance], now_ms: i64) -> Value {
    json!({
        "app": app_json(app),
        "instances": instances_json(instances, now_ms),
    })
}
