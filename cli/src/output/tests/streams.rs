//! Lines that stream out one by one: logs, events, and YAML/JSON documents of a stream.

use super::*;

#[test]
fn log_and_event_lines() {
    let line = |stream: pb::LogStream| pb::LogLine {
        app: "web".into(),
        index: 2,
        node: "a".into(),
        stream: stream as i32,
        line: "listening on 3002".into(),
        unread: false,
    };
    let cases = [
        (
            line(pb::LogStream::Stdout),
            false,
            "web[2] | listening on 3002",
        ),
        (
            line(pb::LogStream::Stderr),
            false,
            "web[2] err| listening on 3002",
        ),
        (line(pb::LogStream::Stderr), true, "listening on 3002"),
    ];
    for (input, raw, want) in cases {
        assert_eq!(log_line(&input, raw), want);
    }
    assert_eq!(log_json(&line(pb::LogStream::Stderr))["stream"], "stderr");

    let event = |app: &str, index: Option<u32>, node: &str| pb::Event {
        at_ms: NOW,
        kind: if index == Some(9) {
            "instance.leak_suspected".into()
        } else {
            "instance.state".into()
        },
        app: app.into(),
        node: node.into(),
        index,
        message: "online".into(),
    };
    let cases = [
        (
            event("web", Some(2), "a"),
            "2023-11-14T22:13:20Z  instance.state   web[2]           a            online",
        ),
        (
            event("", None, ""),
            "2023-11-14T22:13:20Z  instance.state   -                -            online",
        ),
        (
            event("web", Some(9), "a"),
            "2023-11-14T22:13:20Z  instance.leak_suspected web[9]    a            online",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(event_line(&input), want);
    }
    assert_eq!(event_json(&event("", None, "a"))["app"], Value::Null);
}

#[test]
fn yaml_reads_back_as_the_json_it_stands_for() {
    // Strings that a careless encoder would turn into numbers, booleans or nulls, or break.
    let tricky = json!({
        "name": "web",
        "port": "3000",
        "yes": "true",
        "nothing": "null",
        "empty": "",
        "colon": "a: b",
        "hash": "x # y",
        "lines": "one\ntwo",
        "dash": "- item",
        "n": 4,
        "cpu": 12.5,
        "none": null,
        "list": [],
        "map": {},
        "nested": [{"a": 1}, {"b": [true, false]}],
    });
    let list = instances_json(
        &[
            instance("web", 0, pb::InstanceState::Online),
            instance("web", 1, pb::InstanceState::Pending),
        ],
        NOW,
    );
    for value in [tricky, list, json!([]), json!("plain")] {
        let text = document(&value, OutputFormat::Yaml).expect("encodes");
        let back: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
        assert_eq!(back, value, "{text}");
        assert!(text.ends_with('\n'), "{text:?}");
        // JSON output is untouched by the YAML path.
        let json_text = document(&value, OutputFormat::Json).expect("encodes");
        assert_eq!(serde_json::from_str::<Value>(&json_text).ok(), Some(value));
    }
}

#[test]
fn streams_are_one_item_per_line_or_document() {
    let items = [
        json!({"line": "a: 1"}),
        json!({"line": "---"}),
        json!({"n": 3}),
    ];
    let json_text: String = items
        .iter()
        .map(|v| stream_item(v, OutputFormat::Json).expect("encodes"))
        .collect();
    let lines: Vec<Value> = json_text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one object per line"))
        .collect();
    assert_eq!(lines, items);
    let yaml_text: String = items
        .iter()
        .map(|v| stream_item(v, OutputFormat::Yaml).expect("encodes"))
        .collect();
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&yaml_text).unwrap_or_else(|e| panic!("{e}:\n{yaml_text}"));
    assert_eq!(docs, items, "{yaml_text}");
}
