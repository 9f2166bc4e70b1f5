//! `pmcluster token create|list|revoke` and `pmcluster whoami`: the `Access` service.

use pmcluster_proto::v1 as pb;
use serde_json::{Value, json};

use crate::args::TokenCommand;
use crate::commands::Ctx;
use crate::output::{human_age, now_ms, render_rows};

fn token_json(t: &pb::Token) -> Value {
    json!({
        "id": t.id,
        "role": t.role,
        "apps": if t.apps.is_empty() { Value::Null } else { json!(t.apps) },
        "description": t.description,
        "created_ms": t.created_ms,
        "created_by": t.created_by,
    })
}

pub async fn run(command: TokenCommand, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            role,
            app,
            description,
        } => {
            let mut conn = ctx.connect().await?;
            let req = pb::CreateTokenRequest {
                role,
                apps: app.unwrap_or_default(),
                description,
            };
            let reply = conn
                .access(req, |mut c, r| async move { c.create_token(r).await })
                .await?;
            if let Some(warning) = restricts_nothing(conn.url()) {
                eprintln!("warning: {warning}");
            }
            let token = reply.token.unwrap_or_default();
            if ctx.structured() {
                let mut value = token_json(&token);
                value["secret"] = json!(reply.secret);
                return ctx.value(&value);
            }
            let scope = if token.apps.is_empty() {
                String::new()
            } else {
                format!(" for apps {}", token.apps)
            };
            // Only the token on stdout, so that `token create > file` saves the token alone
            // (a trial's file held the two lines of prose as well); the prose on stderr.
            eprintln!(
                "created token {} (role {}{scope}). It is shown this once; keep it secret:",
                token.id, token.role
            );
            ctx.line(&reply.secret)?;
            eprintln!("use it with --token TOKEN or PMCLUSTER_TOKEN=TOKEN");
            Ok(())
        }
        TokenCommand::List => {
            let mut conn = ctx.connect().await?;
            let reply = conn
                .access(pb::ListTokensRequest {}, |mut c, r| async move {
                    c.list_tokens(r).await
                })
                .await?;
            if ctx.structured() {
                let list: Vec<Value> = reply.tokens.iter().map(token_json).collect();
                return ctx.value(&json!(list));
            }
            if reply.tokens.is_empty() {
                return ctx.line("no tokens; make one with `pmcluster token create --role ROLE`");
            }
            let rows = reply
                .tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.role.clone(),
                        if t.apps.is_empty() {
                            "*".to_string()
                        } else {
                            t.apps.clone()
                        },
                        human_age(now_ms() - t.created_ms),
                        t.created_by.clone(),
                        t.description.clone(),
                    ]
                })
                .collect();
            ctx.text(&render_rows(
                &["ID", "ROLE", "APPS", "AGE", "CREATED BY", "DESCRIPTION"],
                rows,
            ))
        }
        TokenCommand::Revoke { id } => {
            let mut conn = ctx.connect().await?;
            let reply = conn
                .access(pb::RevokeTokenRequest { id }, |mut c, r| async move {
                    c.revoke_token(r).await
                })
                .await?;
            let token = reply.token.unwrap_or_default();
            if ctx.structured() {
                return ctx.value(&token_json(&token));
            }
            ctx.line(&format!(
                "revoked token {} (role {}); calls carrying it are refused from now on",
                token.id, token.role
            ))
        }
    }
}

/// Why a token made on the coordinator at `url` restricts nothing yet, if it does not: a
/// coordinator without TLS (`pmcluster up`, or `--insecure`) takes a call without credentials
/// for an admin's, so a caller limited by the token can simply leave it out.
fn restricts_nothing(url: &str) -> Option<String> {
    url.starts_with("http://").then(|| {
        format!(
            "the coordinator at {url} serves without TLS, so it takes a call without \
             credentials for an admin's: this token restricts nothing until the coordinator \
             requires credentials (run pmcluster-coordinator with --tls-cert, --tls-key and \
             --client-ca; README, \"Certificates\")"
        )
    })
}

pub async fn whoami(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let mut conn = ctx.connect().await?;
    let reply = conn
        .access(pb::WhoAmIRequest {}, |mut c, r| async move {
            c.who_am_i(r).await
        })
        .await?;
    if ctx.structured() {
        return ctx.value(&json!({
            "principal": reply.principal,
            "role": reply.role,
            "apps": if reply.apps.is_empty() { Value::Null } else { json!(reply.apps) },
        }));
    }
    let scope = if reply.apps.is_empty() {
        String::new()
    } else {
        format!(", apps {}", reply.apps)
    };
    ctx.line(&format!(
        "{} (role {}{scope}) at {}",
        reply.principal,
        reply.role,
        conn.url()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_of_a_plaintext_coordinator_comes_with_a_warning() {
        let warning = restricts_nothing("http://127.0.0.1:7450").expect("plaintext");
        for want in [
            "the coordinator at http://127.0.0.1:7450 serves without TLS",
            "takes a call without credentials for an admin's",
            "this token restricts nothing until",
            "--tls-cert, --tls-key and --client-ca",
        ] {
            assert!(warning.contains(want), "{want:?} in {warning}");
        }
        assert_eq!(restricts_nothing("https://coord.example:7450"), None);
    }
}
