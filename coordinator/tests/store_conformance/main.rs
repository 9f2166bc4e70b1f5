//! One suite for every store: the same cases against the memory store, the embedded store (a
//! temp dir) and the etcd store (an etcd of its own, one prefix per case), so that the stores
//! are interchangeable behind `Store`. The etcd store's own behaviour (transaction limits,
//! fencing, an unreachable etcd) is in `etcd_only`.

mod cases;
#[cfg(feature = "etcd")]
mod etcd_only;

use std::path::PathBuf;
use std::sync::Arc;

use pmcluster_coordinator::model::{Batch, Persisted};
use pmcluster_coordinator::store::{EmbeddedStore, MemoryStore, Store, StoreError};

use cases::{Backend, run_all};

/// The memory store "reopened" is the same store: its state lives as long as the backend.
struct Memory(Arc<MemoryStore>);

struct SharedMemory(Arc<MemoryStore>);

impl Store for SharedMemory {
    fn load(&self) -> Result<Persisted, StoreError> {
        self.0.load()
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        self.0.commit(batch)
    }
}

impl Backend for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn open(&mut self) -> Box<dyn Store> {
        Box::new(SharedMemory(self.0.clone()))
    }
}

struct Embedded {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Backend for Embedded {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn open(&mut self) -> Box<dyn Store> {
        match EmbeddedStore::open(&self.path) {
            Ok(store) => Box::new(store),
            Err(e) => panic!("opening the embedded store: {e}"),
        }
    }
}

#[test]
fn memory_store_conforms() {
    run_all(|_| Box::new(Memory(Arc::default())));
}

#[test]
fn embedded_store_conforms() {
    run_all(|_| {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("state.redb");
        Box::new(Embedded { _dir: dir, path })
    });
}

#[cfg(not(feature = "etcd"))]
#[test]
fn etcd_store_conforms() {
    pmcluster_tests::skip(
        "etcd",
        "built without the etcd feature (cargo test -p pmcluster-coordinator --features etcd)",
    );
}
