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
            "shutdown_delay 0s -> 2s 500ms",
        ]
    );
    assert!(policy_changes(&old, &old).is_empty());
    assert_eq!(policy_json(&new)["shutdown_delay_ms"], 2500);
}
