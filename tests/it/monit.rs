//! Issue 15: `pmcluster monit` end to end, in a real terminal (tmux): it shows the instances and
//! the selected one's logs, follows the keys, shows the nodes, and `q` quits.

use std::path::PathBuf;
use std::process::Command;

use pmcluster_tests::{Cluster, NODE_NAMES, run_bounded, skip, wait_until};

use crate::DEADLINE;

fn tmux() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("tmux"))
        .find(|p| p.is_file())
}

/// A tmux server on a socket in the test's dir, so that it is ours alone; killed on drop.
struct Tmux {
    bin: PathBuf,
    socket: PathBuf,
    dir: PathBuf,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> pmcluster_tests::CliOutput {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-S").arg(&self.socket).args(args);
        run_bounded(&mut cmd, &self.dir, "tmux", args, DEADLINE).expect("tmux runs")
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "monit"]).stdout
    }

    #[track_caller]
    fn wait_screen(&self, what: &str, want: &[&str]) -> String {
        wait_until(DEADLINE, what, || {
            let screen = self.screen();
            if want.iter().all(|w| screen.contains(w)) {
                Ok(screen)
            } else {
                Err(screen)
            }
        })
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn online_rows(screen: &str, app: &str) -> usize {
    screen
        .lines()
        .filter(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.contains(&app) && words.contains(&"online")
        })
        .count()
}

#[test]
fn monit_shows_instances_logs_and_nodes_and_quits_on_q() {
    let Some(bin) = tmux() else {
        skip("tmux", "no tmux on PATH (apt-get install tmux)");
        return;
    };
    let c = Cluster::start(1).expect("coordinator and an agent start");
    c.start_app("web", 2).online().expect("web starts");
    c.cli(&[
        "start",
        "sh -c 'i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done'",
        "--name",
        "ticker",
    ])
    .assert_ok();
    c.wait_online("ticker", 1).expect("ticker runs");

    let dir = c.root().join("tmux");
    std::fs::create_dir_all(&dir).expect("tmux dir");
    let tmux = Tmux {
        bin,
        socket: dir.join("socket"),
        dir: dir.clone(),
    };
    let cli = c.bins().cli.display().to_string();
    let url = c.url();
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "monit",
        "-x",
        "150",
        "-y",
        "45",
        &cli,
        "--coordinator",
        &url,
        "monit",
    ])
    .assert_ok();

    // Sorted by app: ticker[0] is selected first, and its lines fill the logs pane.
    let screen = tmux.wait_screen(
        "monit to list ticker and web and follow ticker[0]'s logs",
        &[
            "pmcluster monit · 2 apps · 3 instances · 1 node",
            "logs ticker[0]",
            "tick ",
        ],
    );
    assert_eq!(online_rows(&screen, "web"), 2, "{screen}");
    assert_eq!(online_rows(&screen, "ticker"), 1, "{screen}");
    assert!(
        screen.contains("q quit"),
        "the keys are not on screen:\n{screen}"
    );
    assert!(
        screen.contains("CPU (1 min)") && screen.contains("MEM (1 min)"),
        "{screen}"
    );

    // End selects web[1]: its logs replace ticker's.
    tmux.run(&["send-keys", "-t", "monit", "End"]).assert_ok();
    tmux.wait_screen(
        "web[1] to be selected and its logs shown",
        &["logs web[1]", "testapp listening", "instance=1"],
    );
    tmux.run(&["send-keys", "-t", "monit", "Tab"]).assert_ok();
    tmux.wait_screen("the node view", &["nodes · 1", NODE_NAMES[0], "ready"]);

    tmux.run(&["send-keys", "-t", "monit", "q"]).assert_ok();
    wait_until(DEADLINE, "monit to quit on q", || {
        // The session ends with its only command.
        let has = tmux.run(&["has-session", "-t", "monit"]);
        if has.success() {
            Err(tmux.screen())
        } else {
            Ok(())
        }
    });
}
