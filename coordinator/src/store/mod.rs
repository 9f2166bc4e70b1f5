//! Persistence of desired state behind a trait, so the embedded single-file store and a later etcd
//! store are interchangeable. Writes are whole batches: all or nothing.

mod embedded;
mod memory;

pub use embedded::EmbeddedStore;
pub use memory::MemoryStore;

use crate::model::{Batch, Persisted};

/// What to do about a state file that cannot be read. An empty cluster forgets every app, so
/// restoring comes first.
const WHAT_NEXT: &str = "restore it from a backup, or move it aside to start an empty cluster";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // The cause is in the message, not the source chain, so that the advice comes last.
    #[error("cannot open the store at {path}: {error}; check the file and its directory")]
    Open {
        path: String,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "cannot open the store at {path}: permission denied; run the coordinator as the user \
         that owns it, or fix its permissions"
    )]
    PermissionDenied { path: String },
    #[error(
        "the store at {path} is in use by another coordinator (one coordinator per data dir): \
         stop that one first, or give this one another --data-dir"
    )]
    Locked { path: String },
    /// The file cannot be trusted: empty, not a redb file, failing redb's integrity check, or
    /// making redb panic.
    #[error("the store at {path} {why}: {WHAT_NEXT}")]
    Damaged { path: String, why: String },
    #[error("store i/o: {0}")]
    Io(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(
        "the store at {path} holds a damaged record {key:?} in table {table} ({error}): \
         {WHAT_NEXT}"
    )]
    Corrupt {
        path: String,
        table: &'static str,
        key: String,
        error: serde_json::Error,
    },
}

/// A durable home for [`Persisted`] state.
pub trait Store: Send + Sync + 'static {
    /// Everything stored.
    fn load(&self) -> Result<Persisted, StoreError>;
    /// Writes a batch atomically and durably before returning.
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;
}
