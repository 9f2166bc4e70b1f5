//! Issue 12, item 5: the coordinator's limits. A request over one is refused with a status and
//! a message naming the flag (the CLI prints it and exits non-zero), never a stall or a crash,
//! and a refused write changes nothing.

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pmcluster_proto::v1 as pb;
use pmcluster_proto::v1::cluster_client::ClusterClient;
use pmcluster_tests::{Cluster, http_get, wait_for, wait_until};
use serde_json::Value;
use tonic::Code;
use tonic::transport::Channel;

use crate::{DEADLINE, wait_online};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

async fn connect(c: &Cluster) -> ClusterClient<Channel> {
    ClusterClient::connect(c.url())
        .await
        .expect("connect to the coordinator")
}

/// Every app's name and spec, as `apps -o json` shows them.
fn stored_apps(c: &Cluster) -> Vec<(Value, Value)> {
    let apps = c.cli(&["apps", "-o", "json"]).assert_ok().json();
    let apps = apps.expect("apps -o json is JSON");
    apps.as_array()
        .expect("apps -o json is an array")
        .iter()
        .map(|a| (a["name"].clone(), a["spec"].clone()))
        .collect()
}

fn sleeper(c: &Cluster, name: &str) {
    c.cli(&["start", "sleep 600", "--name", name]).assert_ok();
}

#[test]
fn caps_refuse_an_app_and_a_scale_past_them_naming_the_flag() {
    let c = Cluster::start_with(1, &["--max-apps", "2", "--max-instances-per-app", "3"])
        .expect("coordinator and one agent start");
    sleeper(&c, "a");
    sleeper(&c, "b");
    wait_online(&c, "a", 1);
    let before = stored_apps(&c);
    let refusals: [(&[&str], &[&str]); 3] = [
        (
            &["start", "sleep 600", "--name", "c"],
            &["apps: creating \"c\" would make 3 apps, over the limit of 2 (--max-apps)"],
        ),
        (
            &["scale", "a", "4"],
            &["instances: 4 is over the limit of 3 per app (--max-instances-per-app)"],
        ),
        (
            &[
                "autoscale",
                "a",
                "--min",
                "1",
                "--max",
                "10",
                "--cpu-threshold",
                "50",
            ],
            &["autoscale.max: 10 is over the limit of 3 per app"],
        ),
    ];
    for (args, says) in refusals {
        let out = c.cli(args);
        let stderr = out.assert_failed();
        assert_eq!(out.code(), Some(1), "{out}");
        for want in says {
            assert!(stderr.contains(want), "want {want:?} in: {out}");
        }
    }
    assert_eq!(stored_apps(&c), before, "a refused write stores nothing");
    // The API's own code.
    runtime().block_on(async {
        let mut client = connect(&c).await;
        let err = client
            .scale(pb::ScaleRequest {
                app: "a".into(),
                instances: 5000,
                relative: false,
            })
            .await
            .expect_err("a scale past the cap is refused");
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(
            err.message().starts_with(
                "instances: 5000 is over the limit of 3 per app (--max-instances-per-app)"
            ),
            "{err:?}"
        );
    });
    // At the caps is fine, and a deleted app makes room.
    c.cli(&["scale", "a", "3"]).assert_ok();
    wait_online(&c, "a", 3);
    c.cli(&["delete", "b"]).assert_ok();
    sleeper(&c, "c");
    wait_online(&c, "c", 1);
}

#[test]
fn writes_past_the_burst_are_refused_and_reads_keep_working() {
    const RATE: u32 = 1;
    const BURST: u32 = 3;
    const WRITES: u32 = 12;
    let c = Cluster::start_with(
        1,
        &[
            "--write-rate",
            &RATE.to_string(),
            "--write-burst",
            &BURST.to_string(),
        ],
    )
    .expect("coordinator and one agent start");
    sleeper(&c, "web");
    let rt = runtime();
    let (accepted, refused, elapsed) = rt.block_on(async {
        let client = connect(&c).await;
        let started = Instant::now();
        // All at once on one connection, each to another count.
        let calls = (1..=WRITES).map(|n| {
            let mut client = client.clone();
            async move {
                let scaled = client
                    .scale(pb::ScaleRequest {
                        app: "web".into(),
                        instances: i64::from(n % 4 + 1),
                        relative: false,
                    })
                    .await;
                // A read right after each write, refused or not.
                let apps = client.list_apps(pb::ListAppsRequest::default()).await;
                (n % 4 + 1, scaled, apps.map(|_| ()))
            }
        });
        let results = futures_join(calls).await;
        let elapsed = started.elapsed();
        let mut accepted = Vec::new();
        let mut refused = 0;
        for (count, scaled, read) in results {
            read.expect("reads are not limited");
            match scaled {
                Ok(_) => accepted.push(count),
                Err(e) => {
                    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                    let want = format!(
                        "write rate limit (--write-rate {RATE}/s, --write-burst {BURST}) \
                         reached; retry in "
                    );
                    assert!(e.message().starts_with(&want), "{e:?}");
                    refused += 1;
                }
            }
        }
        (accepted, refused, elapsed)
    });
    // However slow this host: no more than the burst and what refilled meanwhile went through
    // (one token of slack for the start's write landing on a partly refilled bucket).
    let most = u64::from(BURST) + elapsed.as_secs() * u64::from(RATE) + 1;
    eprintln!(
        "{} writes accepted, {refused} refused in {elapsed:?} (at most {most} may pass)",
        accepted.len()
    );
    assert!(accepted.len() as u64 <= most, "{accepted:?} in {elapsed:?}");
    if most < u64::from(WRITES) {
        assert!(refused > 0);
    }
    // Consistent: the stored count is one a successful write set, and the instances follow.
    let apps = c.cli(&["apps", "-o", "json"]).assert_ok().json();
    let count = apps
        .expect("apps -o json is JSON")
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == "web").cloned())
        .and_then(|a| a["spec"]["instances"].as_u64())
        .expect("web's count");
    let count = u32::try_from(count).expect("a small count");
    assert!(
        accepted.contains(&count),
        "{count} is not one of {accepted:?}"
    );
    wait_online(&c, "web", count as usize);
    // The CLI prints the refusal and exits 1 at once (it does not retry it).
    wait_until(DEADLINE, "a CLI write refused by the rate limit", || {
        let out = c.try_cli(&["restart", "web"]).map_err(|e| e.to_string())?;
        if out.success() {
            return Err("accepted".into());
        }
        assert_eq!(out.code(), Some(1), "{out}");
        assert!(out.stderr.contains("--write-rate 1/s"), "{out}");
        Ok(())
    });
    c.cli(&["list", "web"]).assert_ok();
}

/// `futures::future::join_all` without the dependency: the calls run concurrently on the
/// current-thread runtime, each as its own task.
async fn futures_join<F>(calls: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = calls.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("a call task"));
    }
    out
}

/// A CLI follower (`logs -f`, `events`) writing to a file; killed by pid on drop.
struct Follower {
    child: Child,
    out: std::path::PathBuf,
}

impl Follower {
    fn start(c: &Cluster, name: &str, args: &[&str]) -> Follower {
        let out = c.root().join(format!("{name}.out"));
        let file = File::create(&out).expect("create the follower's output file");
        let child = Command::new(&c.bins().cli)
            .arg("--coordinator")
            .arg(c.url())
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning pmcluster {args:?}: {e}"));
        Follower { child, out }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_request_timeout_does_not_cut_logs_or_events() {
    const TIMEOUT: Duration = Duration::from_secs(1);
    let c = Cluster::start_with(1, &["--request-timeout", "1"]).expect("coordinator and agent");
    let web = c.start_app("chatty", 1).online().expect("chatty starts");
    let port = web.base_port;
    let mut logs = Follower::start(&c, "logs", &["logs", "chatty", "-f"]);
    let mut events = Follower::start(&c, "events", &["events"]);
    http_get(port, "/log?n=2").expect("two lines");
    wait_for(DEADLINE, "the first lines in logs -f", || {
        logs.output().contains("line 2")
    });
    // Both streams outlive three request timeouts.
    let opened = Instant::now();
    wait_for(DEADLINE, "three request timeouts to pass", || {
        opened.elapsed() > 3 * TIMEOUT
    });
    assert!(logs.running(), "logs -f ended: {}", logs.output());
    assert!(events.running(), "events ended: {}", events.output());
    // And still deliver.
    http_get(port, "/log?n=7").expect("seven lines");
    wait_for(DEADLINE, "a line after the timeouts in logs -f", || {
        logs.output().contains("line 7")
    });
    c.cli(&["restart", "chatty"]).assert_ok();
    wait_for(DEADLINE, "an event after the timeouts in events", || {
        events.output().contains("restart chatty")
    });
    // Unary calls answer within it.
    c.cli(&["list", "chatty"]).assert_ok();
}

#[test]
fn more_streams_than_the_limit_on_one_connection_wait_for_a_free_one() {
    const STREAMS: usize = 3;
    let c = Cluster::start_with(0, &["--max-streams-per-connection", &STREAMS.to_string()])
        .expect("a coordinator starts");
    runtime().block_on(async {
        let client = connect(&c).await;
        let watch = || pb::WatchEventsRequest {
            app: String::new(),
            history: 0,
            no_follow: false,
        };
        let mut open = Vec::new();
        for _ in 0..STREAMS {
            let stream = client
                .clone()
                .watch_events(watch())
                .await
                .expect("a stream within the limit opens");
            open.push(stream);
        }
        let mut extra = client.clone();
        let mut extra = tokio::spawn(async move { extra.watch_events(watch()).await });
        // Another connection is served meanwhile.
        let mut other = connect(&c).await;
        other
            .list_apps(pb::ListAppsRequest::default())
            .await
            .expect("another connection is served");
        let waited = tokio::time::timeout(Duration::from_secs(1), &mut extra).await;
        match waited {
            // Queued by the client until a stream ends: the expected case with tonic.
            Err(_) => {
                eprintln!("the extra stream waits for a free one");
                drop(open.pop());
                let opened = tokio::time::timeout(DEADLINE, extra)
                    .await
                    .expect("the queued stream opens once one ends")
                    .expect("the call task");
                opened.expect("the queued stream opens");
            }
            // Or refused by the server, with a status: also within the rule.
            Ok(Ok(Err(status))) => eprintln!("the extra stream was refused: {status:?}"),
            Ok(Ok(Ok(_))) => panic!("a stream past --max-streams-per-connection was opened"),
            Ok(Err(e)) => panic!("the call task failed: {e}"),
        }
    });
    assert!(
        c.coordinator().is_some_and(|d| d.running()),
        "the coordinator runs:{}",
        c.tails()
    );
}

/// A message over the 16 MiB every link accepts is refused before the handler, as
/// RESOURCE_EXHAUSTED naming both sizes; the coordinator carries on.
#[test]
fn an_oversize_request_is_refused_naming_the_limit() {
    let c = Cluster::start(0).expect("a coordinator starts");
    runtime().block_on(async {
        let mut client = connect(&c).await.max_encoding_message_size(64 << 20);
        let mut spec = pb::AppSpec {
            name: "huge".into(),
            script: "sleep".into(),
            instances: 1,
            ..Default::default()
        };
        spec.env.insert("BIG".into(), "x".repeat(17 << 20));
        let err = client
            .apply_app(pb::ApplyAppRequest {
                spec: Some(spec),
                keep_instances: false,
            })
            .await
            .expect_err("an oversize request is refused");
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        for want in [
            "request too large",
            "the limit is: 16777216 bytes",
            "16 MiB",
        ] {
            assert!(err.message().contains(want), "want {want:?} in {err:?}");
        }
        client
            .list_apps(pb::ListAppsRequest::default())
            .await
            .expect("the coordinator still answers");
    });
    assert!(stored_apps(&c).is_empty());
}
