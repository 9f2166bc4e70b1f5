//! `apply -f FILE` and `export`: apps from and to config files.

use pmcluster_spec::AppSpec;
use pmcluster_spec::app::ENV_HIDDEN;
use pmcluster_spec::config::Format;
use serde_json::{Value, json};

use super::{Ctx, apply_json, apply_one, apply_result, count_phrase, list_apps};
use crate::args::{ApplyArgs, ExportArgs, FileFormat, OutputFormat};
use crate::error::{Class, UsageError};
use crate::failover::call;
use crate::output;
use crate::wait;
use pmcluster_proto::v1 as pb;

/// `apply -f FILE`: every app of the file is validated before any is sent; one with a bad value
/// is refused and the others applied, as the coordinator's refusals are.
pub async fn apply(args: ApplyArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let text = crate::import::read_config(&args.file)?;
    let format = match args.format {
        Some(FileFormat::Json) => Format::Json,
        Some(FileFormat::Yaml) => Format::Yaml,
        Some(FileFormat::Toml) => Format::Toml,
        None => Format::from_path(&args.file),
    };
    let source = if args.file == "-" {
        "<stdin>"
    } else {
        args.file.as_str()
    };
    let apps = crate::import::config_apps_each(&text, format, &args.file, source)
        .map_err(|e| read_as_json(e, &args))?;
    // No app valid (a file of one bad app, say): its errors, without asking the coordinator.
    if apps.iter().all(|(_, spec)| spec.is_err()) {
        let mut errors = apps.into_iter().filter_map(|(_, spec)| spec.err());
        let first = errors
            .next()
            .unwrap_or_else(|| UsageError::new(format!("{source}: the file defines no app")));
        for later in errors {
            eprintln!("error: {later}");
        }
        return Err(first.into());
    }
    let valid: Vec<AppSpec> = (apps.iter())
        .filter_map(|(_, spec)| spec.as_ref().ok().cloned())
        .collect();
    for warning in crate::import::apply_warnings(&valid) {
        eprintln!("warning: {warning}");
    }
    let mut conn = ctx.connect().await?;
    let apps = match config_dir(&args.file).filter(|_| conn.on_this_host()) {
        Some(dir) => {
            let mut beside = Vec::with_capacity(apps.len());
            for (label, spec) in apps {
                let spec = match spec {
                    Ok(spec) => Ok(beside_file(&mut conn, spec, &dir).await?),
                    Err(e) => Err(e),
                };
                beside.push((label, spec));
            }
            beside
        }
        None => apps,
    };
    let mut results = Vec::with_capacity(apps.len());
    let mut goals = Vec::new();
    // As `kubectl apply`: an app refused (a token's app patterns, a bad value) does not keep the
    // others from being applied; the first refusal is the command's error at the end.
    let mut refused: Option<anyhow::Error> = None;
    let mut not_applied = Vec::new();
    for (n, (label, spec)) in apps.iter().enumerate() {
        // A bad value found here refuses its app as the coordinator's refusal would.
        let sent = match spec {
            Ok(spec) => apply_one(&mut conn, spec).await,
            Err(e) => Err(UsageError::new(e.0.clone()).into()),
        };
        let reply = match sent {
            Ok(reply) => reply,
            // Anything but a refusal of this app (a lost coordinator, a timeout whose write may
            // have landed) ends the command here, saying what was applied.
            Err(e) if !Class::of(&e).refusal() => {
                let done: Vec<&str> = (apps[..n].iter())
                    .map(|(label, _)| label.as_str())
                    .filter(|label| !not_applied.contains(label))
                    .collect();
                return Err(e.context(match done.is_empty() {
                    true => format!("applying app {label:?}"),
                    false => format!(
                        "applying app {label:?} (already applied: {})",
                        done.join(", ")
                    ),
                }));
            }
            Err(e) => {
                // A value refused here names its file and app already.
                let e = match spec {
                    Ok(_) => e.context(format!("applying app {label:?}")),
                    Err(_) => e,
                };
                // The first is the command's error at the end; later ones are said as they come.
                if ctx.structured() && apps.len() > 1 {
                    results.push(json!({"app": label, "error": format!("{e:#}")}));
                } else if refused.is_some() {
                    eprintln!("error: {e:#}");
                }
                not_applied.push(label.as_str());
                refused.get_or_insert(e);
                continue;
            }
        };
        let app = reply.app.clone().unwrap_or_default();
        // Only a valid app was sent and answered.
        let Ok(spec) = spec else { continue };
        if args.wait.wait {
            // With the place of its result, which a refused app before it shifts.
            let goal = wait::Goal {
                version: reply.deployment.as_ref().map_or(0, |d| d.to_version),
                rollout: reply.deployment.as_ref().map(|d| d.id),
                created: reply.created,
                ..wait::goal_of(&spec.name, &app, None)
            };
            goals.push((results.len(), goal));
        }
        if ctx.structured() {
            results.push(apply_json(&spec.name, &reply));
            continue;
        }
        let result = apply_result(&reply);
        let line = if result == "unchanged" {
            format!("{}: unchanged (version {})", spec.name, app.version)
        } else {
            format!(
                "{}: {result} (version {}, {})",
                spec.name,
                app.version,
                count_phrase(&app)
            )
        };
        ctx.line(&line)?;
        if let Some(d) = reply.deployment.as_ref().filter(|_| !args.wait.wait) {
            ctx.line(&format!(
                "{}: rolling out version {} in waves; follow it with: pmcluster rollout status {} --wait",
                spec.name, d.to_version, spec.name
            ))?;
        }
    }
    // --wait: each app in turn, within one --wait-timeout for all.
    let deadline = tokio::time::Instant::now() + args.wait.wait_timeout;
    let mut outcome = Ok(());
    for (n, goal) in &goals {
        let (waited, result) =
            wait::wait_for(&mut conn, ctx, goal, deadline, args.wait.wait_timeout).await?;
        if let Some(value) = results.get_mut(*n) {
            wait::refresh_deployment(&mut conn, goal, value).await;
        }
        if let Some(object) = results.get_mut(*n).and_then(Value::as_object_mut) {
            object.insert("wait".to_string(), waited);
        }
        if result.is_err() {
            outcome = result;
            break;
        }
    }
    // A single app refused prints no empty list before its error.
    if ctx.structured() && !(results.is_empty() && refused.is_some()) {
        ctx.value(&Value::Array(results))?;
    }
    let Some(e) = refused else {
        return outcome;
    };
    if apps.len() == not_applied.len() {
        return Err(e);
    }
    let summary = format!(
        "{} of {} apps not applied ({}), the others applied",
        not_applied.len(),
        apps.len(),
        not_applied.join(", ")
    );
    match outcome {
        // A wait that failed for an app that was applied is the graver news (and its exit code).
        Err(waited) => Err(waited.context(format!("{summary}; the first refusal: {e:#}"))),
        Ok(()) => Err(e.context(format!("{summary}; the first refusal"))),
    }
}

/// A file that could not be read, named neither `.json` nor `.yaml`/`.yml`/`.toml` and so read
/// as JSON: the error says so (a trial's TOML in `apps.txt` read "expected ident"). Standard
/// input too: a trial's `cat apps.yml | pmcluster apply -f -` read "expected ident".
fn read_as_json(e: UsageError, args: &ApplyArgs) -> UsageError {
    let lower = args.file.to_ascii_lowercase();
    let named = [".json", ".yaml", ".yml", ".toml"]
        .iter()
        .any(|ext| lower.ends_with(ext));
    if args.format.is_some() || named {
        return e;
    }
    if args.file == "-" {
        return UsageError::new(format!(
            "{} (standard input is read as JSON; give --format yaml or --format toml for \
             another format)",
            e.0
        ));
    }
    UsageError::new(format!(
        "{} (read as JSON: the name ends in none of .json, .yaml, .yml, .toml; give --format \
         yaml or --format toml for another format)",
        e.0
    ))
}

/// [`super::start::beside_file`] of an app of the file, with its notes on stderr; but an app
/// stored just as the file has it (applied by an older CLI, before apps ran beside their file)
/// is kept as it is, so that applying the same file again changes nothing.
pub(crate) async fn beside_file(
    conn: &mut crate::failover::Conn,
    spec: AppSpec,
    dir: &std::path::Path,
) -> anyhow::Result<AppSpec> {
    let (beside, notes) = super::start::beside_file(spec.clone(), dir);
    if beside == spec {
        return Ok(spec);
    }
    if super::overwrite::stored(conn, &spec.name).await?.as_ref() == Some(&spec) {
        return Ok(spec);
    }
    for note in notes {
        eprintln!("note: {note}");
    }
    Ok(beside)
}

/// The directory of a config file given by its path (not `-`), with links and `..` resolved, so
/// that one file gives one `cwd` whichever way it is named.
pub(crate) fn config_dir(file: &str) -> Option<std::path::PathBuf> {
    if file == "-" {
        return None;
    }
    let path = std::path::Path::new(file);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(std::path::Path::new("."));
    std::fs::canonicalize(dir).ok()
}

/// `export [APP]`: the apps in the names and shapes of a config file, as `{"apps": [...]}`, which
/// `apply -f` takes back (a backup of the apps, or a copy for another cluster).
pub async fn export(args: ExportArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let format = match ctx.output {
        OutputFormat::Table | OutputFormat::Json => OutputFormat::Json,
        OutputFormat::Yaml => OutputFormat::Yaml,
        OutputFormat::Nginx | OutputFormat::Haproxy => {
            return Err(UsageError::new("-o: export writes json or yaml").into());
        }
    };
    let mut conn = ctx.connect().await?;
    let apps = match &args.app {
        Some(name) => vec![call!(conn, get_app, pb::GetAppRequest { name: name.clone() }).await?],
        None => list_apps(&mut conn).await?,
    };
    let mut configs = Vec::with_capacity(apps.len());
    for app in apps {
        let spec = AppSpec::try_from(app.spec.unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("the coordinator sent an invalid spec: {e}"))?;
        // A backup that holds placeholders for values is no backup: refused, not written.
        let hidden: Vec<&str> = (spec.env.iter())
            .filter(|(k, v)| v.as_str() == ENV_HIDDEN && !spec.secret_env.contains(*k))
            .map(|(k, _)| k.as_str())
            .collect();
        if !hidden.is_empty() {
            anyhow::bail!(
                "export: the coordinator hid the env values of {} ({}) from this token (the \
                 read role sees none, nor does an operate token for other apps): the file would \
                 hold {ENV_HIDDEN} in their place; export with a token that may operate the app",
                spec.name,
                hidden.join(", ")
            );
        }
        configs.push(pmcluster_spec::config::to_config(&spec));
    }
    ctx.text(&output::document(&json!({ "apps": configs }), format)?)
}
