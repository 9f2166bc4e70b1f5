//! Who may call what: the roles, the rule each API method is under, and the decision. Default
//! deny: a method this table does not name is refused to everyone but nobody.
//!
//! The `auth` layer of the server finds the caller (a client certificate or a token) and the app
//! a request targets; everything it then decides is decided here, without I/O.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token or a user certificate may do. Each role includes the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees state (apps, instances, nodes, events, endpoints); no logs, no env values.
    Read,
    /// Also changes the apps its glob allows: apply (roll out), scale, start, stop, restart,
    /// autoscale, rollout steering; and reads their logs.
    Operate,
    /// Everything: deleting apps, nodes (drain, adopt, forget), tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Read, Role::Operate, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operate => "operate",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Role, AccessError> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == text)
            .ok_or_else(|| AccessError::Role(text.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("role: {0:?} is not a role; use read, operate or admin")]
    Role(String),
    #[error("apps: {glob:?} {why}")]
    Glob { glob: String, why: String },
}

/// What a method needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Anyone, unauthenticated too: health and coordinator status (clients probe with it).
    Open,
    /// An agent's certificate (the node it may speak for is checked at registration).
    Agent,
    /// Any authenticated user or token, whatever its role (`whoami`).
    Anyone,
    /// At least this role; `scoped` when the request names one app and the caller's app glob
    /// must match it.
    Role { role: Role, scoped: bool },
}

const fn role(role: Role) -> Option<Need> {
    Some(Need::Role {
        role,
        scoped: false,
    })
}

const fn scoped(role: Role) -> Option<Need> {
    Some(Need::Role { role, scoped: true })
}

/// The rule of the gRPC method at `path` (`/package.Service/Method`); `None` for a method
/// nobody may call.
pub fn need(path: &str) -> Option<Need> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    match service {
        "grpc.health.v1.Health" => Some(Need::Open),
        "pmcluster.v1.Coordination" if method == "GetStatus" => Some(Need::Open),
        "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => {
            role(Role::Read)
        }
        "pmcluster.v1.AgentLink" if method == "Session" => Some(Need::Agent),
        "pmcluster.v1.Access" => match method {
            "WhoAmI" => Some(Need::Anyone),
            "CreateToken" | "ListTokens" | "RevokeToken" => role(Role::Admin),
            _ => None,
        },
        "pmcluster.v1.Cluster" => cluster_need(method),
        _ => None,
    }
}

fn cluster_need(method: &str) -> Option<Need> {
    match method {
        "GetApp" | "ListApps" | "ListInstances" | "ListNodes" | "WatchEvents" | "GetAutoscale"
        | "GetRollout" | "WatchEndpoints" => role(Role::Read),
        // Logs carry whatever the app prints, secrets included: not for read.
        "StreamLogs" | "ApplyApp" | "Scale" | "Start" | "Stop" | "Restart" | "SetAutoscale"
        | "ControlRollout" | "UndoRollout" => scoped(Role::Operate),
        // As restart: each can stop or upset a process of the app, or take it out of rotation.
        "Signal" | "SendMessage" | "Disable" | "Enable" => scoped(Role::Operate),
        "DeleteApp" | "DrainNode" | "UndrainNode" | "AdoptNode" | "ForgetNode" => role(Role::Admin),
        _ => None,
    }
}

/// Who is calling, as the layer found out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Nothing presented, on a plaintext listener (loopback, or `--insecure`).
    Anonymous,
    User(String),
    Token(String),
    Agent(String),
    Coordinator,
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Anonymous => f.write_str("anonymous"),
            Principal::User(name) => write!(f, "user/{name}"),
            Principal::Token(id) => write!(f, "token/{id}"),
            Principal::Agent(node) => write!(f, "agent/{node}"),
            Principal::Coordinator => f.write_str("coordinator"),
        }
    }
}

/// What a principal may do: a role, and for operate an app glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub role: Role,
    /// `None`: every app.
    pub apps: Option<String>,
}

impl Grant {
    pub fn admin() -> Grant {
        Grant {
            role: Role::Admin,
            apps: None,
        }
    }

    /// Whether `app`'s env values (not secret ones: those never leave the coordinator but to
    /// agents) may be shown to this caller: an operator's, for the apps its glob allows. Outside
    /// them it has no more rights than the read role, which sees none.
    pub fn sees_env_of(&self, app: &str) -> bool {
        self.role >= Role::Operate && self.allows_app(app)
    }

    fn allows_app(&self, app: &str) -> bool {
        match (&self.apps, self.role) {
            (_, Role::Admin) | (None, _) => true,
            (Some(glob), _) => glob::Pattern::new(glob).is_ok_and(|p| p.matches(app)),
        }
    }
}

/// Why a call is refused. Both are logged by the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No usable credential: gRPC `UNAUTHENTICATED`.
    Unauthenticated(String),
    /// A known caller without the right: gRPC `PERMISSION_DENIED`.
    Denied(String),
}

/// Decides a call to `method` needing `need`, by `who` holding `grant` (`None` for callers
/// without one: agents, the coordinator, nobody), targeting `app` when the request names one.
pub fn decide(
    method: &str,
    need: Need,
    who: &Principal,
    grant: Option<&Grant>,
    app: Option<&str>,
) -> Result<(), Refusal> {
    let denied = |why: String| {
        Err(Refusal::Denied(format!(
            "{who} may not call {method}: {why}"
        )))
    };
    match need {
        Need::Open => Ok(()),
        Need::Agent => match who {
            Principal::Agent(_) => Ok(()),
            Principal::Anonymous => Ok(()),
            _ => denied("only an agent's certificate opens an agent session".into()),
        },
        Need::Anyone => match grant {
            Some(_) => Ok(()),
            None => denied("it is not a user or a token".into()),
        },
        Need::Role { role, scoped } => {
            let Some(grant) = grant else {
                return denied(format!(
                    "it needs a user certificate or a token with role {}",
                    role.name()
                ));
            };
            if grant.role < role {
                return denied(format!(
                    "it needs role {} and this caller has {}",
                    role.name(),
                    grant.role.name()
                ));
            }
            if !scoped || grant.role == Role::Admin || grant.apps.is_none() {
                return Ok(());
            }
            let glob = grant.apps.as_deref().unwrap_or("*");
            match app {
                Some(app) if !app.is_empty() && grant.allows_app(app) => Ok(()),
                Some(app) if !app.is_empty() => {
                    denied(format!("app {app:?} is outside its apps {glob:?}"))
                }
                _ => denied(format!(
                    "it names no single app, and this caller may only touch apps {glob:?}"
                )),
            }
        }
    }
}

/// Longest app glob: app names are at most 63 characters.
const MAX_GLOB_LEN: usize = 128;

/// Checks an `--app` glob: app-name characters and `*`, `?`, `[...]` only.
pub fn check_glob(glob: &str) -> Result<(), AccessError> {
    let bad = |why: &str| AccessError::Glob {
        glob: glob.to_string(),
        why: why.to_string(),
    };
    if glob.is_empty() || glob.len() > MAX_GLOB_LEN {
        return Err(bad(&format!("must have 1-{MAX_GLOB_LEN} characters")));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-*?[]!".contains(c);
    if !glob.chars().all(allowed) {
        return Err(bad(
            "may hold letters, digits, '.', '_', '-' and the wildcards *, ? and [...] only",
        ));
    }
    glob::Pattern::new(glob).map_err(|e| bad(&e.to_string()))?;
    Ok(())
}

// The format is shared with the CLI, which checks a token before sending it.
pub use pmcluster_pki::token::{
    ID_LEN as TOKEN_ID_LEN, PREFIX as TOKEN_PREFIX, SECRET_LEN as TOKEN_SECRET_LEN, id as token_id,
};

/// The bearer value of a token with `id` and `secret` (both hex).
pub fn token_text(id: &str, secret: &str) -> String {
    format!("{TOKEN_PREFIX}{id}_{secret}")
}

/// What the store keeps of a bearer value: its SHA-256, hex. The secret has 256 random bits,
/// so a plain hash is enough (a slow hash guards low-entropy passwords, not this).
pub fn token_hash(bearer: &str) -> String {
    hex(&Sha256::digest(bearer.as_bytes()))
}

/// Whether `bearer` hashes to `hash`, comparing every byte whatever the first difference.
pub fn token_matches(bearer: &str, hash: &str) -> bool {
    let got = token_hash(bearer);
    got.len() == hash.len()
        && got
            .bytes()
            .zip(hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(role: Role, apps: Option<&str>) -> Grant {
        Grant {
            role,
            apps: apps.map(str::to_string),
        }
    }

    const SCALE: &str = "/pmcluster.v1.Cluster/Scale";

    #[test]
    fn every_method_has_the_rule_of_the_table() {
        let cases: &[(&str, Option<Need>)] = &[
            ("/grpc.health.v1.Health/Check", Some(Need::Open)),
            ("/pmcluster.v1.Coordination/GetStatus", Some(Need::Open)),
            ("/pmcluster.v1.AgentLink/Session", Some(Need::Agent)),
            ("/pmcluster.v1.Cluster/ListApps", role(Role::Read)),
            ("/pmcluster.v1.Cluster/WatchEndpoints", role(Role::Read)),
            ("/pmcluster.v1.Cluster/StreamLogs", scoped(Role::Operate)),
            (SCALE, scoped(Role::Operate)),
            ("/pmcluster.v1.Cluster/ApplyApp", scoped(Role::Operate)),
            ("/pmcluster.v1.Cluster/DeleteApp", role(Role::Admin)),
            ("/pmcluster.v1.Cluster/DrainNode", role(Role::Admin)),
            ("/pmcluster.v1.Access/CreateToken", role(Role::Admin)),
            ("/pmcluster.v1.Access/WhoAmI", Some(Need::Anyone)),
            // Default deny: unknown methods and services, and malformed paths.
            ("/pmcluster.v1.Cluster/Unknown", None),
            ("/pmcluster.v1.Coordination/Other", None),
            ("/evil.Service/Method", None),
            ("no-slash", None),
            ("/", None),
        ];
        for (path, want) in cases {
            assert_eq!(need(path), *want, "{path}");
        }
    }

    #[test]
    fn env_values_are_shown_to_operators_of_the_app_only() {
        let cases = [
            (grant(Role::Read, None), "web", false),
            (grant(Role::Operate, None), "web", true),
            (grant(Role::Operate, Some("web*")), "web-1", true),
            // Outside its glob an operator has the read role's rights.
            (grant(Role::Operate, Some("web*")), "db", false),
            (grant(Role::Admin, Some("web*")), "db", true),
        ];
        for (g, app, want) in cases {
            assert_eq!(g.sees_env_of(app), want, "{g:?} {app}");
        }
    }

    #[test]
    fn roles_and_globs_decide() {
        let scale = scoped(Role::Operate).unwrap();
        let list = role(Role::Read).unwrap();
        let admin = role(Role::Admin).unwrap();
        let tok = Principal::Token("abc".into());
        type Case = (Need, Option<Grant>, Option<&'static str>, bool);
        let cases: Vec<Case> = vec![
            (list, Some(grant(Role::Read, None)), None, true),
            (scale, Some(grant(Role::Read, None)), Some("web"), false),
            (scale, Some(grant(Role::Operate, None)), Some("db"), true),
            (
                scale,
                Some(grant(Role::Operate, Some("web*"))),
                Some("web-2"),
                true,
            ),
            (
                scale,
                Some(grant(Role::Operate, Some("web*"))),
                Some("db"),
                false,
            ),
            // A scoped method without one app (logs of every app) needs every app.
            (
                scale,
                Some(grant(Role::Operate, Some("web*"))),
                Some(""),
                false,
            ),
            (scale, Some(grant(Role::Operate, Some("web*"))), None, false),
            (admin, Some(grant(Role::Operate, None)), None, false),
            (admin, Some(grant(Role::Admin, None)), None, true),
            (scale, Some(grant(Role::Admin, None)), Some("db"), true),
            (list, None, None, false),
        ];
        for (need, grant, app, ok) in cases {
            let got = decide("M", need, &tok, grant.as_ref(), app);
            assert_eq!(got.is_ok(), ok, "{need:?} {grant:?} {app:?}: {got:?}");
        }
    }

    #[test]
    fn agent_sessions_take_agents_only() {
        let user = Principal::User("alice".into());
        let agent = Principal::Agent("a".into());
        let admin = grant(Role::Admin, None);
        assert!(decide("S", Need::Agent, &agent, None, None).is_ok());
        assert!(decide("S", Need::Agent, &user, Some(&admin), None).is_err());
        // Agents call nothing of the user API.
        assert!(decide("L", role(Role::Read).unwrap(), &agent, None, None).is_err());
    }

    #[test]
    fn refusals_say_what_was_needed() {
        let who = Principal::Token("0123456789ab".into());
        let got = decide(
            SCALE,
            scoped(Role::Operate).unwrap(),
            &who,
            Some(&grant(Role::Operate, Some("web*"))),
            Some("db"),
        );
        let Err(Refusal::Denied(why)) = got else {
            panic!("not denied: {got:?}");
        };
        assert!(why.contains("token/0123456789ab"), "{why}");
        assert!(why.contains("\"db\"") && why.contains("web*"), "{why}");
    }

    #[test]
    fn tokens_parse_and_hash() {
        let id = "0123456789ab";
        let secret = "f".repeat(TOKEN_SECRET_LEN);
        let text = token_text(id, &secret);
        assert_eq!(token_id(&text), Some(id));
        assert!(token_matches(&text, &token_hash(&text)));
        assert!(!token_matches(&format!("{text}0"), &token_hash(&text)));
        for bad in [
            "",
            "pmc_",
            "pmc_0123456789ab",
            "pmc_0123456789ab_short",
            "xyz_0123456789ab_ffff",
            &format!("pmc_0123456789aZ_{secret}"),
        ] {
            assert_eq!(token_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn globs_are_checked() {
        for ok in ["web*", "web-?", "[ab]pi", "*"] {
            assert!(check_glob(ok).is_ok(), "{ok}");
        }
        for bad in ["", "web/*", "a b", "[", &"x".repeat(200)] {
            assert!(check_glob(bad).is_err(), "{bad}");
        }
        assert!(Role::parse("owner").is_err());
        assert_eq!(Role::parse("operate"), Ok(Role::Operate));
    }
}
