//! The default store: one redb file in the coordinator's data dir. Records are JSON values keyed
//! by name or id, so the file stays readable across versions of the domain types.
//!
//! A file damaged outside redb (truncated, zeroed, overwritten) must be an error that names it,
//! never a crash: the open runs redb's integrity check, and open and load run with panics caught
//! (redb may panic on such a file rather than return an error).

use std::any::Any;
use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError, TableDefinition,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Store, StoreError};
use crate::model::{Batch, Persisted};

const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const FORGOTTEN: TableDefinition<&str, &[u8]> = TableDefinition::new("forgotten");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const GENERATION: &str = "generation";
/// Text-valued metadata (the cluster id).
const IDENTITY: TableDefinition<&str, &str> = TableDefinition::new("identity");
const CLUSTER_ID: &str = "cluster_id";

pub struct EmbeddedStore {
    db: Database,
    path: PathBuf,
}

fn io(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Io(Box::new(e))
}

/// Runs `f` with a panic turned into `Err(message)`, printing nothing for it: a panic inside
/// redb means a damaged file, which the caller reports as such. Panics of other threads in the
/// meantime still reach the hook that was there before.
fn catching_panics<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    type Hook = Box<dyn Fn(&PanicHookInfo<'_>) + Send + Sync>;
    // Hooks are process-wide: one swap at a time.
    static SWAP: Mutex<()> = Mutex::new(());
    let _one = SWAP.lock().unwrap_or_else(|e| e.into_inner());
    let previous: Arc<Hook> = Arc::new(panic::take_hook());
    let caller = std::thread::current().id();
    let others = previous.clone();
    panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != caller {
            others(info);
        }
    }));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    panic::set_hook(Box::new(move |info| previous(info)));
    result.map_err(|payload| panic_message(payload.as_ref()))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string())
}

/// Makes `path` readable by the coordinator's user only (`want`: 0600 for the state file, 0700
/// for its directory) when group or others have any permission on it: the file holds every
/// app's environment. Said at warn when it held state already, since someone may have read it.
fn owner_only(path: &Path, want: u32, existed: bool) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return;
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(want)) {
        Ok(()) if existed => tracing::warn!(
            path = %path.display(),
            "was mode {mode:04o}, readable beyond its owner; now {want:04o}"
        ),
        Ok(()) => tracing::info!(path = %path.display(), "mode {want:04o} (was {mode:04o})"),
        Err(e) => tracing::warn!(
            path = %path.display(),
            "cannot make it its owner's only (mode {mode:04o}): {e}"
        ),
    }
}

impl EmbeddedStore {
    /// Opens or creates `path`. Fails when another coordinator holds the file, and when the file
    /// is empty, not a redb file, or damaged.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        let shown = path.display().to_string();
        let damaged = |why: String| StoreError::Damaged {
            path: shown.clone(),
            why,
        };
        // redb would make a fresh database of an empty file; but an empty file here is a store
        // that lost its contents (a truncation), and starting empty in its place must be a choice.
        let existed = match std::fs::metadata(path) {
            Ok(m) if m.len() == 0 => {
                return Err(damaged("is empty (0 bytes)".to_string()));
            }
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(StoreError::PermissionDenied { path: shown });
            }
            Err(e) => {
                return Err(StoreError::Open {
                    path: shown,
                    error: Box::new(e),
                });
            }
        };
        // The directory first: once it is closed, the file redb creates is nobody else's
        // even before its own mode is set.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            owner_only(dir, 0o700, existed);
        }
        let opened = catching_panics(|| {
            Database::builder()
                // Every page's checksum, not only after a crash: a file altered outside redb is
                // then an error rather than a panic or garbage later. It reads the whole file
                // once per start, which a coordinator's store (megabytes) affords.
                .set_check_integrity_on_open(true)
                .create(path)
        })
        .map_err(|panic| damaged(format!("is damaged (reading it failed: {panic})")))?;
        let db = opened.map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                path: shown.clone(),
            },
            DatabaseError::Storage(StorageError::Io(e))
                if e.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                StoreError::PermissionDenied {
                    path: shown.clone(),
                }
            }
            DatabaseError::Storage(StorageError::Io(e))
                if e.kind() == std::io::ErrorKind::InvalidData =>
            {
                damaged(format!("is not a pmcluster state file ({e})"))
            }
            DatabaseError::Storage(StorageError::Corrupted(why)) => {
                damaged(format!("is damaged ({why})"))
            }
            // Shorter than redb's header: cut off while it was first written, or truncated.
            DatabaseError::Storage(StorageError::Io(e))
                if e.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                damaged(format!("is truncated ({e})"))
            }
            other => StoreError::Open {
                path: shown.clone(),
                error: Box::new(other),
            },
        })?;
        owner_only(path, 0o600, existed);
        let store = EmbeddedStore {
            db,
            path: path.to_path_buf(),
        };
        // Create the tables up front so reads of a fresh file find them.
        catching_panics(|| store.create_tables())
            .map_err(|panic| damaged(format!("is damaged (writing it failed: {panic})")))??;
        Ok(store)
    }

    fn create_tables(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(io)?;
        {
            tx.open_table(APPS).map_err(io)?;
            tx.open_table(INSTANCES).map_err(io)?;
            tx.open_table(NODES).map_err(io)?;
            tx.open_table(TOKENS).map_err(io)?;
            tx.open_table(FORGOTTEN).map_err(io)?;
            tx.open_table(META).map_err(io)?;
            tx.open_table(IDENTITY).map_err(io)?;
        }
        tx.commit().map_err(io)
    }

    fn load_tables(&self) -> Result<Persisted, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let mut state = Persisted::default();
        for app in read_all::<crate::model::AppRecord>(&tx, APPS, "apps", &self.path)? {
            state.apps.insert(app.spec.name.clone(), app);
        }
        for inst in
            read_all::<crate::model::InstanceRecord>(&tx, INSTANCES, "instances", &self.path)?
        {
            state.instances.insert(inst.id, inst);
        }
        for node in read_all::<crate::model::NodeRecord>(&tx, NODES, "nodes", &self.path)? {
            state.nodes.insert(node.name.clone(), node);
        }
        for token in read_all::<crate::model::TokenRecord>(&tx, TOKENS, "tokens", &self.path)? {
            state.tokens.insert(token.id.clone(), token);
        }
        for node in
            read_all::<crate::model::ForgottenNode>(&tx, FORGOTTEN, "forgotten", &self.path)?
        {
            state.forgotten.insert(node.name.clone(), node);
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
        state.reindex();
        Ok(state)
    }
}

fn read_all<T: DeserializeOwned>(
    tx: &redb::ReadTransaction,
    def: TableDefinition<&str, &[u8]>,
    table: &'static str,
    path: &Path,
) -> Result<Vec<T>, StoreError> {
    let t = tx.open_table(def).map_err(io)?;
    let mut out = Vec::new();
    for row in t.iter().map_err(io)? {
        let (k, v) = row.map_err(io)?;
        let value = serde_json::from_slice(v.value()).map_err(|error| StoreError::Corrupt {
            path: path.display().to_string(),
            table,
            key: pmcluster_spec::cut(k.value(), 128),
            error,
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
        let damaged = |why: String| StoreError::Damaged {
            path: self.path.display().to_string(),
            why: format!("is damaged (reading it failed: {why})"),
        };
        match catching_panics(|| self.load_tables()) {
            Err(panic) => Err(damaged(panic)),
            Ok(Err(StoreError::Io(e))) => Err(damaged(e.to_string())),
            Ok(loaded) => loaded,
        }
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
            if !batch.put_forgotten.is_empty() || !batch.del_forgotten.is_empty() {
                let mut forgotten = tx.open_table(FORGOTTEN).map_err(io)?;
                for node in &batch.put_forgotten {
                    forgotten
                        .insert(node.name.as_str(), encode(node)?.as_slice())
                        .map_err(io)?;
                }
                for name in &batch.del_forgotten {
                    forgotten.remove(name.as_str()).map_err(io)?;
                }
            }
            if !batch.put_tokens.is_empty() || !batch.del_tokens.is_empty() {
                let mut tokens = tx.open_table(TOKENS).map_err(io)?;
                for token in &batch.put_tokens {
                    tokens
                        .insert(token.id.as_str(), encode(token)?.as_slice())
                        .map_err(io)?;
                }
                for id in &batch.del_tokens {
                    tokens.remove(id.as_str()).map_err(io)?;
                }
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
    use crate::model::{AppRecord, ForgottenNode, InstanceRecord, NodeRecord};
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
            avoid: Vec::new(),
            disabled: false,
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
            sent_generation: Some(4),
            restarts_unseen: [(uuid::Uuid::from_u128(7), 3)].into(),
        };
        let gone = |name: &str| ForgottenNode {
            name: name.into(),
            sent_up_to: 3,
            generation: 4,
            forgotten_ms: 99,
        };
        let batch = Batch {
            put_apps: vec![app],
            put_instances: vec![inst],
            put_nodes: vec![node],
            put_forgotten: vec![gone("b"), gone("c")],
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
            del_forgotten: vec!["b".into()],
            ..Batch::default()
        })?;
        let got = store.load()?;
        assert!(got.apps.is_empty() && got.instances.is_empty());
        assert_eq!(got.nodes.len(), 1);
        assert_eq!(got.forgotten.into_values().collect::<Vec<_>>(), [gone("c")]);
        Ok(())
    }

    /// A store file as a test damages it.
    fn damaged_copy(
        damage: impl FnOnce(&Path),
    ) -> Result<(tempfile::TempDir, PathBuf), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.redb");
        {
            let store = EmbeddedStore::open(&path)?;
            store.commit(&Batch {
                put_apps: vec![AppRecord::new(AppSpec::new("web", "node", &[]), 1)],
                generation: Some(3),
                ..Batch::default()
            })?;
        }
        damage(&path);
        Ok((dir, path))
    }

    /// `check(damage, words)`: opening (and loading) the damaged file fails, with an error that
    /// names the file and says what to do.
    #[test]
    fn damaged_files_are_errors() -> Result<(), Box<dyn std::error::Error>> {
        type Damage = fn(&Path);
        let cases: Vec<(Damage, &str)> = vec![
            (
                |p| std::fs::write(p, b"").expect("truncate"),
                "is empty (0 bytes)",
            ),
            (
                |p| std::fs::write(p, vec![0x5a; 70_000]).expect("overwrite"),
                "is not a pmcluster state file",
            ),
            (
                |p| {
                    let mut bytes = std::fs::read(p).expect("read");
                    bytes.truncate(10_000);
                    std::fs::write(p, bytes).expect("write");
                },
                "is damaged",
            ),
            (
                |p| {
                    let mut bytes = std::fs::read(p).expect("read");
                    bytes.truncate(300);
                    std::fs::write(p, bytes).expect("write");
                },
                "is truncated",
            ),
            (
                |p| {
                    let mut bytes = std::fs::read(p).expect("read");
                    bytes[512..].fill(0);
                    std::fs::write(p, bytes).expect("write");
                },
                "is damaged",
            ),
            (
                |p| {
                    // A record that is not JSON: the file is sound, its content is not.
                    let db = Database::create(p).expect("open");
                    let tx = db.begin_write().expect("write");
                    {
                        let mut apps = tx.open_table(APPS).expect("table");
                        apps.insert("web", b"{not json".as_slice()).expect("insert");
                    }
                    tx.commit().expect("commit");
                },
                "holds a damaged record \"web\" in table apps",
            ),
        ];
        for (damage, words) in cases {
            let (_dir, path) = damaged_copy(damage)?;
            let err = match EmbeddedStore::open(&path) {
                Err(e) => e,
                Ok(store) => match store.load() {
                    Err(e) => e,
                    Ok(_) => panic!("{words}: the damaged store loaded"),
                },
            };
            let text = err.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains(words), "want {words:?}: {text}");
            assert!(
                text.ends_with(
                    "restore it from a backup, or move it aside to start an empty cluster"
                ),
                "{text}"
            );
        }
        Ok(())
    }

    /// Issue 12 item 4: a new state file and its dir are the owner's only; an existing store
    /// left readable by all is tightened when opened, and keeps its contents.
    #[test]
    fn state_file_and_dir_are_owner_only() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| -> std::io::Result<u32> {
            Ok(std::fs::metadata(p)?.permissions().mode() & 0o7777)
        };
        let root = tempfile::tempdir()?;
        let dir = root.path().join("data");
        std::fs::create_dir(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let path = dir.join("state.redb");
        {
            let store = EmbeddedStore::open(&path)?;
            store.commit(&Batch {
                generation: Some(7),
                ..Batch::default()
            })?;
        }
        assert_eq!(mode(&dir)?, 0o700);
        assert_eq!(mode(&path)?, 0o600);

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        let store = EmbeddedStore::open(&path)?;
        assert_eq!(mode(&dir)?, 0o700);
        assert_eq!(mode(&path)?, 0o600);
        assert_eq!(store.load()?.generation, 7);
        Ok(())
    }

    #[test]
    fn a_second_open_names_the_other_coordinator() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.redb");
        let _first = EmbeddedStore::open(&path)?;
        let Err(err) = EmbeddedStore::open(&path) else {
            panic!("a second open succeeded");
        };
        let text = err.to_string();
        assert!(matches!(err, StoreError::Locked { .. }), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("in use by another coordinator"), "{text}");
        Ok(())
    }

    #[test]
    fn panics_become_errors() {
        assert_eq!(catching_panics(|| 7), Ok(7));
        let caught = catching_panics(|| -> u32 { panic!("bad page {}", 12) });
        assert_eq!(caught, Err("bad page 12".to_string()));
        // The hook is back: a later panic elsewhere is still caught by the test harness.
        assert!(std::panic::catch_unwind(|| ()).is_ok());
    }
}
