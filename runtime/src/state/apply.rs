//! Following the replicated log: a node applies the functions it hosts — their subjects
//! in their shards' streams — in order, to its own [`LocalState`], each resuming after
//! the last sequence applied for it, and records the answers of idempotency-keyed writes
//! as it goes.
//!
//! One ordered consumer per shard carries every hosted function of that shard (filtered
//! by their subjects), so that a node hosting many functions pulls through K consumers,
//! not one per function. When the functions of a shard change, its consumer starts over
//! from the lowest position among them: a function that arrives is caught up from the
//! start of the shard, and the others skip what they applied already.
//!
//! When the consumer stalls or cannot be created within [`CREATE_WAIT`], the follower
//! reads what it misses straight from the stream's leader ([`super::catch_up`]) before it
//! tries again, so that acknowledged writes keep being applied while NATS elects a new
//! meta leader.

use super::catch_up::log_entry;
use super::replica::{APPLY_BATCH, Replica, STALL_CHECK, log_err};
use super::{LocalState, StateError};
use async_nats::jetstream::consumer;
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// How long creating a consumer may take before the follower falls back to reading the
/// stream directly (and tries again).
const CREATE_WAIT: Duration = Duration::from_secs(3);

/// What one shard's follower applies.
pub(super) struct ShardFollower {
    functions: BTreeSet<String>,
    task: tokio::task::AbortHandle,
}

impl Replica {
    /// Starts applying `function`'s state to `store` (nothing if it already is).
    pub fn follow(self: &Arc<Self>, store: &Arc<LocalState>, function: &str) {
        let shard = self.shards.of(function);
        let mut followers = match self.followers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut functions = match followers.remove(&shard) {
            Some(f) if f.functions.contains(function) => {
                followers.insert(shard, f);
                return;
            }
            Some(f) => {
                f.task.abort();
                f.functions
            }
            None => BTreeSet::new(),
        };
        functions.insert(function.to_string());
        self.start_shard(&mut followers, store, shard, functions);
    }

    /// Stops applying `function`'s state (this node no longer hosts it).
    pub fn unfollow(self: &Arc<Self>, store: &Arc<LocalState>, function: &str) {
        let shard = self.shards.of(function);
        let mut followers = match self.followers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let Some(f) = followers.remove(&shard) else {
            return;
        };
        let mut functions = f.functions;
        if !functions.remove(function) {
            followers.insert(
                shard,
                ShardFollower {
                    functions,
                    task: f.task,
                },
            );
            return;
        }
        f.task.abort();
        if !functions.is_empty() {
            self.start_shard(&mut followers, store, shard, functions);
        }
    }

    fn start_shard(
        self: &Arc<Self>,
        followers: &mut BTreeMap<u32, ShardFollower>,
        store: &Arc<LocalState>,
        shard: u32,
        functions: BTreeSet<String>,
    ) {
        let task = tokio::spawn(self.clone().apply_forever(
            store.clone(),
            shard,
            functions.iter().cloned().collect(),
        ));
        followers.insert(
            shard,
            ShardFollower {
                functions,
                task: task.abort_handle(),
            },
        );
    }

    /// Applies `functions` (all of shard `shard`) to `store` until stopped, resuming
    /// after what each applied and reconnecting after failures.
    async fn apply_forever(
        self: Arc<Self>,
        store: Arc<LocalState>,
        shard: u32,
        functions: Vec<String>,
    ) {
        loop {
            if let Err(e) = self.apply_from(&store, shard, &functions).await {
                tracing::warn!(shard, error = %e, "state replication interrupted; resuming");
                self.note_storage_error(&e);
                // Until a consumer is back, read what is missing from the stream's leader
                // (a consumer needs the meta leader too; see `catch_up`).
                match self.catch_up_by_reads(&store, &functions).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(shard, applied = n, "state caught up by direct reads"),
                    Err(e) => {
                        tracing::debug!(shard, error = %e, "state catch-up by reads failed");
                        self.note_storage_error(&e);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Keeps a disk failure to name in the answer of writes that wait for it.
    fn note_storage_error(&self, e: &StateError) {
        if let (StateError::Storage { .. }, Ok(mut last)) = (e, self.apply_error.lock()) {
            *last = Some(e.to_string());
        }
    }

    /// Whether some function's newest write is past what this node applied of it.
    async fn behind(&self, store: &LocalState, functions: &[String]) -> Result<bool, StateError> {
        for f in functions {
            if self.last_seq(f).await? > store.log_applied(f) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn apply_from(
        &self,
        store: &LocalState,
        shard: u32,
        functions: &[String],
    ) -> Result<(), StateError> {
        let start = functions
            .iter()
            .map(|f| store.log_applied(f))
            .min()
            .unwrap_or(0)
            + 1;
        let Some(first) = functions.first() else {
            return Ok(());
        };
        let create = self
            .stream_of(first)
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subjects: functions
                    .iter()
                    .map(|f| self.shards.function_subjects(f))
                    .collect(),
                // Short pulls mean heartbeats every second, so that a stream leader lost
                // with its NATS server is noticed (and the consumer recreated) quickly.
                max_expires: Duration::from_secs(2),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            });
        let messages = tokio::time::timeout(CREATE_WAIT, async {
            let consumer = create
                .await
                .map_err(|e| log_err(&format!("follow state shard {shard}"), e))?;
            consumer
                .messages()
                .await
                .map_err(|e| log_err("follow the state stream", e))
        })
        .await
        .map_err(|_| {
            log_err(
                &format!("follow state shard {shard}"),
                format!("no consumer within {CREATE_WAIT:?}"),
            )
        })??;
        let mut chunks = messages.ready_chunks(APPLY_BATCH);
        loop {
            let chunk = match tokio::time::timeout(STALL_CHECK, chunks.next()).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(_) => {
                    // Quiet: idle, or a consumer lost with its NATS server. If the stream has
                    // moved on without us, start a new consumer from where we are.
                    if self.behind(store, functions).await? {
                        return Err(log_err(
                            "follow the state stream",
                            "the consumer stalled behind the stream",
                        ));
                    }
                    continue;
                }
            };
            let mut entries = Vec::with_capacity(chunk.len());
            let mut failure = None;
            for m in chunk {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        failure = Some(log_err("read the state stream", e));
                        break;
                    }
                };
                let info = m.info().map_err(|e| log_err("read a state message", e))?;
                let seq = info.stream_sequence;
                entries.extend(log_entry(
                    functions,
                    &m.subject,
                    seq,
                    m.headers.as_ref(),
                    &m.payload,
                ));
            }
            if !entries.is_empty() {
                store.apply_logs(entries).await?;
                if let Ok(mut last) = self.apply_error.lock() {
                    *last = None;
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
        }
        Err(log_err("follow the state stream", "the stream ended"))
    }
}
