//! Persistence of desired state behind a trait, so the embedded single-file store and a later etcd
//! store are interchangeable. Writes are whole batches: all or nothing.

mod embedded;
mod memory;

pub use embedded::EmbeddedStore;
pub use memory::MemoryStore;

use crate::model::{Batch, Persisted};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("store i/o: {0}")]
    Io(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("corrupt record {key:?} in table {table}: {source}")]
    Corrupt {
        table: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A durable home for [`Persisted`] state.
pub trait Store: Send + Sync + 'static {
    /// Everything stored.
    fn load(&self) -> Result<Persisted, StoreError>;
    /// Writes a batch atomically and durably before returning.
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;
}
