//! An in-memory store for tests and simulations.

use std::sync::Mutex;

use super::{Store, StoreError};
use crate::model::{Batch, Persisted};

#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<Persisted>,
}

impl MemoryStore {
    /// A store that holds `state` already: a copy restored from a backup, in tests.
    pub fn holding(state: Persisted) -> MemoryStore {
        MemoryStore {
            state: Mutex::new(state),
        }
    }
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Persisted, StoreError> {
        Ok(self.state.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(batch);
        Ok(())
    }
}
