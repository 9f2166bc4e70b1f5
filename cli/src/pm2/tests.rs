use super::*;
use crate::args::{Cli, parse_from};

fn parse(line: &str) -> Result<Cli, clap::Error> {
    let words = shell_words::split(line).expect("test line splits");
    parse_from(words).map(|(cli, _)| cli)
}

/// clap's refusal of `line`, as [`explain`] words it.
fn refused(line: &str) -> clap::Error {
    let args: Vec<OsString> = shell_words::split(line)
        .expect("test line splits")
        .into_iter()
        .map(OsString::from)
        .collect();
    let err = parse_from(args.clone())
        .err()
        .unwrap_or_else(|| panic!("{line}: parsed"));
    explain(err, &args)
}

/// PM2's `save`, `resurrect`, `startup` (and `dump`, `unstartup`), with whatever PM2 takes
/// after them, and `--update-env`, each reach a pointer to what pmcluster does instead, not
/// clap's "a similar subcommand exists" (`save`: 'scale') or a bare "unexpected argument".
#[test]
fn pm2_verbs_and_flags_point_to_what_to_do_instead() {
    let cases = [
        ("pmcluster save", "pmcluster export -o yaml > apps.yaml"),
        ("pmcluster save --force", "pmcluster up"),
        ("pmcluster -o json dump", "keeps no dump file"),
        ("pmcluster resurrect", "pmcluster apply -f"),
        (
            "pmcluster startup systemd -u me --hp /home/me",
            "deploy/systemd/",
        ),
        ("pmcluster unstartup", "pmcluster up` at boot"),
        (
            "pmcluster restart pyapp --update-env",
            "pmcluster reload pyapp --set env.KEY=VALUE",
        ),
        (
            "pmcluster --coordinator http://h:1 restart --instance 1 web --update-env",
            "pmcluster reload web --set env.KEY=VALUE",
        ),
        ("pmcluster env web", "`pmcluster info web` shows"),
        (
            "pmcluster -o json env 0",
            "pmcluster reload APP --set env.KEY=VALUE; pmcluster knows apps by name, not by \
             PM2's numeric ids (`pmcluster apps` lists them)",
        ),
        ("pmcluster env", "pmcluster info APP"),
        (
            "pmcluster reload --update-env",
            "pmcluster reload APP --set env.KEY=VALUE",
        ),
        // clap's guess for `--watch` was `--wait`, which means something else.
        (
            "pmcluster start 'node server.js' --name web --watch",
            "--watch: pmcluster does not watch files; after a change, restart the app's \
             instances one after another with: pmcluster reload web",
        ),
        ("pmcluster start --watch=. api", "pmcluster reload api"),
        ("pmcluster restart web --watch", "pmcluster reload web"),
        (
            "pmcluster start --ignore-watch node_modules",
            "--ignore-watch:",
        ),
    ];
    for (line, want) in cases {
        let said = refused(line);
        let text = said.to_string();
        assert!(text.contains(want), "{line}: {text}");
        assert!(!text.contains("similar"), "{line}: {text}");
        // A usage error: exit 2, as clap's own refusal of an unknown verb.
        assert_eq!(said.exit_code(), 2, "{line}");
    }
    // Other mistakes keep clap's words, suggestions and all.
    for (line, want) in [
        ("pmcluster scael web 2", "'scale'"),
        (
            "pmcluster restart web --update",
            "unexpected argument '--update'",
        ),
        ("pmcluster bogus", "unrecognized subcommand 'bogus'"),
    ] {
        let text = refused(line).to_string();
        assert!(text.contains(want), "{line}: {text}");
    }
}

#[test]
fn numeric_names_read_as_pm2_ids() {
    for (app, id) in [
        ("0", true),
        ("12", true),
        ("web", false),
        ("web2", false),
        ("", false),
    ] {
        assert_eq!(looks_like_id(app), id, "{app:?}");
    }
    let not_found = |app: &str| -> anyhow::Result<()> {
        Err(ApiError::from(tonic::Status::not_found(format!("app {app:?} not found"))).into())
    };
    let said = |r: anyhow::Result<()>| r.err().map(|e| format!("{e:#}")).unwrap_or_default();
    let hinted = with_id_hint(not_found("0"), Some("0"));
    assert_eq!(
        said(hinted),
        "app \"0\" not found; pmcluster knows apps by name, not by PM2's numeric ids: \
         `pmcluster list` shows the names",
    );
    // The coordinator's own pointer to the names is not said twice.
    let pointed: anyhow::Result<()> = Err(ApiError::from(tonic::Status::not_found(
        "app \"7\" not found; see the apps with 'pmcluster apps'",
    ))
    .into());
    assert_eq!(
        said(with_id_hint(pointed, Some("7"))),
        "app \"7\" not found; see the apps with 'pmcluster apps'; pmcluster knows apps by \
         name, not by PM2's numeric ids",
    );
    // Still a "not found": exit 1.
    let hinted = with_id_hint(not_found("0"), Some("0")).expect_err("an error");
    assert_eq!(crate::error::exit_code(&hinted), 1);
    // A name, another error, or success: as they are.
    assert_eq!(
        said(with_id_hint(not_found("web"), Some("web"))),
        "app \"web\" not found"
    );
    let other: anyhow::Result<()> =
        Err(ApiError::from(tonic::Status::unavailable("no leader")).into());
    assert!(!said(with_id_hint(other, Some("0"))).contains("PM2"));
    assert!(with_id_hint(Ok(()), Some("0")).is_ok());
    for (line, app) in [
        ("pmcluster info 0", Some("0")),
        ("pmcluster stop 0", Some("0")),
        ("pmcluster restart 1 --instance 0", Some("1")),
        ("pmcluster logs 3", Some("3")),
        ("pmcluster logs", None),
        ("pmcluster apps", None),
    ] {
        let cli = parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(app_named(&cli.command), app, "{line}");
    }
}

/// `start FILE` of a config file points to the verb that reads it: `apply -f` for pmcluster's
/// own (and any file it cannot read), `import pm2` for a PM2 ecosystem file in JSON, and the way
/// to JSON first for one in JavaScript, as `apply -f` says of it.
#[test]
fn config_files_point_to_apply_or_import() {
    let ours = r#"{"apps": [{"name": "web", "script": "node", "args": ["server.js"]}]}"#;
    let pm2 = r#"{"apps": [{"name": "web", "script": "server.js", "watch": true}]}"#;
    let cases: [(&str, Option<&str>, Option<&str>); 12] = [
        (
            "ecosystem.config.js",
            None,
            Some(
                "then: pmcluster import pm2 eco.json --out apps.json && pmcluster apply -f apps.json",
            ),
        ),
        (
            "ecosystem.config.cjs",
            None,
            Some("import('./ecosystem.config.cjs')"),
        ),
        ("app.config.mjs", None, Some("in JavaScript")),
        (
            "apps.json",
            Some(ours),
            Some("pmcluster apply -f apps.json"),
        ),
        (
            "ecosystem.json",
            Some(pm2),
            Some(
                "pmcluster import pm2 ecosystem.json --out apps.json && pmcluster apply -f apps.json",
            ),
        ),
        ("eco.json", None, Some("pmcluster apply -f eco.json")),
        (
            "apps.yaml",
            Some("apps:\n  - name: web\n    script: node\n"),
            Some("apply -f apps.yaml"),
        ),
        ("apps.yml", None, Some("apply -f apps.yml")),
        ("apps.toml", None, Some("apply -f apps.toml")),
        ("my apps.json", None, Some("apply -f 'my apps.json'")),
        ("server.js", None, None),
        ("app.py", None, None),
    ];
    for (target, text, want) in cases {
        let got = config_pointer(target, text);
        match (want, &got) {
            (None, None) => {}
            (Some(want), Some(got)) => {
                assert!(got.contains(want), "{target}: {got}");
                assert!(
                    got.contains("not a config file") || got.contains("config file"),
                    "{got}"
                );
            }
            _ => panic!("{target}: {got:?}"),
        }
    }
}

/// PM2's `show` is `info` here, as `describe` is; `scale web max` says which change runs one
/// instance per core (a trial found both refused with no way on).
#[test]
fn show_is_info_and_scale_max_says_how() {
    for line in ["pmcluster show web", "pmcluster describe web"] {
        let cli = parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(matches!(cli.command, Command::Info(_)), "{line}");
    }
    assert_eq!(
        crate::commands::scale_max("web"),
        "scale web max: `scale` sets a number of instances; for one per CPU core of the \
         eligible nodes (PM2's -i max), change the app's spec in a rolling update: pmcluster \
         reload web --set instances=max (its port must then be a range or auto:A-B)"
    );
}
