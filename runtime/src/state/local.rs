//! Embedded mode's state, and every node's own copy of the cluster's: redb tables written
//! through the group-commit writer ([`crate::localdb`]).
//!
//! A local write is one job: it checks, applies, records its result under its
//! idempotency key (if any) and bumps the local log's sequence, all in the writer's
//! shared transaction, so it is durable when it returns. Applying the replicated log
//! (cluster mode) is another job that also records the last applied sequence, so a
//! restarted node resumes where it stopped. Reads go straight to redb (MVCC snapshots).

use super::ops::{APPLIED, DATA, JOURNAL, KEY_SEQ, Tables, USAGE, apply};
use super::{KvLimits, Namespace, Op, OpError, OpResult, PAGE, StateBackend, StateError};
use crate::localdb::LocalDb;
use futures::future::BoxFuture;
use redb::{ReadableTable, WriteTransaction};
use skiff_core::record::now_ms;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the journal of first answers is swept of entries past their window.
pub const JOURNAL_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The log name embedded mode applies under.
pub const LOCAL_LOG: &str = "local";

/// One entry of the replicated log, applied in order on every node.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Its sequence in the log.
    pub seq: u64,
    /// A set or a delete of one key.
    pub op: Op,
    /// The idempotency key of the write this entry ends, and the result that write
    /// answered: recorded so that a redelivered write answers the same.
    pub answered: Option<(String, OpResult)>,
}

/// State in the node's local database.
pub struct LocalState {
    db: Arc<LocalDb>,
    /// Cluster mode: how far each hosted function's part of the log is applied here.
    positions: super::copies::Positions,
    /// How long the first answer of an idempotency-keyed write is kept.
    window: Duration,
    /// How often the journal is swept, and when it last was.
    sweep_every: Duration,
    swept: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for LocalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalState")
            .field("path", &self.db.path())
            .finish()
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl LocalState {
    /// State in `db`, creating its tables. A copy of the replicated log last applied
    /// longer ago than a tombstone lives is dropped, to be rebuilt from the stream.
    /// Idempotency records are kept for the default window.
    pub async fn open(db: Arc<LocalDb>) -> Result<Arc<LocalState>, StateError> {
        let window = skiff_core::limits::DedupWindows::default().state;
        LocalState::open_with(db, window, JOURNAL_SWEEP_EVERY).await
    }

    /// As [`LocalState::open`], keeping the first answers of idempotency-keyed writes
    /// for `window` (`--dedup-window-state`), swept every `sweep_every`.
    pub async fn open_with(
        db: Arc<LocalDb>,
        window: Duration,
        sweep_every: Duration,
    ) -> Result<Arc<LocalState>, StateError> {
        let applied = db.run(init).await?;
        let positions = super::copies::Positions::default();
        positions.load(applied);
        Ok(Arc::new(LocalState {
            db,
            positions,
            window,
            sweep_every,
            swept: Mutex::new(None),
        }))
    }

    /// The window to sweep the journal with, when a sweep is due.
    fn sweep_due(&self) -> Option<Duration> {
        let mut swept = match self.swept.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let due = swept.is_none_or(|t| t.elapsed() >= self.sweep_every);
        if due {
            *swept = Some(Instant::now());
        }
        due.then_some(self.window)
    }

    fn storage(&self, e: impl std::fmt::Display) -> StateError {
        StateError::Storage {
            path: self.db.path().to_path_buf(),
            detail: e.to_string(),
        }
    }

    /// Applies `function`'s entries of the replicated log, in order, in one durable
    /// transaction that also records its position. Entries at or below it are skipped.
    pub async fn apply_log(
        &self,
        function: &str,
        entries: Vec<LogEntry>,
    ) -> Result<(), StateError> {
        self.apply_logs(
            entries
                .into_iter()
                .map(|e| (function.to_string(), e))
                .collect(),
        )
        .await
    }

    /// Applies entries of several functions (one shard's, in log order) in one durable
    /// transaction; each function skips what it applied already.
    pub async fn apply_logs(&self, entries: Vec<(String, LogEntry)>) -> Result<(), StateError> {
        let sweep = self.sweep_due();
        let mut by_function: std::collections::BTreeMap<String, Vec<LogEntry>> =
            std::collections::BTreeMap::new();
        for (f, e) in entries {
            by_function.entry(f).or_default().push(e);
        }
        let applied = self
            .db
            .run(move |tx: &WriteTransaction| {
                sweep_journal(tx, sweep)?;
                by_function
                    .iter()
                    .map(|(f, entries)| {
                        super::copies::apply_log(tx, f, entries).map(|seq| (f.clone(), seq))
                    })
                    .collect::<Result<Vec<_>, String>>()
            })
            .await?;
        for (function, seq) in applied {
            self.positions.advance(&function, seq);
        }
        Ok(())
    }

    /// How far `function`'s part of the replicated log is applied here.
    pub fn log_applied(&self, function: &str) -> u64 {
        self.positions.get(function)
    }

    /// Waits until `function`'s part of the replicated log is applied here up to `seq`;
    /// false on timeout.
    pub async fn wait_applied(&self, function: &str, seq: u64, max: std::time::Duration) -> bool {
        self.positions.wait(function, seq, max).await
    }

    /// Drops this node's copy of `function` (it no longer hosts it); answers the keys
    /// dropped.
    pub async fn forget(&self, function: &str) -> Result<u64, StateError> {
        let f = function.to_string();
        let dropped = self
            .db
            .run(move |tx: &WriteTransaction| super::copies::forget(tx, &f))
            .await?;
        self.positions.reset(function);
        Ok(dropped)
    }

    /// (function, keys, bytes) of every function with state on this node's disk.
    pub fn stored_functions(&self) -> Result<Vec<(String, u64, u64)>, StateError> {
        let rtx = self.db.read()?;
        let t = rtx.open_table(USAGE).map_err(|e| self.storage(e))?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(|e| self.storage(e))? {
            let (k, v) = entry.map_err(|e| self.storage(e))?;
            let (keys, bytes) = v.value();
            if keys > 0 {
                out.push((k.value().to_string(), keys, bytes));
            }
        }
        Ok(out)
    }

    /// `key`'s value and the replicated log's sequence of the write that last set or
    /// deleted it (0: never written), read from one snapshot so that they belong together.
    pub fn get_with_seq(
        &self,
        ns: &Namespace,
        key: &str,
    ) -> Result<(Option<Vec<u8>>, u64), StateError> {
        let rtx = self.db.read()?;
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

    /// The result first answered under idempotency key `idem`, if this node recorded one.
    pub fn answered(&self, idem: &str) -> Result<Option<OpResult>, StateError> {
        let rtx = self.db.read()?;
        let journal = rtx.open_table(JOURNAL).map_err(|e| self.storage(e))?;
        let v = journal.get(idem).map_err(|e| self.storage(e))?;
        Ok(
            v.and_then(|v| serde_json::from_slice::<(u64, OpResult)>(v.value()).ok())
                .map(|(_, r)| r),
        )
    }

    /// The last sequence applied from the local log.
    pub fn applied(&self) -> Result<u64, StateError> {
        let rtx = self.db.read()?;
        let t = rtx.open_table(APPLIED).map_err(|e| self.storage(e))?;
        let v = t.get(LOCAL_LOG).map_err(|e| self.storage(e))?;
        Ok(v.map(|v| v.value()).unwrap_or(0))
    }

    /// The local database (the embedded event bus shares it).
    pub fn db(&self) -> &Arc<LocalDb> {
        &self.db
    }
}

impl StateBackend for LocalState {
    fn write_once(
        &self,
        op: Op,
        limits: KvLimits,
        idem: Option<String>,
    ) -> BoxFuture<'_, Result<OpResult, StateError>> {
        Box::pin(async move {
            let sweep = self.sweep_due();
            let answer = self
                .db
                .run(move |tx: &WriteTransaction| {
                    sweep_journal(tx, sweep)?;
                    write_op(tx, &op, &limits, idem.as_deref())
                })
                .await?;
            Ok(answer?)
        })
    }

    fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let rtx = self.db.read()?;
        let t = rtx.open_table(DATA).map_err(|e| self.storage(e))?;
        let v = t.get(ns.key(key).as_slice()).map_err(|e| self.storage(e))?;
        Ok(v.map(|v| v.value().to_vec()))
    }

    fn get_consistent<'a>(
        &'a self,
        ns: &'a Namespace,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StateError>> {
        // Here the local copy is the only one.
        Box::pin(async move { self.get(ns, key) })
    }

    fn list(
        &self,
        ns: &Namespace,
        prefix: &str,
        cursor: u64,
    ) -> Result<(Vec<String>, Option<u64>), StateError> {
        let base = ns.prefix();
        let start = ns.key(prefix);
        let rtx = self.db.read()?;
        let t = rtx.open_table(DATA).map_err(|e| self.storage(e))?;
        let range = match super::keys::prefix_end(&start) {
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

    fn stored(&self) -> Result<Vec<(String, u64, u64)>, StateError> {
        self.stored_functions()
    }

    fn usage(&self, function: &str) -> Result<(u64, u64), StateError> {
        let rtx = self.db.read()?;
        let t = rtx.open_table(USAGE).map_err(|e| self.storage(e))?;
        let v = t.get(function).map_err(|e| self.storage(e))?;
        Ok(v.map(|v| v.value()).unwrap_or((0, 0)))
    }
}

/// Creates the tables; answers each replicated function's position (see
/// [`super::copies::init`]).
fn init(tx: &WriteTransaction) -> Result<std::collections::HashMap<String, u64>, String> {
    tx.open_table(DATA).map_err(err)?;
    tx.open_table(USAGE).map_err(err)?;
    tx.open_table(JOURNAL).map_err(err)?;
    tx.open_table(KEY_SEQ).map_err(err)?;
    tx.open_table(APPLIED).map_err(err)?;
    super::copies::init(tx)
}

/// Drops the journal's first answers older than `window` (when a sweep is due): past it,
/// a write with the same idempotency key is a new write.
fn sweep_journal(tx: &WriteTransaction, window: Option<Duration>) -> Result<(), String> {
    let Some(window) = window else {
        return Ok(());
    };
    let cutoff = now_ms().saturating_sub(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
    let mut journal = tx.open_table(JOURNAL).map_err(err)?;
    journal
        .retain(|_, v| {
            serde_json::from_slice::<(u64, serde::de::IgnoredAny)>(v)
                .is_ok_and(|(at, _)| at >= cutoff)
        })
        .map_err(err)
}

/// One local write. A refusal (checked before anything is written) is answered inside;
/// a storage failure aborts the batch.
fn write_op(
    tx: &WriteTransaction,
    op: &Op,
    limits: &KvLimits,
    idem: Option<&str>,
) -> Result<Result<OpResult, OpError>, String> {
    let mut journal = tx.open_table(JOURNAL).map_err(err)?;
    if let Some(key) = idem
        && let Some(recorded) = journal
            .get(key)
            .map_err(err)?
            .and_then(|v| serde_json::from_slice::<(u64, OpResult)>(v.value()).ok())
    {
        return Ok(Ok(recorded.1));
    }
    let result = {
        let mut tables = Tables {
            data: tx.open_table(DATA).map_err(err)?,
            usage: tx.open_table(USAGE).map_err(err)?,
        };
        apply(&mut tables, op, limits)
    };
    match &result {
        Err(OpError::Storage(detail)) => return Err(detail.clone()),
        Err(_) => return Ok(result),
        Ok(answer) => {
            if let Some(key) = idem {
                let entry = serde_json::to_vec(&(now_ms(), answer)).map_err(err)?;
                journal.insert(key, entry.as_slice()).map_err(err)?;
            }
        }
    }
    let mut applied = tx.open_table(APPLIED).map_err(err)?;
    let seq = applied
        .get(LOCAL_LOG)
        .map_err(err)?
        .map(|v| v.value())
        .unwrap_or(0);
    applied.insert(LOCAL_LOG, seq + 1).map_err(err)?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open(path: &std::path::Path) -> Arc<LocalState> {
        LocalState::open(LocalDb::open(path).unwrap())
            .await
            .unwrap()
    }

    async fn store() -> (tempfile::TempDir, Arc<LocalState>) {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir.path().join("state.redb")).await;
        (dir, s)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn first_answers_are_kept_for_the_window_then_swept() {
        let dir = tempfile::tempdir().unwrap();
        let db = LocalDb::open(&dir.path().join("state.redb")).unwrap();
        let window = Duration::from_millis(300);
        let s = LocalState::open_with(db, window, Duration::ZERO)
            .await
            .unwrap();
        let ns = Namespace::new("f", "default");
        let incr = || async {
            s.write_once(
                Op::Increment {
                    ns: ns.clone(),
                    key: "n".into(),
                    delta: 5,
                },
                KvLimits::UNLIMITED,
                Some("f/event-1/0".into()),
            )
            .await
            .unwrap()
        };
        // Within the window a repeat answers the first answer and writes nothing.
        assert_eq!(incr().await, OpResult::Incremented(5));
        assert_eq!(incr().await, OpResult::Incremented(5));
        assert!(s.answered("f/event-1/0").unwrap().is_some());
        // Past it, the journal no longer holds it: the same key is a new write.
        tokio::time::sleep(window * 2).await;
        assert_eq!(incr().await, OpResult::Incremented(10));
        assert_eq!(s.get(&ns, "n").unwrap(), Some(b"10".to_vec()));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_node_away_longer_than_tombstones_live_rebuilds_its_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let ns = Namespace::new("f", "default");
        let reopen = async |path: &std::path::Path| {
            // The old writer thread lets go of the file once its channel closes.
            for _ in 0..100 {
                if let Ok(db) = LocalDb::open(path) {
                    return LocalState::open(db).await.unwrap();
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            panic!("cannot reopen the store");
        };
        let s = open(&path).await;
        s.apply_log(
            "f",
            vec![LogEntry {
                seq: 7,
                op: Op::Set {
                    ns: ns.clone(),
                    key: "k".into(),
                    value: b"v".to_vec(),
                },
                answered: None,
            }],
        )
        .await
        .unwrap();
        drop(s);
        // Back recently: the copy stays and resumes after 7.
        let s = reopen(&path).await;
        assert_eq!(
            (s.log_applied("f"), s.get(&ns, "k").unwrap()),
            (7, Some(b"v".to_vec()))
        );
        let long_ago = now_ms() - super::super::replica::TOMBSTONE_TTL.as_millis() as u64 - 1000;
        s.db()
            .run(move |tx: &WriteTransaction| {
                let mut t = tx.open_table(APPLIED).map_err(|e| e.to_string())?;
                t.insert("log/f@ms", long_ago).map_err(|e| e.to_string())?;
                Ok(())
            })
            .await
            .unwrap();
        drop(s);
        // Back after tombstones expired: start over from the whole stream.
        let s = reopen(&path).await;
        assert_eq!((s.log_applied("f"), s.get(&ns, "k").unwrap()), (0, None));
        assert_eq!(s.usage("f").unwrap(), (0, 0));
        // A function the node stops hosting leaves nothing behind.
        s.apply_log(
            "g",
            vec![LogEntry {
                seq: 9,
                op: Op::Set {
                    ns: Namespace::new("g", "default"),
                    key: "k".into(),
                    value: b"v".to_vec(),
                },
                answered: None,
            }],
        )
        .await
        .unwrap();
        assert_eq!(s.stored_functions().unwrap(), vec![("g".to_string(), 1, 2)]);
        assert_eq!(s.forget("g").await.unwrap(), 1);
        assert_eq!(s.stored_functions().unwrap(), vec![]);
        assert_eq!(s.log_applied("g"), 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_increments_all_count() {
        let (_d, s) = store().await;
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
        let (_d, s) = store().await;
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
        let (_d, s) = store().await;
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
