//! Cluster mode's [`StateBackend`]: writes through the replicated log ([`Replica`]),
//! reads from this node's copy, consistent reads from the stream.

use super::replica::Replica;
use super::{KvLimits, LocalState, Namespace, Op, OpResult, StateBackend, StateError};
use futures::future::BoxFuture;
use std::sync::Arc;

/// Cluster mode's state: writes through the replicated log, reads from this node's copy.
pub struct ReplicatedState {
    local: Arc<LocalState>,
    replica: Arc<Replica>,
}

impl std::fmt::Debug for ReplicatedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedState")
            .field("local", &self.local)
            .finish()
    }
}

impl ReplicatedState {
    /// Writes through `replica`, applied to `local` (start [`Replica::apply_forever`]).
    pub fn new(local: Arc<LocalState>, replica: Arc<Replica>) -> Arc<ReplicatedState> {
        Arc::new(ReplicatedState { local, replica })
    }

    /// This node's copy.
    pub fn local(&self) -> &Arc<LocalState> {
        &self.local
    }

    /// The replicated log.
    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }
}

impl StateBackend for ReplicatedState {
    fn write_once(
        &self,
        op: Op,
        limits: KvLimits,
        idem: Option<String>,
    ) -> BoxFuture<'_, Result<OpResult, StateError>> {
        Box::pin(self.replica.write(&self.local, op, limits, idem))
    }

    fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.local.get(ns, key)
    }

    fn get_consistent<'a>(
        &'a self,
        ns: &'a Namespace,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StateError>> {
        Box::pin(self.replica.get_strong(ns, key))
    }

    fn list(
        &self,
        ns: &Namespace,
        prefix: &str,
        cursor: u64,
    ) -> Result<(Vec<String>, Option<u64>), StateError> {
        self.local.list(ns, prefix, cursor)
    }

    fn usage(&self, function: &str) -> Result<(u64, u64), StateError> {
        self.local.usage(function)
    }
}
