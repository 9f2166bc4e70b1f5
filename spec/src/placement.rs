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

impl Constraint {
    /// Parses `k=v`, `k!=v`, `k in (a,b)`, `k not in (a,b)`, `k` (exists) or `!k` (missing).
    pub fn parse(field: &str, s: &str) -> Result<Constraint, SpecError> {
        let s = s.trim();
        let bad = |why: &str| {
            SpecError::new(
                field,
                format!(
                    "{} {why}; write key=value, key!=value, key in (a,b), key not in (a,b), key or !key",
                    echo(s)
                ),
            )
        };
        let key_ok = |k: &str| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
        };
        let list = |rest: &str| -> Result<Vec<String>, SpecError> {
            let rest = rest.trim();
            let inner = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or(rest);
            let items: Vec<String> = inner
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            if items.is_empty() {
                return Err(bad("has an empty list"));
            }
            Ok(items)
        };
        if let Some((k, v)) = s.split_once("!=") {
            let k = k.trim();
            return if key_ok(k) {
                Ok(Constraint::Ne(k.into(), v.trim().into()))
            } else {
                Err(bad("has a bad label key"))
            };
        }
        if let Some((k, v)) = s.split_once('=') {
            let k = k.trim();
            return if key_ok(k) {
                Ok(Constraint::Eq(k.into(), v.trim().into()))
            } else {
                Err(bad("has a bad label key"))
            };
        }
        if let Some((k, rest)) = s.split_once(" not in ") {
            let k = k.trim();
            return if key_ok(k) {
                Ok(Constraint::NotIn(k.into(), list(rest)?))
            } else {
                Err(bad("has a bad label key"))
            };
        }
        if let Some((k, rest)) = s.split_once(" in ") {
            let k = k.trim();
            return if key_ok(k) {
                Ok(Constraint::In(k.into(), list(rest)?))
            } else {
                Err(bad("has a bad label key"))
            };
        }
        if let Some(k) = s.strip_prefix('!') {
            return if key_ok(k.trim()) {
                Ok(Constraint::Missing(k.trim().into()))
            } else {
                Err(bad("has a bad label key"))
            };
        }
        if key_ok(s) {
            Ok(Constraint::Exists(s.into()))
        } else {
            Err(bad("is not a constraint"))
        }
    }

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
