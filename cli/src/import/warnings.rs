//! What `start` and `apply -f` warn of in apps they apply all the same: settings that run,
//! but not as a PM2 user would expect.

/// Everything `apply -f` warns of before it applies a file: it applies all the same.
pub fn apply_warnings(specs: &[pmcluster_spec::AppSpec]) -> Vec<String> {
    let mut warnings = shared_port_warnings(specs);
    warnings.extend(small_memory_warnings(specs));
    warnings.extend(no_port_warnings(specs));
    warnings
}

/// `${PORT}` in the command line of an app that has no port and sets no `PORT` of its own: it
/// becomes empty, and the app most likely fails at once (a trial's `python3 -m http.server
/// ${PORT}` crash-looped on "invalid int value: ''"). Warned, not refused: the app may not
/// need it.
pub fn no_port_warnings(specs: &[pmcluster_spec::AppSpec]) -> Vec<String> {
    let warning = |s: &pmcluster_spec::AppSpec| {
        let uses = std::iter::once(&s.script)
            .chain(&s.args)
            .any(|a| a.contains("${PORT}"));
        let env_port = s
            .env
            .get("PORT")
            .is_some_and(|p| p.trim().parse::<u16>().is_ok());
        (uses && s.port == pmcluster_spec::PortSpec::None && !env_port).then(|| {
            format!(
                "app {:?}: its command line uses ${{PORT}}, but the app has no port, so it becomes \
                 empty; give it ports (--port 3000-3003, or \"port\" in a config file) or set \
                 env PORT",
                s.name
            )
        })
    };
    specs.iter().filter_map(warning).collect()
}

/// A `max_memory_restart` under 1 MiB restarts every process within a second, for ever (memory
/// restarts never end in errored). A number is bytes, as in PM2, so `100` meant as 100M is
/// easy to write: a trial did. Warned, not refused, since PM2 takes it.
pub fn small_memory_warnings(specs: &[pmcluster_spec::AppSpec]) -> Vec<String> {
    const MIB: u64 = 1 << 20;
    let warning = |s: &pmcluster_spec::AppSpec| {
        let limit = s.supervision.max_memory_restart.filter(|n| *n < MIB)?;
        // As written where it can be: `512K` reads "512 KiB", not "512.0 KiB".
        let (shown, guess) = match limit {
            0..1024 => (format!("{limit} B"), format!(" (did you mean {limit}M?)")),
            _ if limit.is_multiple_of(1024) => (format!("{} KiB", limit / 1024), String::new()),
            _ => (crate::output::human_bytes(limit), String::new()),
        };
        Some(format!(
            "app {:?}: max_memory_restart {shown} is below 1 MiB: every process is restarted within a \
             second{guess}",
            s.name
        ))
    };
    specs.iter().filter_map(warning).collect()
}

/// Warnings for apps of a config file that would crash-loop where a PM2 user expects them to
/// share a port: a fixed `env.PORT` for more than one instance and no `port` to give each its
/// own. PM2's cluster mode shares one port through its master; each pmcluster instance is a
/// process of its own, so on one node all but the first fail with "address in use". An app
/// kept to one instance per node is fine.
pub fn shared_port_warnings(specs: &[pmcluster_spec::AppSpec]) -> Vec<String> {
    let warning = |s: &pmcluster_spec::AppSpec| {
        let port = s.env.get("PORT")?.trim().parse::<u16>().ok()?;
        let many = s.instances_max || s.instances > 1;
        let one_per_node = s.placement.max_per_node == Some(1);
        if !many || one_per_node || s.port != pmcluster_spec::PortSpec::None {
            return None;
        }
        let range = match s.instances_max {
            true => format!("auto:{port}-{}", port.saturating_add(99)),
            false => format!(
                "{port}-{}",
                port.saturating_add(u16::try_from(s.instances - 1).unwrap_or(u16::MAX))
            ),
        };
        Some(format!(
            "app {:?}: every instance gets env.PORT {port}; PM2's cluster mode shares one port \
             through its master, but pmcluster instances are processes of their own, so on one \
             node all but one fail with \"address in use\". Give each its own port instead \
             (\"port\": \"{range}\" in a config file, --port {range} on the command line, \
             which sets PORT per instance), keep one per node (\"placement\": \
             {{\"max_per_node\": 1}}), or convert a PM2 file with: pmcluster import pm2 FILE",
            s.name
        ))
    };
    specs.iter().filter_map(warning).collect()
}
