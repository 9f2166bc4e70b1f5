//! `endpoints APP`: where an app's instances serve, once or watched, as a list or a proxy
//! config.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use pmcluster_proto::v1 as pb;

use crate::args::{EndpointsArgs, OutputFormat};
use crate::commands::Ctx;
use crate::failover::{call, open};
use crate::output;

/// `endpoints APP [-o json|yaml|nginx|haproxy [--balance B]] [--watch --file F [--exec CMD]]`.
pub async fn endpoints(args: EndpointsArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let balance = crate::validate::check_balance(args.balance, ctx.output)?;
    let mut conn = ctx.connect().await?;
    let req = pb::WatchEndpointsRequest {
        app: args.app.clone(),
    };
    let mut stream = open!(conn, watch_endpoints, req).await?;
    let req = pb::GetAppRequest {
        name: args.app.clone(),
    };
    if let Ok(app) = call!(conn, get_app, req).await
        && app.spec.is_some_and(|s| s.port.is_empty())
    {
        eprintln!("{}", output::no_port_note(&args.app));
    }
    let format = ctx.output;
    let watch_stdout = args.watch && args.file.is_none();
    let render = move |e: &pb::Endpoints| -> anyhow::Result<String> {
        Ok(match format {
            // Watching to standard output, each change is one more YAML document.
            OutputFormat::Yaml if watch_stdout => {
                output::stream_item(&output::endpoints_json(e), format)?
            }
            OutputFormat::Json | OutputFormat::Yaml => {
                output::document(&output::endpoints_json(e), format)?
            }
            OutputFormat::Nginx => output::endpoints_nginx(e, balance),
            OutputFormat::Haproxy => output::endpoints_haproxy(e, balance),
            OutputFormat::Table => output::endpoints_plain(e),
        })
    };
    if !args.watch {
        let first = stream
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("the coordinator sent no endpoints"))?;
        let e = first.map_err(crate::error::ApiError::from)?;
        let text = render(&e)?;
        return match &args.file {
            Some(path) => write_atomic(Path::new(path), &text),
            None => ctx.text(&text),
        };
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut last: Option<String> = None;
    loop {
        // A watcher runs for days: when the coordinator goes away (restart, failover), it
        // reconnects and carries on; the file keeps its last content meanwhile.
        let next = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            next = stream.next() => next,
        };
        let e = match next {
            Some(Ok(e)) => e,
            other => {
                let why = match &other {
                    Some(Err(status)) => {
                        conn.lost(status);
                        status.message().to_string()
                    }
                    _ => "stream ended".to_string(),
                };
                eprintln!(
                    "{}: lost the coordinator at {} ({why}); reconnecting",
                    args.app,
                    conn.url()
                );
                // A leader named by the refusal is dialled at once; otherwise once a second.
                let mut wait =
                    !matches!(&other, Some(Err(s)) if pmcluster_proto::leader_hint(s).is_some());
                loop {
                    if wait {
                        tokio::select! {
                            _ = &mut ctrl_c => return Ok(()),
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                    wait = true;
                    let req = pb::WatchEndpointsRequest {
                        app: args.app.clone(),
                    };
                    if let Ok(s) = open!(conn, watch_endpoints, req).await {
                        stream = s;
                        break;
                    }
                }
                continue;
            }
        };
        let text = render(&e)?;
        if last.as_deref() == Some(text.as_str()) {
            continue;
        }
        match &args.file {
            Some(path) => write_atomic(Path::new(path), &text)?,
            None => ctx.text(&text)?,
        }
        last = Some(text);
        if let Some(cmd) = &args.exec {
            let status = tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(cmd)
                .status()
                .await
                .with_context(|| format!("running --exec {cmd:?}"))?;
            if !status.success() {
                eprintln!("warning: --exec {cmd:?} exited with {status}");
            }
        }
        let count = u32::try_from(e.endpoints.len()).unwrap_or(u32::MAX);
        eprintln!(
            "{}: {}",
            args.app,
            crate::commands::plural(count, "endpoint")
        );
    }
}

/// Writes through a temporary file and a rename, so a reader never sees half a config.
fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp-pmcluster");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
