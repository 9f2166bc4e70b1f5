//! `pmcluster status`: the coordinators sharing the cluster's store, and the store's health.

use pmcluster_proto::v1 as pb;
use serde_json::{Value, json};

use super::{NONE, human_age, render_table};

/// What `status` heard from one coordinator of `--coordinator`: its reply, or why it could not
/// be reached.
pub struct Asked {
    pub url: String,
    pub answer: Result<pb::StatusReply, String>,
}

/// Whether the CLI reached a coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    Answered,
    /// Why not ("connection refused").
    Unreachable(String),
    /// Not in `--coordinator`: known only from the store, through another coordinator.
    NotAsked,
}

/// One row of `status`: a coordinator as it says it is (when it answered), or as the one that
/// answered sees it in the store; `None` when nothing is known of it but that it did not answer.
pub struct CoordinatorRow {
    pub url: String,
    pub info: Option<pb::CoordinatorInfo>,
    pub reach: Reach,
}

/// `status`: every coordinator of `--coordinator` and every one the store lists, and the store's
/// health as the most authoritative one that answered (the leader, else one with a healthy
/// store, else the first) sees it.
pub struct StatusView {
    pub rows: Vec<CoordinatorRow>,
    pub store: Option<pb::StoreStatus>,
}

/// The same coordinator, however its URL is written.
fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

/// "Connection refused (os error 111)" as "connection refused".
fn plain_cause(why: &str) -> String {
    let why = match why.rfind(" (os error ") {
        Some(at) if why.ends_with(')') => &why[..at],
        _ => why,
    };
    let mut chars = why.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The rows of `status` from what each coordinator of `--coordinator` answered; `None` when
/// none answered.
pub fn status_view(asked: Vec<Asked>) -> Option<StatusView> {
    let self_of = |r: &pb::StatusReply| r.coordinators.iter().find(|c| c.this).cloned();
    let replies: Vec<(&str, &pb::StatusReply)> = asked
        .iter()
        .filter_map(|a| a.answer.as_ref().ok().map(|r| (a.url.as_str(), r)))
        .collect();
    let leads = |r: &pb::StatusReply| self_of(r).is_some_and(|c| c.role == "leader");
    let healthy = |r: &pb::StatusReply| r.store.as_ref().is_some_and(|s| s.healthy);
    let primary = replies
        .iter()
        .find(|(_, r)| leads(r))
        .or_else(|| replies.iter().find(|(_, r)| healthy(r)))
        .or_else(|| replies.first())
        .map(|(_, r)| *r)?;
    let mut rows: Vec<CoordinatorRow> = primary
        .coordinators
        .iter()
        .map(|c| CoordinatorRow {
            url: c.advertise.clone(),
            info: Some(pb::CoordinatorInfo {
                this: false,
                ..c.clone()
            }),
            reach: Reach::NotAsked,
        })
        .collect();
    for a in &asked {
        let (info, reach) = match &a.answer {
            Ok(reply) => (
                self_of(reply).map(|c| pb::CoordinatorInfo { this: true, ..c }),
                Reach::Answered,
            ),
            Err(why) => (None, Reach::Unreachable(plain_cause(why))),
        };
        // A coordinator that answered is known by the URL it advertises, which may not be the
        // one it was asked at.
        let advertised = info.as_ref().map(|c| c.advertise.clone());
        let row = rows.iter_mut().find(|r| {
            same_url(&r.url, &a.url) || advertised.as_deref().is_some_and(|u| same_url(&r.url, u))
        });
        match row {
            Some(row) => {
                // Its own word about itself is fresher than what the store says of it.
                if info.is_some() {
                    row.info = info;
                }
                row.reach = reach;
            }
            None => rows.push(CoordinatorRow {
                url: advertised.unwrap_or_else(|| a.url.clone()),
                info,
                reach,
            }),
        }
    }
    // The leader first, then by URL.
    rows.sort_by(|a, b| {
        let leads = |r: &CoordinatorRow| r.info.as_ref().is_some_and(|c| c.role == "leader");
        (leads(b), &a.url).cmp(&(leads(a), &b.url))
    });
    Some(StatusView {
        rows,
        store: primary.store.clone(),
    })
}

/// Whether a row of `status` leads, and whether one that leads answered (or was not asked).
enum Leadership {
    None,
    /// Every row that leads is one the CLI could not reach.
    Unanswered,
    Answered,
}

fn leadership(view: &StatusView) -> Leadership {
    let mut leaders = view
        .rows
        .iter()
        .filter(|r| r.info.as_ref().is_some_and(|c| c.role == "leader"))
        .peekable();
    if leaders.peek().is_none() {
        Leadership::None
    } else if leaders.all(|r| matches!(r.reach, Reach::Unreachable(_))) {
        Leadership::Unanswered
    } else {
        Leadership::Answered
    }
}

/// Why the cluster `view` describes cannot serve this client now, if it cannot: no coordinator
/// leads, the leader did not answer (its calls would fail as well), or the store is unhealthy.
/// `None` for one that can. A leader known only from the store (not in `--coordinator`) was
/// not asked, and counts.
pub fn not_ready(view: &StatusView) -> Option<String> {
    let mut why = Vec::new();
    match leadership(view) {
        Leadership::None => why.push("no coordinator leads".to_string()),
        Leadership::Unanswered => why.push(
            "the leader did not answer (if it is down, the other takes over when its lease \
             expires)"
                .to_string(),
        ),
        Leadership::Answered => {}
    }
    if let Some(store) = view.store.as_ref().filter(|s| !s.healthy) {
        why.push(format!("the store is unhealthy ({})", store.error));
    }
    (!why.is_empty()).then(|| format!("the cluster cannot serve now: {}", why.join("; ")))
}

fn reach_text(reach: &Reach) -> String {
    match reach {
        Reach::Answered => "answered".to_string(),
        Reach::Unreachable(why) => format!("UNREACHABLE: {why}"),
        Reach::NotAsked => NONE.to_string(),
    }
}

pub fn status_text(view: &StatusView) -> String {
    let rows = view
        .rows
        .iter()
        .map(|row| {
            let Some(c) = &row.info else {
                let mut cells = vec![row.url.clone()];
                cells.extend(std::iter::repeat_n(NONE.to_string(), 5));
                cells.push(reach_text(&row.reach));
                return cells;
            };
            vec![
                row.url.clone(),
                c.role.clone(),
                if c.term > 0 {
                    c.term.to_string()
                } else {
                    NONE.to_string()
                },
                if c.lease_age_ms > 0 {
                    human_age(c.lease_age_ms)
                } else {
                    NONE.to_string()
                },
                if c.role == "leader" {
                    human_age(c.role_age_ms)
                } else {
                    NONE.to_string()
                },
                c.agents_connected.to_string(),
                reach_text(&row.reach),
            ]
        })
        .collect();
    let mut text = render_table(
        &[
            "coordinator",
            "role",
            "term",
            // Since its lease was granted: it is renewed all along, so this is how long the
            // coordinator has been alive in etcd, not how stale it is (a trial read "14s" beside
            // a 2 s TTL as a lease gone bad).
            "lease held",
            "leading for",
            "agents",
            "reached",
        ],
        rows,
        &[2, 5],
    );
    match leadership(view) {
        Leadership::None => text.push_str(
            "no coordinator leads: calls other than `status` are refused until one is elected\n",
        ),
        Leadership::Unanswered => text.push_str(
            "the leader did not answer: it may be down; the other takes over when its lease \
             expires\n",
        ),
        Leadership::Answered => {}
    }
    let unreachable: Vec<&str> = view
        .rows
        .iter()
        .filter(|r| matches!(r.reach, Reach::Unreachable(_)))
        .map(|r| r.url.as_str())
        .collect();
    if !unreachable.is_empty() {
        let asked = view
            .rows
            .iter()
            .filter(|r| r.reach != Reach::NotAsked)
            .count();
        text.push_str(&format!(
            "degraded: {} of {asked} coordinators could not be reached: {}\n",
            unreachable.len(),
            unreachable.join(", ")
        ));
    }
    if let Some(store) = &view.store {
        let health = if store.healthy {
            "healthy".to_string()
        } else {
            format!("UNHEALTHY: {}", store.error)
        };
        text.push_str(&format!(
            "store: {} {} ({health})\n",
            store.kind, store.location
        ));
    }
    text
}

pub fn status_json(view: &StatusView) -> Value {
    let coordinators: Vec<Value> = view
        .rows
        .iter()
        .map(|row| {
            let (reachable, error) = match &row.reach {
                Reach::Answered => (json!(true), Value::Null),
                Reach::Unreachable(why) => (json!(false), json!(why)),
                Reach::NotAsked => (Value::Null, Value::Null),
            };
            let c = row.info.clone().unwrap_or_default();
            json!({
                "advertise": row.url,
                "role": if row.info.is_some() { c.role.as_str() } else { "unknown" },
                "term": c.term,
                "lease_age_ms": c.lease_age_ms,
                "role_age_ms": c.role_age_ms,
                "agents_connected": c.agents_connected,
                "answered": row.reach == Reach::Answered,
                "reachable": reachable,
                "error": error,
            })
        })
        .collect();
    let store = view.store.as_ref().map(
        |s| json!({"kind": s.kind, "location": s.location, "healthy": s.healthy, "error": s.error}),
    );
    json!({"coordinators": coordinators, "store": store})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coordinator(url: &str, role: &str, this: bool) -> pb::CoordinatorInfo {
        pb::CoordinatorInfo {
            advertise: url.into(),
            role: role.into(),
            term: if role == "leader" { 42 } else { 0 },
            lease_age_ms: 65_000,
            agents_connected: if role == "leader" { 3 } else { 0 },
            this,
            role_age_ms: 61_000,
        }
    }

    fn store(healthy: bool) -> Option<pb::StoreStatus> {
        Some(pb::StoreStatus {
            kind: "etcd".into(),
            location: "http://e:2379 /pmcluster/prod".into(),
            healthy,
            error: if healthy {
                String::new()
            } else {
                "etcd did not answer within 2s".into()
            },
        })
    }

    fn answered(url: &str, coordinators: Vec<pb::CoordinatorInfo>, healthy: bool) -> Asked {
        Asked {
            url: url.into(),
            answer: Ok(pb::StatusReply {
                coordinators,
                store: store(healthy),
            }),
        }
    }

    fn refused(url: &str) -> Asked {
        Asked {
            url: url.into(),
            answer: Err("Connection refused (os error 111)".into()),
        }
    }

    #[test]
    fn a_pair_shows_the_leader_first() {
        let view = status_view(vec![
            answered(
                "http://a:7450",
                vec![
                    coordinator("http://a:7450", "standby", true),
                    coordinator("http://b:7450", "leader", false),
                ],
                true,
            ),
            answered(
                "http://b:7450",
                vec![
                    coordinator("http://a:7450", "standby", false),
                    coordinator("http://b:7450", "leader", true),
                ],
                true,
            ),
        ])
        .expect("answered");
        let text = status_text(&view);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("COORDINATOR"), "{text}");
        assert!(lines[1].starts_with("http://b:7450") && lines[1].contains("leader"));
        assert!(lines[1].contains("42") && lines[1].contains("1m"), "{text}");
        assert!(lines[1].ends_with("answered"), "{text}");
        assert!(lines[2].starts_with("http://a:7450") && lines[2].contains("standby"));
        assert_eq!(
            lines[3],
            "store: etcd http://e:2379 /pmcluster/prod (healthy)"
        );
        let v = status_json(&view);
        assert_eq!(v["coordinators"][0]["role"], "leader");
        assert_eq!(v["coordinators"][1]["answered"], true);
        assert_eq!(v["coordinators"][1]["reachable"], true);
        assert_eq!(v["coordinators"][1]["error"], Value::Null);
        assert_eq!(v["store"]["healthy"], true);
    }

    /// Every coordinator of `--coordinator` gets a row, and one that could not be reached says
    /// so, whatever the one that answered says of it. Before, the failures were dropped as soon
    /// as one answered: a dead leader still read as the leader, and after the takeover (or when
    /// cut off from etcd) it was not listed at all.
    #[test]
    fn a_coordinator_that_could_not_be_reached_says_so() {
        // Right after the leader died: the standby still sees it lead in the store.
        let view = status_view(vec![
            refused("http://a:7450"),
            answered(
                "http://b:7450",
                vec![
                    coordinator("http://a:7450", "leader", false),
                    coordinator("http://b:7450", "standby", true),
                ],
                true,
            ),
        ])
        .expect("b answered");
        let text = status_text(&view);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("http://a:7450"), "{text}");
        assert!(lines[1].contains("leader"), "{text}");
        assert!(
            lines[1].ends_with("UNREACHABLE: connection refused"),
            "{text}"
        );
        assert!(text.contains("the leader did not answer"), "{text}");
        assert!(
            text.contains("degraded: 1 of 2 coordinators could not be reached: http://a:7450"),
            "{text}"
        );
        let v = status_json(&view);
        assert_eq!(v["coordinators"][0]["reachable"], false, "{v}");
        assert_eq!(v["coordinators"][0]["answered"], false, "{v}");
        assert_eq!(v["coordinators"][0]["error"], "connection refused", "{v}");

        // After the takeover: the store no longer lists the dead one; it still has a row.
        let view = status_view(vec![
            answered(
                "http://b:7450",
                vec![coordinator("http://b:7450", "leader", true)],
                true,
            ),
            refused("http://a:7450/"),
        ])
        .expect("b answered");
        let text = status_text(&view);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("http://b:7450"), "{text}");
        assert!(lines[2].starts_with("http://a:7450/"), "{text}");
        assert!(
            lines[2].contains("UNREACHABLE: connection refused"),
            "{text}"
        );
        assert!(!text.contains("the leader did not answer"), "{text}");
        let v = status_json(&view);
        assert_eq!(v["coordinators"][1]["role"], "unknown", "{v}");
        assert_eq!(v["coordinators"][1]["reachable"], false, "{v}");

        // Alive but cut off from etcd: the leader's store has no record of it; it answered,
        // and says what it knows of itself.
        let view = status_view(vec![
            answered(
                "http://a:7450",
                vec![coordinator("http://a:7450", "standby", true)],
                false,
            ),
            answered(
                "http://b:7450",
                vec![coordinator("http://b:7450", "leader", true)],
                true,
            ),
        ])
        .expect("both answered");
        let v = status_json(&view);
        let list = v["coordinators"].as_array().cloned().unwrap_or_default();
        assert_eq!(list.len(), 2, "{v}");
        assert_eq!(list[1]["advertise"], "http://a:7450", "{v}");
        assert_eq!(list[1]["answered"], true, "{v}");
        assert_eq!(
            v["store"]["healthy"], true,
            "the leader's view of the store: {v}"
        );
        assert!(!status_text(&view).contains("degraded"));

        assert!(status_view(vec![refused("http://a:7450")]).is_none());
    }

    #[test]
    fn no_leader_and_a_sick_store_are_said() {
        let view = status_view(vec![answered(
            "http://a:7450",
            vec![coordinator("http://a:7450", "standby", true)],
            false,
        )])
        .expect("answered");
        let text = status_text(&view);
        assert!(text.contains("no coordinator leads"), "{text}");
        assert!(
            text.contains("UNHEALTHY: etcd did not answer within 2s"),
            "{text}"
        );
        assert_eq!(
            not_ready(&view).as_deref(),
            Some(
                "the cluster cannot serve now: no coordinator leads; the store is unhealthy \
                 (etcd did not answer within 2s)"
            )
        );
    }

    /// The standby at b answering, the leader at a as the store lists it.
    fn standby_b_of_leader_a() -> Asked {
        answered(
            "http://b:7450",
            vec![
                coordinator("http://a:7450", "leader", false),
                coordinator("http://b:7450", "standby", true),
            ],
            true,
        )
    }

    #[test]
    fn ready_takes_a_leader_and_a_healthy_store() {
        let view = |role: &str, healthy: bool| {
            status_view(vec![answered(
                "http://a:7450",
                vec![coordinator("http://a:7450", role, true)],
                healthy,
            )])
            .expect("answered")
        };
        assert_eq!(not_ready(&view("leader", true)), None);
        let sick = not_ready(&view("leader", false)).unwrap_or_default();
        assert!(sick.contains("the store is unhealthy"), "{sick}");
        assert!(!sick.contains("leads"), "{sick}");
        let led = not_ready(&view("standby", true)).unwrap_or_default();
        assert!(led.ends_with("no coordinator leads"), "{led}");
        // A leader the CLI could not reach cannot serve it; one it did not ask can.
        let gone = status_view(vec![standby_b_of_leader_a(), refused("http://a:7450")])
            .expect("one answered");
        let said = not_ready(&gone).unwrap_or_default();
        assert!(said.contains("the leader did not answer"), "{said}");
        let unasked = status_view(vec![standby_b_of_leader_a()]).expect("one answered");
        assert_eq!(not_ready(&unasked), None);
    }
}
