//! Placement rules of an app: strategy, label constraints, soft affinities, per-node limits and
//! resource requests. Parsing and label matching only; the scheduler uses them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{SpecError, echo};

/// How the scheduler chooses among nodes that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Fewest instances of the app first, then fewest overall: even spread, best availability.
    #[default]
    Spread,
    /// Fullest node that still fits first: fewer nodes used, room kept for big instances.
    Binpack,
}

impl Strategy {
    pub fn parse(s: &str) -> Result<Strategy, SpecError> {
        match s.trim() {
            "" | "spread" => Ok(Strategy::Spread),
            "binpack" => Ok(Strategy::Binpack),
            other => Err(SpecError::new(
                "placement.strategy",
                format!(
                    "unknown strategy {}; use \"spread\" or \"binpack\"",
                    echo(other)
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Spread => "spread",
            Strategy::Binpack => "binpack",
        }
    }
}

/// A test on one node label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Constraint {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Missing(String),
}

/// The grammar every constraint error ends with.
const GRAMMAR: &str = "write key=value, key!=value, key in (a,b), key not in (a,b), key or !key, \
     where keys are ASCII letters, digits, '.', '_', '-' and '/', and values may also hold other \
     letters and ':'";

/// Whether [`Constraint`] text is checked as new input or read back as a cluster already holds it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reading {
    New,
    Held,
}

impl Constraint {
    /// Parses `k=v`, `k!=v`, `k in (a,b)`, `k not in (a,b)`, `k` (exists) or `!k` (missing).
    /// Values are checked much like keys: a malformed one (`zone=a,zone=b`, `zone in (a,b`,
    /// `zone==`) matched no node and left the app pending for ever.
    pub fn parse(field: &str, s: &str) -> Result<Constraint, SpecError> {
        parse_constraint(field, s, Reading::New)
    }

    /// Reads a constraint that a coordinator already accepted (a spec sent back from it, or an
    /// agent's saved assignment). Values go unchecked, as before they were checked at all: a spec
    /// stored then must still load, and only new input is refused ([`Constraint::parse`]).
    pub fn parse_held(field: &str, s: &str) -> Result<Constraint, SpecError> {
        parse_constraint(field, s, Reading::Held)
    }
}

fn key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

/// Why no constraint can name the node label `key=value`, if none can: a node started with
/// such a label is placed only by constraints that ignore it. Said without advice on writing
/// constraints, since the fault is in the label (`has a bad label key "k8s:zone"`).
pub fn label_fault(key: &str, value: &str) -> Option<String> {
    if !key_ok(key) {
        return Some(format!("has a bad label key {}", echo(key)));
    }
    // An empty value is matched by `key` (exists), so only a value's characters can be at fault.
    let c = value_char_fault(value)?;
    Some(value_char_message(c, value))
}

/// The first character of `v` that a constraint's value cannot hold. Node labels may hold any
/// text, but a value with a space, comma, parenthesis, `=` or `!` (or a quote) is far likelier a
/// typo for another operator than a label that really reads so; any other character
/// (`kernel=6.1.0+deb12`) is the label's.
fn value_char_fault(v: &str) -> Option<char> {
    v.chars().find(|c| {
        c.is_whitespace() || c.is_control() || matches!(c, ',' | '(' | ')' | '=' | '!' | '"' | '\'')
    })
}

fn value_char_message(c: char, v: &str) -> String {
    let what = match c {
        c if c.is_whitespace() => "whitespace".to_string(),
        c => format!("{c:?}"),
    };
    format!("has {what} in its value {}", echo(v))
}

/// Why `v`, which follows the operator `op`, cannot be a label value in a constraint, if it
/// cannot, with advice when the value looks like another operator's.
fn value_fault(v: &str, op: &str) -> Option<String> {
    if v.is_empty() {
        return Some(format!("has no value after {op:?}"));
    }
    let c = value_char_fault(v)?;
    let hint = match (c, op) {
        (',' | '(' | ')', "=") => "; for any of several values write key in (a,b)",
        (',' | '(' | ')', "!=") => "; to exclude several values write key not in (a,b)",
        ('=', "=") if v.starts_with('=') => "; \"==\" is not an operator",
        _ => "",
    };
    Some(format!("{}{hint}", value_char_message(c, v)))
}

fn parse_constraint(field: &str, s: &str, reading: Reading) -> Result<Constraint, SpecError> {
    let s = s.trim();
    let bad = |why: &str| SpecError::new(field, format!("{} {why}; {GRAMMAR}", echo(s)));
    let key = |k: &str| -> Result<String, SpecError> {
        let k = k.trim();
        if key_ok(k) {
            Ok(k.to_string())
        } else {
            Err(bad(&format!("has a bad label key {}", echo(k))))
        }
    };
    let value = |v: &str, op: &str| -> Result<String, SpecError> {
        let v = v.trim();
        match value_fault(v, op) {
            Some(why) if reading == Reading::New => Err(bad(&why)),
            _ => Ok(v.to_string()),
        }
    };
    let list = |rest: &str, op: &str| -> Result<Vec<String>, SpecError> {
        let rest = rest.trim();
        let inner = match (rest.strip_prefix('('), reading) {
            (Some(open), _) if open.ends_with(')') => &open[..open.len() - 1],
            (Some(_), Reading::New) => return Err(bad("has a \"(\" without a \")\" at its end")),
            (None, Reading::New) if rest.ends_with(')') => {
                return Err(bad("has a \")\" without a \"(\" before its list"));
            }
            _ => rest,
        };
        let items: Vec<&str> = inner.split(',').map(str::trim).collect();
        if items.iter().all(|v| v.is_empty()) {
            return Err(bad("has an empty list"));
        }
        match reading {
            Reading::New if items.iter().any(|v| v.is_empty()) => {
                Err(bad("has an empty item in its list (a comma too many?)"))
            }
            Reading::New => items.iter().map(|v| value(v, op)).collect(),
            Reading::Held => Ok(items
                .into_iter()
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .collect()),
        }
    };
    if let Some((k, v)) = s.split_once("!=") {
        return Ok(Constraint::Ne(key(k)?, value(v, "!=")?));
    }
    if let Some((k, v)) = s.split_once('=') {
        return Ok(Constraint::Eq(key(k)?, value(v, "=")?));
    }
    if let Some((k, rest)) = s.split_once(" not in ") {
        return Ok(Constraint::NotIn(key(k)?, list(rest, "not in")?));
    }
    if let Some((k, rest)) = s.split_once(" in ") {
        return Ok(Constraint::In(key(k)?, list(rest, "in")?));
    }
    if let Some(k) = s.strip_prefix('!') {
        return Ok(Constraint::Missing(key(k)?));
    }
    if key_ok(s) {
        Ok(Constraint::Exists(s.into()))
    } else {
        Err(bad("is not a constraint"))
    }
}

impl Constraint {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Constraint::Eq(k, v) => labels.get(k) == Some(v),
            Constraint::Ne(k, v) => labels.get(k) != Some(v),
            Constraint::In(k, vs) => labels.get(k).is_some_and(|x| vs.contains(x)),
            Constraint::NotIn(k, vs) => labels.get(k).is_none_or(|x| !vs.contains(x)),
            Constraint::Exists(k) => labels.contains_key(k),
            Constraint::Missing(k) => !labels.contains_key(k),
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Constraint::Eq(k, v) => write!(f, "{k}={v}"),
            Constraint::Ne(k, v) => write!(f, "{k}!={v}"),
            Constraint::In(k, vs) => write!(f, "{k} in ({})", vs.join(",")),
            Constraint::NotIn(k, vs) => write!(f, "{k} not in ({})", vs.join(",")),
            Constraint::Exists(k) => write!(f, "{k}"),
            Constraint::Missing(k) => write!(f, "!{k}"),
        }
    }
}

/// A soft preference: nodes matching `constraint` are preferred by `weight` (-100..=100;
/// negative avoids them). It never makes a node ineligible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affinity {
    pub constraint: Constraint,
    pub weight: i32,
}

/// Parses a CPU request: cores as a number (`0.5`, `2`) or millicores (`"500m"`). Returns millicores.
pub fn parse_cpu(field: &str, s: &str) -> Result<u32, SpecError> {
    let s = s.trim();
    let bad = || {
        SpecError::new(
            field,
            format!(
                "{} is not a CPU amount; write cores (0.5, 2) or millicores (\"500m\")",
                echo(s)
            ),
        )
    };
    let millis = if let Some(m) = s.strip_suffix('m') {
        m.trim().parse::<u64>().map_err(|_| bad())?
    } else {
        let cores: f64 = s.parse().map_err(|_| bad())?;
        if !cores.is_finite() || cores < 0.0 {
            return Err(bad());
        }
        (cores * 1000.0).round() as u64
    };
    u32::try_from(millis).map_err(|_| bad())
}

/// Parses a memory amount: bytes, or a number with K/M/G/T (powers of 1024; `Mi`, `MB`, `MiB`
/// are read the same way), e.g. `"512M"`, `"1.5G"`.
pub fn parse_memory(field: &str, s: &str) -> Result<u64, SpecError> {
    let s = s.trim();
    let bad = || {
        SpecError::new(
            field,
            format!(
                "{} is not a memory amount; write e.g. \"512M\" or \"2G\"",
                echo(s)
            ),
        )
    };
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit.trim_end_matches('B').trim_end_matches('I');
    let mult: u64 = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(bad()),
    };
    let too_large = || SpecError::new(field, format!("{} is too large", echo(s)));
    // A whole number is read exactly: through an f64, sizes above 2^53 bytes came back rounded,
    // so a spec's config form (plain bytes) read back as another spec.
    if !num.contains('.') {
        let n: u128 = num.parse().map_err(|_| bad())?;
        return n
            .checked_mul(u128::from(mult))
            .and_then(|b| u64::try_from(b).ok())
            .ok_or_else(too_large);
    }
    let num: f64 = num.parse().map_err(|_| bad())?;
    if !num.is_finite() || num < 0.0 {
        return Err(bad());
    }
    let bytes = (num * mult as f64).round();
    if bytes >= u64::MAX as f64 {
        return Err(too_large());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_parse_and_match() {
        let labels: BTreeMap<String, String> = [("region", "eu"), ("disk", "ssd")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cases = [
            ("region=eu", true),
            ("region = us", false),
            ("region!=us", true),
            ("region!=eu", false),
            ("region in (us, eu)", true),
            ("region in us,ap", false),
            ("region not in (us)", true),
            ("zone not in (a)", true),
            ("disk", true),
            ("gpu", false),
            ("!gpu", true),
            ("!disk", false),
        ];
        for (text, want) in cases {
            let c = Constraint::parse("constraints", text).unwrap();
            assert_eq!(c.matches(&labels), want, "{text}");
            // Display round-trips.
            assert_eq!(Constraint::parse("c", &c.to_string()).unwrap(), c, "{text}");
        }
        for bad in ["", "=eu", "a b", "region in ()", "!", "k in"] {
            assert!(Constraint::parse("constraints", bad).is_err(), "{bad:?}");
        }
    }

    /// Label values as node labels and Kubernetes write them still parse, and malformed ones a
    /// user trial found accepted (each left its app pending for ever) are refused, saying why.
    #[test]
    fn constraint_values() {
        let eq = |k: &str, v: &str| Ok(Constraint::Eq(k.into(), v.into()));
        let list = |vs: &[&str]| vs.iter().map(|v| v.to_string()).collect::<Vec<_>>();
        let cases: Vec<(&str, Result<Constraint, &str>)> = vec![
            ("zone=n1", eq("zone", "n1")),
            (" zone = n1 ", eq("zone", "n1")),
            (
                "topology.kubernetes.io/zone=eu-west-1a",
                eq("topology.kubernetes.io/zone", "eu-west-1a"),
            ),
            ("version=v1.2.3_rc-1", eq("version", "v1.2.3_rc-1")),
            ("path=a/b/c", eq("path", "a/b/c")),
            ("addr=10.0.0.1:8080", eq("addr", "10.0.0.1:8080")),
            // Any text an agent's label may hold but the grammar's own characters.
            ("kernel=6.1.0+deb12", eq("kernel", "6.1.0+deb12")),
            ("city=münchen", eq("city", "münchen")),
            ("zone!=n1", Ok(Constraint::Ne("zone".into(), "n1".into()))),
            (
                "zone in (a, b)",
                Ok(Constraint::In("zone".into(), list(&["a", "b"]))),
            ),
            (
                "zone in a,b",
                Ok(Constraint::In("zone".into(), list(&["a", "b"]))),
            ),
            (
                "zone not in (a)",
                Ok(Constraint::NotIn("zone".into(), list(&["a"]))),
            ),
            (
                "zone in (a,b",
                Err(r#""zone in (a,b" has a "(" without a ")" at its end"#),
            ),
            (
                "zone in a,b)",
                Err(r#"has a ")" without a "(" before its list"#),
            ),
            ("zone in ((a,b))", Err(r#"has '(' in its value "(a""#)),
            ("zone in (a b)", Err(r#"has whitespace in its value "a b""#)),
            ("zone in (a,,b)", Err("has an empty item in its list")),
            ("zone in (a,)", Err("has an empty item in its list")),
            ("zone not in (a,b", Err(r#"has a "(" without a ")""#)),
            (
                "zone==",
                Err(r#"has '=' in its value "="; "==" is not an operator; write key=value,"#),
            ),
            ("zone==a", Err(r#""==" is not an operator"#)),
            (
                "zone=a b",
                Err(r#""zone=a b" has whitespace in its value "a b""#),
            ),
            (
                "zone=n1,zone=n2",
                Err(
                    r#"has ',' in its value "n1,zone=n2"; for any of several values write key in (a,b)"#,
                ),
            ),
            (
                "zone!=a,b",
                Err("to exclude several values write key not in (a,b)"),
            ),
            (
                "zone=(a,b)",
                Err("for any of several values write key in (a,b)"),
            ),
            ("zone != ", Err(r#""zone !=" has no value after "!=""#)),
            ("zone=", Err(r#"has no value after "=""#)),
            ("zone=\"a\"", Err(r#"has '"' in its value"#)),
            ("zone=a!", Err(r#"has '!' in its value"#)),
            ("zo ne=a", Err(r#"has a bad label key "zo ne""#)),
        ];
        for (text, want) in cases {
            match (Constraint::parse("placement.constraints", text), want) {
                (Ok(got), Ok(want)) => {
                    assert_eq!(got, want, "{text}");
                    assert_eq!(Constraint::parse("c", &got.to_string()), Ok(got), "{text}");
                }
                (Err(e), Err(want)) => {
                    let msg = e.to_string();
                    assert!(msg.starts_with("placement.constraints: "), "{text}: {msg}");
                    assert!(msg.contains(want), "{text}: {msg}");
                    assert!(
                        msg.contains("write key=value, key!=value, key in (a,b)"),
                        "{msg}"
                    );
                }
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// A spec stored before values were checked reads back as it was written: what the old
    /// parser made of it, shown and read again, is the same constraint.
    #[test]
    fn held_constraints_read_back_unchecked() {
        let cases = [
            (
                "zone in (a,b",
                Constraint::In("zone".into(), vec!["(a".into(), "b".into()]),
            ),
            ("zone==", Constraint::Eq("zone".into(), "=".into())),
            ("zone=a b", Constraint::Eq("zone".into(), "a b".into())),
            (
                "zone=n1,zone=n2",
                Constraint::Eq("zone".into(), "n1,zone=n2".into()),
            ),
            ("zone != ", Constraint::Ne("zone".into(), String::new())),
            (
                "zone in (a,,b)",
                Constraint::In("zone".into(), vec!["a".into(), "b".into()]),
            ),
        ];
        for (text, want) in cases {
            assert!(Constraint::parse("c", text).is_err(), "{text}");
            let held = Constraint::parse_held("c", text);
            assert_eq!(held.as_ref(), Ok(&want), "{text}");
            assert_eq!(
                Constraint::parse_held("c", &want.to_string()),
                Ok(want),
                "{text}"
            );
        }
        for bad in ["", "=eu", "a b", "region in ()", "!", "k in"] {
            assert!(Constraint::parse_held("c", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_label_is_at_fault_exactly_when_no_constraint_names_it() {
        let labels = [
            ("zone", "a", None),
            ("kernel", "6.1.0+deb12", None),
            ("rack", "r1:u3", None),
            (
                "zone",
                "eu west",
                Some("has whitespace in its value \"eu west\""),
            ),
            ("tier", "a,b", Some("has ',' in its value \"a,b\"")),
            ("k", "==x", Some("has '=' in its value \"==x\"")),
            ("k8s:zone", "a", Some("has a bad label key \"k8s:zone\"")),
            ("", "a", Some("has a bad label key \"\"")),
        ];
        for (key, value, want) in labels {
            let fault = label_fault(key, value);
            assert_eq!(fault.as_deref(), want, "{key}={value}");
            let named = Constraint::parse("c", &format!("{key}={value}"))
                .is_ok_and(|c| c == Constraint::Eq(key.into(), value.into()));
            assert_eq!(named, fault.is_none(), "{key}={value}");
        }
        // An empty value is named by the key alone.
        assert_eq!(label_fault("zone", ""), None);
        assert!(Constraint::parse("c", "zone").is_ok());
    }

    #[test]
    fn amounts() {
        let cpu = [
            ("500m", Some(500)),
            ("0.5", Some(500)),
            ("2", Some(2000)),
            ("x", None),
            ("-1", None),
        ];
        for (s, want) in cpu {
            assert_eq!(parse_cpu("cpu", s).ok(), want, "{s}");
        }
        let mem = [
            ("512M", Some(512 << 20)),
            ("512MiB", Some(512 << 20)),
            ("1.5G", Some(3 << 29)),
            ("1024", Some(1024)),
            ("2 GB", Some(2 << 30)),
            ("12Q", None),
            ("", None),
            // Found by the wire_specs fuzz target: read through an f64 as ...560.
            ("33465601660177562", Some(33_465_601_660_177_562)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("16777216T", None),
            ("1.5", Some(2)),
            (".", None),
        ];
        for (s, want) in mem {
            assert_eq!(parse_memory("memory", s).ok(), want, "{s}");
        }
        assert_eq!(Strategy::parse("binpack").ok(), Some(Strategy::Binpack));
        assert!(Strategy::parse("random").is_err());
    }
}
