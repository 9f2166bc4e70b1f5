//! `pmcluster status`: which coordinator leads, and whether the store is healthy. Every
//! coordinator answers it, a standby too, so it asks every one of `--coordinator` (at once)
//! rather than following leader hints, and lists each: one it could not reach says so, even
//! when another answered for the cluster. It exits 3 when they answered that the cluster
//! cannot serve (no leader, a leader that did not answer, an unhealthy store), the table
//! printed all the same.

use pmcluster_proto::v1 as pb;
use pmcluster_proto::v1::coordination_client::CoordinationClient;
use serde_json::Value;

use crate::client::{CONNECT_TIMEOUT, Dial, dial_channel, request, tls_hint, unary};
use crate::commands::Ctx;
use crate::error::{NotReady, UsageError};
use crate::output::{self, Asked};
use crate::tls::Tls;

pub async fn status(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let tls = ctx.creds.tls.clone();
    let asks = ctx.urls.iter().map(|url| ask(url, tls.as_ref()));
    let mut asked = Vec::new();
    let mut tls_refused = false;
    for answer in futures::future::join_all(asks).await {
        let (answer, refused) = answer?;
        tls_refused |= refused;
        asked.push(answer);
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
        // `pmcluster up` starts one on this machine only: no advice for a remote list. And a
        // coordinator that refused a TLS handshake is running; the failure says what to fix.
        let local = ctx.urls.iter().all(|u| crate::failover::is_loopback_url(u));
        let advice = match (tls_refused, local) {
            (true, _) => "",
            (false, true) => "; is one running? start a local one with 'pmcluster up'",
            (false, false) => "; is one running there, and is --coordinator its address?",
        };
        anyhow::bail!("no coordinator answered: {}{advice}", failures.join("; "))
    };
    show(&view, ctx)?;
    match output::not_ready(&view) {
        Some(why) => Err(NotReady(why).into()),
        None => Ok(()),
    }
}

/// Asks the coordinator at `url` for its status, and says whether a TLS handshake failed; a
/// bad URL is the only error.
async fn ask(url: &str, tls: Option<&Tls>) -> Result<(Asked, bool), UsageError> {
    let mut tls_failed = false;
    let answer = match dial_channel(url, CONNECT_TIMEOUT, tls).await {
        Err(Dial::BadUrl(e)) => return Err(e),
        Err(Dial::Unreachable(why)) => Err(why),
        Err(Dial::Tls(why)) => {
            tls_failed = true;
            Err(why)
        }
        Ok(channel) => {
            let mut client = CoordinationClient::new(channel);
            // The status's source (a TLS alert) is gone once `unary` makes it an ApiError.
            let mut refused = None;
            let call = async {
                let answer = client.get_status(request(pb::GetStatusRequest {})).await;
                if let Err(status) = &answer
                    && std::error::Error::source(status).is_some()
                {
                    refused = crate::tls::why_refused(status, url, tls).await;
                }
                answer
            };
            let answer = unary(call).await;
            match (answer, refused) {
                (Ok(status), _) => Ok(status),
                (Err(_), Some(why)) => {
                    tls_failed = true;
                    Err(why)
                }
                // What a broken connection comes to (see `failover::connection_lost`).
                (Err(e), None)
                    if matches!(e.code, tonic::Code::Internal | tonic::Code::Unknown) =>
                {
                    Err(tls_hint(url).await.unwrap_or(e.message))
                }
                (Err(e), None) => Err(e.message),
            }
        }
    };
    let asked = Asked {
        url: url.to_string(),
        answer,
    };
    Ok((asked, tls_failed))
}

fn show(view: &output::StatusView, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    if ctx.structured() {
        let value: Value = output::status_json(view);
        return ctx.value(&value);
    }
    ctx.text(&output::status_text(view))
}
