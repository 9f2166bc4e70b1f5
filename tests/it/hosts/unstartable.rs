//! An instance that cannot start on its host, for a cause local to that host (here a program
//! outside pmcluster holding its fixed port), moves to another host after the app's
//! `reschedule_after`, and the event says why.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use pmcluster_tests::{Cluster, render, wait_until};

use crate::{DEADLINE, wait_online};

const PORT: u16 = 4300;

/// A program outside pmcluster holding a port on one host, killed when dropped.
struct Squatter(Child);

impl Squatter {
    /// Binds `PORT` on every address of `host` and waits until it holds it.
    fn start(c: &Cluster, host: &str) -> Squatter {
        let net = c.net().expect("test hosts");
        let script = format!(
            "import socket, sys, time\n\
             s = socket.socket()\n\
             s.bind(('0.0.0.0', {PORT}))\n\
             s.listen()\n\
             print('bound', flush=True)\n\
             time.sleep(600)\n"
        );
        let mut cmd = net.command(host, "python3").expect("a command on the host");
        let mut child = cmd
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3 on the host");
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let mut squatter = Squatter(child);
        if line.trim() != "bound" {
            let status = squatter.0.try_wait();
            panic!("python3 did not bind port {PORT} on {host}: {line:?} {status:?}");
        }
        squatter
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn hosts_an_instance_that_cannot_start_moves_to_another_host() {
    let Some(c) = super::start(3, &[]) else {
        return;
    };
    let testapp = c.testapp().display().to_string();
    let port = PORT.to_string();
    c.cli(&[
        "start",
        &testapp,
        "--name",
        "web",
        "--port",
        &port,
        "--reschedule-after",
        "2s",
        "-e",
        "TESTAPP_BIND=${HOST}",
    ])
    .assert_ok();
    let first = wait_online(&c, "web", 1);
    let home = first[0].node.clone().expect("placed");

    // Stopped, it keeps its place; meanwhile a program outside pmcluster takes its port there.
    c.cli(&["stop", "web"]).assert_ok();
    wait_until(DEADLINE, "web[0] stopped", || {
        let list = c.instances("web")?;
        let stopped = list.len() == 1 && list[0].status == "stopped" && !list[0].live();
        if stopped { Ok(()) } else { Err(render(&list)) }
    });
    let squatter = Squatter::start(&c, &home);

    c.cli(&["start", "web"]).assert_ok();
    // On its host it cannot start: the agent says why.
    wait_until(DEADLINE, "web[0] failing to start on its host", || {
        let list = c.instances("web")?;
        let failing = list.iter().any(|i| {
            i.node.as_deref() == Some(home.as_str())
                && i.json["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("already in use"))
        });
        if failing { Ok(()) } else { Err(render(&list)) }
    });
    // After reschedule_after it runs on another host, with the same port.
    wait_until(DEADLINE, "web[0] online on another host", || {
        let list = c.instances("web")?;
        let moved = list.len() == 1
            && list[0].live()
            && list[0].node.as_deref().is_some_and(|n| n != home)
            && list[0].port == Some(PORT);
        if moved { Ok(()) } else { Err(render(&list)) }
    });
    let out = c.cli(&["events", "web", "--no-follow", "--history", "100"]);
    let events = &out.assert_ok().stdout;
    let moved = events
        .lines()
        .find(|l| l.contains("instance.moved"))
        .unwrap_or_else(|| panic!("no instance.moved event:\n{events}"));
    eprintln!("hosts: {moved}");
    for want in [
        format!("could not start on {home}"),
        format!("port {PORT} is already in use"),
    ] {
        assert!(moved.contains(&want), "{want:?} not in {moved:?}");
    }
    // The program outside pmcluster was left alone.
    let mut squatter = squatter;
    assert!(
        matches!(squatter.0.try_wait(), Ok(None)),
        "the program holding the port ended"
    );
}
