//! Cluster mode's [`StateBackend`]: writes through the replicated log ([`Replica`]),
//! reads from this node's copy, consistent reads from the stream.
//!
//! A node may start while NATS is unreachable ([`ReplicatedState::offline`]): it then
//! answers reads from its copy, which may be stale until it has caught up with the log,
//! and refuses writes with an error that names NATS, so that no write bypasses the log
//! (no split brain). [`ReplicatedState::attach`] joins the log once NATS answers.

use super::replica::Replica;
use super::{KvLimits, LocalState, Namespace, Op, OpResult, StateBackend, StateError};
use futures::future::BoxFuture;
use std::sync::{Arc, OnceLock};

/// Cluster mode's state: writes through the replicated log, reads from this node's copy.
pub struct ReplicatedState {
    local: Arc<LocalState>,
    replica: OnceLock<Arc<Replica>>,
}

impl std::fmt::Debug for ReplicatedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedState")
            .field("local", &self.local)
            .field("attached", &self.replica.get().is_some())
            .finish()
    }
}

impl ReplicatedState {
    /// Writes through `replica`, applied to `local` (start [`Replica::apply_forever`]).
    pub fn new(local: Arc<LocalState>, replica: Arc<Replica>) -> Arc<ReplicatedState> {
        let state = Self::offline(local);
        state.attach(replica);
        state
    }

    /// Reads from `local`; writes fail until [`ReplicatedState::attach`].
    pub fn offline(local: Arc<LocalState>) -> Arc<ReplicatedState> {
        Arc::new(ReplicatedState {
            local,
            replica: OnceLock::new(),
        })
    }

    /// Writes go through `replica` from now on (the first one attached stays).
    pub fn attach(&self, replica: Arc<Replica>) {
        let _ = self.replica.set(replica);
    }

    /// This node's copy.
    pub fn local(&self) -> &Arc<LocalState> {
        &self.local
    }

    /// The replicated log, once attached.
    pub fn replica(&self) -> Option<&Arc<Replica>> {
        self.replica.get()
    }

    fn attached(&self) -> Result<&Arc<Replica>, StateError> {
        self.replica.get().ok_or_else(|| {
            StateError::Log(
                "NATS has not answered since this node started, so the cluster's state log cannot take the write; the write was not applied — retry once NATS is reachable (reads answer from this node's copy, possibly stale)".into(),
            )
        })
    }
}

impl StateBackend for ReplicatedState {
    fn write_once(
        &self,
        op: Op,
        limits: KvLimits,
        idem: Option<String>,
    ) -> BoxFuture<'_, Result<OpResult, StateError>> {
        Box::pin(async move { self.attached()?.write(&self.local, op, limits, idem).await })
    }

    fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.local.get(ns, key)
    }

    fn get_consistent<'a>(
        &'a self,
        ns: &'a Namespace,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StateError>> {
        Box::pin(async move { self.attached()?.get_strong(ns, key).await })
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

    fn position(&self) -> u64 {
        self.local.log_applied()
    }

    fn wait_position(&self, at: u64, max: std::time::Duration) -> BoxFuture<'_, bool> {
        Box::pin(self.local.wait_applied(at, max))
    }
}
