//! `pmcluster status`: which coordinator leads, and whether the store is healthy. Every
//! coordinator answers it, a standby too, so it asks the first of `--coordinator` that answers
//! rather than following leader hints.

use pmcluster_proto::v1 as pb;
use pmcluster_proto::v1::coordination_client::CoordinationClient;
use serde_json::Value;

use crate::client::{CONNECT_TIMEOUT, Dial, dial_channel, request, unary};
use crate::commands::Ctx;
use crate::output;

pub async fn status(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for url in ctx.urls.clone() {
        let channel = match dial_channel(&url, CONNECT_TIMEOUT, ctx.creds.tls.as_ref()).await {
            Ok(c) => c,
            Err(Dial::BadUrl(e)) => return Err(e.into()),
            Err(Dial::Unreachable(why)) => {
                failures.push(format!("{url}: {why}"));
                continue;
            }
        };
        let mut client = CoordinationClient::new(channel);
        match unary(client.get_status(request(pb::GetStatusRequest {}))).await {
            Ok(reply) => return show(&reply, ctx),
            Err(e) => failures.push(format!("{url}: {}", e.message)),
        }
    }
    anyhow::bail!(
        "no coordinator answered: {}; is one running? start a local one with 'pmcluster up'",
        failures.join("; ")
    )
}

fn show(reply: &pb::StatusReply, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    if ctx.structured() {
        let value: Value = output::status_json(reply);
        return ctx.value(&value);
    }
    ctx.text(&output::status_text(reply))
}
