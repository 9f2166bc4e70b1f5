//! `completions` and `man`: shell completion scripts and man pages, generated from the clap
//! definitions in `args` so that they never drift from the real command line.
//!
//! Both are local: they talk to no coordinator. Rendering is pure ([`completion_script`],
//! [`man_pages`]); only [`man`] writes files.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::args::{Cli, CompletionsArgs, ManArgs, Shell};
use crate::error::UsageError;

/// The name completions are registered under: the binary users type.
const BIN: &str = "pmcluster";

/// The completion script for `shell`.
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(generator, &mut cmd, BIN, &mut script);
    script
}

/// `completions SHELL`: the script on standard output.
pub fn completions(args: CompletionsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    out.write_all(&completion_script(args.shell))
        .context("writing to stdout")
}

/// One man page per command and (nested) subcommand, as (file name, roff text):
/// `pmcluster.1`, `pmcluster-start.1`, `pmcluster-rollout-status.1`, ...
pub fn man_pages() -> Result<Vec<(String, Vec<u8>)>, std::io::Error> {
    // Building gives each subcommand its display name (`pmcluster-rollout-status`) and the
    // global flags, so each page stands on its own.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    collect(cmd, &mut pages)?;
    Ok(pages)
}

fn collect(cmd: clap::Command, pages: &mut Vec<(String, Vec<u8>)>) -> Result<(), std::io::Error> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub.clone(), pages)?;
    }
    let man = clap_mangen::Man::new(cmd);
    let mut text = Vec::new();
    man.render(&mut text)?;
    pages.push((man.get_filename(), text));
    Ok(())
}

/// `man --dir DIR`: writes the pages and lists them.
pub fn man(args: ManArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let dir: &Path = &args.dir;
    if dir.exists() && !dir.is_dir() {
        return Err(UsageError::new(format!("--dir: {} is not a directory", dir.display())).into());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut pages = man_pages().context("rendering the man pages")?;
    pages.sort();
    for (name, text) in &pages {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    writeln!(
        out,
        "wrote {} man pages to {}; read one with: man -l {}",
        pages.len(),
        dir.display(),
        dir.join("pmcluster.1").display()
    )
    .context("writing to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_name_the_binary_and_its_verbs() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(completion_script(shell)).expect("utf-8");
            for word in [
                BIN,
                "start",
                "endpoints",
                "rollout",
                "completions",
                "balance",
            ] {
                assert!(script.contains(word), "{shell:?} lacks {word}");
            }
        }
    }

    #[test]
    fn a_page_per_command() {
        let pages = man_pages().expect("renders");
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        for want in [
            "pmcluster.1",
            "pmcluster-start.1",
            "pmcluster-rollout-status.1",
            "pmcluster-certs-issue-user.1",
            "pmcluster-man.1",
        ] {
            assert!(names.contains(&want), "no {want} in {names:?}");
        }
        assert!(!names.contains(&"pmcluster-help.1"), "{names:?}");
        let start = pages
            .iter()
            .find(|(n, _)| n == "pmcluster-start.1")
            .map(|(_, t)| String::from_utf8_lossy(t).to_string())
            .unwrap_or_default();
        assert!(start.starts_with(".ie \\n(.g .ds Aq"), "{start}");
        assert!(start.contains(".TH pmcluster-start 1"), "{start}");
        assert!(start.contains("\\-\\-instances"), "{start}");
    }
}
