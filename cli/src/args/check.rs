//! What clap's `global = true` cannot say: a global flag is accepted by every verb, including
//! the verbs it means nothing to. An output format a verb does not write is refused (a script
//! asking `list -o nginx` must not get a table); a connection flag given to a verb that works on
//! this machine alone is said to be ignored (refusing it would break aliases such as
//! `alias pmc='pmcluster --coordinator prod:7450'` for `pmc completions bash`).

use std::ffi::OsString;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, ValueEnum};

use super::{Cli, Command, OutputFormat};

/// The flags that say how to reach the coordinator, by their clap ids and as written.
const CONNECTION: [(&str, &str); 5] = [
    ("coordinator", "--coordinator"),
    ("ca", "--ca"),
    ("cert", "--cert"),
    ("key", "--key"),
    ("token", "--token"),
];

/// `command` with no environment binding for a variable set empty (`var` reads one): clap takes
/// `PMCLUSTER_COORDINATOR=` as the value "", which no flag accepts, where shells and most tools
/// take an empty variable as unset (`PMCLUSTER_COORDINATOR= pmcluster list` to ignore one set in
/// a profile). clap has no switch for this.
fn without_empty_env(
    command: clap::Command,
    var: &dyn Fn(&std::ffi::OsStr) -> Option<OsString>,
) -> clap::Command {
    command
        .mut_args(|arg| {
            let empty = arg
                .get_env()
                .is_some_and(|name| var(name).is_some_and(|v| v.is_empty()));
            if empty { arg.env(None::<&str>) } else { arg }
        })
        .mut_subcommands(|sub| without_empty_env(sub, var))
}

/// Parses `args` as `Cli::parse` would, then refuses an `-o` the verb does not write. Also
/// returns a warning per connection flag given on the command line to a verb that talks to no
/// coordinator (one from the environment is nobody's mistake).
pub fn parse_from<I, T>(args: I) -> Result<(Cli, Vec<String>), clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut command = without_empty_env(Cli::command(), &|name| std::env::var_os(name));
    let mut matches = command.try_get_matches_from_mut(args)?;
    // Before the conversion, which takes the subcommand's matches out. A global flag is the
    // command line's at the level it was written at (`pmcluster up --coordinator X`: `up`'s).
    let verb = matches.subcommand_name().unwrap_or_default().to_string();
    let mut given = Vec::new();
    let mut level = Some(&matches);
    while let Some(m) = level {
        given.extend(
            CONNECTION
                .iter()
                .filter(|(id, _)| m.value_source(id) == Some(ValueSource::CommandLine))
                .map(|(_, flag)| *flag),
        );
        level = m.subcommand().map(|(_, sub)| sub);
    }
    let defaulted = matches.value_source("coordinator") == Some(ValueSource::DefaultValue);
    let mut cli = Cli::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut command))?;
    cli.coordinator_defaulted = defaulted;
    let writes = formats(&cli.command);
    if !writes.contains(&cli.output) {
        let message = refusal(&verb, cli.output, writes);
        return Err(command.error(ErrorKind::InvalidValue, message));
    }
    let mut warnings = Vec::new();
    if local(&cli.command) {
        let note = match matches!(cli.command, Command::Up(_)) {
            true => " (the one it starts listens where --listen says)",
            false => "",
        };
        for (_, flag) in CONNECTION.iter().filter(|(_, f)| given.contains(f)) {
            warnings.push(format!(
                "{flag} is ignored: `{verb}` works on this machine and talks to no \
                 coordinator{note}"
            ));
        }
    }
    Ok((cli, warnings))
}

/// The output formats `command` writes.
fn formats(command: &Command) -> &'static [OutputFormat] {
    use OutputFormat::*;
    match command {
        Command::Endpoints(_) => &[Table, Json, Yaml, Nginx, Haproxy],
        // A terminal view, shell scripts and man pages, and a line on what was stopped.
        Command::Monit(_) | Command::Completions(_) | Command::Man(_) | Command::Down(_) => {
            &[Table]
        }
        _ => &[Table, Json, Yaml],
    }
}

/// The verbs that work on this machine alone.
fn local(command: &Command) -> bool {
    matches!(
        command,
        Command::Up(_)
            | Command::Down(_)
            | Command::Certs(_)
            | Command::Completions(_)
            | Command::Man(_)
            | Command::Import(_)
    )
}

fn name(format: OutputFormat) -> String {
    format
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

/// "-o/--output nginx: `list` writes table, json or yaml (nginx: `pmcluster endpoints APP -o
/// nginx`)".
fn refusal(verb: &str, given: OutputFormat, writes: &[OutputFormat]) -> String {
    let names: Vec<String> = writes.iter().copied().map(name).collect();
    let list = match names.split_last() {
        Some((last, [])) => format!("only {last}"),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    let given = name(given);
    let hint = match given.as_str() {
        "nginx" | "haproxy" => format!(" ({given} config: `pmcluster endpoints APP -o {given}`)"),
        _ => String::new(),
    };
    format!("-o/--output {given}: `{verb}` writes {list}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PMCLUSTER_* variable set empty is taken as unset: `--coordinator` falls back to its
    /// default (and the coordinator `pmcluster up` started), where clap refused "" with exit 2;
    /// one set to a value, and the command line, still count.
    #[test]
    fn an_empty_variable_is_unset() {
        let env = |name: &std::ffi::OsStr| match name.to_str() {
            Some("PMCLUSTER_COORDINATOR" | "PMCLUSTER_TOKEN" | "PMCLUSTER_HOME") => {
                Some(OsString::new())
            }
            Some("PMCLUSTER_CA") => Some("/etc/ca.pem".into()),
            _ => None,
        };
        let command = without_empty_env(Cli::command(), &env);
        let bound = |command: &clap::Command, id: &str| {
            command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|n| n.to_string_lossy().into_owned())
        };
        assert_eq!(bound(&command, "coordinator"), None);
        assert_eq!(bound(&command, "token"), None);
        assert_eq!(bound(&command, "ca").as_deref(), Some("PMCLUSTER_CA"));
        assert_eq!(bound(&command, "cert").as_deref(), Some("PMCLUSTER_CERT"));
        let up = command
            .get_subcommands()
            .find(|c| c.get_name() == "up")
            .expect("an up verb");
        assert_eq!(bound(up, "data_dir"), None);
        let untouched = without_empty_env(Cli::command(), &|_| None);
        let up = untouched
            .get_subcommands()
            .find(|c| c.get_name() == "up")
            .expect("an up verb");
        assert_eq!(bound(up, "data_dir").as_deref(), Some("PMCLUSTER_HOME"));
    }
}
