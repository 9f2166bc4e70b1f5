//! `pmcluster status`: which coordinator leads, and whether the store is healthy. Every
//! coordinator answers it, a standby too, so it asks every one of `--coordinator` (at once)
//! rather than following leader hints, and lists each: one it could not reach says so, even
//! when another answered for the cluster.

use pmcluster_proto::v1 as pb;
use pmcluster_proto::v1::coordination_client::CoordinationClient;
use serde_json::Value;
use tonic::transport::ClientTlsConfig;

use crate::client::{CONNECT_TIMEOUT, Dial, dial_channel, request, tls_hint, unary};
use crate::commands::Ctx;
use crate::error::UsageError;
use crate::output::{self, Asked};

pub async fn status(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let tls = ctx.creds.tls.clone();
    let asks = ctx.urls.iter().map(|url| ask(url, tls.as_ref()));
    let mut asked = Vec::new();
    for answer in futures::future::join_all(asks).await {
        asked.push(answer?);
    }
    let failures: Vec<String> = asked
        .iter()
        .filter_map(|a| {
            a.answer
                .as_ref()
                .err()
                .map(|why| format!("{}: {why}", a.url))
        })
        .collect();
    let Some(view) = output::status_view(asked) else {
        // `pmcluster up` starts one on this machine only: no advice for a remote list.
        let local = ctx.urls.iter().all(|u| crate::failover::is_loopback_url(u));
        let advice = match local {
            true => "; is one running? start a local one with 'pmcluster up'",
            false => "; is one running there, and is --coordinator its address?",
        };
        anyhow::bail!("no coordinator answered: {}{advice}", failures.join("; "))
    };
    show(&view, ctx)
}

/// Asks the coordinator at `url` for its status; a bad URL is the only error.
async fn ask(url: &str, tls: Option<&ClientTlsConfig>) -> Result<Asked, UsageError> {
    let answer = match dial_channel(url, CONNECT_TIMEOUT, tls).await {
        Err(Dial::BadUrl(e)) => return Err(e),
        Err(Dial::Unreachable(why)) => Err(why),
        Ok(channel) => {
            let mut client = CoordinationClient::new(channel);
            match unary(client.get_status(request(pb::GetStatusRequest {}))).await {
                Ok(status) => Ok(status),
                // What a broken connection comes to (see `failover::connection_lost`).
                Err(e) if matches!(e.code, tonic::Code::Internal | tonic::Code::Unknown) => {
                    Err(tls_hint(url).await.unwrap_or(e.message))
                }
                Err(e) => Err(e.message),
            }
        }
    };
    Ok(Asked {
        url: url.to_string(),
        answer,
    })
}

fn show(view: &output::StatusView, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    if ctx.structured() {
        let value: Value = output::status_json(view);
        return ctx.value(&value);
    }
    ctx.text(&output::status_text(view))
}
