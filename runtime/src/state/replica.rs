//! Cluster mode's state: every write goes through a replicated JetStream stream, and every
//! node applies that stream, in order, to its own redb (DESIGN.md, "State = redb + an
//! ordered log").
//!
//! * Streams `SKIFF_STATE_<shard>` (K of them, `--state-shards`, fixed when the cluster
//!   is created), subjects `state.<shard>.<function>.b<hex bucket>.k<hex key>` (hex, so
//!   any key is a safe subject token); a function's keys all live in one shard, chosen
//!   by a stable hash of its name, so its writes stay in order while different
//!   functions' writes spread over K stream leaders. Each stream is replicated on up to 3
//!   NATS servers and keeps only the newest message per key. A message is the key's new value, or a tombstone
//!   (`Skiff-Op: del`) that expires after [`TOMBSTONE_TTL`], so the stream stays bounded.
//! * The log holds only plain sets and deletes. An increment or a compare-and-swap reads
//!   the key's value and sequence, computes the new value, and publishes it with
//!   `Nats-Expected-Last-Subject-Sequence`: if another write got there first, JetStream
//!   refuses it and the op is retried on the newest value (read from the stream).
//! * Every write carries a `Nats-Msg-Id`: an event handler's writes use the idempotency key
//!   of the write (event id + position), so a redelivered handler's write is dropped as a
//!   duplicate (within the stream's de-duplication window); other writes get a fresh id,
//!   so a publish retried by the client library is not applied twice.
//! * An idempotency-keyed write also carries its key and the answer it gave; every node
//!   records them when it applies the message, so a redelivered write (JetStream reports
//!   it as a duplicate) answers what the first one answered, as in embedded mode.
//! * A node follows only the functions it hosts ([`Replica::follow`]), each from its own
//!   position; a write returns once this node has applied it (read-your-writes). Reads are local:
//!   another node sees a write once it has applied it (usually within milliseconds;
//!   measured in BENCHMARKS.md). [`Replica::get_strong`] reads the key's newest value from
//!   the stream itself, for when that lag matters.
//! * Each node records each function's last applied sequence in the same redb
//!   transaction as the data ([`super::copies`]), so a restarted node resumes where it
//!   stopped, and a node that starts hosting a function builds its copy from the stream. A node away longer than [`TOMBSTONE_TTL`] may have missed
//!   a delete's tombstone, so its copy is dropped when the store opens and rebuilt from
//!   the start of the stream.

use super::ops::check_sizes;
use super::publish::{PUBLISH_BUDGET, Publish, transient};
use super::{KvLimits, LocalState, Namespace, Op, OpError, OpResult, StateBackend, StateError};
use async_nats::jetstream::{self, stream};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use skiff_core::state_keys::{StateShards, parse_subject, stream_name};
/// How long a delete's tombstone stays in the stream.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a write waits for this node to apply it.
const APPLY_WAIT: Duration = Duration::from_secs(10);
/// How long a conflicting increment or swap keeps retrying.
const UPDATE_BUDGET: Duration = Duration::from_secs(30);
/// A key that saw a conflict this recently counts as contended.
const CONTENDED_FOR: Duration = Duration::from_secs(1);
/// How long the applier waits for a message before checking that it is not stuck.
pub(super) const STALL_CHECK: Duration = Duration::from_secs(1);
/// Messages applied per transaction at most.
pub(super) const APPLY_BATCH: usize = 1024;

pub(super) const H_OP: &str = "Skiff-Op";
/// On the last message of an idempotency-keyed write: its key.
pub(super) const H_IDEM: &str = "Skiff-Idem";
/// On the last message of an idempotency-keyed write: what the write answered (JSON), so
/// that every node records it and a redelivered write answers the same.
pub(super) const H_ANSWER: &str = "Skiff-Answer";

/// Stripes of the per-key lock that serialises one node's conditional writes.
const KEY_LOCKS: usize = 256;

/// The replicated log of one node.
pub struct Replica {
    pub(super) js: jetstream::Context,
    /// How state is split.
    pub(super) shards: StateShards,
    /// Shard k's stream at index k.
    streams: Vec<stream::Stream>,
    /// Each shard's followed functions, with the task applying them.
    pub(super) followers:
        std::sync::Mutex<std::collections::BTreeMap<u32, super::apply::ShardFollower>>,
    /// One node's increments of a hot key wait for each other here instead of racing each
    /// other in JetStream: conflicts then only arise between nodes.
    key_locks: Vec<tokio::sync::Mutex<Option<Instant>>>,
    /// Picks a key's stripe (fixed for the process) and backoff jitter.
    hasher: std::collections::hash_map::RandomState,
    /// Why applying the log last failed here, until it succeeds again.
    pub(super) apply_error: std::sync::Mutex<Option<String>>,
}

pub(super) fn log_err(what: &str, e: impl std::fmt::Display) -> StateError {
    StateError::Log(format!(
        "cannot {what}: {e}; the write was not applied — the NATS cluster may have lost its quorum, retry once it is back"
    ))
}

/// `e`, or — when an earlier try of the write may have been stored — the same failure
/// reported as in doubt.
fn in_doubt(doubt: bool, e: StateError) -> StateError {
    match e {
        StateError::InDoubt(_) => e,
        e if doubt => StateError::InDoubt(format!(
            "{e}; an earlier try of this write went unanswered, so it may or may not be applied — retry only if the write is idempotent"
        )),
        e => e,
    }
}

/// What a conditional write does with the current value.
enum Update {
    /// Write this value and answer this.
    Write(Vec<u8>, OpResult),
    /// Write nothing and answer this.
    Answer(OpResult),
}

impl Replica {
    /// Creates (or opens) the `shards` streams with `replicas` copies each, remembering
    /// message ids for `window` (their `duplicate_window`, set on existing streams too).
    pub async fn open(
        js: jetstream::Context,
        shards: StateShards,
        replicas: usize,
        window: Duration,
    ) -> Result<Arc<Replica>, StateError> {
        let mut streams = Vec::new();
        for shard in 0..shards.count() {
            let name = stream_name(shard);
            let stream = skiff_core::nats::stream_with_window(
                &js,
                stream::Config {
                    name: name.clone(),
                    subjects: vec![skiff_core::state_keys::shard_subjects(shard)],
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    max_messages_per_subject: 1,
                    allow_message_ttl: true,
                    duplicate_window: window,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| log_err(&format!("create stream {name}"), e))?;
            streams.push(stream);
        }
        Ok(Arc::new(Replica {
            js,
            shards,
            streams,
            followers: Default::default(),
            key_locks: (0..KEY_LOCKS)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            apply_error: std::sync::Mutex::new(None),
        }))
    }

    /// The stream that holds `function`'s keys.
    pub(super) fn stream_of(&self, function: &str) -> &stream::Stream {
        &self.streams[self.shards.of(function) as usize % self.streams.len()]
    }

    /// The subject of `key` in `ns`.
    pub(super) fn subject(&self, ns: &Namespace, key: &str) -> String {
        self.shards.subject(ns, key)
    }

    /// How state is split.
    pub fn shards(&self) -> StateShards {
        self.shards
    }

    /// The newest value of `key` and the sequence of its last write, from the stream.
    async fn newest(
        &self,
        ns: &Namespace,
        key: &str,
    ) -> Result<(Option<Vec<u8>>, u64), StateError> {
        // A read is safe to repeat: it rides out a leader election (a healed partition
        // often causes one) instead of failing.
        let deadline = Instant::now() + PUBLISH_BUDGET;
        let mut wait = Duration::from_millis(50);
        loop {
            match self
                .stream_of(&ns.function)
                .get_last_raw_message_by_subject(&self.subject(ns, key))
                .await
            {
                Ok(m) => {
                    let deleted = m.headers.get(H_OP).is_some_and(|v| v.as_str() == "del");
                    return Ok(((!deleted).then(|| m.payload.to_vec()), m.sequence));
                }
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    return Ok((None, 0));
                }
                Err(e) if transient(&e.to_string()) && Instant::now() + wait < deadline => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(log_err("read the key's newest value", e)),
            }
        }
    }

    /// Reads `key`'s newest value from the stream (a strongly consistent read).
    pub async fn get_strong(
        &self,
        ns: &Namespace,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.newest(ns, key).await?.0)
    }

    async fn settle(&self, store: &LocalState, function: &str, seq: u64) -> Result<(), StateError> {
        if store.wait_applied(function, seq, APPLY_WAIT).await {
            return Ok(());
        }
        match self.apply_error.lock().ok().and_then(|e| e.clone()) {
            Some(why) => Err(StateError::Log(format!(
                "the write is stored in the cluster's log (sequence {seq}) and other nodes have it, but this node cannot apply it: {why}; free space or fix the disk here"
            ))),
            None => Err(StateError::Lagging {
                seq,
                waited: APPLY_WAIT,
            }),
        }
    }

    /// Writes `op` through the log; returns once this node has applied it. A write keyed
    /// `idem` that was made before answers what it answered then.
    pub async fn write(
        &self,
        store: &LocalState,
        op: Op,
        limits: KvLimits,
        idem: Option<String>,
    ) -> Result<OpResult, StateError> {
        if let Some(k) = &idem
            && let Some(first) = store.answered(k)?
        {
            return Ok(first);
        }
        let id = |n: usize| match &idem {
            Some(k) => format!("{k}#{n}"),
            None => format!("w-{}#{n}", crate::ids::random_id()),
        };
        let done = idem.as_deref().map(|k| (k, &OpResult::Done));
        match op {
            Op::Set { ns, key, value } => {
                check_sizes(&limits, &key, Some(&value))?;
                self.check_quota(store, &ns, &[(&key, Some(value.len()))], &limits)?;
                let seq = self.plain(&ns, &key, Some(&value), &id(0), done).await?;
                self.settle(store, &ns.function, seq).await?;
                Ok(OpResult::Done)
            }
            Op::Delete { ns, key } => {
                let seq = self.plain(&ns, &key, None, &id(0), done).await?;
                self.settle(store, &ns.function, seq).await?;
                Ok(OpResult::Done)
            }
            Op::SetMany { ns, items } => {
                let sizes: Vec<(&str, Option<usize>)> = items
                    .iter()
                    .map(|(k, v)| (k.as_str(), Some(v.len())))
                    .collect();
                for (k, v) in &items {
                    check_sizes(&limits, k, Some(v))?;
                }
                self.check_quota(store, &ns, &sizes, &limits)?;
                let mut last = 0;
                for (i, (k, v)) in items.iter().enumerate() {
                    let answered = done.filter(|_| i + 1 == items.len());
                    last = self.plain(&ns, k, Some(v), &id(i), answered).await?;
                }
                self.settle(store, &ns.function, last).await?;
                Ok(OpResult::Done)
            }
            Op::DeleteMany { ns, keys } => {
                let mut last = 0;
                for (i, k) in keys.iter().enumerate() {
                    let answered = done.filter(|_| i + 1 == keys.len());
                    last = self.plain(&ns, k, None, &id(i), answered).await?;
                }
                self.settle(store, &ns.function, last).await?;
                Ok(OpResult::Done)
            }
            Op::Increment { ns, key, delta } => {
                check_sizes(&limits, &key, None)?;
                let k = key.clone();
                let keyed = Keyed {
                    msg_id: &id(0),
                    idem: idem.as_deref(),
                };
                self.update(store, &ns, &key, &limits, keyed, |current| {
                    let next = super::ops::incremented(current, &k, delta)?;
                    Ok(Update::Write(
                        next.to_string().into_bytes(),
                        OpResult::Incremented(next),
                    ))
                })
                .await
            }
            Op::CompareAndSwap {
                ns,
                key,
                expected,
                new,
            } => {
                check_sizes(&limits, &key, Some(&new))?;
                let keyed = Keyed {
                    msg_id: &id(0),
                    idem: idem.as_deref(),
                };
                self.update(store, &ns, &key, &limits, keyed, |current| {
                    Ok(if current == expected.as_deref() {
                        Update::Write(new.clone(), OpResult::Swapped(true))
                    } else {
                        Update::Answer(OpResult::Swapped(false))
                    })
                })
                .await
            }
            Op::Purge { function } => Err(StateError::Log(format!(
                "purging `{function}`'s state is not available in cluster mode yet; delete its keys with `skiff kv del`"
            ))),
        }
    }

    async fn plain(
        &self,
        ns: &Namespace,
        key: &str,
        value: Option<&[u8]>,
        msg_id: &str,
        answered: Option<(&str, &OpResult)>,
    ) -> Result<u64, StateError> {
        match self.publish(ns, key, value, None, msg_id, answered).await {
            // A duplicate answers the original's sequence: waiting for it is right too.
            Ok(p) => Ok(p.seq),
            Err(Publish::Failed(e)) => Err(e),
            Err(Publish::Conflict { .. }) => Err(StateError::Log(
                "the cluster refused an unconditional write as a conflict; retry".into(),
            )),
        }
    }

    /// Reads, computes, and writes conditionally on the key's sequence, retrying on
    /// conflict with the newest value from the stream. A keyed write that JetStream
    /// reports as a duplicate, or that finds nothing to do, answers what its first run
    /// answered once this node has applied that far.
    async fn update(
        &self,
        store: &LocalState,
        ns: &Namespace,
        key: &str,
        limits: &KvLimits,
        keyed: Keyed<'_>,
        compute: impl Fn(Option<&[u8]>) -> Result<Update, OpError>,
    ) -> Result<OpResult, StateError> {
        let subject = self.subject(ns, key);
        let stripe = (self.hasher.hash_one(&subject) as usize) % KEY_LOCKS;
        let mut last_conflict = self.key_locks[stripe].lock().await;
        // From the local copy (usually current, and one round trip cheaper), unless the key
        // is contended: then every node starts from the stream, so that no node's writers
        // are always a round trip behind the others' and starve.
        let contended = last_conflict.is_some_and(|t| t.elapsed() < CONTENDED_FOR);
        let (mut current, mut from_stream) = if contended {
            (self.newest(ns, key).await?, true)
        } else {
            (store.get_with_seq(ns, key)?, false)
        };
        let deadline = Instant::now() + UPDATE_BUDGET;
        // Set once a try of this write went unanswered and then met a conflict: that try
        // may be what it conflicted with.
        let mut doubt = false;
        for attempt in 0u64.. {
            if attempt > 1 {
                // Other nodes keep winning: back off a little, at random, so that the
                // nodes stop colliding.
                let jitter = self.hasher.hash_one((&subject, attempt, Instant::now()))
                    % (1 + 2 * attempt.min(5));
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            let (value, seq) = &current;
            match compute(value.as_deref())? {
                Update::Answer(r) if from_stream => {
                    return self
                        .first_answer(store, &ns.function, keyed.idem, *seq, r)
                        .await;
                }
                // A "no" from a possibly stale local copy is checked against the stream.
                Update::Answer(_) => {}
                Update::Write(new, result) => {
                    self.check_quota(store, ns, &[(key, Some(new.len()))], limits)?;
                    let answered = keyed.idem.map(|k| (k, &result));
                    let published = self
                        .publish(ns, key, Some(&new), Some(*seq), keyed.msg_id, answered)
                        .await;
                    match published {
                        Ok(p) if p.duplicate => {
                            drop(last_conflict);
                            return self
                                .first_answer(store, &ns.function, keyed.idem, p.seq, result)
                                .await;
                        }
                        Ok(p) => {
                            drop(last_conflict);
                            self.settle(store, &ns.function, p.seq).await?;
                            return Ok(result);
                        }
                        Err(Publish::Conflict { maybe_sent }) => {
                            doubt |= maybe_sent;
                            *last_conflict = Some(Instant::now());
                        }
                        Err(Publish::Failed(e)) => return Err(in_doubt(doubt, e)),
                    }
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            current = self.newest(ns, key).await.map_err(|e| in_doubt(doubt, e))?;
            from_stream = true;
        }
        Err(in_doubt(
            doubt,
            StateError::Log(format!(
                "`{key}` kept changing for {UPDATE_BUDGET:?} while this write retried; too much contention on one key — retry later"
            )),
        ))
    }

    /// What a keyed write answered the first time, once this node has applied the log up
    /// to `seq` (where the first write, if any, is); `otherwise` if it was never made.
    async fn first_answer(
        &self,
        store: &LocalState,
        function: &str,
        idem: Option<&str>,
        seq: u64,
        otherwise: OpResult,
    ) -> Result<OpResult, StateError> {
        let Some(idem) = idem else {
            return Ok(otherwise);
        };
        self.settle(store, function, seq).await?;
        Ok(store.answered(idem)?.unwrap_or(otherwise))
    }

    /// Checks a function's key and byte quotas against this node's (current or nearly
    /// current) usage before a write enters the log; the log itself never refuses.
    fn check_quota(
        &self,
        store: &LocalState,
        ns: &Namespace,
        writes: &[(&str, Option<usize>)],
        limits: &KvLimits,
    ) -> Result<(), StateError> {
        let (mut keys, mut bytes) = store.usage(&ns.function)?;
        let mut grows = (false, false);
        for (key, new) in writes {
            let old = store.get(ns, key)?.map(|v| v.len());
            match (old, new) {
                (None, Some(n)) => {
                    keys += 1;
                    bytes += (key.len() + n) as u64;
                    grows = (true, true);
                }
                (Some(o), Some(n)) if *n > o => {
                    bytes += (n - o) as u64;
                    grows.1 = true;
                }
                _ => {}
            }
        }
        if grows.0 && keys > limits.keys {
            return Err(OpError::TooManyKeys {
                would: keys,
                limit: limits.keys,
            }
            .into());
        }
        if grows.1 && bytes > limits.total_bytes {
            return Err(OpError::TooManyBytes {
                would: bytes,
                limit: limits.total_bytes,
            }
            .into());
        }
        Ok(())
    }

    /// The sequence of `function`'s newest write in its shard (0: none): what a node
    /// that starts hosting it must reach before serving it.
    pub async fn last_seq(&self, function: &str) -> Result<u64, StateError> {
        let filter = self.shards.function_subjects(function);
        match self
            .stream_of(function)
            .get_last_raw_message_by_subject(&filter)
            .await
        {
            Ok(m) => Ok(m.sequence),
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                Ok(0)
            }
            Err(e) => Err(log_err(
                &format!("read the position of `{function}`'s state"),
                e,
            )),
        }
    }

    /// Each shard's stream with the NATS server that leads it now (`None`: no leader).
    pub async fn leaders(&self) -> Vec<(String, Option<String>)> {
        let mut out = Vec::new();
        for s in &self.streams {
            let mut s = s.clone();
            let leader = s
                .info()
                .await
                .ok()
                .and_then(|i| i.cluster.as_ref().and_then(|c| c.leader.clone()));
            out.push((s.cached_info().config.name.clone(), leader));
        }
        out
    }
}

/// How a conditional write is keyed.
#[derive(Clone, Copy)]
struct Keyed<'a> {
    /// Its message id (de-duplicated by JetStream).
    msg_id: &'a str,
    /// Its idempotency key, when it has one.
    idem: Option<&'a str>,
}
