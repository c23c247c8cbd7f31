//! Following the replicated log: a node applies each function it hosts — that function's
//! subjects in its shard's stream — in order, to its own [`LocalState`], resuming after
//! the last sequence it applied and recording the answers of idempotency-keyed writes as
//! it goes. Functions are followed independently, so one that arrives is caught up
//! without holding up the others.

use super::local::LogEntry;
use super::replica::{
    APPLY_BATCH, H_ANSWER, H_IDEM, H_OP, Replica, STALL_CHECK, log_err, parse_subject,
};
use super::{LocalState, Op, OpResult, StateError};
use async_nats::jetstream::consumer;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

impl Replica {
    /// Starts applying `function`'s state to `store` (nothing if it already is).
    pub fn follow(self: &Arc<Self>, store: &Arc<LocalState>, function: &str) {
        let mut followers = match self.followers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if followers.contains_key(function) {
            return;
        }
        let task = tokio::spawn(
            self.clone()
                .apply_forever(store.clone(), function.to_string()),
        );
        followers.insert(function.to_string(), task.abort_handle());
    }

    /// Stops applying `function`'s state (this node no longer hosts it).
    pub fn unfollow(&self, function: &str) {
        let mut followers = match self.followers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(task) = followers.remove(function) {
            task.abort();
        }
    }

    /// Applies `function`'s state to `store` for as long as the node hosts it, resuming
    /// after the last applied sequence and reconnecting after failures.
    async fn apply_forever(self: Arc<Self>, store: Arc<LocalState>, function: String) {
        loop {
            if let Err(e) = self.apply_from(&store, &function).await {
                tracing::warn!(function, error = %e, "state replication interrupted; resuming");
                if let (StateError::Storage { .. }, Ok(mut last)) = (&e, self.apply_error.lock()) {
                    *last = Some(e.to_string());
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn apply_from(&self, store: &LocalState, function: &str) -> Result<(), StateError> {
        let start = store.log_applied(function) + 1;
        let consumer = self
            .stream_of(function)
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.shards.function_subjects(function),
                // Short pulls mean heartbeats every second, so that a stream leader lost
                // with its NATS server is noticed (and the consumer recreated) quickly.
                max_expires: Duration::from_secs(2),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| log_err("follow the state stream", e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| log_err("follow the state stream", e))?;
        let mut chunks = messages.ready_chunks(APPLY_BATCH);
        loop {
            let chunk = match tokio::time::timeout(STALL_CHECK, chunks.next()).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(_) => {
                    // Quiet: idle, or a consumer lost with its NATS server. If the stream has
                    // moved on without us, start a new consumer from where we are.
                    if self.last_seq(function).await? > store.log_applied(function) {
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
                let Some((ns, key)) =
                    parse_subject(&m.subject).filter(|(ns, _)| ns.function == function)
                else {
                    tracing::warn!(subject = %m.subject, "foreign subject in the state stream; skipped");
                    continue;
                };
                let header = |name: &str| {
                    m.headers
                        .as_ref()
                        .and_then(|h| h.get(name))
                        .map(|v| v.as_str().to_string())
                };
                let deleted = header(H_OP).is_some_and(|v| v == "del");
                let answered = header(H_IDEM)
                    .zip(header(H_ANSWER).and_then(|a| serde_json::from_str::<OpResult>(&a).ok()));
                let op = if deleted {
                    Op::Delete { ns, key }
                } else {
                    Op::Set {
                        ns,
                        key,
                        value: m.payload.to_vec(),
                    }
                };
                entries.push(LogEntry { seq, op, answered });
            }
            if !entries.is_empty() {
                store.apply_log(function, entries).await?;
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
