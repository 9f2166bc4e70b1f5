//! The default store: one redb file in the coordinator's data dir. Records are JSON values keyed
//! by name or id, so the file stays readable across versions of the domain types.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Store, StoreError};
use crate::model::{Batch, Persisted};

const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const GENERATION: &str = "generation";
/// Text-valued metadata (the cluster id).
const IDENTITY: TableDefinition<&str, &str> = TableDefinition::new("identity");
const CLUSTER_ID: &str = "cluster_id";

pub struct EmbeddedStore {
    db: Database,
}

fn io(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Io(Box::new(e))
}

impl EmbeddedStore {
    /// Opens or creates `path`. Fails when another coordinator holds the file.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        let db = Database::create(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            source: Box::new(e),
        })?;
        // Create the tables up front so reads of a fresh file find them.
        let tx = db.begin_write().map_err(io)?;
        {
            tx.open_table(APPS).map_err(io)?;
            tx.open_table(INSTANCES).map_err(io)?;
            tx.open_table(NODES).map_err(io)?;
            tx.open_table(META).map_err(io)?;
            tx.open_table(IDENTITY).map_err(io)?;
        }
        tx.commit().map_err(io)?;
        Ok(EmbeddedStore { db })
    }
}

fn read_all<T: DeserializeOwned>(
    tx: &redb::ReadTransaction,
    def: TableDefinition<&str, &[u8]>,
    table: &'static str,
) -> Result<Vec<T>, StoreError> {
    let t = tx.open_table(def).map_err(io)?;
    let mut out = Vec::new();
    for row in t.iter().map_err(io)? {
        let (k, v) = row.map_err(io)?;
        let value = serde_json::from_slice(v.value()).map_err(|source| StoreError::Corrupt {
            table,
            key: k.value().to_string(),
            source,
        })?;
        out.push(value);
    }
    Ok(out)
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(io)
}

impl Store for EmbeddedStore {
    fn load(&self) -> Result<Persisted, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let mut state = Persisted::default();
        for app in read_all::<crate::model::AppRecord>(&tx, APPS, "apps")? {
            state.apps.insert(app.spec.name.clone(), app);
        }
        for inst in read_all::<crate::model::InstanceRecord>(&tx, INSTANCES, "instances")? {
            state.instances.insert(inst.id, inst);
        }
        for node in read_all::<crate::model::NodeRecord>(&tx, NODES, "nodes")? {
            state.nodes.insert(node.name.clone(), node);
        }
        let meta = tx.open_table(META).map_err(io)?;
        state.generation = meta
            .get(GENERATION)
            .map_err(io)?
            .map(|g| g.value())
            .unwrap_or(0);
        let identity = tx.open_table(IDENTITY).map_err(io)?;
        state.cluster_id = identity
            .get(CLUSTER_ID)
            .map_err(io)?
            .map(|g| g.value().to_string())
            .unwrap_or_default();
        Ok(state)
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(io)?;
        {
            let mut apps = tx.open_table(APPS).map_err(io)?;
            for app in &batch.put_apps {
                apps.insert(app.spec.name.as_str(), encode(app)?.as_slice())
                    .map_err(io)?;
            }
            for name in &batch.del_apps {
                apps.remove(name.as_str()).map_err(io)?;
            }
            let mut insts = tx.open_table(INSTANCES).map_err(io)?;
            for inst in &batch.put_instances {
                let key = inst.id.to_string();
                insts
                    .insert(key.as_str(), encode(inst)?.as_slice())
                    .map_err(io)?;
            }
            for id in &batch.del_instances {
                insts.remove(id.to_string().as_str()).map_err(io)?;
            }
            let mut nodes = tx.open_table(NODES).map_err(io)?;
            for node in &batch.put_nodes {
                nodes
                    .insert(node.name.as_str(), encode(node)?.as_slice())
                    .map_err(io)?;
            }
            for name in &batch.del_nodes {
                nodes.remove(name.as_str()).map_err(io)?;
            }
            if let Some(id) = &batch.cluster_id {
                let mut identity = tx.open_table(IDENTITY).map_err(io)?;
                identity.insert(CLUSTER_ID, id.as_str()).map_err(io)?;
            }
            if let Some(g) = batch.generation {
                let mut meta = tx.open_table(META).map_err(io)?;
                meta.insert(GENERATION, g).map_err(io)?;
            }
        }
        tx.commit().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AppRecord, InstanceRecord, NodeRecord};
    use pmcluster_spec::AppSpec;

    #[test]
    fn survives_reopen() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.redb");
        let app = AppRecord {
            version: 3,
            ..AppRecord::new(AppSpec::new("web", "node", &["server.js"]), 42)
        };
        let inst = InstanceRecord {
            id: uuid::Uuid::from_u128(7),
            app: "web".into(),
            index: 0,
            node: Some("a".into()),
            port: Some(4100),
            app_version: 3,
            restart_epoch: 1,
            stopped: false,
            replaces: None,
            draining_since: None,
            created_ms: 0,
        };
        let node = NodeRecord {
            name: "a".into(),
            labels: [("zone".to_string(), "x".to_string())].into(),
            cores: 2,
            memory_bytes: 1 << 30,
            hostname: "h".into(),
            agent_version: "0.1.0".into(),
            generation: 5,
            drain: false,
            address: "127.0.0.1".into(),
        };
        let batch = Batch {
            put_apps: vec![app],
            put_instances: vec![inst],
            put_nodes: vec![node],
            generation: Some(5),
            ..Batch::default()
        };
        let mut want = Persisted::default();
        want.apply(&batch);
        {
            let store = EmbeddedStore::open(&path)?;
            store.commit(&batch)?;
        }
        let store = EmbeddedStore::open(&path)?;
        assert_eq!(store.load()?, want);
        store.commit(&Batch {
            del_apps: vec!["web".into()],
            del_instances: vec![uuid::Uuid::from_u128(7)],
            ..Batch::default()
        })?;
        let got = store.load()?;
        assert!(got.apps.is_empty() && got.instances.is_empty());
        assert_eq!(got.nodes.len(), 1);
        Ok(())
    }
}
