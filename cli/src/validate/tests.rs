use super::*;
use clap::Parser;

use crate::args::{Cli, Command};

#[test]
fn balance_goes_with_a_load_balancer_format() {
    use OutputFormat as O;
    let cases = [
        (None, O::Table, Ok(Balance::Roundrobin)),
        (None, O::Haproxy, Ok(Balance::Roundrobin)),
        (Some(Balance::Sticky), O::Nginx, Ok(Balance::Sticky)),
        (Some(Balance::Leastconn), O::Haproxy, Ok(Balance::Leastconn)),
        (
            Some(Balance::Leastconn),
            O::Table,
            Err(
                "--balance: only with -o nginx or -o haproxy (it picks the load balancer's \
                     policy), not with -o table",
            ),
        ),
        (
            Some(Balance::Roundrobin),
            O::Json,
            Err(
                "--balance: only with -o nginx or -o haproxy (it picks the load balancer's \
                     policy), not with -o json",
            ),
        ),
    ];
    for (balance, output, want) in cases {
        let got = check_balance(balance, output).map_err(|e| e.to_string());
        assert_eq!(got, want.map_err(str::to_string), "{balance:?} {output:?}");
    }
}

fn start_args(line: &str) -> StartArgs {
    let words = shell_words::split(line).expect("test line splits");
    match Cli::try_parse_from(words).expect("parses").command {
        Command::Start(args) => *args,
        other => panic!("{other:?}"),
    }
}

#[test]
fn counts() {
    let cases: &[(&str, Result<u32, &str>)] = &[
        ("0", Ok(0)),
        ("12", Ok(12)),
        (" 3 ", Ok(3)),
        (
            "-1",
            Err("invalid instance count \"-1\": must be a whole number 0 or more"),
        ),
        (
            "abc",
            Err("invalid instance count \"abc\": must be a whole number 0 or more"),
        ),
        (
            "1.5",
            Err("invalid instance count \"1.5\": must be a whole number 0 or more"),
        ),
        ("max", Err("invalid instance count \"max\": give a number")),
        (
            "100001",
            Err("invalid instance count \"100001\": too large, the limit is 100000"),
        ),
        // Past what a u32 holds: still a number, too large rather than "not a whole number".
        (
            "99999999999",
            Err("invalid instance count \"99999999999\": too large, the limit is 100000"),
        ),
        ("+99999999999", Err("too large, the limit is 100000")),
        ("9999999999x", Err("must be a whole number 0 or more")),
    ];
    for (input, want) in cases {
        let got = parse_count(input);
        match (want, &got) {
            (Ok(w), Ok(g)) => assert_eq!(w, g, "{input:?}"),
            (Err(w), Err(g)) => assert!(g.contains(w), "{input:?}: {g}"),
            _ => panic!("{input:?}: got {got:?}"),
        }
    }
}

#[test]
fn scale_counts_set_or_change() {
    let cases = [
        ("3", Ok(ScaleTo::To(3))),
        ("0", Ok(ScaleTo::To(0))),
        ("+2", Ok(ScaleTo::By(2))),
        ("-1", Ok(ScaleTo::By(-1))),
        (" -0 ", Ok(ScaleTo::By(0))),
        ("+100000", Ok(ScaleTo::By(100_000))),
        ("+100001", Err("too large, the limit is 100000")),
        ("-99999999999", Err("too large, the limit is 100000")),
        ("+", Err("give N to set it, or +N / -N")),
        ("+-2", Err("give N to set it, or +N / -N")),
        ("-x", Err("give N to set it, or +N / -N")),
        ("+1.5", Err("give N to set it, or +N / -N")),
        ("abc", Err("must be a whole number 0 or more")),
    ];
    for (input, want) in cases {
        let got = parse_scale(input);
        match (want, &got) {
            (Ok(w), Ok(g)) => assert_eq!(w, *g, "{input:?}"),
            (Err(w), Err(g)) => assert!(g.contains(w), "{input:?}: {g}"),
            _ => panic!("{input:?}: got {got:?}"),
        }
    }
}

#[test]
fn shell_operators() {
    let cases = [
        ("node server.js", None),
        ("node server.js --port=${PORT}", None),
        ("a | b", Some("|")),
        ("a || b", Some("||")),
        ("a && b", Some("&&")),
        ("a &", Some("&")),
        ("a; b", Some(";")),
        ("a > out.log", Some(">")),
        ("a < in", Some("<")),
        ("echo $(date)", Some("$(")),
        ("echo `date`", Some("`")),
        ("echo \"$(date)\"", Some("$(")),
        ("node -e 'a;b|c'", None),
        ("node -e \"a;b|c\"", None),
        ("echo a\\;b", None),
        ("grep -E 'a|b' file", None),
    ];
    for (input, want) in cases {
        assert_eq!(shell_operator(input), want, "{input}");
    }
}

/// `check(command line, expected)`: the plan as text, or the error message.
fn check(line: &str, want: Result<&str, &str>) {
    let got = plan_start(&start_args(line)).map(|plan| match plan {
            StartPlan::Existing { app, index } => format!("start {app} {index:?}"),
            StartPlan::Apply { spec, derived_name } => format!(
                "apply name={}{} script={} args={:?} n={}{} port={} env={:?} shell={} auto={} delay={:?} kill={:?} cwd={:?} var={:?}",
                spec.name,
                if derived_name { "(derived)" } else { "" },
                spec.script,
                spec.args,
                spec.instances,
                if spec.instances_max { "(max)" } else { "" },
                spec.port,
                spec.env,
                spec.shell,
                spec.autorestart,
                spec.restart_delay,
                spec.kill_timeout,
                spec.cwd,
                spec.instance_var,
            ),
        });
    match (want, got) {
        (Ok(w), Ok(g)) => assert_eq!(g, w, "{line}"),
        (Err(w), Err(e)) => {
            let e = e.to_string();
            assert!(e.contains(w), "{line}\nwant error {w:?}\ngot {e:?}");
        }
        (w, g) => panic!("{line}\nwant {w:?}\ngot {g:?}"),
    }
}

#[test]
fn start_plans() {
    check("pmcluster start web", Ok("start web None"));
    check("pmcluster start web --instance 2", Ok("start web Some(2)"));
    // A placement flag makes it a new app's spec, never a silently ignored flag.
    check(
        "pmcluster start web --cpu 1",
        Ok(
            "apply name=web(derived) script=web args=[] n=1 port= env={} shell=false auto=true delay=0ns kill=5s cwd=None var=None",
        ),
    );
    check(
        "pmcluster start 'node server.js' --name web -i 4 --port 3000-3003 -e NODE_ENV=production -e A=b=c",
        Ok(
            "apply name=web script=node args=[\"server.js\"] n=4 port=3000-3003 env={\"A\": \"b=c\", \"NODE_ENV\": \"production\"} shell=false auto=true delay=0ns kill=5s cwd=None var=None",
        ),
    );
    check(
        "pmcluster start 'node server.js' --no-autorestart --restart-delay 2s --kill-timeout 1500 --cwd /srv --instance-var WORKER",
        Ok(
            "apply name=node(derived) script=node args=[\"server.js\"] n=1 port= env={} shell=false auto=false delay=2s kill=1.5s cwd=Some(\"/srv\") var=Some(\"WORKER\")",
        ),
    );
    check(
        "pmcluster start ./server.sh",
        Ok(
            "apply name=server(derived) script=./server.sh args=[] n=1 port= env={} shell=false auto=true delay=0ns kill=5s cwd=None var=None",
        ),
    );
    check(
        "pmcluster start server.js -i 2",
        Ok(
            "apply name=server(derived) script=server.js args=[] n=2 port= env={} shell=false auto=true delay=0ns kill=5s cwd=None var=None",
        ),
    );
    check(
        "pmcluster start 'node s.js' --name web -i max --port auto:3000-3100",
        Ok(
            "apply name=web script=node args=[\"s.js\"] n=0(max) port=auto:3000-3100 env={} shell=false auto=true delay=0ns kill=5s cwd=None var=None",
        ),
    );
    check(
        "pmcluster start \"python -c 'print(1)'\" --name py -- --flag 'two words'",
        Ok(
            "apply name=py script=python args=[\"-c\", \"print(1)\", \"--flag\", \"two words\"] n=1 port= env={} shell=false auto=true delay=0ns kill=5s cwd=None var=None",
        ),
    );
    check(
        "pmcluster start './serve | tee log' --name s --shell -- 'a b'",
        Ok(
            "apply name=s script=./serve | tee log 'a b' args=[] n=1 port= env={} shell=true auto=true delay=0ns kill=5s cwd=None var=None",
        ),
    );
}

#[test]
fn start_errors() {
    let cases = [
        (
            "pmcluster start 'node a.js | tee x' --name w",
            "shell operator \"|\"",
        ),
        ("pmcluster start 'a && b' --name w", "add --shell"),
        (
            "pmcluster start 'node s.js' --name w --port 30x0",
            "--port: \"30x0\" is not a port number",
        ),
        (
            "pmcluster start 'node s.js' --name w -i 4 --port 3000-3002",
            "--port: 3000-3002 holds 3 ports but 4 instances",
        ),
        (
            "pmcluster start 'node s.js' --name w -i -1",
            "--instances: invalid instance count \"-1\"",
        ),
        (
            "pmcluster start 'node s.js' --name w -i abc",
            "--instances: invalid instance count \"abc\"",
        ),
        (
            "pmcluster start 'node s.js' --name w -i max --port 3000",
            "--port: instances \"max\" needs a port range",
        ),
        (
            "pmcluster start 'node s.js' --name w -e FOO",
            "--env: \"FOO\" is not KEY=VALUE",
        ),
        (
            "pmcluster start 'node s.js' --name w -e 1A=x",
            "--env: \"1A\" is not a valid environment variable name",
        ),
        (
            "pmcluster start 'node s.js' --name 'my app'",
            "--name: \"my app\" is not a valid app name",
        ),
        (
            "pmcluster start 'node s.js' --name w --restart-delay soon",
            "--restart-delay: \"soon\" is not a duration",
        ),
        (
            "pmcluster start 'node s.js' --name w --kill-timeout 5x",
            "--kill-timeout:",
        ),
        (
            "pmcluster start 'node s.js' --name w --kill-timeout -1s",
            "--kill-timeout: \"-1s\" is not a duration (it cannot be negative)",
        ),
        (
            "pmcluster start 'node s.js' --name w --kill-timeout --shell",
            "--kill-timeout: \"--shell\" looks like a flag, not a duration: give this one a value",
        ),
        (
            "pmcluster start 'node s.js' --name w --restart-delay 5124095576030h",
            "--restart-delay: 584542046years 1month 2days 15h 26m 24s is more than the maximum of 1h",
        ),
        (
            "pmcluster start 'node s.js' --name w --kill-timeout 18446744073709551615",
            "--kill-timeout: 584542046years",
        ),
        (
            "pmcluster start 'node s.js' --name w --reschedule-after 2days",
            "--reschedule-after: 2days is more than the maximum of 1day; write \"never\"",
        ),
        (
            "pmcluster start 'node s.js' --name w --min-healthy-time 2days",
            "--min-healthy-time: 2days is more than the maximum of 1day",
        ),
        (
            "pmcluster start 'node s.js' --name w --instance-var 9X",
            "--instance-var:",
        ),
        (
            "pmcluster start 'node s.js' --instance 2",
            "--instance starts one instance of an existing app",
        ),
        (
            "pmcluster start 'node \"unclosed'",
            "cannot split the command line",
        ),
        (
            "pmcluster start 'node s.js' --name w --constraint 'a b'",
            "--constraint:",
        ),
        // A user trial found these accepted; each left the app pending for ever.
        (
            "pmcluster start 'node s.js' --name w --constraint 'zone in (a,b'",
            "--constraint: \"zone in (a,b\" has a \"(\" without a \")\" at its end; write key=value",
        ),
        (
            "pmcluster start 'node s.js' --name w --constraint 'zone=='",
            "--constraint: \"zone==\" has '=' in its value",
        ),
        (
            "pmcluster start 'node s.js' --name w --constraint 'zone=a b'",
            "--constraint: \"zone=a b\" has whitespace in its value \"a b\"",
        ),
        (
            "pmcluster start 'node s.js' --name w --constraint zone=n1,zone=n2",
            "for any of several values write key in (a,b)",
        ),
        (
            "pmcluster start 'node s.js' --name w --constraint 'zone != '",
            "--constraint: \"zone !=\" has no value after \"!=\"",
        ),
        (
            "pmcluster start 'node s.js' --name w --strategy random",
            "--strategy:",
        ),
        (
            "pmcluster start 'node s.js' --name w --memory lots",
            "--memory:",
        ),
        ("pmcluster start 'node s.js' --name w --cpu x", "--cpu:"),
        (
            "pmcluster start 'node s.js' --name w --distinct-hosts --max-per-node 2",
            "--max-per-node:",
        ),
        (
            "pmcluster start 'node s.js' --name w --reschedule-after soon",
            "--reschedule-after:",
        ),
        ("pmcluster start '   '", "the command line is empty"),
        (
            "pmcluster start '_x y'",
            "cannot name the app after \"_x\"; give it a name with --name",
        ),
    ];
    for (line, want) in cases {
        check(line, Err(want));
    }
}

/// PM2's supervision flags on `start` set the spec's fields as a config file's keys of those
/// names would; a user trial found them refused, with clap's tip pointing to flags of another
/// meaning (`--memory`, a placement reservation).
#[test]
fn pm2_supervision_flags() {
    let args = start_args(
        "pmcluster start 'node s.js' --name w --max-memory-restart 100M --cron '0 3 * * *' \
             --max-restarts 3 --min-uptime 5s --time",
    );
    let s = start_spec(&args).expect("valid").supervision;
    assert_eq!(s.max_memory_restart, Some(100 << 20));
    assert_eq!(s.cron_restart.as_deref(), Some("0 3 * * *"));
    assert_eq!((s.max_restarts, s.min_uptime), (3, Duration::from_secs(5)));
    assert!(s.log_timestamps);
    let long = start_args("pmcluster start 'node s.js' --cron-restart @daily --max-restarts 0");
    let s = start_spec(&long).expect("valid").supervision;
    assert_eq!(
        (s.cron_restart.as_deref(), s.max_restarts),
        (Some("@daily"), 0)
    );
    // Each makes a new app's spec, not a start of an app named like the program.
    assert!(matches!(
        plan_start(&start_args("pmcluster start web --time")),
        Ok(StartPlan::Apply { .. })
    ));
    // Left out: the spec's defaults, as in a file.
    let plain = start_spec(&start_args("pmcluster start 'node s.js'")).expect("valid");
    assert_eq!(
        plain.supervision,
        pmcluster_spec::supervise::Supervision::default()
    );
    let errors = [
        (
            "--max-memory-restart lots",
            "--max-memory-restart: \"lots\" is not a memory amount",
        ),
        (
            "--cron '0 3 * *'",
            "--cron-restart: \"0 3 * *\": has 4 fields",
        ),
        (
            "--cron-restart 'a b c d e'",
            "--cron-restart: \"a b c d e\"",
        ),
        ("--max-restarts -1", "--max-restarts: \"-1\" is negative"),
        (
            "--max-restarts many",
            "--max-restarts: \"many\" is not a whole number",
        ),
        (
            "--min-uptime soon",
            "--min-uptime: \"soon\" is not a duration",
        ),
        (
            "--min-uptime 2h",
            "--min-uptime: 2h is more than the maximum of 1h",
        ),
    ];
    for (flags, want) in errors {
        check(
            &format!("pmcluster start 'node s.js' --name w {flags}"),
            Err(want),
        );
    }
}

#[test]
fn placement_flags() {
    let args = start_args(
        "pmcluster start 'node s.js' --name w --constraint region=eu --constraint 'disk in (ssd)' \
             --strategy binpack --distinct-hosts --cpu 500m --memory 256M --reschedule-after never",
    );
    let spec = start_spec(&args).expect("valid");
    assert_eq!(spec.placement.constraints.len(), 2);
    assert_eq!(spec.placement.max_per_node, Some(1));
    assert_eq!(spec.resources.cpu_millis, 500);
    assert_eq!(spec.resources.memory_bytes, 256 << 20);
    assert_eq!(spec.reschedule, pmcluster_spec::app::Reschedule::Never);
}

fn policy_flags(line: &str) -> Result<PolicyChanges, UsageError> {
    let words = shell_words::split(line).expect("test line splits");
    let update = match Cli::try_parse_from(words).expect("parses").command {
        Command::Start(a) => a.update,
        Command::Reload(a) => a.update,
        Command::Restart(a) => a.update,
        other => panic!("{other:?}"),
    };
    PolicyChanges::parse(&update)
}

#[test]
fn update_policy_flags() {
    let all = policy_flags(
        "pmcluster restart web --rolling --max-surge 2 --max-unavailable 1 \
             --min-healthy-time 2s --healthy-deadline 1m --progress-deadline 3m \
             --auto-rollback false --canary 1 --shutdown-delay 500ms",
    )
    .expect("valid");
    let want = PolicyChanges {
        max_surge: Some(2),
        max_unavailable: Some(1),
        min_healthy_time: Some(Duration::from_secs(2)),
        healthy_deadline: Some(Duration::from_secs(60)),
        progress_deadline: Some(Duration::from_secs(180)),
        auto_rollback: Some(false),
        canary: Some(1),
        shutdown_delay: Some(Duration::from_millis(500)),
    };
    assert_eq!(all, want);
    let p = all.apply(&UpdatePolicy::default()).expect("valid");
    assert_eq!(
        (p.max_surge, p.max_unavailable, p.canary, p.auto_rollback),
        (2, 1, 1, false)
    );
    // Fields not given keep the base's values.
    let base = UpdatePolicy {
        canary: 3,
        ..UpdatePolicy::default()
    };
    let one = policy_flags("pmcluster reload web --max-surge 4").expect("valid");
    assert_eq!(
        one.apply(&base).expect("valid"),
        UpdatePolicy {
            max_surge: 4,
            ..base.clone()
        }
    );
    assert!(
        policy_flags("pmcluster reload web")
            .expect("none")
            .is_empty()
    );
    let no = policy_flags("pmcluster start 'node s.js' --name w --no-auto-rollback");
    assert_eq!(no.expect("valid").auto_rollback, Some(false));
    assert_eq!(
        policy_flags("pmcluster reload web --auto-rollback TRUE")
            .expect("valid")
            .auto_rollback,
        Some(true)
    );
    // A plain number is milliseconds, as in config files and the other duration flags.
    assert_eq!(
        policy_flags("pmcluster reload web --shutdown-delay 1500")
            .expect("valid")
            .shutdown_delay,
        Some(Duration::from_millis(1500))
    );

    let bad = [
        (
            "pmcluster reload web --max-surge -1",
            "--max-surge: \"-1\" is negative; give a whole number 0 or more",
        ),
        (
            "pmcluster reload web --max-unavailable two",
            "--max-unavailable: \"two\" is not a whole number (0 or more)",
        ),
        (
            "pmcluster reload web --canary 1.5",
            "--canary: \"1.5\" is not a whole number (0 or more)",
        ),
        (
            "pmcluster reload web --canary 99999999999",
            "--canary: \"99999999999\" is too large",
        ),
        (
            "pmcluster reload web --min-healthy-time soon",
            "--min-healthy-time: \"soon\" is not a duration",
        ),
        (
            "pmcluster reload web --healthy-deadline -5s",
            "--healthy-deadline: \"-5s\" is negative; give a duration of 0 or more",
        ),
        (
            "pmcluster reload web --progress-deadline 10x",
            "--progress-deadline: \"10x\" is not a duration",
        ),
        (
            "pmcluster reload web --shutdown-delay ''",
            "--shutdown-delay: \"\" is not a duration",
        ),
        (
            "pmcluster reload web --shutdown-delay 2h",
            "--shutdown-delay: 2h is more than the maximum of 1h",
        ),
        (
            "pmcluster reload web --progress-deadline 18446744073709551615",
            "--progress-deadline: 584542046years",
        ),
        (
            "pmcluster reload web --auto-rollback maybe",
            "--auto-rollback: \"maybe\" is not true or false",
        ),
    ];
    for (line, want) in bad {
        let err = policy_flags(line).expect_err(line);
        assert!(
            err.0.starts_with(want),
            "{line}\nwant {want}\ngot  {}",
            err.0
        );
    }
    let cli = |line: &str| Cli::try_parse_from(shell_words::split(line).expect("splits"));
    assert!(cli("pmcluster reload web --auto-rollback true --no-auto-rollback").is_err());
    assert!(cli("pmcluster reload web --max-surge").is_err());
}

#[test]
fn update_policy_rules_name_the_flags_given() {
    let base = UpdatePolicy::default();
    let cases = [
        (
            "pmcluster reload web --max-surge 0",
            "--max-surge: max_surge and max_unavailable would both be 0: nothing could ever \
                 be replaced",
        ),
        (
            "pmcluster reload web --max-surge 0 --max-unavailable 0",
            "--max-surge, --max-unavailable: max_surge and max_unavailable would both be 0",
        ),
        (
            "pmcluster reload web --min-healthy-time 10m",
            "--min-healthy-time: healthy_deadline (5m) must be longer than min_healthy_time \
                 (10m)",
        ),
        (
            "pmcluster reload web --healthy-deadline 5s",
            "--healthy-deadline: healthy_deadline (5s) must be longer than min_healthy_time \
                 (5s)",
        ),
        (
            "pmcluster reload web --healthy-deadline 20m",
            "--healthy-deadline: progress_deadline (10m) must be at least healthy_deadline \
                 (20m)",
        ),
        (
            "pmcluster reload web --progress-deadline 1m",
            "--progress-deadline: progress_deadline (1m) must be at least healthy_deadline \
                 (5m)",
        ),
    ];
    for (line, want) in cases {
        let changes = policy_flags(line).expect("each value is valid");
        let err = changes.apply(&base).expect_err(line);
        assert!(
            err.0.starts_with(want),
            "{line}\nwant {want}\ngot  {}",
            err.0
        );
    }
    // Together they can be fine: 0 surge with 1 unavailable, a longer deadline with it.
    for line in [
        "pmcluster reload web --max-surge 0 --max-unavailable 1",
        "pmcluster reload web --min-healthy-time 8m --healthy-deadline 9m",
    ] {
        let changes = policy_flags(line).expect("valid");
        assert!(changes.apply(&base).is_ok(), "{line}");
    }
}

#[test]
fn update_policy_flags_elsewhere() {
    // `start`: the flags make the spec's policy, and count as spec flags.
    let spec = start_spec(&start_args(
        "pmcluster start 'node s.js' --name w --max-surge 3 --canary 1",
    ))
    .expect("valid");
    assert_eq!((spec.update.max_surge, spec.update.canary), (3, 1));
    assert!(matches!(
        plan_start(&start_args("pmcluster start web --max-surge 3")),
        Ok(StartPlan::Apply { .. })
    ));
    let err = plan_start(&start_args(
        "pmcluster start 'node s.js' --name w --max-surge 0",
    ))
    .expect_err("refused");
    assert!(
        err.0
            .starts_with("--max-surge: max_surge and max_unavailable"),
        "{}",
        err.0
    );

    // `reload`: one field given twice is refused.
    let changes = policy_flags("pmcluster reload web --max-surge 2").expect("valid");
    assert!(
        changes
            .check_sets(&["env.A=1".into(), "update.canary=1".into()])
            .is_ok()
    );
    let err = changes
        .check_sets(&["update.max_surge=3".into()])
        .expect_err("twice");
    assert_eq!(
        err.0,
        "--max-surge: also given as --set update.max_surge=...; give it once"
    );
    let err = changes
        .check_sets(&[r#"update={"max_surge": 3}"#.into()])
        .expect_err("a whole block and a flag");
    assert!(
        err.0.starts_with("--max-surge: --set update=..."),
        "{}",
        err.0
    );

    // `restart`: only with --rolling.
    let restart = |line: &str| match Cli::try_parse_from(shell_words::split(line).expect("splits"))
        .expect("parses")
        .command
    {
        Command::Restart(a) => a,
        other => panic!("{other:?}"),
    };
    assert!(check_restart(&restart("pmcluster restart web")).is_ok());
    assert!(check_restart(&restart("pmcluster restart web --rolling --canary 1")).is_ok());
    let err = check_restart(&restart("pmcluster restart web --shutdown-delay 2s"))
        .expect_err("needs --rolling");
    assert!(
        err.0.starts_with("--shutdown-delay: only with --rolling"),
        "{}",
        err.0
    );
    let err = check_restart(&restart("pmcluster restart web --no-auto-rollback"))
        .expect_err("needs --rolling");
    assert!(
        err.0.starts_with("--auto-rollback: only with --rolling"),
        "{}",
        err.0
    );
}

#[test]
fn autoscale_flags() {
    use crate::args::{Cli, Command};
    let parse = |line: &str| match Cli::try_parse_from(shell_words::split(line).expect("splits"))
        .expect("parses")
        .command
    {
        Command::Autoscale(a) => a,
        other => panic!("{other:?}"),
    };
    let a = parse("pmcluster autoscale web --min 2 --max 10 --cpu-threshold 70 --cooldown 30s");
    assert!(autoscale_changes(&a));
    let p = autoscale_policy(&a, None).expect("valid");
    assert!(p.enabled && p.min == 2 && p.max == 10 && p.cooldown_ms == Some(30_000));
    // Options given later keep the rest of the current policy.
    let b = parse("pmcluster autoscale web --max 6");
    let p2 = autoscale_policy(&b, Some(&p)).expect("valid");
    assert_eq!((p2.min, p2.max, p2.cpu_threshold), (2, 6, 70.0));
    // The line `--off` prints to turn a policy back on gives that very policy.
    for line in [
        "pmcluster autoscale web --min 2 --max 10 --cpu-threshold 70 --cooldown 30s",
        "pmcluster autoscale web --min 1 --max 4 --mode target --memory-threshold 512M \
         --tolerance 0.2 --up-stabilization 5s --down-stabilization 1m",
        "pmcluster autoscale web --max 3 --memory-threshold 80 --scale-down-fraction 0.25",
        "pmcluster autoscale web --max 3 --memory-threshold 1000B --cooldown 1500ms",
    ] {
        let policy = autoscale_policy(&parse(line), None).expect("valid");
        let back = crate::output::turn_back_on("web", &policy);
        let back = back
            .trim_end()
            .strip_prefix("turn it back on with: ")
            .expect("the line");
        let again = autoscale_policy(&parse(back), None).expect("valid");
        assert_eq!(again, policy, "{line} -> {back}");
    }
    // In the units one types: a trial found `--cooldown 15000ms --down-stabilization 300000ms`.
    let policy = autoscale_policy(
        &parse(
            "pmcluster autoscale web --max 4 --memory-threshold 512M --cooldown 15000 \
             --down-stabilization 300s",
        ),
        None,
    )
    .expect("valid");
    let back = crate::output::turn_back_on("web", &policy);
    for want in [
        "--memory-threshold 512M",
        "--cooldown 15s",
        "--down-stabilization 5m",
    ] {
        assert!(back.contains(want), "{want:?} in {back}");
    }
    assert!(!back.contains("000ms"), "{back}");
    // A new policy keeps at least one instance unless told otherwise (a trial's went to 0).
    let one = parse("pmcluster autoscale web --max 4 --cpu-threshold 70");
    assert_eq!(autoscale_policy(&one, None).expect("valid").min, 1);
    let m = parse("pmcluster autoscale web --max 3 --memory-threshold 512M");
    assert_eq!(
        autoscale_policy(&m, None)
            .expect("valid")
            .memory_threshold_bytes,
        512 << 20
    );
    assert!(
        !autoscale_policy(&parse("pmcluster autoscale web --off"), Some(&p))
            .expect("off")
            .enabled
    );
    let bad = [
        (
            "pmcluster autoscale web --min 5 --max 2 --cpu-threshold 70",
            "--min",
        ),
        (
            "pmcluster autoscale web --max 2 --cpu-threshold 70 --cooldown soon",
            "--cooldown",
        ),
        (
            "pmcluster autoscale web --max 2 --memory-threshold lots",
            "--memory-threshold",
        ),
        (
            "pmcluster autoscale web --max 2 --cpu-threshold 70 --tolerance 3",
            "--tolerance",
        ),
        (
            "pmcluster autoscale web --max 2 --cpu-threshold 70 --down-stabilization 2days",
            "--down-stabilization: 2days is more than the maximum of 1day",
        ),
        (
            "pmcluster autoscale web --min 0 --max 4 --cpu-threshold 70",
            "--min: must be at least 1",
        ),
        (
            "pmcluster autoscale web --mode target --cpu-threshold 60",
            "--max: give the most instances it may scale to",
        ),
    ];
    for (line, want) in bad {
        let err = autoscale_policy(&parse(line), None).expect_err(line);
        assert!(err.0.starts_with(want), "{line}: {}", err.0);
    }
    assert!(!autoscale_changes(&parse("pmcluster autoscale web")));
    assert!(Cli::try_parse_from(["pmcluster", "autoscale", "web", "--off", "--max", "3"]).is_err());
}
