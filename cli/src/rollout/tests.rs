use super::*;
use serde_json::json;

#[test]
fn edit_errors_name_the_option_and_field() {
    let edit = |sets: &[&str], instances: Option<u32>| {
        let mut config = to_config(&AppSpec::new("api", "node", &["server.js"]));
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        for s in &sets {
            set_field(&mut config, s).expect("sets");
        }
        if let Some(n) = instances {
            set_field(&mut config, &format!("instances={n}")).expect("sets");
        }
        let e = parse_config(config).expect_err("refused");
        edit_error(&e, &sets, instances.is_some()).to_string()
    };
    let cases: &[(&[&str], Option<u32>, &str)] = &[
        (&["bogus=1"], None, "--set bogus: unknown field `bogus`"),
        (
            &["autorestart=maybe"],
            None,
            "--set autorestart: invalid type: string \"maybe\", expected a boolean",
        ),
        (
            &["update.max_surge=-1"],
            None,
            "--set update.max_surge: invalid value: integer `-1`, expected a whole number",
        ),
        (
            &["env.A=[1]"],
            None,
            "--set env.A: expected a string, a number",
        ),
        (
            &["script=false"],
            None,
            "--set script: invalid type: boolean `false`, expected a string (the value is read \
             as JSON; for the text, quote it: --set 'script=\"false\"')",
        ),
        (
            &["instances=lots"],
            None,
            "--set instances: \"lots\" is neither a whole number",
        ),
        (
            &[],
            Some(200_000),
            "--instances: 200000 is more than the limit of 100000",
        ),
        (
            &["port=3000-3001"],
            Some(3),
            "--set port: 3000-3001 holds 2 ports but 3 instances",
        ),
    ];
    for (sets, instances, want) in cases {
        let got = edit(sets, *instances);
        assert!(got.starts_with(want), "{sets:?}: {got}");
        assert!(!got.contains("file"), "{got}");
        assert!(!got.contains("line 1"), "{got}");
    }
    // A field that was not set, refusing what was.
    let e = SpecError::new("port", "holds 2 ports but 3 instances were asked for");
    assert_eq!(
        edit_error(&e, &["instances=3".to_string()], false).to_string(),
        "--set: port: holds 2 ports but 3 instances were asked for"
    );
    // `reload web --instances 3` alone gave no --set to blame.
    assert_eq!(
        edit_error(&e, &[], true).to_string(),
        "--instances: port: holds 2 ports but 3 instances were asked for"
    );
}

#[test]
fn set_fields() {
    let mut v = json!({"name": "web", "instances": 2, "env": {"A": "1"}});
    set_field(&mut v, "instances=4").unwrap();
    set_field(&mut v, "env.B=two").unwrap();
    set_field(&mut v, "update.max_surge=2").unwrap();
    set_field(&mut v, "args=[\"--x\"]").unwrap();
    assert_eq!(
        v,
        json!({"name": "web", "instances": 4, "env": {"A": "1", "B": "two"}, "update": {"max_surge": 2}, "args": ["--x"]})
    );
    assert!(set_field(&mut v, "noequals").is_err());
    assert!(set_field(&mut v, "instances.x=1").is_err());
    assert!(set_field(&mut v, "a..b=1").is_err());
}

#[test]
fn diffs_hide_secrets() {
    let old = json!({"env": {"P": {"secret": "hunter2"}, "Q": {"secret": "same"}, "V": "1"}});
    let new = json!({"env": {"P": {"secret": "hunter3"}, "Q": {"secret": "same"}, "V": "1"}});
    let (a, b) = hide_secrets(&old, &new);
    let shown = diff(&a, &b).join("\n");
    assert!(!shown.contains("hunter"), "{shown}");
    assert!(
        shown.contains("-       \"secret\": \"<secret>\""),
        "{shown}"
    );
    assert!(
        shown.contains("+       \"secret\": \"<secret> (changed)\""),
        "{shown}"
    );
    let (a, b) = hide_secrets(&old, &old);
    assert!(diff(&a, &b).is_empty());
}

#[test]
fn diffs() {
    let a = json!({"name": "web", "env": {"V": "1"}});
    let b = json!({"name": "web", "env": {"V": "2"}});
    assert_eq!(
        diff(&a, &b),
        vec![
            "  {",
            "    \"env\": {",
            "-     \"V\": \"1\"",
            "+     \"V\": \"2\"",
            "    },",
            "    \"name\": \"web\"",
        ]
    );
    assert!(diff(&a, &a).is_empty());
}

#[test]
fn reordered_args_are_a_change() {
    let spec = |args: &[&str]| to_config(&AppSpec::new("web", "node", args));
    let old = spec(&["server.js", "--a", "--b", "--c"]);
    let new = spec(&["server.js", "--b", "--a", "--c"]);
    // The same lines, as a set: only their order tells the specs apart.
    let sorted = |v: &Value| {
        let mut lines: Vec<String> = serde_json::to_string_pretty(v)
            .expect("encodes")
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted(&old), sorted(&new));
    let changes = diff(&old, &new);
    let edits: Vec<&str> = changes
        .iter()
        .map(String::as_str)
        .filter(|l| !l.starts_with(' '))
        .collect();
    assert_eq!(
        edits,
        vec!["-     \"--a\",", "+     \"--a\","],
        "{changes:#?}"
    );
    assert!(
        changes.contains(&"    \"args\": [".to_string()),
        "the context shows where: {changes:#?}"
    );
}

#[test]
fn diff_context_and_gaps() {
    let old: Value = (0..20).map(|i| json!(i)).collect();
    let mut new = old.clone();
    new[1] = json!("one");
    new[15] = json!("fifteen");
    let changes = diff(&old, &new);
    assert_eq!(
        changes,
        vec![
            "  [",
            "    0,",
            "-   1,",
            "+   \"one\",",
            "    2,",
            "    3,",
            "  ...",
            "    13,",
            "    14,",
            "-   15,",
            "+   \"fifteen\",",
            "    16,",
            "    17,",
        ]
    );
    // Additions and removals at the ends, and between empty and full.
    let e = json!([]);
    assert_eq!(diff(&e, &json!([1])), vec!["- []", "+ [", "+   1", "+ ]"]);
    assert_eq!(diff(&json!([1]), &e), vec!["- [", "-   1", "- ]", "+ []"]);
    let grown = diff(&json!([1, 2]), &json!([1, 2, 3]));
    assert_eq!(
        grown,
        vec!["  [", "    1,", "-   2", "+   2,", "+   3", "  ]"]
    );
}

#[test]
fn policy_change_lines() {
    let old = UpdatePolicy::default();
    let new = UpdatePolicy {
        max_surge: 2,
        shutdown_delay: Duration::from_millis(2500),
        auto_rollback: false,
        ..old.clone()
    };
    assert_eq!(
        policy_changes(&old, &new),
        vec![
            "max_surge 1 -> 2",
            "auto_rollback true -> false",
            "shutdown_delay 0s -> 2500ms",
        ]
    );
    assert!(policy_changes(&old, &old).is_empty());
    assert_eq!(policy_json(&new)["shutdown_delay_ms"], 2500);
    // A trial's one-off `reload api --canary 1` was kept, unsaid: the line says so, and how to
    // go back, in flags `reload` reads.
    let canary = UpdatePolicy {
        canary: 1,
        healthy_deadline: Duration::from_secs(8),
        ..old.clone()
    };
    assert_eq!(
        policy_kept("api", &old, &canary),
        "api: update policy changed: healthy_deadline 5m -> 8s, canary 0 -> 1 (kept for later \
         rollouts; to go back: pmcluster reload api --healthy-deadline 5m --canary 0)"
    );
    let back = policy_flags(&new, &old).join(" ");
    assert_eq!(
        back,
        "--max-surge 2 --auto-rollback false --shutdown-delay 2500ms"
    );
    let words = shell_words::split(&format!("pmcluster reload web {back}")).expect("splits");
    let cli = <crate::args::Cli as clap::Parser>::try_parse_from(words).expect("parses");
    let crate::args::Command::Reload(args) = cli.command else {
        panic!("not reload");
    };
    let changes = PolicyChanges::parse(&args.update).expect("valid");
    assert_eq!(changes.apply(&old).expect("valid"), new);
}

/// After an automatic rollback (6 failed, 7 restored 5's spec), a plain undo goes back to 6: the
/// line names the version whose spec it restores and says how that version's rollout ended.
#[test]
fn undo_names_the_version_it_restores_and_warns_of_a_bad_one() {
    let dep = |id, kind: &str, from, to, state: &str, message: &str| pb::Deployment {
        id,
        app: "web".into(),
        kind: kind.into(),
        from_version: from,
        to_version: to,
        state: state.into(),
        message: message.into(),
        ..pb::Deployment::default()
    };
    let status = pb::RolloutStatus {
        current: Some(dep(4, "rollback", 6, 7, "succeeded", "")),
        history: vec![
            dep(1, "update", 4, 5, "succeeded", ""),
            dep(2, "restart", 5, 5, "failed", "restart stuck"),
            dep(3, "update", 5, 6, "rolled back", "web[0] crashed 3 times"),
        ],
        versions: vec![4, 5, 6, 7],
        version: 7,
    };
    let undo = dep(5, "rollback", 7, 8, "running", "");
    assert_eq!(
        undo_line("web", None, Some(&status), &undo),
        "web: rolling back to the spec of version 6 as version 8 (version 6's rollout was \
         rolled back: web[0] crashed 3 times); follow it with: pmcluster rollout status web --wait"
    );
    // A good version: no warning, and a failed restart of it does not count against it.
    assert_eq!(
        undo_line("web", Some(5), Some(&status), &undo),
        "web: rolling back to the spec of version 5 as version 8; follow it with: pmcluster \
         rollout status web --wait"
    );
    let mut failed = status.clone();
    failed.history[2].state = "failed".into();
    assert!(
        undo_line("web", None, Some(&failed), &undo)
            .contains("version 6 as version 8 (version 6's rollout failed: web[0] crashed"),
    );
    // A failed rolling restart holds nothing (found by a review): the undo goes to the version
    // before, as the coordinator does, not "back" to the version that was restarted.
    let restarted = pb::RolloutStatus {
        current: Some(dep(
            4,
            "restart",
            7,
            7,
            "failed",
            "no instance replaced within 60s",
        )),
        history: vec![dep(3, "update", 6, 7, "succeeded", "")],
        versions: vec![5, 6, 7],
        version: 7,
    };
    assert_eq!(
        undo_line("web", None, Some(&restarted), &undo),
        "web: rolling back to the spec of version 6 as version 8; follow it with: pmcluster \
         rollout status web --wait"
    );
    // Another change came in between the read and the undo: the source is not known for sure.
    let later = dep(5, "rollback", 9, 10, "running", "");
    assert_eq!(
        undo_line("web", None, Some(&status), &later),
        "web: rolling back to the previous spec as version 10; follow it with: pmcluster \
         rollout status web --wait"
    );
    assert!(undo_line("web", None, None, &undo).contains("the previous spec as version 8"));
    // A failed rollout left standing (5 -> 6 failed, 6 -> 7 failed from what served): back to
    // 5, what the instances not replaced run, not to the failed 6.
    let held = pb::RolloutStatus {
        current: Some(dep(4, "update", 5, 7, "failed", "web[0] errored")),
        history: vec![
            dep(1, "update", 4, 5, "succeeded", ""),
            dep(3, "update", 5, 6, "failed", "web[0] crashed 3 times"),
        ],
        versions: vec![4, 5, 6],
        version: 7,
    };
    assert_eq!(
        undo_line(
            "web",
            None,
            Some(&held),
            &dep(5, "rollback", 5, 8, "running", "")
        ),
        "web: rolling back to the spec of version 5 as version 8; follow it with: pmcluster \
         rollout status web --wait"
    );
}

/// A reload while a failed rollout stands says that its changes go on top of the failed spec;
/// a reload after a success, or after a failed rolling restart (same version), says nothing.
#[test]
fn a_reload_over_a_failed_rollout_says_what_comes_along() {
    let dep = |kind: &str, from, to, state: &str| pb::Deployment {
        app: "web".into(),
        kind: kind.into(),
        from_version: from,
        to_version: to,
        state: state.into(),
        ..pb::Deployment::default()
    };
    let status = |current| pb::RolloutStatus {
        current: Some(current),
        versions: vec![1],
        version: 2,
        ..pb::RolloutStatus::default()
    };
    let note = held_note("web", &status(dep("update", 1, 2, "failed"))).unwrap_or_default();
    assert!(
        note.contains("rollout of version 2 failed")
            && note.contains("run version 1")
            && note.contains("pmcluster rollout undo web"),
        "{note}"
    );
    assert_eq!(
        held_note("web", &status(dep("update", 1, 2, "succeeded"))),
        None
    );
    assert_eq!(
        held_note("web", &status(dep("restart", 2, 2, "failed"))),
        None
    );
    assert_eq!(
        held_note("web", &status(dep("update", 1, 3, "failed"))),
        None
    );
}
