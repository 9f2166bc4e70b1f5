//! Secret env values: how a config file marks one (`"env": {"DB_PASS": {"secret": "hunter2"}}`),
//! and how every output shows one ([`SECRET_SHOWN`]). The spec keeps the value in `env` (the
//! instance needs it) and the key in `secret_env`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::app::{ENV_HIDDEN, SECRET_SHOWN};
use crate::config::Scalar;
use crate::{AppSpec, SpecError};

/// One env value of a config file: plain, or `{"secret": VALUE}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "expected a string, a number, a boolean or {\"secret\": VALUE}"
)]
pub enum RawEnvValue {
    Secret(SecretValue),
    Plain(Scalar),
}

/// `{"secret": VALUE}`, nothing else: a typo beside it must not pass as a plain value, nor a list
/// (`[VALUE]`, which serde would take as the struct's fields in order) as a secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "BTreeMap<String, Scalar>")]
pub struct SecretValue {
    pub secret: Scalar,
}

impl TryFrom<BTreeMap<String, Scalar>> for SecretValue {
    type Error = &'static str;

    fn try_from(mut map: BTreeMap<String, Scalar>) -> Result<SecretValue, Self::Error> {
        match map.remove("secret") {
            Some(secret) if map.is_empty() => Ok(SecretValue { secret }),
            _ => Err("expected {\"secret\": VALUE}"),
        }
    }
}

/// A config file's env: the values, and the keys whose values are secret.
pub fn split_env(
    raw: BTreeMap<String, RawEnvValue>,
) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut env = BTreeMap::new();
    let mut secret = BTreeSet::new();
    for (key, value) in raw {
        let text = match value {
            RawEnvValue::Secret(SecretValue { secret: v }) => {
                secret.insert(key.clone());
                v.to_text()
            }
            RawEnvValue::Plain(v) => v.to_text(),
        };
        env.insert(key, text);
    }
    (env, secret)
}

/// `env` as a config file writes it, each secret as `{"secret": VALUE}`, so that it reads back
/// as a secret. With `reveal` false the value itself is [`SECRET_SHOWN`]: for showing.
pub fn env_config(
    env: &BTreeMap<String, String>,
    secret: &BTreeSet<String>,
    reveal: bool,
) -> serde_json::Value {
    use serde_json::json;
    let map: serde_json::Map<String, serde_json::Value> = env
        .iter()
        .map(|(k, v)| {
            let value = match (secret.contains(k), reveal) {
                (false, _) => json!(v),
                (true, true) => json!({ "secret": v }),
                (true, false) => json!({ "secret": SECRET_SHOWN }),
            };
            (k.clone(), value)
        })
        .collect();
    serde_json::Value::Object(map)
}

/// What an output shows for the value of `key`.
pub fn shown<'a>(key: &str, value: &'a str, secret: &[String]) -> &'a str {
    if secret.iter().any(|s| s == key) {
        SECRET_SHOWN
    } else {
        value
    }
}

impl AppSpec {
    /// This spec as the API shows it: every secret value replaced by [`SECRET_SHOWN`], and with
    /// `env_values` false every other value by [`ENV_HIDDEN`].
    pub fn shown(&self, env_values: bool) -> AppSpec {
        let mut shown = self.clone();
        for (key, value) in &mut shown.env {
            if self.secret_env.contains(key) {
                *value = SECRET_SHOWN.to_string();
            } else if !env_values {
                *value = ENV_HIDDEN.to_string();
            }
        }
        shown
    }

    /// Puts back the stored value of every secret that `self` sends as [`SECRET_SHOWN`] (the
    /// spec was fetched, edited and sent back), and of every value it sends as [`ENV_HIDDEN`]
    /// (fetched under a token that may not read env values: the text is no value anyone set).
    /// Names the first key that has no stored value to stand for.
    pub fn keep_secrets_of(&mut self, stored: Option<&AppSpec>) -> Result<(), SpecError> {
        for (key, value) in &mut self.env {
            let secret = self.secret_env.contains(key);
            let (placeholder, what) = match value.as_str() {
                SECRET_SHOWN if secret => (SECRET_SHOWN, "a stored secret"),
                ENV_HIDDEN if !secret => (
                    ENV_HIDDEN,
                    "a value hidden from a token of the read role (as in an `export` made with one)",
                ),
                _ => continue,
            };
            let kept = stored
                .filter(|old| old.secret_env.contains(key) == secret)
                .and_then(|old| old.env.get(key));
            match kept {
                Some(v) => v.clone_into(value),
                None => {
                    return Err(SpecError::new(
                        &format!("env.{key}"),
                        format!(
                            "{placeholder} stands for {what}, and app {:?} has none for {key}; \
                             give the value itself",
                            self.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Format, parse_apps, to_config};

    #[test]
    fn secrets_parse_from_every_format_and_show_masked() {
        let json = r#"{"name": "w", "script": "x", "env": {"DB_PASS": {"secret": "hunter2"}, "MODE": "prod", "N": {"secret": 7}}}"#;
        let yaml = "name: w\nscript: x\nenv:\n  DB_PASS:\n    secret: hunter2\n  MODE: prod\n  N:\n    secret: 7\n";
        let toml = "name = \"w\"\nscript = \"x\"\n[env]\nMODE = \"prod\"\nDB_PASS = { secret = \"hunter2\" }\nN = { secret = 7 }\n";
        for (text, format) in [
            (json, Format::Json),
            (yaml, Format::Yaml),
            (toml, Format::Toml),
        ] {
            let specs = parse_apps(text, format).expect("parses");
            let s = &specs[0];
            assert_eq!(
                s.env.get("DB_PASS").map(String::as_str),
                Some("hunter2"),
                "{format:?}"
            );
            assert_eq!(s.env.get("N").map(String::as_str), Some("7"), "{format:?}");
            assert_eq!(
                s.secret_env.iter().map(String::as_str).collect::<Vec<_>>(),
                ["DB_PASS", "N"],
                "{format:?}"
            );
            // The config form reads back to the same spec (reload --set relies on it).
            let again = parse_apps(&to_config(s).to_string(), Format::Json).expect("reads back");
            assert_eq!(&again[0], s);
            let masked = env_config(&s.env, &s.secret_env, false).to_string();
            assert!(!masked.contains("hunter2"), "{masked}");
            assert!(
                masked.contains(r#""DB_PASS":{"secret":"<secret>"}"#),
                "{masked}"
            );
            assert!(masked.contains(r#""MODE":"prod""#), "{masked}");
        }
        let secret = vec!["K".to_string()];
        assert_eq!(shown("K", "v", &secret), SECRET_SHOWN);
        assert_eq!(shown("L", "v", &secret), "v");
    }

    #[test]
    fn a_secret_must_name_an_env_key() {
        let mut spec = crate::AppSpec::new("w", "x", &[]);
        spec.secret_env.insert("NOPE".into());
        let e = spec.validate().expect_err("refused");
        assert_eq!(e.field, "secret_env");
        assert!(
            e.message.contains("\"NOPE\" is not a key of env"),
            "{}",
            e.message
        );
        for bad in [
            r#"{"name": "w", "script": "x", "env": {"A": {"secret": "v", "extra": 1}}}"#,
            r#"{"name": "w", "script": "x", "env": {"A": {"secrte": "v"}}}"#,
            // Not a secret in a list's clothing.
            r#"{"name": "w", "script": "x", "env": {"A": [1]}}"#,
        ] {
            let e = parse_apps(bad, Format::Json).expect_err(bad);
            assert_eq!(e.field, "env.A", "{bad}");
        }
    }

    #[test]
    fn shown_specs_hide_secrets_and_a_sent_back_placeholder_keeps_the_stored_value() {
        use crate::AppSpec;
        use crate::app::ENV_HIDDEN;
        let mut stored = AppSpec::new("w", "x", &[]);
        stored.env.insert("DB_PASS".into(), "hunter2".into());
        stored.env.insert("MODE".into(), "prod".into());
        stored.secret_env.insert("DB_PASS".into());
        let shown = stored.shown(true);
        assert_eq!(shown.env["DB_PASS"], SECRET_SHOWN);
        assert_eq!(shown.env["MODE"], "prod");
        let hidden = stored.shown(false);
        assert_eq!(hidden.env["MODE"], ENV_HIDDEN);
        assert_eq!(hidden.env["DB_PASS"], SECRET_SHOWN);

        // Fetched, edited, sent back: the secret is the stored one again.
        let mut edited = shown.clone();
        edited.env.insert("MODE".into(), "dev".into());
        edited.keep_secrets_of(Some(&stored)).expect("kept");
        assert_eq!(edited.env["DB_PASS"], "hunter2");
        assert_eq!(edited.env["MODE"], "dev");
        // A new value replaces it.
        let mut changed = shown.clone();
        changed.env.insert("DB_PASS".into(), "new".into());
        changed.keep_secrets_of(Some(&stored)).expect("kept");
        assert_eq!(changed.env["DB_PASS"], "new");
        // The placeholder with nothing stored is refused, naming the key.
        let mut fresh = shown;
        let err = fresh.keep_secrets_of(None).expect_err("nothing to keep");
        assert_eq!(err.field, "env.DB_PASS");
        assert!(!err.to_string().contains("  "), "{err}");

        // What a read-role token was shown, sent back (an `export` made with it): the stored
        // values, not the placeholder's text; with no stored value, refused, naming the key.
        let mut exported = hidden.clone();
        exported.keep_secrets_of(Some(&stored)).expect("kept");
        assert_eq!(exported, stored);
        let mut elsewhere = hidden;
        elsewhere.env.remove("DB_PASS");
        let err = elsewhere
            .keep_secrets_of(None)
            .expect_err("nothing to keep");
        assert_eq!(err.field, "env.MODE");
        assert!(err.to_string().contains("read role"), "{err}");
        // A secret of that name is no stand-in for a plain value, nor the other way round.
        let mut plain = stored.clone();
        plain.secret_env.clear();
        let mut sent = stored.shown(false);
        sent.secret_env.clear();
        sent.env.insert("DB_PASS".into(), ENV_HIDDEN.into());
        let err = sent
            .keep_secrets_of(Some(&stored))
            .expect_err("a secret stands for no plain value");
        assert_eq!(err.field, "env.DB_PASS");
        assert!(plain.clone().keep_secrets_of(Some(&plain)).is_ok());
    }
}
