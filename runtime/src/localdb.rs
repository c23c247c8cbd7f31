//! The node's local database: one redb file, written by one thread that group-commits.
//!
//! Writers send [`Job`]s; the writer thread runs every job waiting at that moment in one
//! transaction and commits it with `Durability::Immediate`, so concurrent writers share
//! one fsync, and no job is answered before its writes are on disk. State (`state`)
//! and the embedded event bus (`events::embedded`) both write through here.
//!
//! Each job is all-or-nothing. redb has no savepoint once a transaction has written, so
//! when a job fails the whole transaction is dropped (nothing of it reaches the disk), that
//! job is answered with its error, and the batch's other jobs run again in a new
//! transaction. A job must therefore be re-runnable: it reads what it needs from the
//! transaction it is given, every time.
//!
//! After an I/O error (a full disk) redb refuses every later transaction until the
//! database is opened again. The writer then closes it and opens it again (redb repairs
//! it if needed) — at once, and before each later batch until that works — so writes
//! resume on their own once the disk has room. Reads fail with the same clear error
//! while it is closed.

use arc_swap::ArcSwapOption;
use redb::{Database, DatabaseError, Durability, ReadTransaction, WriteTransaction};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 4096;

/// A failure of the local database.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LocalDbError {
    /// redb failed, or the job did: nothing of the job was written.
    #[error("local database {path}: {detail}")]
    Failed {
        /// The database file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The writer is gone (the node is stopping).
    #[error("the local database is shutting down; retry after restart")]
    Closed,
}

/// A unit of work run inside the writer's shared transaction.
///
/// `Err` means the job may have written part of what it meant to: the transaction is
/// dropped and the other jobs run again without it. A job that refuses cleanly (having
/// written nothing) returns its refusal inside `Output` instead.
pub trait Job: Send + 'static {
    /// What the job answers once committed.
    type Output: Send + 'static;
    /// Runs the job in `tx`; may run more than once (on a fresh transaction each time).
    fn run(&mut self, tx: &WriteTransaction) -> Result<Self::Output, String>;
}

impl<T, F> Job for F
where
    F: FnMut(&WriteTransaction) -> Result<T, String> + Send + 'static,
    T: Send + 'static,
{
    type Output = T;

    fn run(&mut self, tx: &WriteTransaction) -> Result<T, String> {
        self(tx)
    }
}

/// A job on its way through the writer, with its answer.
trait Pending: Send {
    fn run(&mut self, tx: &WriteTransaction) -> Result<(), String>;
    fn answer(self: Box<Self>, result: Result<(), LocalDbError>);
}

struct Slot<J: Job> {
    job: J,
    output: Option<J::Output>,
    reply: oneshot::Sender<Result<J::Output, LocalDbError>>,
}

impl<J: Job> Pending for Slot<J> {
    fn run(&mut self, tx: &WriteTransaction) -> Result<(), String> {
        self.output = Some(self.job.run(tx)?);
        Ok(())
    }

    fn answer(self: Box<Self>, result: Result<(), LocalDbError>) {
        let answer = match (result, self.output) {
            (Ok(()), Some(out)) => Ok(out),
            (Ok(()), None) => Err(LocalDbError::Closed),
            (Err(e), _) => Err(e),
        };
        // The asker may have gone away; the job is committed (or not) all the same.
        let _ = self.reply.send(answer);
    }
}

/// The node's local database and its writer thread.
pub struct LocalDb {
    db: Arc<Handle>,
    path: PathBuf,
    writer: mpsc::UnboundedSender<Box<dyn Pending>>,
}

/// The open database, or none while it is being opened again after an I/O error.
struct Handle {
    path: PathBuf,
    open: ArcSwapOption<Database>,
    /// One reopening at a time.
    reopening: Mutex<()>,
}

impl Handle {
    fn failed(&self, detail: String) -> LocalDbError {
        LocalDbError::Failed {
            path: self.path.clone(),
            detail,
        }
    }

    /// The open database, opening it again if an I/O error closed it. `wait`: the
    /// writer's thread may wait (up to a second) for read transactions begun before the
    /// error to let go of the file; a reader (on an async worker) tries once and never
    /// waits for a reopening under way.
    fn get(&self, wait: bool) -> Result<Arc<Database>, LocalDbError> {
        if let Some(db) = self.open.load_full() {
            return Ok(db);
        }
        let _one = match (self.reopening.try_lock(), wait) {
            (Ok(g), _) => g,
            (Err(std::sync::TryLockError::Poisoned(p)), _) => p.into_inner(),
            (Err(std::sync::TryLockError::WouldBlock), false) => {
                return Err(
                    self.failed("being opened again after an I/O error; retry in a moment".into())
                );
            }
            (Err(std::sync::TryLockError::WouldBlock), true) => match self.reopening.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            },
        };
        if let Some(db) = self.open.load_full() {
            return Ok(db);
        }
        let attempts = if wait { 100 } else { 1 };
        let mut last = String::new();
        for _ in 0..attempts {
            match Database::create(&self.path) {
                Ok(db) => {
                    let db = Arc::new(db);
                    self.open.store(Some(db.clone()));
                    tracing::info!(path = %self.path.display(), "local database opened again after an I/O error; writes resume");
                    return Ok(db);
                }
                Err(DatabaseError::DatabaseAlreadyOpen) => {
                    last = DatabaseError::DatabaseAlreadyOpen.to_string();
                    if wait {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                Err(e) => {
                    last = e.to_string();
                    break;
                }
            }
        }
        Err(self.failed(format!(
            "closed after an I/O error and cannot be opened again yet ({last}); free disk space — writes resume on their own"
        )))
    }

    /// Closes the database after a failed commit (redb refuses everything after an I/O
    /// error until it is opened again) and tries to open it again at once.
    fn close_after_error(&self) {
        self.open.store(None);
        if self.get(true).is_err() {
            tracing::warn!(path = %self.path.display(), "local database stays closed until the disk has room; retried with the next write");
        }
    }
}

impl std::fmt::Debug for LocalDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDb").field("path", &self.path).finish()
    }
}

impl LocalDb {
    /// Opens (creating) the database at `path` and starts its writer thread, which ends
    /// when the last handle is dropped.
    pub fn open(path: &Path) -> Result<Arc<LocalDb>, LocalDbError> {
        let failed = |e: &dyn std::fmt::Display| LocalDbError::Failed {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        let db = Arc::new(Handle {
            path: path.to_path_buf(),
            open: ArcSwapOption::new(Some(Arc::new(
                Database::create(path).map_err(|e| failed(&e))?,
            ))),
            reopening: Mutex::new(()),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("skiff-localdb-writer".into())
            .spawn(move || writer(writer_db, rx))
            .map_err(|e| failed(&e))?;
        Ok(Arc::new(LocalDb {
            db,
            path: path.to_path_buf(),
            writer: tx,
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `job` in the writer's next group-committed transaction; answers once durable.
    pub async fn run<J: Job>(&self, job: J) -> Result<J::Output, LocalDbError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Box::new(Slot {
                job,
                output: None,
                reply,
            }))
            .map_err(|_| LocalDbError::Closed)?;
        rx.await.map_err(|_| LocalDbError::Closed)?
    }

    /// A read snapshot (MVCC: readers never wait for the writer).
    pub fn read(&self) -> Result<ReadTransaction, LocalDbError> {
        use redb::ReadableDatabase;
        self.db
            .get(false)?
            .begin_read()
            .map_err(|e| self.db.failed(e.to_string()))
    }
}

/// The writer thread: take what is waiting, commit it as one transaction, answer.
fn writer(handle: Arc<Handle>, mut rx: mpsc::UnboundedReceiver<Box<dyn Pending>>) {
    let failed = |detail: String| handle.failed(detail);
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let db = match handle.get(true) {
            Ok(db) => db,
            Err(e) => {
                for p in batch.drain(..) {
                    p.answer(Err(e.clone()));
                }
                continue;
            }
        };
        while !batch.is_empty() {
            match commit(&db, &mut batch) {
                Ok(()) => {
                    for p in batch.drain(..) {
                        p.answer(Ok(()));
                    }
                }
                Err(Failure::Job(i, detail)) => {
                    // Only that job fails; the others run again without it.
                    tracing::debug!(error = %detail, "a local database job failed; its batch runs again without it");
                    batch.remove(i).answer(Err(failed(detail)));
                }
                Err(Failure::Commit(detail)) => {
                    tracing::error!(path = %handle.path.display(), error = %detail, "local database commit failed; its writes are refused and the database is opened again");
                    for p in batch.drain(..) {
                        p.answer(Err(failed(detail.clone())));
                    }
                    drop(db);
                    handle.close_after_error();
                    break;
                }
            }
        }
    }
}

/// Why a batch did not commit.
enum Failure {
    /// Job number `.0` failed.
    Job(usize, String),
    /// redb could not begin or commit the transaction.
    Commit(String),
}

fn commit(db: &Database, batch: &mut [Box<dyn Pending>]) -> Result<(), Failure> {
    let mut tx = db
        .begin_write()
        .map_err(|e| Failure::Commit(e.to_string()))?;
    tx.set_durability(Durability::Immediate)
        .map_err(|e| Failure::Commit(e.to_string()))?;
    for (i, p) in batch.iter_mut().enumerate() {
        p.run(&tx).map_err(|e| Failure::Job(i, e))?;
    }
    tx.commit().map_err(|e| Failure::Commit(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableDefinition;

    const T: TableDefinition<&str, u64> = TableDefinition::new("t");

    fn get(db: &LocalDb, key: &str) -> Option<u64> {
        let rtx = db.read().unwrap();
        let t = rtx.open_table(T).ok()?;
        t.get(key).unwrap().map(|v| v.value())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_job_leaves_nothing_and_the_others_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = LocalDb::open(&dir.path().join("db.redb")).unwrap();
        // Many at once, so that they share batches with the failing ones.
        let mut tasks = Vec::new();
        for i in 0..200 {
            let db = db.clone();
            let key = format!("k{i}");
            let fail = i % 7 == 0;
            tasks.push(tokio::spawn(async move {
                db.run(move |tx: &WriteTransaction| -> Result<String, String> {
                    tx.open_table(T)
                        .map_err(|e| e.to_string())?
                        .insert(key.as_str(), 1)
                        .map_err(|e| e.to_string())?;
                    if fail {
                        return Err(format!("{key} failed half-way"));
                    }
                    Ok(key.clone())
                })
                .await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let r = t.await.unwrap();
            let key = format!("k{i}");
            if i % 7 == 0 {
                assert!(matches!(r, Err(LocalDbError::Failed { .. })), "{i}: {r:?}");
                assert_eq!(get(&db, &key), None, "a failed job's write stayed: {key}");
            } else {
                assert_eq!(r.unwrap(), key.as_str());
                assert_eq!(get(&db, &key), Some(1));
            }
        }
    }
}
