//! What `/proc` says of a process, for the agent (its own instances, orphans) and `pmcluster
//! down` (the processes a killed agent left): its stat line and the markers in its environment
//! (see [`crate::instance::INSTANCE_UUID_VAR`]). One reading for both, so that they cannot
//! disagree on what a process's markers say, or on when it started (what tells a process from
//! another that got its pid since).
//!
//! Parsing, and one bounded read of a file its caller opened: no paths, no opening here.

use std::io::{self, Read};

use crate::instance::{AGENT_KEY_VAR, INSTANCE_UUID_VAR, NODE_VAR, PUMP_VAR};

/// The fields of `/proc/PID/stat` the agent and `down` use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub start_ticks: u64,
    pub rss_pages: u64,
}

impl Stat {
    /// Not a zombie (nor dead).
    pub fn running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses one `/proc/PID/stat` line. The command name (field 2) may hold spaces and parentheses,
/// so fields are counted from its last closing parenthesis.
pub fn parse_stat(pid: u32, text: &str) -> Option<Stat> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): field n is f[n - 3].
    let num = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    Some(Stat {
        pid,
        state: f.first()?.chars().next()?,
        ppid: u32::try_from(num(4)?).ok()?,
        pgrp: u32::try_from(num(5)?).ok()?,
        cpu_ticks: num(14)?.saturating_add(num(15)?),
        start_ticks: num(22)?,
        rss_pages: num(24)?,
    })
}

/// Most bytes of one process's environment read (the markers are among the first variables
/// of an instance's environment only by chance: the environment is sorted by name).
pub const MAX_ENVIRON: u64 = 8 << 20;

/// A `/proc/PID/environ` its caller opened, up to [`MAX_ENVIRON`] bytes.
pub fn read_environ(file: impl Read) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(MAX_ENVIRON).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The marker variables in a `/proc/PID/environ` text, as raw values: what they mean is the
/// caller's (the agent wants its node name too, `down` only the key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Markers<'a> {
    /// [`INSTANCE_UUID_VAR`].
    pub instance: Option<&'a [u8]>,
    /// [`NODE_VAR`].
    pub node: Option<&'a [u8]>,
    /// [`AGENT_KEY_VAR`].
    pub key: Option<&'a [u8]>,
    /// [`PUMP_VAR`].
    pub pump: Option<&'a [u8]>,
    /// `PORT`: not a marker, but where an adopted instance listens.
    pub port: Option<&'a [u8]>,
}

/// Reads the markers in a `/proc/PID/environ` text (NUL-separated `NAME=value`). A variable set
/// twice counts with its last value.
pub fn markers(environ: &[u8]) -> Markers<'_> {
    let mut found = Markers::default();
    for entry in environ.split(|b| *b == 0) {
        let Some(eq) = entry.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (name, value) = (&entry[..eq], &entry[eq + 1..]);
        let slot = match name {
            n if n == INSTANCE_UUID_VAR.as_bytes() => &mut found.instance,
            n if n == NODE_VAR.as_bytes() => &mut found.node,
            n if n == AGENT_KEY_VAR.as_bytes() => &mut found.key,
            n if n == PUMP_VAR.as_bytes() => &mut found.pump,
            b"PORT" => &mut found.port,
            _ => continue,
        };
        *slot = Some(value);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines() {
        let line = "123 (my (odd) app) S 1 123 123 0 -1 4194304 100 0 0 0 7 5 0 0 20 0 3 0 \
                    9876 1000000 250 18446744073709551615";
        assert_eq!(
            parse_stat(123, line),
            Some(Stat {
                pid: 123,
                state: 'S',
                ppid: 1,
                pgrp: 123,
                cpu_ticks: 12,
                start_ticks: 9876,
                rss_pages: 250,
            })
        );
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 987654 \
                    1000 200 18446744073709551615";
        assert_eq!(
            parse_stat(4242, line).map(|s| (s.state, s.start_ticks)),
            Some(('S', 987654))
        );
        for bad in ["", "garbage", "7 (x) R", "7 (x) R 1 2", "4242 (x) Z 1"] {
            assert_eq!(parse_stat(7, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn environ_reads_are_bounded() -> io::Result<()> {
        assert_eq!(read_environ(&b"A=1\0B=2\0"[..])?, b"A=1\0B=2\0");
        let huge = read_environ(io::repeat(b'x').take(MAX_ENVIRON + 1))?;
        assert_eq!(huge.len() as u64, MAX_ENVIRON);
        Ok(())
    }

    #[test]
    fn environ_markers() {
        let env = "A=b\0PMCLUSTER_INSTANCE_UUID=i1\0PMCLUSTER_NODE=n1\0PMCLUSTER_AGENT_KEY=00aa\0\
                   PMCLUSTER_PUMP_FOR=i2\0PORT=8080\0";
        assert_eq!(
            markers(env.as_bytes()),
            Markers {
                instance: Some(b"i1".as_slice()),
                node: Some(b"n1".as_slice()),
                key: Some(b"00aa".as_slice()),
                pump: Some(b"i2".as_slice()),
                port: Some(b"8080".as_slice()),
            }
        );
        // The last of a name counts; a value may hold '=' and be empty; an entry without '='
        // and a name that only ends alike are no variables.
        let env = "PMCLUSTER_AGENT_KEY=00aa\0PMCLUSTER_AGENT_KEY=00bb\0PMCLUSTER_NODE=a=b\0\
                   PMCLUSTER_INSTANCE_UUID=\0PMCLUSTER_PUMP_FOR\0X_PORT=1\0";
        assert_eq!(
            markers(env.as_bytes()),
            Markers {
                instance: Some(b"".as_slice()),
                node: Some(b"a=b".as_slice()),
                key: Some(b"00bb".as_slice()),
                pump: None,
                port: None,
            }
        );
        assert_eq!(markers(b""), Markers::default());
    }
}
