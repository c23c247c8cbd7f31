//! The node's local control store: which functions are deployed, at which version, with
//! which artifact and secrets — on redb, with artifacts as content-addressed files beside
//! it. The [`ControlStore`] of `skiff up`, and a cluster node's copy of what it serves.
//!
//! Layout under the data dir:
//! * `skiff.redb` — tables `functions` (name → JSON record), `versions` (name → last
//!   version handed out, so a removed and redeployed function never reuses a number) and
//!   `secrets` (`<function>/<key>` → the secret sealed with the node's key, see
//!   `skiff_core::secrets`).
//! * `artifacts/<sha256>.wasm` — uploaded components, written to a temp file, fsynced and
//!   renamed, and verified against their name whenever they are read.
//!
//! Changes are announced to watchers through a broadcast channel, in commit order.

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use skiff_core::control::{Change, ControlError, ControlStore, SealedSecret};
use skiff_core::record::{FunctionRecord, is_sha256_hex, now_ms, sha256_hex};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::broadcast;

const FUNCTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("functions");
const VERSIONS: TableDefinition<&str, u64> = TableDefinition::new("versions");
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// Changes a slow watcher may fall behind by before its watch fails (and it re-lists).
const WATCH_BUFFER: usize = 4096;

/// A failure of the control store.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// redb refused an operation.
    #[error("control store {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// redb's error.
        source: Box<redb::Error>,
    },
    /// A file under the data dir could not be read or written.
    #[error("{what} `{path}`: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An artifact's bytes do not hash to its name: the file is corrupt.
    #[error("artifact `{path}` is corrupt (its sha256 is {actual}); redeploy the function")]
    Corrupt {
        /// The artifact file.
        path: PathBuf,
        /// The hash of what is on disk.
        actual: String,
    },
    /// An artifact was asked for that was never uploaded.
    #[error("artifact {0} has not been uploaded; upload it before deploying the function")]
    MissingArtifact(String),
    /// A stored record did not decode.
    #[error("control store record for `{name}` is unreadable: {source}")]
    Record {
        /// The function.
        name: String,
        /// The decode error.
        source: serde_json::Error,
    },
}

impl From<RegistryError> for ControlError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::MissingArtifact(sha) => ControlError::MissingArtifact(sha),
            RegistryError::Corrupt { .. } => ControlError::Corrupt(e.to_string()),
            other => ControlError::Unavailable(other.to_string()),
        }
    }
}

/// The control store of one node (or of `skiff up`): a cheap handle to it.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Store>,
}

/// The store behind a [`Registry`] handle.
struct Store {
    db: Database,
    db_path: PathBuf,
    artifacts: PathBuf,
    changes: broadcast::Sender<Change>,
}

impl Registry {
    /// Opens (creating if needed) the store under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Registry, RegistryError> {
        let artifacts = data_dir.join("artifacts");
        std::fs::create_dir_all(&artifacts).map_err(|source| RegistryError::Io {
            what: "cannot create folder",
            path: artifacts.clone(),
            source,
        })?;
        let db_path = data_dir.join("skiff.redb");
        let db = Database::create(&db_path).map_err(|e| RegistryError::Db {
            path: db_path.clone(),
            source: Box::new(e.into()),
        })?;
        let reg = Store {
            db,
            db_path,
            artifacts,
            changes: broadcast::channel(WATCH_BUFFER).0,
        };
        // Create the tables so that reads never meet a missing table.
        reg.write(|tx| {
            tx.open_table(FUNCTIONS)?;
            tx.open_table(VERSIONS)?;
            tx.open_table(SECRETS)?;
            Ok(())
        })?;
        Ok(Registry {
            inner: Arc::new(reg),
        })
    }

    /// Where the artifact with this hash lives.
    pub fn artifact_path(&self, sha: &str) -> PathBuf {
        self.inner.artifact_path(sha)
    }
}

impl Store {
    fn db_err(&self, e: impl Into<redb::Error>) -> RegistryError {
        RegistryError::Db {
            path: self.db_path.clone(),
            source: Box::new(e.into()),
        }
    }

    /// Runs `f` in one durable write transaction.
    fn write<R>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<R, redb::Error>,
    ) -> Result<R, RegistryError> {
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        let r = f(&tx).map_err(|e| self.db_err(e))?;
        tx.commit().map_err(|e| self.db_err(e))?;
        Ok(r)
    }

    /// Tells watchers (none listening is fine).
    fn announce(&self, change: Change) {
        let _ = self.changes.send(change);
    }

    fn artifact_path(&self, sha: &str) -> PathBuf {
        self.artifacts.join(format!("{sha}.wasm"))
    }

    fn store_artifact(&self, bytes: &[u8]) -> Result<String, RegistryError> {
        let sha = sha256_hex(bytes);
        let path = self.artifact_path(&sha);
        if path.exists() && self.read_artifact(&sha).is_ok() {
            return Ok(sha);
        }
        crate::files::write_durably(&path, bytes).map_err(|e| RegistryError::Io {
            what: e.what,
            path: e.path,
            source: e.source,
        })?;
        Ok(sha)
    }

    fn list_artifacts(&self) -> Result<Vec<String>, RegistryError> {
        let io = |source| RegistryError::Io {
            what: "cannot list",
            path: self.artifacts.clone(),
            source,
        };
        let mut shas = Vec::new();
        for entry in std::fs::read_dir(&self.artifacts).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            if let Some(sha) = name.to_str().and_then(|n| n.strip_suffix(".wasm"))
                && is_sha256_hex(sha)
            {
                shas.push(sha.to_string());
            }
        }
        shas.sort();
        Ok(shas)
    }

    fn delete_artifact(&self, sha: &str) -> Result<u64, RegistryError> {
        if !is_sha256_hex(sha) {
            return Ok(0);
        }
        let path = self.artifact_path(sha);
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => {
                return Err(RegistryError::Io {
                    what: "cannot inspect",
                    path,
                    source,
                });
            }
        };
        std::fs::remove_file(&path).map_err(|source| RegistryError::Io {
            what: "cannot remove",
            path,
            source,
        })?;
        Ok(size)
    }

    fn read_artifact(&self, sha: &str) -> Result<Vec<u8>, RegistryError> {
        if !is_sha256_hex(sha) {
            return Err(RegistryError::MissingArtifact(sha.to_string()));
        }
        let path = self.artifact_path(sha);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RegistryError::MissingArtifact(sha.to_string()));
            }
            Err(source) => {
                return Err(RegistryError::Io {
                    what: "cannot read artifact",
                    path,
                    source,
                });
            }
        };
        let actual = sha256_hex(&bytes);
        if actual != sha {
            return Err(RegistryError::Corrupt { path, actual });
        }
        Ok(bytes)
    }

    fn next_record(
        &self,
        name: &str,
        manifest: &str,
        artifact: &str,
    ) -> Result<FunctionRecord, RegistryError> {
        if !is_sha256_hex(artifact) || !self.artifact_path(artifact).exists() {
            return Err(RegistryError::MissingArtifact(artifact.to_string()));
        }
        let record = self.write(|tx| {
            let mut versions = tx.open_table(VERSIONS)?;
            let version = versions.get(name)?.map(|v| v.value()).unwrap_or(0) + 1;
            versions.insert(name, version)?;
            let record = FunctionRecord {
                name: name.to_string(),
                version,
                manifest: manifest.to_string(),
                artifact: artifact.to_string(),
                deployed_at_ms: now_ms(),
                signature: None,
            };
            let json = serde_json::to_vec(&record).map_err(|e| {
                redb::Error::Corrupted(format!("cannot encode record for `{name}`: {e}"))
            })?;
            tx.open_table(FUNCTIONS)?.insert(name, json.as_slice())?;
            Ok(record)
        })?;
        self.announce(Change::Deployed(record.clone()));
        Ok(record)
    }

    fn store_record(&self, record: &FunctionRecord) -> Result<(), RegistryError> {
        let name = record.name.as_str();
        let json = serde_json::to_vec(record).map_err(|source| RegistryError::Record {
            name: name.to_string(),
            source,
        })?;
        self.write(|tx| {
            let mut versions = tx.open_table(VERSIONS)?;
            let last = versions.get(name)?.map(|v| v.value()).unwrap_or(0);
            versions.insert(name, last.max(record.version))?;
            tx.open_table(FUNCTIONS)?.insert(name, json.as_slice())?;
            Ok(())
        })?;
        self.announce(Change::Deployed(record.clone()));
        Ok(())
    }

    fn delete_record(&self, name: &str) -> Result<bool, RegistryError> {
        let existed = self.write(|tx| Ok(tx.open_table(FUNCTIONS)?.remove(name)?.is_some()))?;
        if existed {
            self.announce(Change::Removed(name.to_string()));
        }
        Ok(existed)
    }

    fn list_records(&self, only: Option<&str>) -> Result<Vec<FunctionRecord>, RegistryError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = tx.open_table(FUNCTIONS).map_err(|e| self.db_err(e))?;
        let decode = |name: &str, bytes: &[u8]| {
            serde_json::from_slice(bytes).map_err(|source| RegistryError::Record {
                name: name.to_string(),
                source,
            })
        };
        if let Some(name) = only {
            return match table.get(name).map_err(|e| self.db_err(e))? {
                Some(v) => Ok(vec![decode(name, v.value())?]),
                None => Ok(Vec::new()),
            };
        }
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn store_secret(&self, function: &str, key: &str, sealed: &[u8]) -> Result<(), RegistryError> {
        let id = format!("{function}/{key}");
        self.write(|tx| {
            tx.open_table(SECRETS)?.insert(id.as_str(), sealed)?;
            Ok(())
        })?;
        self.announce(Change::SecretSet(
            function.to_string(),
            key.to_string(),
            sealed.to_vec(),
        ));
        Ok(())
    }

    fn delete_secret(&self, function: &str, key: &str) -> Result<bool, RegistryError> {
        let id = format!("{function}/{key}");
        let existed =
            self.write(|tx| Ok(tx.open_table(SECRETS)?.remove(id.as_str())?.is_some()))?;
        if existed {
            self.announce(Change::SecretRemoved(function.to_string(), key.to_string()));
        }
        Ok(existed)
    }

    fn list_secrets(&self, function: Option<&str>) -> Result<Vec<SealedSecret>, RegistryError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = tx.open_table(SECRETS).map_err(|e| self.db_err(e))?;
        let prefix = function.map(|f| format!("{f}/")).unwrap_or_default();
        let mut out = Vec::new();
        for entry in table.range(prefix.as_str()..).map_err(|e| self.db_err(e))? {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            let id = k.value();
            if !id.starts_with(&prefix) {
                break;
            }
            if let Some((f, key)) = id.split_once('/') {
                out.push((f.to_string(), key.to_string(), v.value().to_vec()));
            }
        }
        Ok(out)
    }
}

impl ControlStore for Registry {
    fn put_artifact<'a>(&'a self, bytes: &'a [u8]) -> BoxFuture<'a, Result<String, ControlError>> {
        // Hashing and fsyncing tens of MiB stays off the async workers.
        let (reg, bytes) = (self.inner.clone(), bytes.to_vec());
        Box::pin(async move { blocking(move || reg.store_artifact(&bytes)).await })
    }

    fn has_artifact<'a>(&'a self, sha: &'a str) -> BoxFuture<'a, Result<bool, ControlError>> {
        Box::pin(async move { Ok(is_sha256_hex(sha) && self.inner.artifact_path(sha).exists()) })
    }

    fn artifacts(&self) -> BoxFuture<'_, Result<Vec<String>, ControlError>> {
        let reg = self.inner.clone();
        Box::pin(async move { blocking(move || reg.list_artifacts()).await })
    }

    fn remove_artifact<'a>(&'a self, sha: &'a str) -> BoxFuture<'a, Result<u64, ControlError>> {
        let (reg, sha) = (self.inner.clone(), sha.to_string());
        Box::pin(async move { blocking(move || reg.delete_artifact(&sha)).await })
    }

    fn fetch_artifact<'a>(&'a self, sha: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ControlError>> {
        let (reg, sha) = (self.inner.clone(), sha.to_string());
        Box::pin(async move { blocking(move || reg.read_artifact(&sha)).await })
    }

    fn record<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<FunctionRecord>, ControlError>> {
        Box::pin(async move { Ok(self.inner.list_records(Some(name))?.pop()) })
    }

    fn records(&self) -> BoxFuture<'_, Result<Vec<FunctionRecord>, ControlError>> {
        Box::pin(async move { Ok(self.inner.list_records(None)?) })
    }

    fn deploy<'a>(
        &'a self,
        name: &'a str,
        manifest: &'a str,
        artifact: &'a str,
    ) -> BoxFuture<'a, Result<FunctionRecord, ControlError>> {
        Box::pin(async move { Ok(self.inner.next_record(name, manifest, artifact)?) })
    }

    fn put<'a>(&'a self, record: &'a FunctionRecord) -> BoxFuture<'a, Result<(), ControlError>> {
        Box::pin(async move { Ok(self.inner.store_record(record)?) })
    }

    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, ControlError>> {
        Box::pin(async move { Ok(self.inner.delete_record(name)?) })
    }

    fn put_secret<'a>(
        &'a self,
        function: &'a str,
        key: &'a str,
        sealed: &'a [u8],
    ) -> BoxFuture<'a, Result<(), ControlError>> {
        Box::pin(async move { Ok(self.inner.store_secret(function, key, sealed)?) })
    }

    fn remove_secret<'a>(
        &'a self,
        function: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<bool, ControlError>> {
        Box::pin(async move { Ok(self.inner.delete_secret(function, key)?) })
    }

    fn secrets<'a>(
        &'a self,
        function: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<SealedSecret>, ControlError>> {
        Box::pin(async move { Ok(self.inner.list_secrets(function)?) })
    }

    fn watch(
        &self,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Change, ControlError>>, ControlError>> {
        use futures::StreamExt;
        let rx = self.inner.changes.subscribe();
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(change) => Some((Ok(change), rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(ControlError::Unavailable(format!(
                        "the control store watch fell {n} changes behind; list again"
                    ))),
                    rx,
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .boxed();
        Box::pin(async move { Ok(stream) })
    }
}

/// Runs a blocking store call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ControlError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => Ok(r?),
        Err(e) => Err(ControlError::Unavailable(format!(
            "a control store task failed: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn the_local_control_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        skiff_core::control::conformance::run(&reg).await;
        // And what it holds survives a reopen.
        let records = reg.records().await.unwrap();
        drop(reg);
        let reg = Registry::open(dir.path()).unwrap();
        assert_eq!(reg.records().await.unwrap(), records);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn corrupt_and_missing_artifacts_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        let sha = reg.put_artifact(b"original").await.unwrap();
        std::fs::write(reg.artifact_path(&sha), b"tampered").unwrap();
        assert!(matches!(
            reg.fetch_artifact(&sha).await,
            Err(ControlError::Corrupt(_))
        ));
        let other = sha256_hex(b"never stored");
        assert!(matches!(
            reg.fetch_artifact(&other).await,
            Err(ControlError::MissingArtifact(_))
        ));
        assert!(matches!(
            reg.fetch_artifact("../../etc/passwd").await,
            Err(ControlError::MissingArtifact(_))
        ));
    }
}
