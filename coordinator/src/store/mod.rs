//! Persistence of desired state behind a trait, so the embedded single-file store and a later etcd
//! store are interchangeable. Writes are whole batches: all or nothing.

mod embedded;
#[cfg(feature = "etcd")]
pub mod etcd;
mod memory;

pub use embedded::EmbeddedStore;
#[cfg(feature = "etcd")]
pub use etcd::{EtcdConfig, EtcdStore, Fence};
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
    /// A fenced store (the etcd store of an HA pair) was asked to write without a fence: this
    /// coordinator is not the leader.
    #[error("this coordinator is not the leader, so it does not write to the store")]
    NotLeader,
    /// The leader key this coordinator's writes are conditioned on is gone or was recreated:
    /// another coordinator leads now. Nothing was written.
    #[error(
        "refused by the fence: this coordinator is no longer the leader (its leader key in etcd \
         is gone or belongs to another coordinator now); nothing was written"
    )]
    Fenced,
    /// etcd cannot be reached, has no quorum, or did not answer in time. The whole message (it
    /// names the endpoints and the cause); build it with [`StoreError::unavailable`]. A commit
    /// that fails so may or may not have been applied: reload before trusting memory.
    #[error("{0}")]
    Unavailable(String),
    /// One write would not fit in one etcd transaction. Nothing was written.
    #[error(
        "this change needs {ops} store operations and {bytes} bytes in one etcd transaction, \
         over its limits ({max_ops} operations, {max_bytes} bytes); nothing was written: make \
         the change in smaller steps (scale by fewer instances at a time; restart with \
         --rolling, or stop and restart with --instance)"
    )]
    TooLarge {
        ops: usize,
        bytes: usize,
        max_ops: usize,
        max_bytes: usize,
    },
    /// A value under the etcd store's prefix that does not parse.
    #[error(
        "the store (etcd at {endpoints}) holds a damaged value at key {key:?} ({error}): restore \
         the prefix from a backup, or delete the key if its record may be lost"
    )]
    CorruptKey {
        endpoints: String,
        key: String,
        error: String,
    },
    /// A setting of the etcd store that cannot work; the message names it.
    #[error("invalid etcd store setting: {0}")]
    Invalid(String),
}

impl StoreError {
    /// [`StoreError::Unavailable`] for etcd at `endpoints`, failing for `cause`.
    pub fn unavailable(endpoints: &[String], cause: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable(format!(
            "the store (etcd at {}) is unavailable: {cause}; writes resume when etcd has quorum",
            endpoints.join(",")
        ))
    }
}

/// A durable home for [`Persisted`] state.
pub trait Store: Send + Sync + 'static {
    /// Everything stored.
    fn load(&self) -> Result<Persisted, StoreError>;
    /// Writes a batch atomically and durably before returning.
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;
}
