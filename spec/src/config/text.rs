//! From a config file's text to a tree, and errors placed back in the text: the format's own
//! parser (with its syntax errors in plain words, and TOML's nan and inf refused by field), the
//! strict parse's error naming the app and field, and the line and column of a field's value.

use super::{Format, position};
use crate::{SpecError, echo};

/// The tree of `text`, and the error of its first nan or infinite number (TOML has them; the tree
/// holds null there), which the caller reports unless the field is one no app has.
pub(super) fn parse_tree(
    text: &str,
    format: Format,
) -> Result<(serde_json::Value, Option<SpecError>), SpecError> {
    // The parsers' own words for these ("EOF while parsing a value") say little to a user.
    if text.trim().is_empty() {
        return Err(syntax_error(
            "the file is empty: write one app, or {\"apps\": [...]}",
        ));
    }
    Ok(match format {
        Format::Json => (
            json_tree(text).map_err(|e| syntax_error(&e.to_string()))?,
            None,
        ),
        Format::Yaml => (
            serde_saphyr::from_str(text).map_err(|e| {
                // Advice to the programmer who calls the parser, not to the file's author.
                let text = e.to_string();
                let text = text
                    .replace(", set DuplicateKeyPolicy in Options if acceptable", "")
                    .replace(
                        " rejected by the configured policy",
                        " has no meaning here; write a number",
                    )
                    .replace(
                        "; use from_str_multiple or from_str_multiple_with_options",
                        " (a `---` line): a config file is one document; list every app under \
                         `apps:`",
                    );
                syntax_error(&text)
            })?,
            None,
        ),
        Format::Toml => {
            let tree = toml::from_str(text).map_err(|e| syntax_error(&e.to_string()))?;
            // TOML's nan and inf have no JSON form: the tree holds null for them, which reads as
            // a field left out, so `instances = nan` started one instance without a word.
            let refused = toml::from_str::<toml::Value>(text)
                .ok()
                .and_then(|v| non_finite(&v))
                .map(|field| {
                    let e = SpecError::new(
                        &field,
                        "is not a finite number (nan and inf have no meaning here); write a \
                         number",
                    );
                    at_value(e, Some((text, format)), None)
                });
            (tree, refused)
        }
    })
}

/// `text` without the byte-order mark that editors on Windows put before UTF-8, which JSON
/// parsers refuse as the first value ("expected value at line 1 column 1"). Taken off where a
/// file's text comes in, so that positions found in it later count from the same place.
pub fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// The tree of a JSON text, refusing a key given twice in one object (see [`NoTwice`]).
pub fn json_tree(text: &str) -> Result<serde_json::Value, serde_json::Error> {
    serde_json::from_str::<NoTwice>(text).map(|t| t.0)
}

/// A JSON tree read with every object's keys checked: a key given twice is an error, as YAML's
/// and TOML's parsers make it, where `serde_json::Value` keeps the last silently
/// (`{"instances": 1, "instances": 3}` started three).
struct NoTwice(serde_json::Value);

impl<'de> serde::Deserialize<'de> for NoTwice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NoTwice, D::Error> {
        d.deserialize_any(NoTwiceVisitor).map(NoTwice)
    }
}

struct NoTwiceVisitor;

impl<'de> serde::de::Visitor<'de> for NoTwiceVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let NoTwice(value) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "the key {} is given twice",
                    echo(&key)
                )));
            }
            out.insert(key, value);
        }
        Ok(serde_json::Value::Object(out))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(NoTwice(value)) = seq.next_element()? {
            out.push(value);
        }
        Ok(serde_json::Value::Array(out))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // JSON text has no nan or inf, so this is always a number.
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
}

/// The field path (as [`SpecError`] writes it) of the first nan or infinite float in `v`.
fn non_finite(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::Float(f) if !f.is_finite() => Some(String::new()),
        toml::Value::Table(t) => t.iter().find_map(|(k, v)| {
            let rest = non_finite(v)?;
            let key = if position::steps(k).is_some_and(|s| s.len() == 1) {
                k.clone()
            } else {
                echo(k)
            };
            Some(match rest.as_str() {
                "" => key,
                r if r.starts_with('[') => format!("{key}{r}"),
                r => format!("{key}.{r}"),
            })
        }),
        toml::Value::Array(a) => a.iter().enumerate().find_map(|(i, v)| {
            let rest = non_finite(v)?;
            Some(match rest.as_str() {
                "" => format!("[{i}]"),
                r if r.starts_with('[') => format!("[{i}]{r}"),
                r => format!("[{i}].{r}"),
            })
        }),
        _ => None,
    }
}

/// `e`, of the app at `apps[index]` (or the only one), with the line and column of its field's
/// value when `source` is the text and its parser tells them.
pub(super) fn at_value(
    e: SpecError,
    source: Option<(&str, Format)>,
    index: Option<usize>,
) -> SpecError {
    use position::{Step, steps, value_at};
    let Some((text, format)) = source else {
        return e;
    };
    let mut path: Vec<Step> = index.map_or(Vec::new(), |i| {
        vec![Step::Key("apps".into()), Step::Index(i)]
    });
    let Some(at) = steps(&e.field).and_then(|steps| {
        path.extend(steps);
        value_at(text, format, &path)
    }) else {
        return e;
    };
    let message = format!("{} (line {}, column {})", e.message, at.0, at.1);
    SpecError { message, ..e }
}

pub(super) fn syntax_error(msg: &str) -> SpecError {
    SpecError::new("file", msg.to_string())
}

/// The strict parse of a file's tree, keeping the path to what it refuses.
pub(super) fn strict<T: serde::de::DeserializeOwned>(
    tree: &serde_json::Value,
) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
    serde_path_to_error::deserialize(tree)
}

/// A line and column (1-based) in a file's text.
pub(super) type Position = (u64, u64);

/// The strict parse's error, naming the app (by its name, else its place in `apps`) and the field
/// at fault, and where the format tells it (`located`, asked only here) the line and column.
pub(super) fn field_error(
    tree: &serde_json::Value,
    err: serde_path_to_error::Error<serde_json::Error>,
    located: impl FnOnce() -> Option<(String, Position)>,
) -> SpecError {
    use serde_path_to_error::Segment;
    let path = err.path().to_string();
    let segments: Vec<&Segment> = err.path().iter().collect();
    // `{"apps": [...]}`: the app is the element of `apps` the path goes through.
    let (app, rest) = match segments.as_slice() {
        [Segment::Map { key }, Segment::Seq { index }, rest @ ..] if key == "apps" => {
            match tree["apps"][*index]["name"].as_str() {
                Some(name) => (Some(name.to_string()), rest),
                None => (None, &segments[..]),
            }
        }
        [Segment::Map { key }, ..] if key == "apps" => (None, &segments[..]),
        all => (tree["name"].as_str().map(str::to_string), all),
    };
    let mut field = String::new();
    for segment in rest {
        match segment {
            Segment::Seq { index } => field.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !field.is_empty() {
                    field.push('.');
                }
                // A key is the user's text (an env name): quoted when it would not print as it is.
                if key.chars().all(|c| c.is_ascii_graphic()) {
                    field.push_str(key);
                } else {
                    field.push_str(&echo(key));
                }
            }
            Segment::Enum { .. } => {}
            Segment::Unknown => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push('?');
            }
        }
    }
    if field.is_empty() {
        field = "file".to_string();
    }
    let mut message = plain_types(&err.inner().to_string());
    // The native parse must fail at the same place for its position to be this error's.
    if let Some((at, (line, column))) = located()
        && at == path
    {
        message.push_str(&format!(" (line {line}, column {column})"));
    }
    let e = SpecError::new(&field, message);
    match app {
        Some(name) => e.in_app(&name),
        None => e,
    }
}

/// serde's messages name Rust's integer types (`expected u32`): say what they hold instead.
fn plain_types(message: &str) -> String {
    const TYPES: [(&str, &str); 8] = [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number 0 or more"),
        (
            "expected i32",
            "expected a whole number from -2147483648 to 2147483647",
        ),
        ("expected i64", "expected a whole number"),
        ("expected f32", "expected a number"),
        ("expected f64", "expected a number"),
    ];
    let mut out = message.to_string();
    for (rust, plain) in TYPES {
        // Whole words only: `expected u32` and not a prefix of a longer name.
        let mut from = 0;
        while let Some(at) = out[from..].find(rust).map(|i| i + from) {
            let end = at + rust.len();
            if out[end..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                from = end;
                continue;
            }
            out.replace_range(at..end, plain);
            from = at + plain.len();
        }
    }
    out
}
