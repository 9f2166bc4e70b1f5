//! Issue 15, shell ergonomics: completion scripts a real bash loads, man pages `man` renders,
//! `-o yaml` answers that read back as the same data as `-o json`, and `events -f`.

use std::path::{Path, PathBuf};
use std::process::Command;

use pmcluster_tests::{Bins, Cluster};
use serde_json::Value;

use crate::wait_online;

fn cli_bin() -> PathBuf {
    Bins::locate().expect("workspace binaries built").cli
}

/// Runs the CLI with no coordinator: `completions` and `man` need none.
fn run(args: &[&str]) -> std::process::Output {
    Command::new(cli_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("pmcluster {args:?}: {e}"))
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[test]
fn bash_loads_the_completion_script() {
    let out = run(&["completions", "bash"]);
    assert!(out.status.success(), "{out:?}");
    let script = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(script.path(), &out.stdout).expect("write the script");
    // A real bash sources it and must then have a completion registered for pmcluster; its
    // function must offer the verbs for `pmcluster end<TAB>` and the policies for --balance.
    let probe = format!(
        "set -e\nsource {script}\ncomplete -p pmcluster\n\
         COMP_WORDS=(pmcluster end); COMP_CWORD=1; COMP_LINE='pmcluster end'; COMP_POINT=13\n\
         _pmcluster pmcluster end pmcluster\necho \"verbs: ${{COMPREPLY[*]}}\"\n\
         COMP_WORDS=(pmcluster endpoints web --balance ''); COMP_CWORD=4\n\
         _pmcluster pmcluster '' --balance\necho \"balance: ${{COMPREPLY[*]}}\"\n",
        script = script.path().display()
    );
    let bash = Command::new("bash")
        .arg("--norc")
        .arg("-c")
        .arg(&probe)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&bash.stdout);
    assert!(
        bash.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&bash.stderr)
    );
    assert!(stdout.contains("-F _pmcluster pmcluster"), "{stdout}");
    assert!(stdout.contains("verbs: endpoints"), "{stdout}");
    assert!(
        stdout.contains("balance: roundrobin leastconn sticky"),
        "{stdout}"
    );
}

#[test]
fn zsh_and_fish_scripts_name_the_verbs() {
    for shell in ["zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for verb in [
            "start",
            "scale",
            "endpoints",
            "rollout",
            "completions",
            "man",
        ] {
            assert!(text.contains(verb), "{shell} script lacks {verb}:\n{text}");
        }
    }
    let fish = String::from_utf8_lossy(&run(&["completions", "fish"]).stdout).to_string();
    assert!(fish.contains("complete -c pmcluster"), "{fish}");
    let zsh = String::from_utf8_lossy(&run(&["completions", "zsh"]).stdout).to_string();
    assert!(zsh.starts_with("#compdef pmcluster"), "{zsh}");
    let bad = run(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

#[test]
fn man_pages_render() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = dir.path().join("man1");
    let t = target.display().to_string();
    let out = run(&["man", "--dir", &t]);
    assert!(out.status.success(), "{out:?}");
    for page in [
        "pmcluster.1",
        "pmcluster-start.1",
        "pmcluster-endpoints.1",
        "pmcluster-rollout-status.1",
    ] {
        let path = target.join(page);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH "), "{page} has no roff title:\n{text}");
        if on_path("man").is_some() {
            check_rendered(&path, page);
        }
    }
    // A file where the directory should be is refused, naming the flag.
    let file = dir.path().join("plain");
    std::fs::write(&file, "x").expect("write");
    let bad = run(&["man", "--dir", &file.display().to_string()]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--dir"),
        "{bad:?}"
    );
}

/// `man -l` turns the page into text that names the command and its options.
fn check_rendered(path: &Path, page: &str) {
    let out = Command::new("man")
        .arg("-l")
        .arg(path)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("man runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "man -l {page}: {out:?}");
    let name = page.trim_end_matches(".1");
    assert!(text.contains("NAME"), "{page}:\n{text}");
    assert!(text.contains(name), "{page}:\n{text}");
    assert!(text.contains("--coordinator"), "{page}:\n{text}");
}

fn yaml(text: &str, what: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}:\n{text}"))
}

/// The fields of an instance that do not move between two listings.
fn stable(i: &Value) -> Value {
    serde_json::json!([
        i["app"],
        i["index"],
        i["id"],
        i["pid"],
        i["port"],
        i["status"]
    ])
}

#[test]
fn yaml_output_reads_back_as_json_does() {
    let c = Cluster::start(2).expect("cluster starts");
    c.start_app("web", 2).online().expect("web starts");
    wait_online(&c, "web", 2);

    // list: the same instances, field for field, as JSON says.
    let list_y = c.cli(&["list", "-o", "yaml"]).assert_ok().stdout.clone();
    let list_j = c
        .cli(&["list", "-o", "json"])
        .assert_ok()
        .json()
        .expect("json");
    let list_y = yaml(&list_y, "list -o yaml");
    let (Some(ys), Some(js)) = (list_y.as_array(), list_j.as_array()) else {
        panic!("lists: {list_y} / {list_j}");
    };
    assert_eq!(ys.len(), 2, "{list_y}");
    assert_eq!(
        ys.iter().map(stable).collect::<Vec<_>>(),
        js.iter().map(stable).collect::<Vec<_>>()
    );
    for (y, j) in ys.iter().zip(js) {
        let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
        assert_eq!(keys(y), keys(j));
    }

    // info, apps, nodes: the spec, the counts and the node names agree.
    let info = yaml(
        &c.cli(&["info", "web", "-o", "yaml"]).assert_ok().stdout,
        "info",
    );
    let info_j = c
        .cli(&["info", "web", "-o", "json"])
        .assert_ok()
        .json()
        .expect("json");
    assert_eq!(info["app"]["spec"], info_j["app"]["spec"], "{info}");
    assert_eq!(
        info["instances"].as_array().map(Vec::len),
        Some(2),
        "{info}"
    );

    let apps = yaml(&c.cli(&["apps", "-o", "yaml"]).assert_ok().stdout, "apps");
    let apps_j = c
        .cli(&["apps", "-o", "json"])
        .assert_ok()
        .json()
        .expect("json");
    assert_eq!(apps[0]["name"], "web", "{apps}");
    assert_eq!(apps[0]["online"], 2, "{apps}");
    assert_eq!(apps[0]["spec"], apps_j[0]["spec"]);

    let nodes = yaml(&c.cli(&["nodes", "-o", "yaml"]).assert_ok().stdout, "nodes");
    let names = |v: &Value| -> Vec<Value> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|n| n["name"].clone())
            .collect()
    };
    let nodes_j = c
        .cli(&["nodes", "-o", "json"])
        .assert_ok()
        .json()
        .expect("json");
    assert_eq!(names(&nodes).len(), 2, "{nodes}");
    assert_eq!(names(&nodes), names(&nodes_j));

    // A stream: one YAML document per event, each a mapping with a kind.
    let events = c
        .cli(&["events", "--no-follow", "--history", "5", "-o", "yaml"])
        .assert_ok()
        .stdout
        .clone();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&events)
        .unwrap_or_else(|e| panic!("events -o yaml: {e}:\n{events}"));
    assert!(!docs.is_empty(), "{events}");
    assert_eq!(events.matches("---\n").count(), docs.len(), "{events}");
    assert!(docs.iter().all(|d| d["kind"].is_string()), "{events}");

    // -f is the explicit spelling of following; with --no-follow it is a usage error.
    let both = c
        .try_cli(&["events", "-f", "--no-follow"])
        .expect("pmcluster runs");
    assert_eq!(both.code(), Some(2), "{both}");
    assert!(both.stderr.contains("--no-follow"), "{both}");
}

/// Ends the child at drop, so that a failing test leaves no follower behind.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first line from `lines` that `want` accepts, within `timeout`; or what came instead.
fn line_within(
    lines: &std::sync::mpsc::Receiver<String>,
    timeout: std::time::Duration,
    want: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let deadline = std::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if want(&line) => return Ok(line),
            Ok(line) => seen.push(line),
            Err(e) => return Err(format!("{e} after {timeout:?}; got {seen:?}")),
        }
    }
}

/// `events -f` as a user runs it: a child that keeps running and prints each event on its
/// stdout as it happens, here a scale made after it subscribed.
#[test]
fn events_f_prints_an_event_as_it_happens() {
    let c = Cluster::start(1).expect("coordinator and an agent start");
    c.start_app("web", 1).ports(2).online().expect("web starts");
    let mut child = Command::new(&c.bins().cli)
        .arg("--coordinator")
        .arg(c.url())
        .args(["events", "-f", "web", "--history", "1", "-o", "json"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning pmcluster events -f: {e}"));
    let stdout = child.stdout.take();
    let mut child = Reaped(child);
    // Read on a thread, so that the test's waits have deadlines; it ends with the child's
    // stdout.
    let (tx, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let Some(stdout) = stdout else { return };
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // The one event of history comes once the stream is open: whatever follows is live.
    line_within(&lines, crate::DEADLINE, |_| true).expect("the history event");
    c.cli(&["scale", "web", "2"]).assert_ok();
    let scaled = line_within(&lines, crate::DEADLINE, |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|e| e["kind"] == "app.scaled")
    })
    .expect("the scale's event on events -f");
    let event: Value = serde_json::from_str(&scaled).expect("an event object");
    assert_eq!(event["app"], "web", "{event}");
    assert!(
        matches!(child.0.try_wait(), Ok(None)),
        "events -f ended after one event"
    );
    let two = wait_online(&c, "web", 2);
    c.remember_pids(&two.iter().filter_map(|i| i.pid).collect::<Vec<_>>());

    // Ended through its own handle (by pid); its stdout closes, and the reader ends.
    drop(child);
    reader
        .join()
        .expect("the reader thread ends with the child's stdout");
}
