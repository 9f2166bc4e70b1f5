use super::*;
use crate::args::DEFAULT_LISTEN;

#[test]
fn data_dirs() {
    let s = |v: &str| Some(OsString::from(v));
    let cases = [
        (s("/xdg"), s("/home/u"), Some("/xdg/pmcluster")),
        (
            s("relative"),
            s("/home/u"),
            Some("/home/u/.local/share/pmcluster"),
        ),
        (None, s("/home/u"), Some("/home/u/.local/share/pmcluster")),
        (s(""), s(""), None),
        (None, None, None),
    ];
    for (xdg, home, want) in cases {
        assert_eq!(
            default_data_dir(xdg.clone(), home.clone()),
            want.map(PathBuf::from),
            "{xdg:?} {home:?}"
        );
    }
}

#[test]
fn cmdlines() {
    let cases: &[(&[u8], &str, bool)] = &[
        (
            b"/usr/bin/pmcluster-agent\0--node-name\0a\0",
            AGENT_BIN,
            true,
        ),
        (b"pmcluster-agent\0", AGENT_BIN, true),
        (b"/usr/bin/pmcluster-agent\0", COORDINATOR_BIN, false),
        (b"/bin/sleep\0pmcluster-agent\0", AGENT_BIN, false),
        (b"/x/pmcluster-agent-old\0", AGENT_BIN, false),
        (b"", AGENT_BIN, false),
    ];
    for (cmdline, name, want) in cases {
        assert_eq!(cmdline_runs(cmdline, name), *want, "{cmdline:?} {name}");
    }
    assert!(!runs(std::process::id() as i32, AGENT_BIN));
}

#[test]
fn pids_and_addresses() {
    assert_eq!(parse_pid("123\n"), Some(123));
    assert_eq!(parse_pid("0"), None);
    assert_eq!(parse_pid("-5"), None);
    assert_eq!(parse_pid("abc"), None);
    let cases = [
        ("127.0.0.1:7450", Ok("http://127.0.0.1:7450")),
        ("0.0.0.0:7450", Ok("http://127.0.0.1:7450")),
        ("[::]:7450", Ok("http://[::1]:7450")),
        ("127.0.0.1:0", Err("port 0 is not supported")),
        ("localhost", Err("is not an address")),
    ];
    for (input, want) in cases {
        let got = parse_listen(input).map(dial_url).map_err(|e| e.to_string());
        match (want, &got) {
            (Ok(w), Ok(g)) => assert_eq!(w, g, "{input}"),
            (Err(w), Err(g)) => assert!(g.contains(w), "{input}: {g}"),
            _ => panic!("{input}: {got:?}"),
        }
    }
}

#[test]
fn the_node_name_is_the_one_the_agent_data_dir_belongs_to() {
    let cmdline = b"/x/pmcluster-agent\0--coordinator\0http://127.0.0.1:7450\0--node-name\0a\0--data-dir\0/d\0";
    assert_eq!(
        cmdline_flag(cmdline, "--coordinator").as_deref(),
        Some("http://127.0.0.1:7450")
    );
    assert_eq!(cmdline_flag(cmdline, "--node-name").as_deref(), Some("a"));
    assert_eq!(
        cmdline_flag(b"agent\0--node-name=b\0", "--node-name").as_deref(),
        Some("b")
    );
    assert_eq!(cmdline_flag(b"agent\0--node-name\0", "--node-name"), None);
    assert_eq!(
        cmdline_flag(b"agent\0--node-named\0x\0", "--node-name"),
        None
    );

    assert_eq!(
        recorded_node_name(r#"{"node_name": "a", "cluster_id": "c", "generation": 3}"#).as_deref(),
        Some("a")
    );
    assert_eq!(recorded_node_name(r#"{"node_name": ""}"#), None);
    assert_eq!(recorded_node_name("{not json"), None);

    let dir = Path::new("/home/u/.local/share/pmcluster/agent");
    let host = || "vm".to_string();
    let choose = |flag, recorded, running, rename| {
        choose_node_name(flag, recorded, host, dir, running, rename).map_err(|e| e.to_string())
    };
    let kept = |name: &str| Ok((name.to_string(), false));
    // Plain `up` after `up --node-name a` and `down`: a, not the hostname.
    assert_eq!(choose(None, Some("a"), false, false), kept("a"));
    assert_eq!(choose(Some("a"), Some("a"), true, false), kept("a"));
    assert_eq!(choose(Some("b"), None, false, false), kept("b"));
    assert_eq!(choose(None, None, false, false), kept("vm"));
    // A name the agent would refuse is refused before anything starts.
    let err = choose(Some("bad name"), None, false, false).expect_err("not a node name");
    assert!(
        err.starts_with("--node-name: \"bad name\" is not a valid node name"),
        "{err}"
    );
    let err = choose_node_name(None, None, || "a b".to_string(), dir, false, false)
        .expect_err("a host name that is not a node name");
    assert!(
        err.to_string()
            .contains("give the node a name with --node-name NAME"),
        "{err}"
    );
    let err = choose(Some("b"), Some("a"), false, false).expect_err("another name is refused");
    for want in [
        "--node-name b: this data directory's agent is node \"a\"",
        "leave out --node-name, or give --node-name a",
        "To rename node \"a\" to \"b\" (the cluster moves its instances to the new name): \
         `pmcluster up --node-name b --rename-node`",
        "pmcluster down",
        "move /home/u/.local/share/pmcluster/agent aside",
        "pmcluster nodes forget a",
    ] {
        assert!(err.contains(want), "{want:?} in {err}");
    }
    let err = choose(Some("b"), Some("a"), true, false).expect_err("another name is refused");
    for want in [
        "the agent running from this data directory is node \"a\"",
        "`pmcluster down`, then `pmcluster up --node-name b --rename-node`",
    ] {
        assert!(err.contains(want), "{want:?} in {err}");
    }
    // --rename-node: the agent renames its node, unless it runs (it keeps its name).
    assert_eq!(
        choose(Some("b"), Some("a"), false, true),
        Ok(("b".to_string(), true))
    );
    assert_eq!(choose(Some("a"), Some("a"), false, true), kept("a"));
    assert_eq!(choose(Some("b"), None, false, true), kept("b"));
    let err = choose(Some("b"), Some("a"), true, true).expect_err("a running agent keeps it");
    assert!(
        err.contains(
            "run `pmcluster down` (it stops the agent and its instances), then \
             `pmcluster up --node-name b --rename-node`"
        ),
        "{err}"
    );
}

#[test]
fn the_listen_address_is_the_one_the_daemons_have() {
    let addr = |s: &str| -> SocketAddr { s.parse().expect("an address") };
    let (a, b) = (addr("127.0.0.1:7001"), addr("127.0.0.1:7002"));
    let default = addr(DEFAULT_LISTEN);
    let choose = |flag, recorded, coordinator, agent| {
        choose_listen(flag, recorded, coordinator, agent).map_err(|e| e.to_string())
    };
    let agent_a = Some((42, "http://127.0.0.1:7001"));
    // Nothing runs, nothing recorded (a first `up`).
    assert_eq!(choose(None, None, None, None), Ok(default));
    assert_eq!(choose(Some(b), None, None, None), Ok(b));
    // The coordinator crashed, the agent runs on: its address, with or without a record.
    assert_eq!(choose(None, Some(a), None, agent_a), Ok(a));
    assert_eq!(choose(None, None, None, agent_a), Ok(a));
    assert_eq!(choose(Some(a), Some(a), None, agent_a), Ok(a));
    // Both crashed, or `down` stopped both: the recorded address.
    assert_eq!(choose(None, Some(a), None, None), Ok(a));
    // Every interface stays every interface.
    let any = addr("0.0.0.0:7001");
    assert_eq!(choose(None, Some(any), None, agent_a), Ok(any));
    // A running coordinator keeps its address.
    assert_eq!(choose(None, Some(a), Some(7), agent_a), Ok(a));
    assert_eq!(choose(Some(a), Some(a), Some(7), None), Ok(a));
    assert_eq!(choose(Some(b), None, Some(7), None), Ok(b));

    let err = choose(Some(b), Some(a), None, agent_a).expect_err("the agent dials a");
    for want in [
        "--listen 127.0.0.1:7002: the agent running from this data directory (pid 42) dials \
         the coordinator at http://127.0.0.1:7001, not http://127.0.0.1:7002",
        "leave out --listen to start the coordinator on 127.0.0.1:7001 again",
        "`pmcluster up --listen 127.0.0.1:7002`",
    ] {
        assert!(err.contains(want), "{want:?} in {err}");
    }
    let err = choose(Some(b), Some(a), Some(7), None).expect_err("it listens on a");
    assert!(
        err.contains(
            "--listen 127.0.0.1:7002: the coordinator running from this data \
             directory (pid 7) listens on 127.0.0.1:7001; leave out --listen"
        ),
        "{err}"
    );
}

#[test]
fn a_data_dir_up_used_never_falls_back_to_the_default_address() {
    let home = Path::new("/tmp/h3");
    let at: SocketAddr = "127.0.0.1:17452".parse().expect("an address");
    let any: SocketAddr = "0.0.0.0:17452".parse().expect("an address");
    let find = |recorded, running| home_coordinator(home, recorded, running);
    assert_eq!(
        find(Some(at), Some(7)).ok().flatten().as_deref(),
        Some("http://127.0.0.1:17452")
    );
    assert_eq!(
        find(Some(any), Some(7)).ok().flatten().as_deref(),
        Some("http://127.0.0.1:17452")
    );
    // Never used by `up` (or by one too old to record): the caller's default.
    assert!(matches!(find(None, None), Ok(None)));
    assert!(matches!(find(None, Some(7)), Ok(None)));
    // Used, and its coordinator is down (killed, crashed, or `down`): an error, not the default.
    let err = find(Some(at), None).expect_err("down").to_string();
    assert_eq!(
        err,
        "the coordinator of /tmp/h3 (http://127.0.0.1:17452) is not running: start it with \
         `pmcluster up`, or name the coordinator to talk to with --coordinator (or \
         PMCLUSTER_COORDINATOR)"
    );
}

#[test]
fn verbs_find_the_coordinator_from_the_data_dir_files() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    let env = Environment {
        pmcluster_home: Some(home.path().as_os_str().to_owned()),
        ..Environment::default()
    };
    assert_eq!(local_coordinator_url(&env)?, None, "never used by `up`");
    fs::write(home.path().join("coordinator.listen"), "127.0.0.1:17452\n")?;
    let err = local_coordinator_url(&env).expect_err("nothing runs");
    assert!(
        err.to_string()
            .contains("(http://127.0.0.1:17452) is not running"),
        "{err}"
    );
    // A pid file left by a coordinator killed with SIGKILL: its pid names no coordinator.
    fs::write(
        home.path().join("coordinator.pid"),
        format!("{}\n", std::process::id()),
    )?;
    let err = local_coordinator_url(&env).expect_err("the pid is not a coordinator's");
    assert!(
        err.to_string().contains(&home.path().display().to_string()),
        "{err}"
    );
    Ok(())
}

#[test]
fn binaries_are_found_beside_then_in_path() -> anyhow::Result<()> {
    let beside = tempfile::tempdir()?;
    let in_path = tempfile::tempdir()?;
    let make = |dir: &Path, mode: u32| -> anyhow::Result<PathBuf> {
        let p = dir.join(AGENT_BIN);
        fs::write(&p, "#!/bin/sh\n")?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        Ok(p)
    };
    let path_var = std::env::join_paths([in_path.path()])?;
    assert_eq!(
        find_binary(AGENT_BIN, Some(beside.path()), Some(&path_var)),
        None
    );
    let from_path = make(in_path.path(), 0o755)?;
    assert_eq!(
        find_binary(AGENT_BIN, Some(beside.path()), Some(&path_var)),
        Some(from_path)
    );
    // Not executable: skipped.
    make(beside.path(), 0o644)?;
    assert_ne!(
        find_binary(AGENT_BIN, Some(beside.path()), Some(&path_var)),
        Some(beside.path().join(AGENT_BIN))
    );
    let next_to_us = make(beside.path(), 0o755)?;
    assert_eq!(
        find_binary(AGENT_BIN, Some(beside.path()), Some(&path_var)),
        Some(next_to_us)
    );
    Ok(())
}

#[test]
fn down_says_what_it_stopped_after_the_agent() {
    let line = |stopped, killed, pumps_killed| {
        swept_line(&sweep::Swept {
            stopped,
            killed,
            pumps_killed,
            left: Vec::new(),
        })
    };
    assert_eq!(line(0, 0, 0), None);
    assert_eq!(
        line(1, 0, 0).as_deref(),
        Some("stopped 1 process of the agent's instances that it left running")
    );
    assert_eq!(
        line(3, 1, 2).as_deref(),
        Some(
            "stopped 3 processes of the agent's instances that it left running (1 needed \
             SIGKILL, 5s after SIGTERM), and 2 log pumps that outlived them (SIGKILL)"
        )
    );
    assert_eq!(
        line(0, 0, 1).as_deref(),
        Some("stopped 1 log pump of the agent that outlived their instances (SIGKILL)")
    );
}

#[test]
fn down_says_what_it_ended_in_the_agents_cgroups() {
    let base = "/sys/fs/cgroup/pmcluster-n-00aa";
    let tidied = |killed, removed, base_removed, left: Vec<cgroups::Left>| {
        cgroups::lines(&cgroups::Ended::Tidied(cgroups::Tidied {
            base: PathBuf::from(base),
            killed,
            removed,
            base_removed,
            left,
        }))
    };
    let left = |path: &str, pids: &[u32], error: Option<&str>| cgroups::Left {
        path: PathBuf::from(path),
        pids: pids.to_vec(),
        error: error.map(str::to_string),
    };
    let cases: Vec<(Vec<String>, &[&str])> = vec![
        (cgroups::lines(&cgroups::Ended::Nothing), &[]),
        (
            cgroups::lines(&cgroups::Ended::Refused("/x is not named y".into())),
            &["left the agent's cgroups alone: /x is not named y"],
        ),
        (tidied(0, 0, false, Vec::new()), &[]),
        (
            tidied(0, 0, true, Vec::new()),
            &["removed the agent's cgroup /sys/fs/cgroup/pmcluster-n-00aa"],
        ),
        (
            tidied(1, 1, true, Vec::new()),
            &[
                "removed the agent's cgroup /sys/fs/cgroup/pmcluster-n-00aa and 1 instance \
               cgroup in it, killing 1 process left in them (SIGKILL)",
            ],
        ),
        (
            tidied(0, 3, true, Vec::new()),
            &[
                "removed the agent's cgroup /sys/fs/cgroup/pmcluster-n-00aa and 3 instance \
               cgroups in it",
            ],
        ),
        (
            tidied(
                2,
                1,
                false,
                vec![left(&format!("{base}/i2"), &[41, 42], None)],
            ),
            &[
                "removed 1 instance cgroup under /sys/fs/cgroup/pmcluster-n-00aa, killing 2 \
                 processes left in them (SIGKILL)",
                "left cgroup /sys/fs/cgroup/pmcluster-n-00aa/i2: pid 41, 42 did not die even \
                 after SIGKILL",
            ],
        ),
        (
            tidied(
                1,
                0,
                false,
                vec![
                    left(
                        &format!("{base}/i1"),
                        &[],
                        Some("this pmcluster runs in it"),
                    ),
                    left(&format!("{base}/i2"), &[], Some("cannot remove it: busy")),
                ],
            ),
            &[
                "killed 1 process left in the agent's instance cgroups under \
                 /sys/fs/cgroup/pmcluster-n-00aa (SIGKILL)",
                "left cgroup /sys/fs/cgroup/pmcluster-n-00aa/i1: this pmcluster runs in it",
                "left cgroup /sys/fs/cgroup/pmcluster-n-00aa/i2: cannot remove it: busy",
            ],
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, *want);
    }
}

#[test]
fn down_with_nothing_running() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A stale pid file naming a process that is not an agent (this test) is left alone
    // as a process and removed as a file.
    fs::write(
        dir.path().join("agent.pid"),
        format!("{}\n", std::process::id()),
    )?;
    fs::write(dir.path().join("coordinator.listen"), "127.0.0.1:17452\n")?;
    fs::write(dir.path().join("agent.node"), "a\n")?;
    let mut out = Vec::new();
    down(
        DownArgs {
            data_dir: Some(dir.path().to_path_buf()),
        },
        &Environment::default(),
        &mut out,
    )?;
    assert_eq!(String::from_utf8(out)?, "nothing to stop\n");
    assert!(!dir.path().join("agent.pid").exists());
    assert!(!dir.path().join("agent.node").exists());
    // Kept: the next `up` starts there, and verbs meanwhile name it rather than dial another.
    assert_eq!(
        fs::read_to_string(dir.path().join("coordinator.listen"))?,
        "127.0.0.1:17452\n"
    );
    Ok(())
}
