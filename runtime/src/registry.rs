//! The local control store: which functions are deployed, at which version, with which
//! artifact — on redb, with artifacts as content-addressed files beside it.
//!
//! Layout under the data dir:
//! * `skiff.redb` — tables `functions` (name → JSON record), `versions` (name → last
//!   version handed out, so a removed and redeployed function never reuses a number) and
//!   `compiled` (cache key → sha256 of the precompiled file) and `secrets`
//!   (`<function>/<key>` → the secret sealed with the node's key, see [`crate::secrets`]).
//! * `artifacts/<sha256>.wasm` — uploaded components, written to a temp file, fsynced and
//!   renamed, and verified against their name whenever they are read.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use skiff_core::record::{FunctionRecord, is_sha256_hex, sha256_hex};
use std::io::Write;
use std::path::{Path, PathBuf};

const FUNCTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("functions");
const VERSIONS: TableDefinition<&str, u64> = TableDefinition::new("versions");
const COMPILED: TableDefinition<&str, &str> = TableDefinition::new("compiled");
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
const EXPORTS: TableDefinition<&str, u8> = TableDefinition::new("exports");

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

/// The control store of one node (or of `skiff up`).
pub struct Registry {
    db: Database,
    db_path: PathBuf,
    artifacts: PathBuf,
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
        let reg = Registry {
            db,
            db_path,
            artifacts,
        };
        // Create the tables so that reads never meet a missing table.
        reg.write(|tx| {
            tx.open_table(FUNCTIONS)?;
            tx.open_table(VERSIONS)?;
            tx.open_table(COMPILED)?;
            tx.open_table(SECRETS)?;
            tx.open_table(EXPORTS)?;
            Ok(())
        })?;
        Ok(reg)
    }

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

    /// Where the artifact with this hash lives.
    pub fn artifact_path(&self, sha: &str) -> PathBuf {
        self.artifacts.join(format!("{sha}.wasm"))
    }

    /// Stores `bytes` under their sha256 (durably) and returns the hash.
    pub fn put_artifact(&self, bytes: &[u8]) -> Result<String, RegistryError> {
        let sha = sha256_hex(bytes);
        let path = self.artifact_path(&sha);
        if path.exists() && self.read_artifact(&sha).is_ok() {
            return Ok(sha);
        }
        write_durably(&path, bytes)?;
        Ok(sha)
    }

    /// Whether an intact artifact with this hash is stored.
    pub fn has_artifact(&self, sha: &str) -> bool {
        is_sha256_hex(sha) && self.artifact_path(sha).exists()
    }

    /// Reads an artifact and verifies its hash.
    pub fn read_artifact(&self, sha: &str) -> Result<Vec<u8>, RegistryError> {
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

    /// Records a new version of `name` and returns it. The previous record is replaced.
    pub fn put_function(
        &self,
        name: &str,
        manifest: &str,
        artifact: &str,
    ) -> Result<FunctionRecord, RegistryError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.write(|tx| {
            let mut versions = tx.open_table(VERSIONS)?;
            let version = versions.get(name)?.map(|v| v.value()).unwrap_or(0) + 1;
            versions.insert(name, version)?;
            let record = FunctionRecord {
                name: name.to_string(),
                version,
                manifest: manifest.to_string(),
                artifact: artifact.to_string(),
                deployed_at_ms: now,
            };
            let json = serde_json::to_vec(&record).map_err(|e| {
                redb::Error::Corrupted(format!("cannot encode record for `{name}`: {e}"))
            })?;
            tx.open_table(FUNCTIONS)?.insert(name, json.as_slice())?;
            Ok(record)
        })
    }

    /// Stores `record` as it is (cluster mode: the version comes from the cluster).
    pub fn put_record(&self, record: &FunctionRecord) -> Result<(), RegistryError> {
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
        })
    }

    /// Removes `name`'s record; returns whether it existed.
    pub fn remove_function(&self, name: &str) -> Result<bool, RegistryError> {
        self.write(|tx| Ok(tx.open_table(FUNCTIONS)?.remove(name)?.is_some()))
    }

    /// Every deployed function, by name.
    pub fn functions(&self) -> Result<Vec<FunctionRecord>, RegistryError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = tx.open_table(FUNCTIONS).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            let record =
                serde_json::from_slice(v.value()).map_err(|source| RegistryError::Record {
                    name: k.value().to_string(),
                    source,
                })?;
            out.push(record);
        }
        Ok(out)
    }

    /// The recorded sha256 of a precompiled file, by cache key.
    pub fn compiled_hash(&self, key: &str) -> Result<Option<String>, RegistryError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = tx.open_table(COMPILED).map_err(|e| self.db_err(e))?;
        let v = table.get(key).map_err(|e| self.db_err(e))?;
        Ok(v.map(|v| v.value().to_string()))
    }

    /// Records the sha256 of a precompiled file.
    pub fn set_compiled_hash(&self, key: &str, sha: &str) -> Result<(), RegistryError> {
        self.write(|tx| {
            tx.open_table(COMPILED)?.insert(key, sha)?;
            Ok(())
        })
    }
}

impl Registry {
    /// What a linked artifact exports (bits), by artifact, engine and Skiff version.
    pub fn exports(&self, key: &str) -> Result<Option<u8>, RegistryError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = tx.open_table(EXPORTS).map_err(|e| self.db_err(e))?;
        let v = table.get(key).map_err(|e| self.db_err(e))?;
        Ok(v.map(|v| v.value()))
    }

    /// Records what a linked artifact exports.
    pub fn set_exports(&self, key: &str, bits: u8) -> Result<(), RegistryError> {
        if self.exports(key)? == Some(bits) {
            return Ok(());
        }
        self.write(|tx| {
            tx.open_table(EXPORTS)?.insert(key, bits)?;
            Ok(())
        })
    }

    /// Stores a sealed secret of `function` (function and key names are validated).
    pub fn put_secret(
        &self,
        function: &str,
        key: &str,
        sealed: &[u8],
    ) -> Result<(), RegistryError> {
        let id = format!("{function}/{key}");
        self.write(|tx| {
            tx.open_table(SECRETS)?.insert(id.as_str(), sealed)?;
            Ok(())
        })
    }

    /// Removes a secret; returns whether it existed.
    pub fn remove_secret(&self, function: &str, key: &str) -> Result<bool, RegistryError> {
        let id = format!("{function}/{key}");
        self.write(|tx| Ok(tx.open_table(SECRETS)?.remove(id.as_str())?.is_some()))
    }

    /// The sealed secrets of `function` (every function's when `None`), as
    /// (function, key, sealed), in key order.
    pub fn secrets(
        &self,
        function: Option<&str>,
    ) -> Result<Vec<(String, String, Vec<u8>)>, RegistryError> {
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

/// Writes `bytes` to `path` so that after a crash the file is either absent or whole.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    let io = |what, source| RegistryError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("cannot create", e))?;
    f.write_all(bytes).map_err(|e| io("cannot write", e))?;
    f.sync_all().map_err(|e| io("cannot sync", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io("cannot rename into place", e))?;
    if let Some(dir) = path.parent() {
        // The rename is durable only once the directory entry is.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("cannot sync folder of", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_round_trip_and_versions_never_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        let sha = reg.put_artifact(b"\0asm component bytes").unwrap();
        assert!(reg.has_artifact(&sha));
        let r1 = reg.put_function("hello", "name = \"hello\"", &sha).unwrap();
        let r2 = reg.put_function("hello", "name = \"hello\"", &sha).unwrap();
        assert_eq!((r1.version, r2.version), (1, 2));
        assert!(reg.remove_function("hello").unwrap());
        assert!(!reg.remove_function("hello").unwrap());
        let r3 = reg.put_function("hello", "name = \"hello\"", &sha).unwrap();
        assert_eq!(r3.version, 3);
        drop(reg);
        let reg = Registry::open(dir.path()).unwrap();
        assert_eq!(reg.functions().unwrap(), vec![r3]);
    }

    #[test]
    fn corrupt_and_missing_artifacts_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        let sha = reg.put_artifact(b"original").unwrap();
        std::fs::write(reg.artifact_path(&sha), b"tampered").unwrap();
        assert!(matches!(
            reg.read_artifact(&sha),
            Err(RegistryError::Corrupt { .. })
        ));
        let other = sha256_hex(b"never stored");
        assert!(matches!(
            reg.read_artifact(&other),
            Err(RegistryError::MissingArtifact(_))
        ));
        assert!(matches!(
            reg.read_artifact("../../etc/passwd"),
            Err(RegistryError::MissingArtifact(_))
        ));
    }
}
