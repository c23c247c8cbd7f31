//! Durable key-value state for functions, on redb.
//!
//! Reads go straight to redb (MVCC snapshots, any thread). Writes are [`Op`]s sent to one
//! writer thread that applies every op waiting at that moment in a single transaction and
//! commits it with `Durability::Immediate`: concurrent writers share one fsync instead of
//! queueing for one each (group commit), and no write is acknowledged before it is on
//! disk. The transaction also records the last applied sequence number, so that a
//! replicated log (cluster mode) can be applied through the same path and resumed.

#[cfg(test)]
mod conformance;
pub mod keys;
pub mod ops;
pub mod replica;

pub use keys::Namespace;
pub use ops::{KvLimits, Op, OpError, OpResult};

use ops::{APPLIED, DATA, JOURNAL, KEY_SEQ, Tables, USAGE, apply};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
pub use replica::Replica;
use skiff_core::record::now_ms;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The log name embedded mode applies under.
pub const LOCAL_LOG: &str = "local";
/// The log name the replicated log (cluster mode) is applied under.
pub const CLUSTER_LOG: &str = "SKIFF_STATE";
/// When (ms since the Unix epoch) the replicated log was last applied.
const CLUSTER_LOG_AT: &str = "SKIFF_STATE@ms";
/// Keys per page of a listing.
pub const PAGE: usize = 1000;
/// Most ops committed in one transaction.
const MAX_BATCH: usize = 4096;

/// A failed state operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    /// The op broke a rule; nothing was written.
    #[error("{0}")]
    Refused(#[from] OpError),
    /// redb failed; the write was not acknowledged.
    #[error("state storage failed ({path}): {detail}")]
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

/// One entry of the replicated log, applied in order on every node.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Its sequence in the log.
    pub seq: u64,
    /// A set or a delete of one key.
    pub op: Op,
}

/// A unit of work for the writer thread, run inside the shared transaction. It must check
/// before it writes: an `Err` must leave the transaction untouched.
pub type Job = Box<dyn FnOnce(&redb::WriteTransaction) -> Result<JobOutput, String> + Send>;
/// What a [`Job`] answers.
pub type JobOutput = Box<dyn std::any::Any + Send>;

enum Work {
    Op {
        op: Op,
        limits: KvLimits,
        idem: Option<String>,
        reply: oneshot::Sender<Result<OpResult, StateError>>,
    },
    Job {
        job: Option<Job>,
        reply: oneshot::Sender<Result<JobOutput, StateError>>,
    },
    Apply {
        entries: Vec<LogEntry>,
        reply: oneshot::Sender<Result<(), StateError>>,
    },
}

/// A node's state store.
pub struct StateStore {
    db: Arc<Database>,
    path: PathBuf,
    writer: mpsc::UnboundedSender<Work>,
    /// The replicated log's last applied sequence, for waiters.
    log_applied: tokio::sync::watch::Sender<u64>,
    /// Cluster mode: writes go through this log instead of straight to redb.
    replica: std::sync::OnceLock<Arc<Replica>>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
            .finish()
    }
}

impl StateStore {
    /// Opens (creating) the store at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Arc<StateStore>, StateError> {
        let storage = |e: &dyn std::fmt::Display| StateError::Storage {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        let db = Database::create(path).map_err(|e| storage(&e))?;
        let wtx = db.begin_write().map_err(|e| storage(&e))?;
        let applied = {
            wtx.open_table(DATA).map_err(|e| storage(&e))?;
            wtx.open_table(USAGE).map_err(|e| storage(&e))?;
            wtx.open_table(JOURNAL).map_err(|e| storage(&e))?;
            wtx.open_table(KEY_SEQ).map_err(|e| storage(&e))?;
            let t = wtx.open_table(APPLIED).map_err(|e| storage(&e))?;
            let get = |log| {
                t.get(log)
                    .map_err(|e| storage(&e))
                    .map(|v| v.map(|v| v.value()).unwrap_or(0))
            };
            (get(LOCAL_LOG)?, get(CLUSTER_LOG)?, get(CLUSTER_LOG_AT)?)
        };
        let (applied, mut log_applied, log_at) = applied;
        // A node that last applied the replicated log longer ago than a tombstone lives may
        // have missed deletes whose tombstones have since expired: start its copy over and
        // rebuild it from the whole stream.
        let away = now_ms().saturating_sub(log_at);
        if log_applied > 0 && away > replica::TOMBSTONE_TTL.as_millis() as u64 {
            tracing::warn!(
                away_hours = away / 3_600_000,
                "this node last applied the state log longer ago than deletes are remembered; rebuilding its copy from the stream"
            );
            wtx.delete_table(DATA).map_err(|e| storage(&e))?;
            wtx.open_table(DATA).map_err(|e| storage(&e))?;
            wtx.delete_table(KEY_SEQ).map_err(|e| storage(&e))?;
            wtx.open_table(KEY_SEQ).map_err(|e| storage(&e))?;
            wtx.delete_table(USAGE).map_err(|e| storage(&e))?;
            wtx.open_table(USAGE).map_err(|e| storage(&e))?;
            let mut t = wtx.open_table(APPLIED).map_err(|e| storage(&e))?;
            t.insert(CLUSTER_LOG, 0).map_err(|e| storage(&e))?;
            log_applied = 0;
        }
        wtx.commit().map_err(|e| storage(&e))?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::unbounded_channel();
        let writer_db = db.clone();
        let writer_path = path.to_path_buf();
        let (log_tx, _) = tokio::sync::watch::channel(log_applied);
        let notify = log_tx.clone();
        std::thread::Builder::new()
            .name("skiff-state-writer".into())
            .spawn(move || writer(writer_db, writer_path, rx, applied, notify))
            .map_err(|e| storage(&e))?;
        Ok(Arc::new(StateStore {
            db,
            path: path.to_path_buf(),
            writer: tx,
            log_applied: log_tx,
            replica: std::sync::OnceLock::new(),
        }))
    }

    fn storage(&self, e: impl std::fmt::Display) -> StateError {
        StateError::Storage {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    /// Applies `op` durably; returns once it is committed to disk.
    pub async fn write(&self, op: Op, limits: KvLimits) -> Result<OpResult, StateError> {
        self.write_once(op, limits, None).await
    }

    /// Like [`StateStore::write`], but applied at most once per `idem` key: a repeat
    /// returns the result recorded by the first application and changes nothing. Event
    /// handlers key their n-th write by (function, event id, n), which is what makes a
    /// redelivered event's effects apply once.
    pub async fn write_once(
        &self,
        op: Op,
        limits: KvLimits,
        idem: Option<String>,
    ) -> Result<OpResult, StateError> {
        if let Some(replica) = self.replica.get() {
            return replica.write(self, op, limits, idem).await;
        }
        self.write_local(op, limits, idem).await
    }

    /// Applies `op` to this node's redb directly (embedded mode).
    async fn write_local(
        &self,
        op: Op,
        limits: KvLimits,
        idem: Option<String>,
    ) -> Result<OpResult, StateError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Work::Op {
                op,
                limits,
                idem,
                reply,
            })
            .map_err(|_| StateError::Closed)?;
        rx.await.map_err(|_| StateError::Closed)?
    }

    /// Switches the store to cluster mode: writes go through `replica`'s log.
    pub fn replicate(&self, replica: Arc<Replica>) {
        let _ = self.replica.set(replica);
    }

    /// The replicated log, in cluster mode.
    pub fn replica(&self) -> Option<&Arc<Replica>> {
        self.replica.get()
    }

    /// Applies entries of the replicated log, in order, in one durable transaction that
    /// also records the last applied sequence. Entries at or below it are skipped.
    pub async fn apply_log(&self, entries: Vec<LogEntry>) -> Result<(), StateError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Work::Apply { entries, reply })
            .map_err(|_| StateError::Closed)?;
        rx.await.map_err(|_| StateError::Closed)?
    }

    /// Reads `key` as last written anywhere in the cluster: from the replicated log in
    /// cluster mode (one round trip), from redb otherwise (where it is the same thing).
    pub async fn get_consistent(
        &self,
        ns: &Namespace,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StateError> {
        match self.replica.get() {
            Some(r) => r.get_strong(ns, key).await,
            None => self.get(ns, key),
        }
    }

    /// The replicated log's last sequence applied here.
    pub fn log_applied(&self) -> u64 {
        *self.log_applied.borrow()
    }

    /// Waits until the replicated log has been applied here up to `seq`; false on timeout.
    pub async fn wait_applied(&self, seq: u64, max: std::time::Duration) -> bool {
        let mut rx = self.log_applied.subscribe();
        tokio::time::timeout(max, rx.wait_for(|applied| *applied >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// `key`'s value and the replicated log's sequence of the write that last set or
    /// deleted it (0: never written), read from one snapshot so that they belong together.
    pub fn get_with_seq(
        &self,
        ns: &Namespace,
        key: &str,
    ) -> Result<(Option<Vec<u8>>, u64), StateError> {
        let rtx = self.db.begin_read().map_err(|e| self.storage(e))?;
        let k = ns.key(key);
        let data = rtx.open_table(DATA).map_err(|e| self.storage(e))?;
        let value = data
            .get(k.as_slice())
            .map_err(|e| self.storage(e))?
            .map(|v| v.value().to_vec());
        let seqs = rtx.open_table(KEY_SEQ).map_err(|e| self.storage(e))?;
        let seq = seqs
            .get(k.as_slice())
            .map_err(|e| self.storage(e))?
            .map(|v| v.value())
            .unwrap_or(0);
        Ok((value, seq))
    }

    /// Runs `job` in the writer's next group-committed transaction; returns once durable.
    /// Other subsystems on the same database (the embedded event bus) write through this.
    pub async fn transact(&self, job: Job) -> Result<JobOutput, StateError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Work::Job {
                job: Some(job),
                reply,
            })
            .map_err(|_| StateError::Closed)?;
        rx.await.map_err(|_| StateError::Closed)?
    }

    /// The database, for readers of other subsystems' tables.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The value of `key`.
    pub fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let rtx = self.db.begin_read().map_err(|e| self.storage(e))?;
        let t = rtx.open_table(DATA).map_err(|e| self.storage(e))?;
        let v = t.get(ns.key(key).as_slice()).map_err(|e| self.storage(e))?;
        Ok(v.map(|v| v.value().to_vec()))
    }

    /// Keys of `ns` starting with `prefix`, from position `cursor`; the next cursor when
    /// more remain.
    pub fn list(
        &self,
        ns: &Namespace,
        prefix: &str,
        cursor: u64,
    ) -> Result<(Vec<String>, Option<u64>), StateError> {
        let base = ns.prefix();
        let start = ns.key(prefix);
        let rtx = self.db.begin_read().map_err(|e| self.storage(e))?;
        let t = rtx.open_table(DATA).map_err(|e| self.storage(e))?;
        let range = match keys::prefix_end(&start) {
            Some(end) => t.range(start.as_slice()..end.as_slice()),
            None => t.range(start.as_slice()..),
        }
        .map_err(|e| self.storage(e))?;
        let skip = usize::try_from(cursor).unwrap_or(usize::MAX);
        let mut keys = Vec::new();
        let mut more = false;
        for entry in range.skip(skip) {
            let (k, _) = entry.map_err(|e| self.storage(e))?;
            if keys.len() == PAGE {
                more = true;
                break;
            }
            let raw = &k.value()[base.len()..];
            keys.push(String::from_utf8_lossy(raw).into_owned());
        }
        let next = more.then(|| cursor + keys.len() as u64);
        Ok((keys, next))
    }

    /// (keys, bytes) that `function` holds.
    pub fn usage(&self, function: &str) -> Result<(u64, u64), StateError> {
        let rtx = self.db.begin_read().map_err(|e| self.storage(e))?;
        let t = rtx.open_table(USAGE).map_err(|e| self.storage(e))?;
        let v = t.get(function).map_err(|e| self.storage(e))?;
        Ok(v.map(|v| v.value()).unwrap_or((0, 0)))
    }

    /// The last sequence applied from the local log.
    pub fn applied(&self) -> Result<u64, StateError> {
        let rtx = self.db.begin_read().map_err(|e| self.storage(e))?;
        let t = rtx.open_table(APPLIED).map_err(|e| self.storage(e))?;
        let v = t.get(LOCAL_LOG).map_err(|e| self.storage(e))?;
        Ok(v.map(|v| v.value()).unwrap_or(0))
    }
}

/// The writer thread: drain what is waiting, apply it in one transaction, fsync once,
/// answer everyone.
fn writer(
    db: Arc<Database>,
    path: PathBuf,
    mut rx: mpsc::UnboundedReceiver<Work>,
    mut seq: u64,
    log_applied: tokio::sync::watch::Sender<u64>,
) {
    let mut log_seq = *log_applied.borrow();
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        match commit_batch(&db, &mut batch, seq, log_seq) {
            Ok((results, next_seq, next_log)) => {
                seq = next_seq;
                if next_log != log_seq {
                    log_seq = next_log;
                    log_applied.send_replace(log_seq);
                }
                for (req, result) in batch.into_iter().zip(results) {
                    match (req, result) {
                        (Work::Op { reply, .. }, Outcome::Op(r)) => {
                            let _ = reply.send(r.map_err(StateError::from));
                        }
                        (Work::Job { reply, .. }, Outcome::Job(r)) => {
                            let _ = reply.send(r.map_err(|detail| StateError::Storage {
                                path: path.clone(),
                                detail,
                            }));
                        }
                        (Work::Apply { reply, .. }, Outcome::Applied) => {
                            let _ = reply.send(Ok(()));
                        }
                        _ => tracing::error!("writer results out of step with requests"),
                    }
                }
            }
            Err(detail) => {
                tracing::error!(path = %path.display(), error = %detail, "state commit failed; writes refused");
                let err = || StateError::Storage {
                    path: path.clone(),
                    detail: detail.clone(),
                };
                for req in batch {
                    match req {
                        Work::Op { reply, .. } => {
                            let _ = reply.send(Err(err()));
                        }
                        Work::Job { reply, .. } => {
                            let _ = reply.send(Err(err()));
                        }
                        Work::Apply { reply, .. } => {
                            let _ = reply.send(Err(err()));
                        }
                    }
                }
            }
        }
    }
}

enum Outcome {
    Op(Result<OpResult, OpError>),
    Job(Result<JobOutput, String>),
    Applied,
}

type BatchResults = (Vec<Outcome>, u64, u64);

fn commit_batch(
    db: &Database,
    batch: &mut [Work],
    mut seq: u64,
    mut log_seq: u64,
) -> Result<BatchResults, String> {
    let log_before = log_seq;
    let mut wtx = db.begin_write().map_err(|e| e.to_string())?;
    wtx.set_durability(Durability::Immediate)
        .map_err(|e| e.to_string())?;
    let mut results = Vec::with_capacity(batch.len());
    {
        let mut tables = Tables {
            data: wtx.open_table(DATA).map_err(|e| e.to_string())?,
            usage: wtx.open_table(USAGE).map_err(|e| e.to_string())?,
        };
        let mut journal = wtx.open_table(JOURNAL).map_err(|e| e.to_string())?;
        for req in batch.iter_mut() {
            match req {
                Work::Op {
                    op, limits, idem, ..
                } => {
                    if let Some(key) = idem.as_deref()
                        && let Some(recorded) = journal
                            .get(key)
                            .map_err(|e| e.to_string())?
                            .and_then(|v| serde_json::from_slice::<(u64, OpResult)>(v.value()).ok())
                    {
                        results.push(Outcome::Op(Ok(recorded.1)));
                        continue;
                    }
                    let r = apply(&mut tables, op, limits);
                    if let (Some(key), Ok(result)) = (idem.as_deref(), &r) {
                        let entry =
                            serde_json::to_vec(&(now_ms(), result)).map_err(|e| e.to_string())?;
                        journal
                            .insert(key, entry.as_slice())
                            .map_err(|e| e.to_string())?;
                    }
                    if let Err(OpError::Storage(detail)) = &r {
                        // A storage failure may leave this op half-written: abort the transaction.
                        return Err(detail.clone());
                    }
                    if r.is_ok() {
                        seq += 1;
                    }
                    results.push(Outcome::Op(r));
                }
                Work::Job { job, .. } => {
                    // Jobs open their own tables (never the state tables held open here).
                    let r = match job.take() {
                        Some(job) => job(&wtx),
                        None => Err("job already run".to_string()),
                    };
                    results.push(Outcome::Job(r));
                }
                Work::Apply { entries, .. } => {
                    let mut key_seq = wtx.open_table(KEY_SEQ).map_err(|e| e.to_string())?;
                    for entry in entries.iter() {
                        if entry.seq <= log_seq {
                            continue;
                        }
                        // The log holds only checked writes: every node applies all of it.
                        match apply(&mut tables, &entry.op, &KvLimits::UNLIMITED) {
                            Err(OpError::Storage(detail)) => return Err(detail),
                            Err(e) => {
                                tracing::error!(seq = entry.seq, error = %e, "replicated write refused; skipped")
                            }
                            Ok(_) => {}
                        }
                        if let Op::Set { ns, key, .. } | Op::Delete { ns, key } = &entry.op {
                            key_seq
                                .insert(ns.key(key).as_slice(), entry.seq)
                                .map_err(|e| e.to_string())?;
                        }
                        log_seq = entry.seq;
                    }
                    results.push(Outcome::Applied);
                }
            }
        }
        if log_seq != log_before {
            let mut applied = wtx.open_table(APPLIED).map_err(|e| e.to_string())?;
            applied
                .insert(CLUSTER_LOG, log_seq)
                .map_err(|e| e.to_string())?;
            applied
                .insert(CLUSTER_LOG_AT, now_ms())
                .map_err(|e| e.to_string())?;
        }
        wtx.open_table(APPLIED)
            .map_err(|e| e.to_string())?
            .insert(LOCAL_LOG, seq)
            .map_err(|e| e.to_string())?;
    }
    wtx.commit().map_err(|e| e.to_string())?;
    Ok((results, seq, log_seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Arc<StateStore>) {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(&dir.path().join("state.redb")).unwrap();
        (dir, s)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_node_away_longer_than_tombstones_live_rebuilds_its_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let ns = Namespace::new("f", "default");
        let reopen = |path: &Path| {
            // The old writer thread lets go of the file once its channel closes.
            for _ in 0..100 {
                if let Ok(s) = StateStore::open(path) {
                    return s;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            panic!("cannot reopen the store");
        };
        let s = StateStore::open(&path).unwrap();
        s.apply_log(vec![LogEntry {
            seq: 7,
            op: Op::Set {
                ns: ns.clone(),
                key: "k".into(),
                value: b"v".to_vec(),
            },
        }])
        .await
        .unwrap();
        drop(s);
        // Back recently: the copy stays and resumes after 7.
        let s = reopen(&path);
        assert_eq!(
            (s.log_applied(), s.get(&ns, "k").unwrap()),
            (7, Some(b"v".to_vec()))
        );
        let long_ago = now_ms() - replica::TOMBSTONE_TTL.as_millis() as u64 - 1000;
        s.transact(Box::new(move |tx| {
            let mut t = tx.open_table(APPLIED).map_err(|e| e.to_string())?;
            t.insert(CLUSTER_LOG_AT, long_ago)
                .map_err(|e| e.to_string())?;
            Ok(Box::new(()) as JobOutput)
        }))
        .await
        .unwrap();
        drop(s);
        // Back after tombstones expired: start over from the whole stream.
        let s = reopen(&path);
        assert_eq!((s.log_applied(), s.get(&ns, "k").unwrap()), (0, None));
        assert_eq!(s.usage("f").unwrap(), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_increments_all_count() {
        let (_d, s) = store();
        let ns = Namespace::new("counter", "default");
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (s, ns) = (s.clone(), ns.clone());
            tasks.push(tokio::spawn(async move {
                s.write(
                    Op::Increment {
                        ns,
                        key: "x".into(),
                        delta: 1,
                    },
                    KvLimits::default(),
                )
                .await
            }));
        }
        for t in tasks {
            assert!(matches!(t.await.unwrap(), Ok(OpResult::Incremented(_))));
        }
        assert_eq!(s.get(&ns, "x").unwrap(), Some(b"200".to_vec()));
        assert_eq!(s.applied().unwrap(), 200);
    }

    #[tokio::test]
    async fn compare_and_swap_and_limits() {
        let (_d, s) = store();
        let ns = Namespace::new("f", "b");
        let lim = KvLimits {
            key_bytes: 8,
            value_bytes: 4,
            keys: 2,
            total_bytes: 100,
        };
        let cas = |expected: Option<&[u8]>, new: &[u8]| Op::CompareAndSwap {
            ns: ns.clone(),
            key: "k".into(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.to_vec(),
        };
        assert_eq!(
            s.write(cas(None, b"a"), lim).await.unwrap(),
            OpResult::Swapped(true)
        );
        assert_eq!(
            s.write(cas(None, b"b"), lim).await.unwrap(),
            OpResult::Swapped(false)
        );
        assert_eq!(
            s.write(cas(Some(b"a"), b"b"), lim).await.unwrap(),
            OpResult::Swapped(true)
        );
        assert_eq!(s.get(&ns, "k").unwrap(), Some(b"b".to_vec()));
        let set = |key: &str, value: &[u8]| Op::Set {
            ns: ns.clone(),
            key: key.into(),
            value: value.to_vec(),
        };
        assert!(matches!(
            s.write(set("k", b"too long"), lim).await,
            Err(StateError::Refused(OpError::ValueTooLarge { .. }))
        ));
        assert!(matches!(
            s.write(set("a-very-long-key", b"v"), lim).await,
            Err(StateError::Refused(OpError::KeyTooLarge { .. }))
        ));
        s.write(set("k2", b"v"), lim).await.unwrap();
        assert!(matches!(
            s.write(set("k3", b"v"), lim).await,
            Err(StateError::Refused(OpError::TooManyKeys { .. }))
        ));
        // A refused op changed nothing.
        assert_eq!(s.get(&ns, "k").unwrap(), Some(b"b".to_vec()));
        assert_eq!(s.get(&ns, "k3").unwrap(), None);
        assert_eq!(s.usage("f").unwrap().0, 2);
        s.write(
            Op::Delete {
                ns: ns.clone(),
                key: "k2".into(),
            },
            lim,
        )
        .await
        .unwrap();
        s.write(set("k3", b"v"), lim).await.unwrap();
        assert_eq!(s.usage("f").unwrap(), (2, 5));
    }

    #[tokio::test]
    async fn listing_pages_and_prefixes_stay_in_their_bucket() {
        let (_d, s) = store();
        let a = Namespace::new("f", "a");
        let items = (0..2500)
            .map(|i| (format!("user:{i:05}"), b"1".to_vec()))
            .collect();
        s.write(
            Op::SetMany {
                ns: a.clone(),
                items,
            },
            KvLimits::default(),
        )
        .await
        .unwrap();
        s.write(
            Op::Set {
                ns: a.clone(),
                key: "zzz".into(),
                value: b"1".to_vec(),
            },
            KvLimits::default(),
        )
        .await
        .unwrap();
        let other = Namespace::new("f", "ab");
        s.write(
            Op::Set {
                ns: other.clone(),
                key: "user:x".into(),
                value: b"1".to_vec(),
            },
            KvLimits::default(),
        )
        .await
        .unwrap();
        let mut all = Vec::new();
        let mut cursor = 0;
        loop {
            let (keys, next) = s.list(&a, "user:", cursor).unwrap();
            all.extend(keys);
            match next {
                Some(c) => cursor = c,
                None => break,
            }
        }
        assert_eq!(all.len(), 2500);
        assert_eq!(all[0], "user:00000");
        assert!(all.iter().all(|k| k.starts_with("user:0")
            || k.starts_with("user:1")
            || k.starts_with("user:2")));
        let purged = s
            .write(
                Op::Purge {
                    function: "f".into(),
                },
                KvLimits::default(),
            )
            .await
            .unwrap();
        assert_eq!(purged, OpResult::Purged(2502));
        assert_eq!(s.usage("f").unwrap(), (0, 0));
    }
}
