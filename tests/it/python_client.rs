//! Issue 15: the Python client (`clients/python`), installed as a user installs it (pip, its stubs
//! generated from `proto/` by grpcio-tools at install time), runs its example against a live
//! coordinator: it lists, scales and follows events until the new count is online.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pmcluster_tests::{Cluster, run_bounded, venv_python};

use crate::{DEADLINE, wait_online};

const PIP_TIMEOUT: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// Copies the package's sources (not a build/ or egg-info an earlier build left), so that pip's
/// in-tree build writes into the test's dir and never into the checkout.
fn copy_package(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("package dir");
    for entry in fs::read_dir(from).expect("clients/python") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "build" || name.ends_with(".egg-info") || name == "__pycache__" {
            continue;
        }
        let target = to.join(&*name);
        if entry.file_type().expect("file type").is_dir() {
            copy_package(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copying a package file");
        }
    }
}

#[test]
fn python_client_lists_scales_and_follows_events() {
    let Some(python) = venv_python() else { return };
    let c = Cluster::start(2).expect("coordinator and two agents start");
    c.start_app("web", 2)
        .ports(4)
        .online()
        .expect("web starts with 2 instances");

    let dir = c.root().join("python");
    let src = dir.join("src");
    let site = dir.join("site");
    copy_package(&repo().join("clients/python"), &src);
    let src_arg = src.display().to_string();
    let site_arg = site.display().to_string();
    let pip = [
        "-m",
        "pip",
        "install",
        "-q",
        "--no-build-isolation",
        "--no-deps",
        "--target",
        &site_arg,
        &src_arg,
    ];
    let installed = run_bounded(
        Command::new(&python)
            .args(pip)
            .env("PMCLUSTER_PROTO_DIR", repo().join("proto")),
        &dir,
        "pip",
        &pip,
        PIP_TIMEOUT,
    )
    .expect("pip install runs");
    installed.assert_ok();
    assert!(
        site.join("pmcluster/v1/cluster_pb2_grpc.py").is_file(),
        "the install generated no stubs: {installed:?}"
    );

    let example = src.join("examples/scale_and_watch.py");
    let run = |args: &[&str]| {
        run_bounded(
            Command::new(&python)
                .arg(&example)
                .args(args)
                .env("PYTHONPATH", &site)
                .env("PMCLUSTER_COORDINATOR", c.url())
                .env_remove("PMCLUSTER_TOKEN"),
            &dir,
            "example",
            args,
            DEADLINE + Duration::from_secs(10),
        )
        .expect("the example runs")
    };

    let out = run(&["web", "3", "--timeout", "30"]);
    out.assert_ok();
    assert!(
        out.stdout.contains("scaled web from 2 to 3"),
        "the example did not report the scale: {out:?}"
    );
    assert!(
        out.stdout.contains("event instance."),
        "the example followed no instance event: {out:?}"
    );
    let after = wait_online(&c, "web", 3);
    let printed = out.stdout.split("web after:").nth(1).unwrap_or_default();
    for inst in &after {
        let line = format!("web[{}] online", inst.index);
        assert!(
            printed.contains(&line),
            "the example's last list lacks {line:?}: {out:?}"
        );
    }

    // A refused call is an error the script can name, not a traceback.
    let out = run(&["nosuchapp", "1", "--timeout", "5"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("NOT_FOUND"), "{out:?}");
}
