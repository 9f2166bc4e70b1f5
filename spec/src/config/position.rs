//! Lines and columns in a config file's text: where the strict parse failed ([`locate`]), and
//! where the value at a field path a [`SpecError`] names starts ([`value_at`]): a check after
//! the parse (a port that does not parse, a duration too long) knows the field (`port`,
//! `health_check.path`, `args[2]`) but no longer the text.
//!
//! [`value_at`] reads the text again with the format's own parser and a [`DeserializeSeed`] that
//! walks down the path and fails on reaching its value; the parser puts its position on that
//! error. No position (a path not in the text, a parser that gives none) is `None`: the message
//! goes without one.
//!
//! [`SpecError`]: crate::SpecError

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::Format;
use super::text::Position;

/// Where the format's own parser stops on the same text: the path it failed at, and the line
/// and column, for formats whose parser tells them.
pub(super) fn locate<T: serde::de::DeserializeOwned>(
    (text, format): (&str, Format),
) -> Option<(String, Position)> {
    match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let e = serde_path_to_error::deserialize::<_, T>(&mut de).err()?;
            let (line, column) = (e.inner().line(), e.inner().column());
            (line > 0).then(|| (e.path().to_string(), (line as u64, column as u64)))
        }
        Format::Toml => {
            let de = toml::de::Deserializer::parse(text).ok()?;
            let e = serde_path_to_error::deserialize::<_, T>(de).err()?;
            let start = e.inner().span()?.start;
            let before = text.get(..start)?;
            let line = before.matches('\n').count() as u64 + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() as u64 + 1;
            Some((e.path().to_string(), (line, column)))
        }
        Format::Yaml => {
            let mut path = None;
            let e = serde_saphyr::with_deserializer_from_str(text, |de| {
                serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
                    path = Some(e.path().to_string());
                    e.into_inner()
                })
            })
            .err()?;
            let (at, path) = (e.location()?, path?);
            (at.line() > 0).then_some((path, (at.line(), at.column())))
        }
    }
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    Key(String),
    Index(usize),
}

/// The steps of `field` as a [`SpecError`](crate::SpecError) writes it: keys joined by `.`,
/// indices as `[n]`, a key that would not print as it is in double quotes. `None` when it does
/// not read so.
pub(super) fn steps(field: &str) -> Option<Vec<Step>> {
    let mut out = Vec::new();
    let mut rest = field;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            let (index, tail) = after.split_once(']')?;
            out.push(Step::Index(index.parse().ok()?));
            rest = tail;
        } else if rest.starts_with('"') {
            // The quoting is `echo`'s (Rust's escapes); a key that needs any is looked for
            // only when it has none inside.
            let close = rest[1..].find('"')? + 1;
            let key = &rest[1..close];
            if key.contains('\\') {
                return None;
            }
            out.push(Step::Key(key.to_string()));
            rest = &rest[close + 1..];
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            out.push(Step::Key(rest[..end].to_string()));
            rest = &rest[end..];
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    (!out.is_empty()).then_some(out)
}

/// Where the value at `path` is in `text` (1-based line and column), as the format's parser
/// tells it: YAML's parser gives its key's position, JSON's and TOML's the value's.
pub(super) fn value_at(text: &str, format: Format, path: &[Step]) -> Option<Position> {
    let probe = Probe(path);
    match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let e = probe.deserialize(&mut de).err()?;
            (e.line() > 0).then_some((e.line() as u64, e.column() as u64))
        }
        Format::Toml => {
            let de = toml::de::Deserializer::parse(text).ok()?;
            let start = probe.deserialize(de).err()?.span()?.start;
            let before = text.get(..start)?;
            let line = before.matches('\n').count() as u64 + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() as u64 + 1;
            Some((line, column))
        }
        Format::Yaml => {
            let e =
                serde_saphyr::with_deserializer_from_str(text, |de| probe.deserialize(de)).err()?;
            let at = e.location()?;
            (at.line() > 0).then_some((at.line(), at.column()))
        }
    }
}

/// Walks a document down `.0`, ignoring everything off the path; fails at the value the path ends
/// at. The text parsed before, so that failure is the only one it meets.
struct Probe<'p>(&'p [Step]);

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.0 {
            [] => d.deserialize_any(Found),
            _ => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (want, rest) = match self.0.split_first() {
            Some((Step::Key(want), rest)) => (Some(want), rest),
            _ => (None, self.0),
        };
        while let Some(key) = map.next_key::<KeyText>()? {
            if want.is_some_and(|w| *w == key.0) {
                map.next_value_seed(Probe(rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (want, rest) = match self.0.split_first() {
            Some((Step::Index(want), rest)) => (Some(*want), rest),
            _ => (None, self.0),
        };
        let mut n = 0;
        loop {
            let more = if want == Some(n) {
                seq.next_element_seed(Probe(rest))?
            } else {
                seq.next_element::<IgnoredAny>()?.map(|_| ())
            };
            if more.is_none() {
                return Ok(());
            }
            n += 1;
        }
    }

    // A scalar where the path goes on: the path is not in this text.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.deserialize(d)
    }
}

/// The value the path ends at: every kind of value is refused, which is the point.
struct Found;

impl<'de> Visitor<'de> for Found {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("nothing: this is the value looked for")
    }
}

/// A map key as text, whatever its type in the file (a YAML key may be a number).
struct KeyText(String);

impl<'de> de::Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeyText, D::Error> {
        struct Text;
        impl Visitor<'_> for Text {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText(String::new()))
            }
        }
        d.deserialize_any(Text)
    }
}
