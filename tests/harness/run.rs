//! Running a short-lived command to its end within a deadline, its output kept in files (a pipe
//! nobody reads while we poll could fill and stall the child).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cli::CliOutput;
use crate::daemon::{log_file, tail};
use crate::error::{Error, io_err};
use crate::wait::poll_every;

/// Runs `cmd` with its output in `dir/NAME.out` and `dir/NAME.err` (removed afterwards), killing
/// it after `timeout`. `args` only labels the result. The exit is polled every 10 ms: the CLI
/// calls that go through here take milliseconds.
pub fn run_bounded(
    cmd: &mut Command,
    dir: &Path,
    name: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<CliOutput, Error> {
    run_bounded_with(cmd, dir, name, args, timeout, Stdout::Kept)
}

/// Where a command's stdout goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stdout {
    /// To `NAME.out`, read into the result.
    Kept,
    /// A pipe whose reader is gone before the command starts (as `pmcluster ... | true` can
    /// be): every write to it fails with EPIPE. The result's `stdout` is empty.
    Unread,
}

/// As [`run_bounded`], with the stdout `to`.
pub(crate) fn run_bounded_with(
    cmd: &mut Command,
    dir: &Path,
    name: &str,
    args: &[&str],
    timeout: Duration,
    to: Stdout,
) -> Result<CliOutput, Error> {
    fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let out_path = dir.join(format!("{name}.out"));
    let err_path = dir.join(format!("{name}.err"));
    let what = format!("{:?} {}", cmd.get_program(), args.join(" "));
    let stdout = if to == Stdout::Unread {
        let (reader, writer) = std::io::pipe().map_err(io_err("making a pipe".to_string()))?;
        drop(reader);
        Stdio::from(writer)
    } else {
        Stdio::from(log_file(&out_path)?)
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(log_file(&err_path)?)
        .spawn()
        .map_err(io_err(format!("spawning {what}")))?;
    let interval = Duration::from_millis(10);
    let waited = poll_every(interval, timeout, &what, || match child.try_wait() {
        Ok(Some(status)) => Ok(Ok(status)),
        Ok(None) => Err(tail(&err_path, 5)),
        Err(e) => Ok(Err(io_err(format!("waiting for {what}"))(e))),
    });
    let status = match waited {
        Ok(status) => status?,
        Err(timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(timeout);
        }
    };
    let read = |p: &Path| {
        fs::read(p)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(io_err(format!("reading {}", p.display())))
    };
    let output = CliOutput {
        args: args.iter().map(|s| s.to_string()).collect(),
        status,
        stdout: if to == Stdout::Unread {
            String::new()
        } else {
            read(&out_path)?
        },
        stderr: read(&err_path)?,
    };
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    Ok(output)
}
