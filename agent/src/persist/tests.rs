use pmcluster_proto::v1 as pb;

use super::*;

/// A spec with every supervision field set, from the wire as the coordinator sends it.
fn full_spec() -> AppSpec {
    let wire = pb::AppSpec {
        name: "web".into(),
        script: "node".into(),
        args: vec!["server.js".into(), "--port=${PORT}".into()],
        cwd: "/srv".into(),
        env: [("A".to_string(), "1".to_string())].into(),
        instances: 4,
        port: "auto:3000-3100".into(),
        restart_delay_ms: 250,
        kill_timeout_ms: Some(3000),
        merge_logs: true,
        min_uptime_ms: Some(2000),
        max_restarts: Some(5),
        restart_window_ms: Some(30_000),
        restart_backoff_max_ms: Some(4000),
        stop_signal: "SIGINT".into(),
        listen_timeout_ms: Some(8000),
        health_check: Some(pb::HealthCheck {
            check_type: "http".into(),
            url: "http://127.0.0.1:${PORT}/ready".into(),
            expected_status: 204,
            interval_ms: 1000,
            timeout_ms: 500,
            retries: 2,
            restart_unhealthy: Some(false),
            ..Default::default()
        }),
        max_memory_restart_bytes: 600 << 20,
        cpu_affinity: vec![0, 1],
        limits: [("nofile".to_string(), 4096u64)].into(),
        user: "www".into(),
        cron_restart: "0 3 * * *".into(),
        log_timestamps: true,
        log_max_bytes: Some(1 << 20),
        log_keep: Some(3),
        ..Default::default()
    };
    match AppSpec::try_from(wire) {
        Ok(s) => s,
        Err(e) => panic!("spec: {e}"),
    }
}

fn saved() -> Saved {
    let a = Assignment {
        instance_id: InstanceId::new("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"),
        app: "web".into(),
        index: 2,
        app_version: 7,
        spec: Ok(Arc::new(full_spec())),
        port: None,
        run: true,
        restart_epoch: 3,
    };
    let mut s = Saved::of(&a).expect("valid spec");
    s.restarts = 4;
    s.last_exit_code = Some(1);
    s.process = Some(SavedProcess {
        pid: 4242,
        start_ticks: 987_654,
        port: Some(3004),
        started_at_ms: 1_700_000_000_000,
        pumps: vec![SavedPump {
            pid: 4243,
            start_ticks: 987_655,
            fd: 1,
        }],
        cgroup: Some(PathBuf::from("/sys/fs/cgroup/pmcluster-n1/0190a1b2")),
    });
    s
}

#[test]
fn round_trip_keeps_every_field() {
    let s = saved();
    let back = decode(&encode(&s));
    assert_eq!(back.as_ref(), Ok(&s));
    // The assignment read back is the one saved: the desired-set diff sees no change.
    let a = s.assignment().expect("readable spec");
    assert_eq!(a.spec.as_deref(), Ok(&full_spec()));
    let again = Saved::of(&a).map(|mut x| {
        x.restarts = s.restarts;
        x.last_exit_code = s.last_exit_code;
        x.process = s.process.clone();
        x
    });
    assert_eq!(again.as_ref(), Some(&s));
    // A spec that no longer reads is reported, not guessed.
    let bad = Saved {
        spec_wire: "zz".into(),
        ..s.clone()
    };
    assert!(bad.assignment().is_err());
    assert_eq!(unhex("0aff"), Some(vec![10, 255]));
    assert_eq!(unhex("abc"), None);
}

#[test]
fn files_without_pumps_or_cgroup_still_read() {
    let mut s = saved();
    if let Some(p) = s.process.as_mut() {
        p.pumps.clear();
        p.cgroup = None;
    }
    let text = String::from_utf8(encode(&s)).unwrap_or_default();
    assert!(!text.contains("pumps"), "{text}");
    assert!(!text.contains("cgroup"), "{text}");
    assert_eq!(decode(text.as_bytes()), Ok(s));
}

#[test]
fn an_end_round_trips_and_records_without_one_still_read() {
    let mut s = saved();
    s.process = None;
    s.ended = Some(SavedEnd {
        state: EndState::Errored,
        message: "crashed 4 times within 60s".into(),
    });
    let text = String::from_utf8(encode(&s)).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    assert_eq!(
        json["ended"],
        serde_json::json!({"state": "errored", "message": "crashed 4 times within 60s"})
    );
    assert_eq!(decode(text.as_bytes()), Ok(s.clone()));

    // Written by an agent before this field: no end, so it is started as those did.
    let mut old = json;
    if let Some(fields) = old.as_object_mut() {
        fields.remove("ended");
    }
    let old = serde_json::to_vec(&old).unwrap_or_default();
    assert_eq!(decode(&old), Ok(Saved { ended: None, ..s }));
    // And no end is written as none at all.
    assert!(!String::from_utf8_lossy(&encode(&saved())).contains("ended"));
}

#[test]
fn decode_errors() {
    let mut other = saved();
    other.format = 99;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "EOF"),
        (b"{".to_vec(), "EOF"),
        (b"{\"format\": 1}".to_vec(), "missing field"),
        (encode(&other), "format 99"),
    ];
    for (bytes, want) in cases {
        match decode(&bytes) {
            Err(e) => assert!(e.contains(want), "{e}"),
            Ok(s) => panic!("decoded {s:?}"),
        }
    }
}

#[test]
fn file_names() {
    let cases = [
        ("0190a1b2-c3d4", "0190a1b2-c3d4.json"),
        ("a_b", "a_b.json"),
        ("../etc", "x-2e2e2f657463.json"),
        ("", "x-.json"),
        // Caught by the desired_set fuzz target: these read back as "A" and "".
        ("x-41", "x-782d3431.json"),
        ("x-", "x-782d.json"),
    ];
    for (id, want) in cases {
        assert_eq!(file_name(id), want, "{id:?}");
        assert_eq!(id_of_safe_name(&safe_name(id)), id, "{id:?}");
    }
}

#[test]
fn write_load_remove() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (records, _) = Records::open(dir.path().to_path_buf());
    let mut a = saved();
    let mut b = saved();
    b.instance_id = "b".into();
    a.instance_id = "a".into();
    records.write(&b).expect("write b");
    records.write(&a).expect("write a");
    std::fs::write(dir.path().join("junk.json"), b"nope").expect("junk");
    let (got, bad) = records.load().expect("load");
    assert_eq!(got, vec![a.clone(), b.clone()]);
    assert_eq!(bad.len(), 1);
    records.remove("a").expect("remove");
    records.remove("a").expect("remove twice");
    let (got, _) = load(dir.path()).expect("load");
    assert_eq!(got, vec![b]);
    let (none, _) = load(&dir.path().join("missing")).expect("missing dir");
    assert!(none.is_empty());
}

/// The files in `dir` whose names start with a dot, with their inode and size.
fn dot_files(dir: &Path) -> Vec<(String, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let meta = e.metadata().ok()?;
            name.starts_with('.')
                .then_some((name, meta.ino(), meta.len()))
        })
        .collect();
    found.sort();
    found
}

fn ino(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat").ino()
}

#[test]
fn removed_and_replaced_records_are_reused_emptied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (records, _) = Records::open(dir.path().to_path_buf());
    let mut a = saved();
    a.instance_id = "a".into();
    records.write(&a).expect("write a");
    let a_ino = ino(&dir.path().join("a.json"));

    // A removal keeps the file as an empty spare (it held the app's environment).
    records.remove("a").expect("remove a");
    assert!(!dir.path().join("a.json").exists());
    assert_eq!(records.spares(), 1);
    assert_eq!(dot_files(dir.path()), vec![(".spare-2".into(), a_ino, 0)]);

    // A new record takes the spare: no new inode.
    let mut b = saved();
    b.instance_id = "b".into();
    records.write(&b).expect("write b");
    assert_eq!(ino(&dir.path().join("b.json")), a_ino);
    assert_eq!(records.spares(), 0);
    assert_eq!(dot_files(dir.path()), vec![]);

    // A rewrite makes one scratch file, swaps it in, and keeps the previous version's
    // inode, emptied, for the next write, which then makes none.
    b.restarts = 1;
    records.write(&b).expect("rewrite b");
    let spares = dot_files(dir.path());
    assert_eq!(spares, vec![(".spare-3".into(), a_ino, 0)]);
    let b_ino = ino(&dir.path().join("b.json"));
    b.restarts = 2;
    records.write(&b).expect("rewrite b again");
    assert_eq!(ino(&dir.path().join("b.json")), a_ino);
    assert_eq!(dot_files(dir.path()), vec![(".spare-3".into(), b_ino, 0)]);
    assert_eq!(records.load().expect("load").0, vec![b]);
}

#[test]
fn open_takes_over_spares_and_deletes_old_temporary_files() -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(d.join(".spare-7"), b"SECRET=1")?;
    std::fs::set_permissions(d.join(".spare-7"), std::fs::Permissions::from_mode(0o644))?;
    std::fs::write(d.join(".a.json.tmp"), b"half a record")?;
    std::fs::write(d.join(".other"), b"not ours")?;
    let (records, leftovers) = Records::open(d.to_path_buf());
    assert_eq!(
        leftovers,
        Leftovers {
            kept: 1,
            deleted: 1
        }
    );
    assert_eq!(records.spares(), 1);
    assert_eq!(std::fs::read(d.join(".spare-7"))?, b"");
    assert!(!d.join(".a.json.tmp").exists());
    assert!(d.join(".other").exists());

    // The spare is written with the mode of a record; new spares are numbered after it.
    let mut a = saved();
    a.instance_id = "a".into();
    records.write(&a)?;
    assert_eq!(
        std::fs::metadata(d.join("a.json"))?.permissions().mode() & 0o777,
        0o600
    );
    records.remove("a")?;
    assert!(d.join(".spare-8").exists());
    Ok(())
}

#[test]
fn the_pool_is_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (records, _) = Records::open(dir.path().to_path_buf());
    let ids: Vec<String> = (0..MAX_SPARES + 3).map(|i| format!("i{i}")).collect();
    for id in &ids {
        let mut s = saved();
        s.instance_id = id.clone();
        records.write(&s).expect("write");
    }
    for id in &ids {
        records.remove(id).expect("remove");
    }
    assert_eq!(records.spares(), MAX_SPARES);
    assert_eq!(dot_files(dir.path()).len(), MAX_SPARES);
    assert_eq!(load(dir.path()).expect("load").0, vec![]);
    // Reopened, the same pool.
    drop(records);
    let (records, leftovers) = Records::open(dir.path().to_path_buf());
    assert_eq!(
        leftovers,
        Leftovers {
            kept: MAX_SPARES,
            deleted: 0
        }
    );
    assert_eq!(records.spares(), MAX_SPARES);
}

#[test]
fn a_replaced_file_is_private_even_over_a_wide_leftover() -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let (tmp, path) = (dir.path().join(".f.tmp"), dir.path().join("f"));
    let leave_wide_leftover = || -> io::Result<()> {
        std::fs::write(&tmp, b"an older, longer leftover")?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
    };
    let mode =
        |p: &Path| -> io::Result<u32> { Ok(std::fs::metadata(p)?.permissions().mode() & 0o777) };
    // The first write: renamed into place.
    leave_wide_leftover()?;
    replace_private(&tmp, &path, b"one", false)?;
    assert_eq!(std::fs::read(&path)?, b"one");
    assert_eq!(mode(&path)?, 0o600);
    assert!(!tmp.exists());
    // The next: swapped, leaving what it replaced for the next to write over.
    replace_private(&tmp, &path, b"two", true)?;
    assert_eq!(std::fs::read(&path)?, b"two");
    assert_eq!(std::fs::read(&tmp)?, b"one");
    // Over a wide, longer leftover: cut to size and private.
    leave_wide_leftover()?;
    replace_private(&tmp, &path, b"three", false)?;
    assert_eq!(std::fs::read(&path)?, b"three");
    assert_eq!(mode(&path)?, 0o600);
    assert_eq!(std::fs::read(&tmp)?, b"two");
    Ok(())
}

#[test]
fn data_dirs_are_tightened_and_new_files_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| {
        std::fs::symlink_metadata(p)
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    };
    let set = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    create_private_dir(&data.join("instances")).expect("mkdir");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("instances")), 0o700);
    let mut a = saved();
    a.instance_id = "a".into();
    let (records, _) = Records::open(data.join("instances"));
    records.write(&a).expect("write");
    assert_eq!(mode(&data.join("instances/a.json")), 0o600);

    // A data dir an older agent wrote with wider modes.
    std::fs::create_dir(data.join("logs")).expect("mkdir");
    std::fs::write(data.join("logs/web-0-out.log"), "x").expect("write");
    std::fs::write(data.join("agent-id"), "id").expect("write");
    std::fs::write(root.path().join("outside"), "x").expect("write");
    std::os::unix::fs::symlink(root.path().join("outside"), data.join("link")).expect("ln");
    for (p, m) in [
        (data.clone(), 0o755),
        (data.join("logs"), 0o775),
        (data.join("logs/web-0-out.log"), 0o644),
        (data.join("agent-id"), 0o666),
        (data.join("instances/a.json"), 0o640),
        (root.path().join("outside"), 0o644),
    ] {
        set(&p, m);
    }
    let (tightened, failed) = tighten_data_dir(&data);
    assert!(failed.is_empty(), "{failed:?}");
    let mut got: Vec<(String, u32)> = tightened
        .iter()
        .map(|(p, m)| {
            (
                p.strip_prefix(&data).expect("inside").display().to_string(),
                *m,
            )
        })
        .collect();
    got.sort();
    let want = [
        ("", 0o755),
        ("agent-id", 0o666),
        ("instances/a.json", 0o640),
        ("logs", 0o775),
        ("logs/web-0-out.log", 0o644),
    ];
    assert_eq!(got, want.map(|(p, m)| (p.to_string(), m)));
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("logs")), 0o700);
    assert_eq!(mode(&data.join("logs/web-0-out.log")), 0o600);
    assert_eq!(mode(&data.join("agent-id")), 0o600);
    // A symlink is neither followed nor changed.
    assert_eq!(mode(&root.path().join("outside")), 0o644);
    // Once tight, nothing more to do.
    assert_eq!(tighten_data_dir(&data).0, vec![]);
}
