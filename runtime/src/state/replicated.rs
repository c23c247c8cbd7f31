//! Cluster mode's [`StateBackend`]: writes through the replicated log ([`Replica`]),
//! reads from this node's copy, consistent reads from the stream.
//!
//! A node may start while NATS is unreachable ([`ReplicatedState::offline`]): it then
//! answers reads from its copy, which may be stale until it has caught up with the log,
//! and refuses writes with an error that names NATS, so that no write bypasses the log
//! (no split brain). [`ReplicatedState::attach`] joins the log once NATS answers.
//!
//! A node keeps a copy only of the functions it hosts ([`StateBackend::host`]); one it
//! stops hosting is no longer followed, and its copy is dropped after a grace period
//! (`--release-grace`), unless it came back meanwhile.

use super::replica::Replica;
use super::{KvLimits, LocalState, Namespace, Op, OpResult, StateBackend, StateError};
use futures::future::BoxFuture;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How long a function that arrives may take to catch up with its shard before the
/// deploy fails (it is retried with the next registry change or reconnection).
pub const CATCH_UP: Duration = Duration::from_secs(30);

/// Cluster mode's state: writes through the replicated log, reads from this node's copy.
pub struct ReplicatedState {
    local: Arc<LocalState>,
    replica: OnceLock<Arc<Replica>>,
    /// The functions this node hosts (and so follows once attached).
    hosted: Arc<Mutex<BTreeSet<String>>>,
    /// How long the copy of a function this node no longer hosts is kept.
    grace: Duration,
    /// Held while a copy is dropped, so that a function hosted again meanwhile is
    /// followed only once its old copy is gone (never half of it).
    dropping: Arc<tokio::sync::Mutex<()>>,
    /// Becomes true once attached.
    attached: tokio::sync::watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
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
    /// Writes through `replica`, applied to `local` for the functions it hosts.
    pub fn new(
        local: Arc<LocalState>,
        replica: Arc<Replica>,
        grace: Duration,
    ) -> Arc<ReplicatedState> {
        let state = Self::offline(local, grace);
        state.attach(replica);
        state
    }

    /// Reads from `local`; writes fail until [`ReplicatedState::attach`]. The copy of a
    /// function released is dropped `grace` later.
    pub fn offline(local: Arc<LocalState>, grace: Duration) -> Arc<ReplicatedState> {
        Arc::new(ReplicatedState {
            local,
            replica: OnceLock::new(),
            hosted: Default::default(),
            grace,
            dropping: Default::default(),
            attached: tokio::sync::watch::channel(false).0,
        })
    }

    /// Writes go through `replica` from now on (the first one attached stays), and every
    /// hosted function is followed.
    pub fn attach(&self, replica: Arc<Replica>) {
        if self.replica.set(replica.clone()).is_ok() {
            for function in lock(&self.hosted).iter() {
                replica.follow(&self.local, function);
            }
            self.attached.send_replace(true);
        }
    }

    /// Answers once writes go through the replicated log ([`ReplicatedState::attach`]).
    pub async fn until_attached(&self) {
        let mut rx = self.attached.subscribe();
        let _ = rx.wait_for(|a| *a).await;
    }

    /// Waits until every hosted function's copy has reached its shard's position now:
    /// a node that was away must not answer with old state when NATS can tell it the
    /// new. Nothing to wait for before [`ReplicatedState::attach`].
    pub async fn catch_up(&self, max: Duration) -> Result<(), StateError> {
        let functions: Vec<String> = lock(&self.hosted).iter().cloned().collect();
        for function in functions {
            self.caught_up(&function, max).await?;
        }
        Ok(())
    }

    async fn caught_up(&self, function: &str, max: Duration) -> Result<(), StateError> {
        let Some(replica) = self.replica.get() else {
            return Ok(());
        };
        let target = replica.last_seq(function).await?;
        let started = std::time::Instant::now();
        if self.local.wait_applied(function, target, max).await {
            if target > 0 {
                tracing::info!(function, seq = target, took = ?started.elapsed(), "state caught up with its shard");
            }
            return Ok(());
        }
        Err(StateError::Log(format!(
            "`{function}`'s state did not catch up with its shard (at {} of {target}) within {max:?}; check NATS and this node's disk",
            self.local.log_applied(function)
        )))
    }

    /// The functions this node hosts.
    pub fn hosted(&self) -> Vec<String> {
        lock(&self.hosted).iter().cloned().collect()
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

    fn stored(&self) -> Result<Vec<(String, u64, u64)>, StateError> {
        self.local.stored_functions()
    }

    fn position(&self, function: &str) -> u64 {
        self.local.log_applied(function)
    }

    fn wait_position<'a>(
        &'a self,
        function: &'a str,
        at: u64,
        max: Duration,
    ) -> BoxFuture<'a, bool> {
        Box::pin(self.local.wait_applied(function, at, max))
    }

    fn host<'a>(&'a self, function: &'a str) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            {
                let _dropping = self.dropping.lock().await;
                lock(&self.hosted).insert(function.to_string());
                if let Some(replica) = self.replica.get() {
                    replica.follow(&self.local, function);
                }
            }
            self.caught_up(function, CATCH_UP).await
        })
    }

    fn release(&self, function: &str) {
        if !lock(&self.hosted).remove(function) {
            return;
        }
        // Still followed through the grace: invocations that were running when it left
        // finish their writes (which wait for this node to apply them), and a function
        // that comes back within the grace resumes where it was.
        let replica = self.replica.get().cloned();
        let (hosted, local, grace) = (self.hosted.clone(), self.local.clone(), self.grace);
        let dropping = self.dropping.clone();
        let function = function.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _dropping = dropping.lock().await;
            if lock(&hosted).contains(&function) {
                return;
            }
            if let Some(replica) = replica {
                replica.unfollow(&local, &function);
            }
            match local.forget(&function).await {
                Ok(keys) => {
                    tracing::info!(
                        function,
                        keys,
                        "dropped the state copy of a function this node no longer hosts"
                    )
                }
                Err(e) => {
                    tracing::warn!(function, error = %e, "cannot drop the state copy of a function this node no longer hosts")
                }
            }
        });
    }
}
