//! API tokens: made, listed, revoked through the write path like any other record, and looked
//! up by the auth layer on every call that carries one.

use super::{Control, ControlError, Result};
use crate::core::access::{self, Grant, Role};
use crate::model::{Batch, TokenRecord};

/// Most tokens a cluster keeps: each call carrying one looks it up, and a list must fit a reply.
pub const MAX_TOKENS: usize = 1000;
/// Longest description.
pub const MAX_DESCRIPTION: usize = 256;

/// A token to make; the caller (the API shell) draws `id` and `secret` at random.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub id: String,
    pub secret: String,
    pub role: Role,
    pub apps: Option<String>,
    pub description: String,
    pub created_by: String,
}

impl Control {
    /// Stores a token's hash and returns its record and bearer value (shown once).
    pub fn create_token(&self, new: NewToken) -> Result<(TokenRecord, String)> {
        if let Some(glob) = &new.apps {
            if new.role != Role::Operate {
                return Err(ControlError::InvalidArgument(format!(
                    "apps: only an operate token is limited to some apps; {} {} token covers \
                     every app (leave out --app)",
                    if new.role == Role::Admin { "an" } else { "a" },
                    new.role.name()
                )));
            }
            access::check_glob(glob).map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
        }
        if new.description.len() > MAX_DESCRIPTION || new.description.chars().any(char::is_control)
        {
            return Err(ControlError::InvalidArgument(format!(
                "description: at most {MAX_DESCRIPTION} bytes, no control characters"
            )));
        }
        let bearer = access::token_text(&new.id, &new.secret);
        if access::token_id(&bearer) != Some(new.id.as_str()) {
            return Err(ControlError::InvalidArgument(
                "token: id or secret is not of the expected form".into(),
            ));
        }
        let mut inner = self.lock();
        if inner.ahead.tokens.len() >= MAX_TOKENS {
            return Err(ControlError::FailedPrecondition(format!(
                "this cluster already has {MAX_TOKENS} tokens, the most it keeps; revoke unused \
                 ones with `pmcluster token revoke ID`"
            )));
        }
        if inner.ahead.tokens.contains_key(&new.id) {
            return Err(ControlError::AlreadyExists(format!(
                "a token with id {} exists; try again",
                new.id
            )));
        }
        let record = TokenRecord {
            id: new.id,
            hash: access::token_hash(&bearer),
            role: new.role,
            apps: new.apps,
            description: new.description,
            created_ms: self.now_ms(),
            created_by: new.created_by,
        };
        let batch = Batch {
            put_tokens: vec![record.clone()],
            ..Batch::default()
        };
        self.write(&mut inner, batch)?;
        Ok((record, bearer))
    }

    /// Every token, by id.
    pub fn list_tokens(&self) -> Vec<TokenRecord> {
        self.tokens.read().values().cloned().collect()
    }

    /// Removes a token: calls carrying it are refused from the next one on.
    pub fn revoke_token(&self, id: &str) -> Result<TokenRecord> {
        let mut inner = self.lock();
        let Some(record) = inner.ahead.tokens.get(id).cloned() else {
            return Err(ControlError::NotFound(format!(
                "no token with id {id:?}; see them with `pmcluster token list`"
            )));
        };
        let batch = Batch {
            del_tokens: vec![id.to_string()],
            ..Batch::default()
        };
        self.write(&mut inner, batch)?;
        Ok(record)
    }

    /// The grant of a bearer value, if it is a live token of this cluster. Reads the tokens'
    /// own copy, not `inner`: the auth layer calls this on an async worker for every call.
    pub fn token_grant(&self, bearer: &str) -> Option<(String, Grant)> {
        let id = access::token_id(bearer)?;
        let tokens = self.tokens.read();
        let record = tokens.get(id)?;
        access::token_matches(bearer, &record.hash).then(|| {
            (
                record.id.clone(),
                Grant {
                    role: record.role,
                    apps: record.apps.clone(),
                },
            )
        })
    }
}
