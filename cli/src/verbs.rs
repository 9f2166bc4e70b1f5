//! The seeds' per-instance verbs: `signal`, `send` (IPC broadcast and unicast), `disable` and
//! `enable` (rotation), `stats` and `compare`.

use serde_json::json;

use crate::args::{AppArg, SendArgs, SignalArgs};
use crate::commands::{Ctx, acted, list_instances};
use crate::error::UsageError;
use crate::failover::call;
use crate::output;
use pmcluster_proto::v1 as pb;

/// `signal APP [--instance N] SIGNAL`.
pub async fn signal(args: SignalArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    // Refused here with the coordinator's words, before any connection.
    let name =
        pmcluster_spec::signal::parse(&args.signal).map_err(|e| UsageError::new(e.to_string()))?;
    let mut conn = ctx.connect().await?;
    let req = pb::SignalRequest {
        app: args.app.clone(),
        index: args.instance,
        signal: name.clone(),
    };
    let reply = call!(conn, signal, req).await?;
    report(ctx, &args.app, &name, reply)
}

/// `send APP [--instance N] MESSAGE`.
pub async fn send(args: SendArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    pmcluster_spec::signal::check_message(&args.message)
        .map_err(|e| UsageError::new(e.to_string()))?;
    let mut conn = ctx.connect().await?;
    let req = pb::SendMessageRequest {
        app: args.app.clone(),
        index: args.instance,
        message: args.message,
    };
    let reply = call!(conn, send_message, req).await?;
    report(ctx, &args.app, "message", reply)
}

/// One line per instance; exits 1 unless every instance got it.
fn report(
    ctx: &mut Ctx<'_>,
    app: &str,
    what: &str,
    reply: pb::DeliveryReply,
) -> anyhow::Result<()> {
    let missed = reply.deliveries.iter().filter(|d| !d.delivered).count();
    let total = reply.deliveries.len();
    if ctx.structured() {
        let rows: Vec<_> = reply
            .deliveries
            .iter()
            .map(|d| {
                json!({
                    "index": d.index, "instance_id": d.instance_id, "node": d.node,
                    "delivered": d.delivered, "error": d.error, "unconfirmed": d.unconfirmed,
                })
            })
            .collect();
        ctx.value(&json!({"app": app, "sent": what, "deliveries": rows}))?;
    } else {
        for d in &reply.deliveries {
            let node = if d.node.is_empty() { "-" } else { &d.node };
            let line = if d.delivered {
                format!("{app}[{}] on {node}: {what} delivered", d.index)
            } else if d.unconfirmed {
                // A trial stopped an agent (SIGSTOP): "not delivered", then the signal arrived
                // once it ran again, and a retry would have sent it twice.
                format!(
                    "{app}[{}] on {node}: sent, not confirmed: {}; its agent may still carry it \
                     out, so look (pmcluster list, its logs) before sending it again",
                    d.index, d.error
                )
            } else {
                format!("{app}[{}] on {node}: not delivered: {}", d.index, d.error)
            };
            ctx.line(&line)?;
        }
    }
    // A signal is named (SIGTERM), a message is not shown: "the message".
    let what = match what {
        "message" => "the message",
        signal => signal,
    };
    if total == 0 {
        anyhow::bail!("{app} has no running instance to send {what} to");
    }
    if missed > 0 {
        let of = crate::commands::plural(u32::try_from(total).unwrap_or(u32::MAX), "instance");
        let unsure = reply.deliveries.iter().filter(|d| d.unconfirmed).count();
        if unsure > 0 {
            anyhow::bail!(
                "{missed} of {of} of {app} did not confirm {what} ({unsure} may still get it)"
            );
        }
        anyhow::bail!("{missed} of {of} of {app} did not get {what}");
    }
    Ok(())
}

/// `disable APP --instance N` (`enable` false) and `enable APP [--instance N]`.
pub async fn rotation(
    app: String,
    index: Option<u32>,
    enable: bool,
    ctx: &mut Ctx<'_>,
) -> anyhow::Result<()> {
    let mut conn = ctx.connect().await?;
    let target = pb::InstanceTarget {
        app: app.clone(),
        index,
        rolling: false,
    };
    let (reply, verb, already) = if enable {
        (
            call!(conn, enable, target).await?,
            "enabled",
            "not disabled",
        )
    } else {
        (
            call!(conn, disable, target).await?,
            "disabled",
            "already disabled",
        )
    };
    if ctx.structured() {
        return ctx.value(&json!({
            "app": app, "action": verb, "index": index, "affected": reply.affected,
            "changed": reply.changed,
        }));
    }
    ctx.line(&acted(verb, already, &app, index, &reply))
}

/// `stats APP` (`compare` false) and `compare APP`: from the instance list, as `list` reads it.
pub async fn stats(args: AppArg, compare: bool, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let mut conn = ctx.connect().await?;
    // The app must exist: an unknown one is NOT_FOUND, not an empty block.
    let req = pb::GetAppRequest {
        name: args.app.clone(),
    };
    call!(conn, get_app, req).await?;
    // A removed instance's process still ending is no longer one of the app's, and one a
    // quarantined node holds is none of this cluster's.
    let mut instances = list_instances(&mut conn, &args.app).await?;
    instances.retain(|i| !i.removed && !i.unmanaged);
    let now = output::now_ms();
    match (compare, ctx.structured()) {
        (false, false) => ctx.text(&output::stats_text(&args.app, &instances, now)),
        (false, true) => ctx.value(&output::stats_json(&args.app, &instances, now)),
        (true, false) => ctx.text(&output::compare_text(&instances, now)),
        (true, true) => ctx.value(&output::compare_json(&instances, now)),
    }
}
