//! Where records live under the prefix, and which keys one batch writes. Pure: no etcd, no
//! runtime, so the planning is tested without a server. The layout is described in the parent
//! module's doc.

use std::collections::{BTreeMap, BTreeSet};

use pmcluster_spec::AppSpec;
use uuid::Uuid;

use crate::model::{
    AppRecord, Batch, ForgottenNode, InstanceRecord, NodeRecord, Persisted, TokenRecord,
};

/// Instances per chunk key: a chunk of 256 records is ~80 KB of JSON, and scaling by 1,000 touches
/// about 4 keys instead of 1,000.
pub const CHUNK: u32 = 256;

/// Bytes counted per operation beyond its key and value (protobuf tags and lengths, a range
/// end): an upper bound, so a batch the count admits is never one etcd refuses as too large.
const OP_OVERHEAD: usize = 24;
/// Bytes counted once per transaction (etcd wraps it in a raft request with a header).
const TXN_OVERHEAD: usize = 128;

/// The keys of one store, all under `P/` (`P` being the prefix without its trailing slash).
#[derive(Debug, Clone)]
pub struct Keys {
    /// `P/`.
    root: String,
}

impl Keys {
    /// `prefix` without a trailing slash, not empty.
    pub fn new(prefix: &str) -> Keys {
        Keys {
            root: format!("{prefix}/"),
        }
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn cluster_id(&self) -> String {
        format!("{}meta/cluster_id", self.root)
    }

    pub fn generation(&self) -> String {
        format!("{}meta/generation", self.root)
    }

    pub fn node(&self, name: &str) -> String {
        format!("{}nodes/{name}", self.root)
    }

    pub fn forgotten(&self, name: &str) -> String {
        format!("{}forgotten/{name}", self.root)
    }

    /// Token ids are hex (`core::access::TOKEN_ID_LEN` characters), so safe in a key.
    pub fn token(&self, id: &str) -> String {
        format!("{}tokens/{id}", self.root)
    }

    pub fn app(&self, name: &str) -> String {
        format!("{}apps/{name}", self.root)
    }

    /// The prefix of an app's older specs. App names hold no '/' (`pmcluster_spec::validate_name`),
    /// so the prefix of `web` never covers the keys of another app.
    pub fn specs_of(&self, app: &str) -> String {
        format!("{}specs/{app}/", self.root)
    }

    pub fn spec(&self, app: &str, version: u64) -> String {
        format!("{}specs/{app}/{version:020}", self.root)
    }

    pub fn instances_of(&self, app: &str) -> String {
        format!("{}instances/{app}/", self.root)
    }

    pub fn chunk(&self, app: &str, chunk: u32) -> String {
        format!("{}instances/{app}/{chunk:06}", self.root)
    }
}

/// The end of the range of every key starting with `prefix` (etcd's `range_end`).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only for a prefix of 0xff bytes, which no key of ours is: "\0" means "to the end".
    vec![0]
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    /// Every key starting with `prefix`.
    DeletePrefix {
        prefix: String,
    },
}

impl Op {
    fn bytes(&self) -> usize {
        OP_OVERHEAD
            + match self {
                Op::Put { key, value } => key.len() + value.len(),
                Op::Delete { key } => key.len(),
                // The range end is as long as the prefix.
                Op::DeletePrefix { prefix } => 2 * prefix.len(),
            }
    }
}

/// (operations, bytes) of a transaction of `ops`, with a compare on `fence_key` if any.
pub fn weigh(ops: &[Op], fence_key: Option<&[u8]>) -> (usize, usize) {
    let compare = fence_key.map_or(0, |k| k.len() + OP_OVERHEAD);
    let bytes = TXN_OVERHEAD + compare + ops.iter().map(Op::bytes).sum::<usize>();
    (ops.len(), bytes)
}

/// Which instance ids sit in which chunk, sorted by (index, id) as the chunk's JSON array is.
type ChunkIds = BTreeSet<(u32, Uuid)>;

/// What the store last read or wrote: the state, plus each app's chunks, so that a batch that
/// only names ids (`del_instances`) finds the keys it touches without a scan.
#[derive(Debug, Default)]
pub struct Mirror {
    pub state: Persisted,
    chunks: BTreeMap<String, BTreeMap<u32, ChunkIds>>,
}

impl Mirror {
    pub fn new(state: Persisted) -> Mirror {
        let mut chunks: BTreeMap<String, BTreeMap<u32, ChunkIds>> = BTreeMap::new();
        for inst in state.instances.values() {
            chunks
                .entry(inst.app.clone())
                .or_default()
                .entry(inst.index / CHUNK)
                .or_default()
                .insert((inst.index, inst.id));
        }
        Mirror { state, chunks }
    }

    fn chunk(&self, app: &str, chunk: u32) -> Option<&ChunkIds> {
        self.chunks.get(app).and_then(|c| c.get(&chunk))
    }

    /// Takes in a batch that etcd accepted, with the chunks its plan computed.
    pub fn commit(&mut self, batch: &Batch, plan: Plan) {
        self.state.apply(batch);
        for ((app, chunk), ids) in plan.chunks {
            let chunks = self.chunks.entry(app.clone()).or_default();
            if ids.is_empty() {
                chunks.remove(&chunk);
                if chunks.is_empty() {
                    self.chunks.remove(&app);
                }
            } else {
                chunks.insert(chunk, ids);
            }
        }
    }
}

/// The operations of one batch, and the chunks as they are once it is written.
#[derive(Debug, Default)]
pub struct Plan {
    pub ops: Vec<Op>,
    chunks: BTreeMap<(String, u32), ChunkIds>,
}

/// The app record as stored: without its older specs, which have keys of their own.
fn app_value(rec: &AppRecord) -> Result<Vec<u8>, serde_json::Error> {
    let bare = AppRecord {
        spec: rec.spec.clone(),
        version: rec.version,
        updated_at_ms: rec.updated_at_ms,
        versions: BTreeMap::new(),
        deployment: rec.deployment.clone(),
        history: rec.history.clone(),
        scaled: rec.scaled.clone(),
    };
    serde_json::to_vec(&bare)
}

/// The operations that make the stored state `mirror.state` with `batch` applied (in the order
/// `Persisted::apply` applies it: puts, then deletes).
pub fn plan(keys: &Keys, mirror: &Mirror, batch: &Batch) -> Result<Plan, serde_json::Error> {
    let mut ops = Vec::new();
    if let Some(id) = &batch.cluster_id {
        ops.push(Op::Put {
            key: keys.cluster_id(),
            value: id.as_bytes().to_vec(),
        });
    }
    if let Some(g) = batch.generation {
        ops.push(Op::Put {
            key: keys.generation(),
            value: g.to_string().into_bytes(),
        });
    }
    plan_nodes(keys, mirror, batch, &mut ops)?;
    plan_forgotten(keys, mirror, batch, &mut ops)?;
    plan_tokens(keys, mirror, batch, &mut ops)?;
    plan_apps(keys, mirror, batch, &mut ops)?;
    let chunks = plan_instances(keys, mirror, batch, &mut ops)?;
    Ok(Plan { ops, chunks })
}

fn plan_nodes(
    keys: &Keys,
    mirror: &Mirror,
    batch: &Batch,
    ops: &mut Vec<Op>,
) -> Result<(), serde_json::Error> {
    let mut after: BTreeMap<&str, Option<&NodeRecord>> = BTreeMap::new();
    for node in &batch.put_nodes {
        after.insert(&node.name, Some(node));
    }
    for name in &batch.del_nodes {
        after.insert(name, None);
    }
    for (name, node) in after {
        match node {
            Some(node) => ops.push(Op::Put {
                key: keys.node(name),
                value: serde_json::to_vec(node)?,
            }),
            None if mirror.state.nodes.contains_key(name) => ops.push(Op::Delete {
                key: keys.node(name),
            }),
            None => {}
        }
    }
    Ok(())
}

fn plan_forgotten(
    keys: &Keys,
    mirror: &Mirror,
    batch: &Batch,
    ops: &mut Vec<Op>,
) -> Result<(), serde_json::Error> {
    let mut after: BTreeMap<&str, Option<&ForgottenNode>> = BTreeMap::new();
    for node in &batch.put_forgotten {
        after.insert(&node.name, Some(node));
    }
    for name in &batch.del_forgotten {
        after.insert(name, None);
    }
    for (name, node) in after {
        match node {
            Some(node) => ops.push(Op::Put {
                key: keys.forgotten(name),
                value: serde_json::to_vec(node)?,
            }),
            None if mirror.state.forgotten.contains_key(name) => ops.push(Op::Delete {
                key: keys.forgotten(name),
            }),
            None => {}
        }
    }
    Ok(())
}

fn plan_tokens(
    keys: &Keys,
    mirror: &Mirror,
    batch: &Batch,
    ops: &mut Vec<Op>,
) -> Result<(), serde_json::Error> {
    let mut after: BTreeMap<&str, Option<&TokenRecord>> = BTreeMap::new();
    for token in &batch.put_tokens {
        after.insert(&token.id, Some(token));
    }
    for id in &batch.del_tokens {
        after.insert(id, None);
    }
    for (id, token) in after {
        match token {
            Some(token) => ops.push(Op::Put {
                key: keys.token(id),
                value: serde_json::to_vec(token)?,
            }),
            None if mirror.state.tokens.contains_key(id) => ops.push(Op::Delete {
                key: keys.token(id),
            }),
            None => {}
        }
    }
    Ok(())
}

fn plan_apps(
    keys: &Keys,
    mirror: &Mirror,
    batch: &Batch,
    ops: &mut Vec<Op>,
) -> Result<(), serde_json::Error> {
    let mut after: BTreeMap<&str, Option<&AppRecord>> = BTreeMap::new();
    for app in &batch.put_apps {
        after.insert(&app.spec.name, Some(app));
    }
    for name in &batch.del_apps {
        after.insert(name, None);
    }
    let no_versions = BTreeMap::new();
    for (name, app) in after {
        let before = mirror.state.apps.get(name);
        let Some(app) = app else {
            if let Some(before) = before {
                ops.push(Op::Delete {
                    key: keys.app(name),
                });
                if !before.versions.is_empty() {
                    ops.push(Op::DeletePrefix {
                        prefix: keys.specs_of(name),
                    });
                }
            }
            continue;
        };
        ops.push(Op::Put {
            key: keys.app(name),
            value: app_value(app)?,
        });
        // Only the specs that changed: an app keeps ten older specs of up to 1 MiB each, which
        // rewritten on every apply would not fit in one transaction.
        let old: &BTreeMap<u64, AppSpec> = before.map_or(&no_versions, |b| &b.versions);
        for (version, spec) in &app.versions {
            if old.get(version) != Some(spec) {
                ops.push(Op::Put {
                    key: keys.spec(name, *version),
                    value: serde_json::to_vec(spec)?,
                });
            }
        }
        for version in old.keys() {
            if !app.versions.contains_key(version) {
                ops.push(Op::Delete {
                    key: keys.spec(name, *version),
                });
            }
        }
    }
    Ok(())
}

fn plan_instances(
    keys: &Keys,
    mirror: &Mirror,
    batch: &Batch,
    ops: &mut Vec<Op>,
) -> Result<BTreeMap<(String, u32), ChunkIds>, serde_json::Error> {
    let mut puts: BTreeMap<Uuid, &InstanceRecord> = BTreeMap::new();
    for inst in &batch.put_instances {
        puts.insert(inst.id, inst);
    }
    let dels: BTreeSet<Uuid> = batch.del_instances.iter().copied().collect();
    // Every chunk the batch touches, as it is after the batch.
    let mut touched: BTreeMap<(String, u32), ChunkIds> = BTreeMap::new();
    fn touch<'t>(
        touched: &'t mut BTreeMap<(String, u32), ChunkIds>,
        mirror: &Mirror,
        app: &str,
        chunk: u32,
    ) -> &'t mut ChunkIds {
        touched
            .entry((app.to_string(), chunk))
            .or_insert_with(|| mirror.chunk(app, chunk).cloned().unwrap_or_default())
    }
    for id in puts.keys().chain(dels.iter()) {
        if let Some(old) = mirror.state.instances.get(id) {
            touch(&mut touched, mirror, &old.app, old.index / CHUNK).remove(&(old.index, *id));
        }
        if dels.contains(id) {
            continue;
        }
        if let Some(new) = puts.get(id) {
            touch(&mut touched, mirror, &new.app, new.index / CHUNK).insert((new.index, *id));
        }
    }
    let record = |id: &Uuid| -> Option<&InstanceRecord> {
        puts.get(id)
            .copied()
            .or_else(|| mirror.state.instances.get(id))
    };
    let mut by_app: BTreeMap<&str, Vec<(u32, &ChunkIds)>> = BTreeMap::new();
    for ((app, chunk), ids) in &touched {
        by_app.entry(app).or_default().push((*chunk, ids));
    }
    for (app, chunks) in by_app {
        let had = mirror.chunks.get(app).map_or(0, BTreeMap::len);
        // An app losing all its instances (it was deleted) is one range delete, not one
        // delete per chunk: 100,000 instances would be 391 operations.
        let all_gone = chunks.len() == had && chunks.iter().all(|(_, ids)| ids.is_empty());
        if all_gone && had > 1 {
            ops.push(Op::DeletePrefix {
                prefix: keys.instances_of(app),
            });
            continue;
        }
        for (chunk, ids) in chunks {
            if ids.is_empty() {
                if mirror.chunk(app, chunk).is_some() {
                    ops.push(Op::Delete {
                        key: keys.chunk(app, chunk),
                    });
                }
                continue;
            }
            let records: Vec<&InstanceRecord> =
                ids.iter().filter_map(|(_, id)| record(id)).collect();
            ops.push(Op::Put {
                key: keys.chunk(app, chunk),
                value: serde_json::to_vec(&records)?,
            });
        }
    }
    Ok(touched)
}

/// A stored value that does not parse: its key and why.
#[derive(Debug)]
pub struct Damaged {
    pub key: String,
    pub error: String,
}

fn json<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, Damaged> {
    serde_json::from_slice(value).map_err(|e| Damaged {
        key: key.to_string(),
        error: e.to_string(),
    })
}

fn text<'v>(key: &str, value: &'v [u8]) -> Result<&'v str, Damaged> {
    std::str::from_utf8(value).map_err(|e| Damaged {
        key: key.to_string(),
        error: e.to_string(),
    })
}

/// Rebuilds the state from every key under the root (read at one revision). Keys of other
/// subtrees (the leader election's) are not ours and are passed over. Older specs of an app
/// with no record are left over from nothing this store writes; they are passed over too, and
/// returned so the caller can say so.
pub fn parse(
    keys: &Keys,
    kvs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
) -> Result<(Persisted, Vec<String>), Damaged> {
    let mut state = Persisted::default();
    let mut specs: BTreeMap<String, BTreeMap<u64, AppSpec>> = BTreeMap::new();
    for (key, value) in kvs {
        let key = String::from_utf8_lossy(&key).into_owned();
        let Some(rest) = key.strip_prefix(keys.root()) else {
            continue;
        };
        let Some((tree, name)) = rest.split_once('/') else {
            continue;
        };
        match tree {
            "meta" if name == "cluster_id" => {
                state.cluster_id = text(&key, &value)?.to_string();
            }
            "meta" if name == "generation" => {
                state.generation = text(&key, &value)?.parse().map_err(|e| Damaged {
                    key: key.clone(),
                    error: format!("not a generation number: {e}"),
                })?;
            }
            "nodes" => {
                let node: NodeRecord = json(&key, &value)?;
                state.nodes.insert(node.name.clone(), node);
            }
            "forgotten" => {
                let node: ForgottenNode = json(&key, &value)?;
                state.forgotten.insert(node.name.clone(), node);
            }
            "tokens" => {
                let token: TokenRecord = json(&key, &value)?;
                state.tokens.insert(token.id.clone(), token);
            }
            "apps" => {
                let app: AppRecord = json(&key, &value)?;
                state.apps.insert(app.spec.name.clone(), app);
            }
            "specs" => {
                let version = name
                    .rsplit_once('/')
                    .and_then(|(app, v)| Some((app, v.parse::<u64>().ok()?)));
                let Some((app, version)) = version else {
                    return Err(Damaged {
                        key,
                        error: "not of the form specs/APP/VERSION".to_string(),
                    });
                };
                let spec: AppSpec = json(&key, &value)?;
                specs
                    .entry(app.to_string())
                    .or_default()
                    .insert(version, spec);
            }
            "instances" => {
                let records: Vec<InstanceRecord> = json(&key, &value)?;
                for inst in records {
                    state.instances.insert(inst.id, inst);
                }
            }
            _ => {}
        }
    }
    let mut orphans = Vec::new();
    for (app, versions) in specs {
        match state.apps.get_mut(&app) {
            Some(record) => record.versions = versions,
            None => orphans.push(app),
        }
    }
    state.reindex();
    Ok((state, orphans))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(app: &str, index: u32, n: u128) -> InstanceRecord {
        InstanceRecord {
            id: Uuid::from_u128(n),
            app: app.into(),
            index,
            node: Some("a".into()),
            port: None,
            app_version: 1,
            restart_epoch: 0,
            stopped: false,
            replaces: None,
            draining_since: None,
            created_ms: 0,
            avoid: Vec::new(),
            disabled: false,
        }
    }

    fn app(name: &str, versions: &[u64]) -> AppRecord {
        let spec = AppSpec::new(name, "node", &["server.js"]);
        AppRecord {
            versions: versions.iter().map(|v| (*v, spec.clone())).collect(),
            ..AppRecord::new(spec, 0)
        }
    }

    fn keys_of(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                Op::Put { key, .. } => format!("put {key}"),
                Op::Delete { key } => format!("del {key}"),
                Op::DeletePrefix { prefix } => format!("del {prefix}*"),
            })
            .collect()
    }

    /// Applies a batch the way the store does after etcd accepted it.
    fn committed(keys: &Keys, mirror: &mut Mirror, batch: &Batch) -> Vec<String> {
        let plan = plan(keys, mirror, batch).expect("plan");
        let shown = keys_of(&plan.ops);
        mirror.commit(batch, plan);
        shown
    }

    #[test]
    fn a_thousand_instances_are_four_chunks() {
        let keys = Keys::new("/p");
        let mut mirror = Mirror::default();
        let batch = Batch {
            put_apps: vec![app("web", &[])],
            put_instances: (0..1000).map(|i| inst("web", i, u128::from(i))).collect(),
            ..Batch::default()
        };
        let ops = committed(&keys, &mut mirror, &batch);
        assert_eq!(
            ops,
            [
                "put /p/apps/web",
                "put /p/instances/web/000000",
                "put /p/instances/web/000001",
                "put /p/instances/web/000002",
                "put /p/instances/web/000003",
            ]
        );
        // Removing the last 300 by id only: chunk 3 empties, chunk 2 is rewritten.
        let ops = committed(
            &keys,
            &mut mirror,
            &Batch {
                del_instances: (700..1000).map(Uuid::from_u128).collect(),
                ..Batch::default()
            },
        );
        assert_eq!(
            ops,
            ["put /p/instances/web/000002", "del /p/instances/web/000003"]
        );
        // Deleting the app and its instances: one range for the instances.
        let ops = committed(
            &keys,
            &mut mirror,
            &Batch {
                del_apps: vec!["web".into()],
                del_instances: (0..700).map(Uuid::from_u128).collect(),
                ..Batch::default()
            },
        );
        assert_eq!(ops, ["del /p/apps/web", "del /p/instances/web/*"]);
        assert!(mirror.chunks.is_empty() && mirror.state.instances.is_empty());
    }

    #[test]
    fn only_changed_specs_are_written() {
        let keys = Keys::new("/p");
        let mut mirror = Mirror::default();
        let ops = committed(&keys, &mut mirror, &Batch::app(app("web", &[1, 2])));
        assert_eq!(
            ops,
            [
                "put /p/apps/web",
                "put /p/specs/web/00000000000000000001",
                "put /p/specs/web/00000000000000000002",
            ]
        );
        let ops = committed(&keys, &mut mirror, &Batch::app(app("web", &[2, 3])));
        assert_eq!(
            ops,
            [
                "put /p/apps/web",
                "put /p/specs/web/00000000000000000003",
                "del /p/specs/web/00000000000000000001",
            ]
        );
        let ops = committed(
            &keys,
            &mut mirror,
            &Batch {
                del_apps: vec!["web".into()],
                ..Batch::default()
            },
        );
        assert_eq!(ops, ["del /p/apps/web", "del /p/specs/web/*"]);
    }

    #[test]
    fn a_moved_instance_leaves_its_old_chunk() {
        let keys = Keys::new("/p");
        let mut mirror = Mirror::default();
        committed(
            &keys,
            &mut mirror,
            &Batch {
                put_instances: vec![inst("web", 3, 1), inst("web", 300, 2)],
                ..Batch::default()
            },
        );
        let ops = committed(
            &keys,
            &mut mirror,
            &Batch {
                put_instances: vec![inst("api", 3, 1)],
                ..Batch::default()
            },
        );
        assert_eq!(
            ops,
            ["put /p/instances/api/000000", "del /p/instances/web/000000"]
        );
        // Deleting an id the store never had writes nothing.
        let ops = committed(
            &keys,
            &mut mirror,
            &Batch {
                del_instances: vec![Uuid::from_u128(99)],
                ..Batch::default()
            },
        );
        assert!(ops.is_empty(), "{ops:?}");
    }

    #[test]
    fn parse_reads_back_what_plan_writes() {
        let keys = Keys::new("/p");
        let mut mirror = Mirror::default();
        let batch = Batch {
            put_apps: vec![app("web", &[1, 2])],
            put_instances: (0..600).map(|i| inst("web", i, u128::from(i))).collect(),
            put_forgotten: vec![ForgottenNode {
                name: "gone".into(),
                sent_up_to: 4,
                generation: 7,
                forgotten_ms: 12,
            }],
            generation: Some(9),
            cluster_id: Some("c1".into()),
            ..Batch::default()
        };
        let plan = plan(&keys, &mirror, &batch).expect("plan");
        let kvs: Vec<(Vec<u8>, Vec<u8>)> = plan
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Put { key, value } => Some((key.clone().into_bytes(), value.clone())),
                _ => None,
            })
            .chain([(b"/p/election/x".to_vec(), b"not ours".to_vec())])
            .collect();
        mirror.commit(&batch, plan);
        let (state, orphans) = parse(&keys, kvs).expect("parse");
        assert_eq!(state, mirror.state);
        assert_eq!(state.forgotten.len(), 1);
        assert!(orphans.is_empty());
        // A forgotten node that came back: its key goes; one never stored writes nothing.
        let ops = committed(
            &keys,
            &mut mirror,
            &Batch {
                del_forgotten: vec!["gone".into(), "never".into()],
                ..Batch::default()
            },
        );
        assert_eq!(ops, ["del /p/forgotten/gone"]);
        let Err(bad) = parse(&keys, [(b"/p/apps/web".to_vec(), b"{".to_vec())]) else {
            panic!("a damaged value parsed");
        };
        assert_eq!(bad.key, "/p/apps/web");
    }

    #[test]
    fn weighing_counts_ops_and_bytes() {
        let ops = vec![
            Op::Put {
                key: "k".into(),
                value: vec![0; 100],
            },
            Op::Delete { key: "k2".into() },
        ];
        let (n, bytes) = weigh(&ops, Some(b"leader"));
        assert_eq!(n, 2);
        assert_eq!(
            bytes,
            TXN_OVERHEAD + (6 + OP_OVERHEAD) + (101 + OP_OVERHEAD) + (2 + OP_OVERHEAD)
        );
        assert_eq!(prefix_end("/p/"), b"/p0".to_vec());
    }
}
