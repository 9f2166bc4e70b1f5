use super::*;
use clap::CommandFactory;
use clap::error::ErrorKind;

#[test]
fn definitions_are_consistent() {
    Cli::command().debug_assert();
}

fn parse(line: &str) -> Result<Cli, ErrorKind> {
    let words = shell_words::split(line).expect("test line splits");
    Cli::try_parse_from(words).map_err(|e| e.kind())
}

#[test]
fn parses() {
    let ok = [
        "pmcluster scale web 3",
        "pmcluster scale web -1",
        "pmcluster scale web abc",
        "pmcluster -o json list",
        "pmcluster list -o json",
        "pmcluster ls web",
        "pmcluster status",
        "pmcluster rm web",
        "pmcluster start 'node server.js' --name web -i 4 --port 3000-3003 -e A=1 -e B=2",
        "pmcluster start web --instance 2",
        "pmcluster start 'node server.js' --name web -- --flag x",
        "pmcluster logs web -f --lines 50 --instance 1",
        "pmcluster logs web -f --lines 0",
        "pmcluster stop web --wait",
        "pmcluster stop web --instance 1 --wait --wait-timeout 5s",
        "pmcluster apply -f apps.yaml --format yaml",
        "pmcluster up --listen 127.0.0.1:0 --data-dir /tmp/x",
        "pmcluster --coordinator 10.0.0.1:7450 nodes",
        "pmcluster --coordinator http://10.0.0.1:7450,10.0.0.2:7450 scale web 2",
        "pmcluster restart web --rolling --max-surge 2 --no-auto-rollback --shutdown-delay 5s",
        "pmcluster reload web --max-surge -1 --min-healthy-time -5s --yes",
        "pmcluster start 'node s.js' --name web --canary 1 --auto-rollback false",
        "pmcluster certs init --dir d --days 10 --force",
        "pmcluster certs issue coordinator --dir d --san a.example,10.0.0.1 --san ::1",
        "pmcluster certs issue agent host-a --dir d --days 30",
        "pmcluster certs issue user alice --role admin --dir d",
        "pmcluster certs issue user ci --role operate --app 'web*' --dir d",
        "pmcluster token create --role read --description dash",
        "pmcluster token create --role operate --app 'web*'",
        "pmcluster token list",
        "pmcluster token revoke 0123456789ab",
        "pmcluster --token pmc_x whoami",
        "pmcluster list -o yaml",
        "pmcluster events -f",
        "pmcluster events web --follow --history 5",
        "pmcluster events --no-follow",
        "pmcluster completions bash",
        "pmcluster completions zsh",
        "pmcluster completions fish",
        "pmcluster man --dir out",
        "pmcluster import pm2 jlist.json",
        "pmcluster import pm2 eco.json --out apps.yaml -o yaml",
        "pmcluster import pm2 -",
        "pmcluster endpoints web -o haproxy --balance leastconn",
        "pmcluster endpoints web -o nginx --balance sticky --watch --file f",
    ];
    for line in ok {
        assert!(parse(line).is_ok(), "{line}: {:?}", parse(line).err());
    }
    let bad = [
        ("pmcluster scale web", ErrorKind::MissingRequiredArgument),
        ("pmcluster frobnicate", ErrorKind::InvalidSubcommand),
        ("pmcluster list -o xml", ErrorKind::InvalidValue),
        (
            "pmcluster events -f --no-follow",
            ErrorKind::ArgumentConflict,
        ),
        ("pmcluster completions tcsh", ErrorKind::InvalidValue),
        ("pmcluster man", ErrorKind::MissingRequiredArgument),
        ("pmcluster import pm2", ErrorKind::MissingRequiredArgument),
        (
            "pmcluster import forever x.json",
            ErrorKind::InvalidSubcommand,
        ),
        (
            "pmcluster endpoints web --balance random",
            ErrorKind::InvalidValue,
        ),
        (
            "pmcluster logs web --lines 10001",
            ErrorKind::ValueValidation,
        ),
        (
            "pmcluster stop web --instance -1",
            ErrorKind::UnknownArgument,
        ),
        (
            "pmcluster reload web --auto-rollback true --no-auto-rollback",
            ErrorKind::ArgumentConflict,
        ),
        (
            "pmcluster stop web --max-surge 2",
            ErrorKind::UnknownArgument,
        ),
        ("pmcluster certs init", ErrorKind::MissingRequiredArgument),
        (
            "pmcluster certs issue user alice --dir d",
            ErrorKind::MissingRequiredArgument,
        ),
        (
            "pmcluster token create --role owner",
            ErrorKind::InvalidValue,
        ),
        ("pmcluster token create", ErrorKind::MissingRequiredArgument),
        (
            "pmcluster certs issue coordinator --dir d",
            ErrorKind::MissingRequiredArgument,
        ),
        (
            "pmcluster certs init --dir d --days 0",
            ErrorKind::ValueValidation,
        ),
        (
            "pmcluster certs issue agent --dir d",
            ErrorKind::MissingRequiredArgument,
        ),
    ];
    for (line, kind) in bad {
        assert_eq!(parse(line).err(), Some(kind), "{line}");
    }
}

#[test]
fn coordinator_lists() {
    let cli = parse("pmcluster list --coordinator 'c1:7450, http://c2:7450'").expect("parses");
    let urls = crate::failover::parse_urls(&cli.coordinator).map_err(|e| e.to_string());
    assert_eq!(
        urls,
        Ok(vec![
            "http://c1:7450".to_string(),
            "http://c2:7450".to_string()
        ])
    );
    let cli = parse("pmcluster --coordinator c1:7450,,c2:7450 list").expect("parses");
    let err = crate::failover::parse_urls(&cli.coordinator).map(|_| ());
    let err = err.expect_err("an empty item is refused").to_string();
    assert!(err.starts_with("--coordinator: item 2 of"), "{err}");
}

#[test]
fn negative_count_reaches_the_command() {
    let cli = parse("pmcluster scale web -1").expect("parses");
    match cli.command {
        Command::Scale(s) => assert_eq!(s.instances, "-1"),
        other => panic!("{other:?}"),
    }
}

/// The `--wait-timeout` clap fills in is the one `WaitFlags::default()` has: 60 s.
#[test]
fn the_wait_timeout_default_is_one() {
    assert_eq!(
        parse_interval(WAIT_TIMEOUT),
        Ok(std::time::Duration::from_secs(60))
    );
    let default = WaitFlags::default();
    assert!(!default.wait);
    let cli = parse("pmcluster scale web 2").expect("parses");
    match cli.command {
        Command::Scale(s) => assert_eq!(s.wait.wait_timeout, default.wait_timeout),
        other => panic!("{other:?}"),
    }
}

/// An output format the verb does not write is refused, naming -o/--output and what the verb
/// writes; a connection flag given to a verb that talks to no coordinator is said to be ignored.
#[test]
fn global_flags_a_verb_ignores_are_not_ignored_silently() {
    let checked = |line: &str| {
        let words = shell_words::split(line).expect("test line splits");
        parse_from(words)
    };
    let refused = [
        (
            "pmcluster list -o nginx",
            "-o/--output nginx: `list` writes table, json or yaml (nginx config: `pmcluster \
             endpoints APP -o nginx`)",
        ),
        (
            "pmcluster -o haproxy info web",
            "-o/--output haproxy: `info` writes table, json or yaml",
        ),
        (
            "pmcluster monit -o json",
            "-o/--output json: `monit` writes only table",
        ),
        (
            "pmcluster completions bash -o yaml",
            "-o/--output yaml: `completions` writes only table",
        ),
    ];
    for (line, want) in refused {
        let err = checked(line).map(|_| ()).expect_err(line);
        assert_eq!(err.kind(), ErrorKind::InvalidValue, "{line}");
        assert!(err.to_string().contains(want), "{line}: {err}");
        assert_eq!(err.exit_code(), 2, "{line}");
    }
    let err = checked("pmcluster list -o xml")
        .map(|_| ())
        .expect_err("xml");
    assert!(
        err.to_string().contains("--output")
            && err
                .to_string()
                .contains("table, json, yaml, nginx, haproxy"),
        "{err}"
    );

    let warned = [
        (
            "pmcluster up --coordinator 10.0.0.1:7450",
            vec![
                "--coordinator is ignored: `up` works on this machine and talks to no \
                 coordinator (the one it starts listens where --listen says)",
            ],
        ),
        (
            "pmcluster --token t --ca ca.pem completions bash",
            vec![
                "--ca is ignored: `completions`",
                "--token is ignored: `completions`",
            ],
        ),
        (
            "pmcluster import pm2 x.json --cert c.pem",
            vec!["--cert is ignored: `import`"],
        ),
        ("pmcluster --coordinator 10.0.0.1:7450 list", vec![]),
        ("pmcluster endpoints web -o nginx", vec![]),
        ("pmcluster up -o json", vec![]),
    ];
    for (line, want) in warned {
        let (_, got) = checked(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(got.len(), want.len(), "{line}: {got:?}");
        for (got, want) in got.iter().zip(want) {
            assert!(got.starts_with(want), "{line}: {got}");
        }
    }
}
