//! Durable key-value state for functions, behind one trait with two implementations.
//!
//! * [`StateBackend`] — what host capabilities and the admin API use: writes ([`Op`]s,
//!   optionally idempotency-keyed), reads, consistent reads, listing and usage; quotas
//!   are checked inside every write.
//! * [`LocalState`] (embedded mode) — applies each write to the node's redb through the
//!   group-commit writer ([`crate::localdb`]); durable before it returns.
//! * [`ReplicatedState`] (cluster mode) — every write goes through a replicated JetStream
//!   stream that every node applies, in order, to its own [`LocalState`]
//!   ([`replica`]); a write returns once this node has applied it (read-your-writes).
//!
//! One conformance suite (`conformance`) runs against both and checks returned results
//! as well as stored values, including on a redelivered idempotency-keyed write.

mod apply;
mod catch_up;
#[cfg(test)]
mod conformance;
mod copies;
pub use skiff_core::state_keys as keys;
pub mod local;
pub mod ops;
mod publish;
pub mod replica;
pub mod replicated;

pub use keys::Namespace;
pub use local::LocalState;
pub use ops::{KvLimits, Op, OpError, OpResult};
pub use replica::Replica;
pub use replicated::ReplicatedState;

use futures::future::BoxFuture;
use std::path::PathBuf;

/// Keys per page of a listing.
pub const PAGE: usize = 1000;

/// A failed state operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    /// The op broke a rule; nothing was written.
    #[error("{0}")]
    Refused(#[from] OpError),
    /// redb failed; the write was not acknowledged.
    #[error(
        "state storage failed ({path}): {detail}; the write was not applied — if the disk is full, free space: writes resume on their own"
    )]
    Storage {
        /// The database file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The writer is gone (the node is stopping).
    #[error("the state store is shutting down; retry on another node or after restart")]
    Closed,
    /// The replicated log (cluster mode) did not take the write: nothing was written.
    #[error("{0}")]
    Log(String),
    /// The cluster did not confirm the write: it may or may not be in the replicated log.
    #[error("{0}")]
    InDoubt(String),
    /// The write is in the replicated log (so it will apply everywhere), but this node did
    /// not apply it in time; do not blindly retry a non-idempotent write.
    #[error(
        "the write is stored in the cluster's log (sequence {seq}) but this node has not applied it within {waited:?}; it will apply, so retry only if the write is idempotent"
    )]
    Lagging {
        /// Its sequence in the log.
        seq: u64,
        /// How long the node waited.
        waited: std::time::Duration,
    },
}

impl From<crate::localdb::LocalDbError> for StateError {
    fn from(e: crate::localdb::LocalDbError) -> Self {
        match e {
            crate::localdb::LocalDbError::Failed { path, detail } => {
                StateError::Storage { path, detail }
            }
            crate::localdb::LocalDbError::Closed => StateError::Closed,
        }
    }
}

/// A function's key-value state, as host capabilities and the admin API see it.
pub trait StateBackend: Send + Sync + std::fmt::Debug {
    /// Applies `op` durably, checked against `limits`; with `idem`, at most once per key:
    /// a repeat returns the result recorded by the first application and changes
    /// nothing. Event handlers key their n-th write by (function, event id, n), which is
    /// what makes a redelivered event's effects apply once.
    fn write_once(
        &self,
        op: Op,
        limits: KvLimits,
        idem: Option<String>,
    ) -> BoxFuture<'_, Result<OpResult, StateError>>;

    /// Applies `op` durably (not keyed).
    fn write(&self, op: Op, limits: KvLimits) -> BoxFuture<'_, Result<OpResult, StateError>> {
        self.write_once(op, limits, None)
    }

    /// The value of `key` as this node has it (its own writes included).
    fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Vec<u8>>, StateError>;

    /// The value of `key` as last written anywhere (one round trip in a cluster).
    fn get_consistent<'a>(
        &'a self,
        ns: &'a Namespace,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StateError>>;

    /// Keys of `ns` starting with `prefix`, from position `cursor`; the next cursor when
    /// more remain.
    fn list(
        &self,
        ns: &Namespace,
        prefix: &str,
        cursor: u64,
    ) -> Result<(Vec<String>, Option<u64>), StateError>;

    /// (keys, bytes) that `function` holds.
    fn usage(&self, function: &str) -> Result<(u64, u64), StateError>;

    /// How far this node's copy of `function` has applied the cluster's log (0 where
    /// there is no log): every write to it this node acknowledged is at or below it.
    fn position(&self, function: &str) -> u64 {
        let _ = function;
        0
    }

    /// Waits up to `max` until this node's copy of `function` has applied the log up to
    /// `at`; answers whether it has.
    fn wait_position<'a>(
        &'a self,
        function: &'a str,
        at: u64,
        max: std::time::Duration,
    ) -> BoxFuture<'a, bool> {
        let _ = (function, at, max);
        Box::pin(std::future::ready(true))
    }

    /// (function, keys, bytes) of every function with state on this node's disk.
    fn stored(&self) -> Result<Vec<(String, u64, u64)>, StateError> {
        Ok(Vec::new())
    }

    /// This node starts hosting `function`: answers once its copy has caught up with
    /// the cluster (at once where there is no cluster).
    fn host<'a>(&'a self, function: &'a str) -> BoxFuture<'a, Result<(), StateError>> {
        let _ = function;
        Box::pin(std::future::ready(Ok(())))
    }

    /// This node no longer hosts `function`: it stops following it and drops its copy
    /// after a grace period (nothing where there is no cluster: the state is the only
    /// copy).
    fn release(&self, function: &str) {
        let _ = function;
    }
}
