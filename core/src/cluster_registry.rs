//! The cluster's function registry in JetStream.
//!
//! * KV bucket `skiff_registry`: `fn.<name>` → the JSON [`FunctionRecord`] now deployed
//!   (deleted on removal), and `ver.<name>` → the last version handed out, updated with
//!   compare-and-set so that two deploys racing through two schedulers never share a
//!   number and a removed function never reuses one; `sec.<name>.<key>` → a secret,
//!   sealed with the cluster's shared secrets key (never plain text).
//! * Object store `skiff_artifacts`: components named by their sha256; whoever reads one
//!   verifies the hash before using it.

use crate::record::{FunctionRecord, now_ms, sha256_hex};
use async_nats::jetstream::{self, kv, object_store};
use bytes::Bytes;
use tokio::io::AsyncReadExt;

/// The registry's KV bucket.
pub const BUCKET: &str = "skiff_registry";
/// The artifacts' object store.
pub const ARTIFACTS: &str = "skiff_artifacts";

/// A failure of the cluster registry.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS refused or could not be reached.
    #[error("cluster registry: cannot {what}: {detail} (is NATS reachable?)")]
    Nats {
        /// What was being done.
        what: String,
        /// What NATS said.
        detail: String,
    },
    /// An artifact in the object store does not hash to its name.
    #[error(
        "artifact {sha} in the cluster store is corrupt (its bytes hash to {actual}); refusing it — redeploy the function"
    )]
    Corrupt {
        /// Its name.
        sha: String,
        /// What its bytes hash to.
        actual: String,
    },
    /// An artifact was asked for that was never uploaded.
    #[error("artifact {0} has not been uploaded to the cluster; upload it before deploying")]
    MissingArtifact(String),
    /// A record did not decode.
    #[error("cluster registry record `{key}` is unreadable: {detail}")]
    Record {
        /// Its key.
        key: String,
        /// The decode error.
        detail: String,
    },
}

fn nats(what: impl Into<String>) -> impl FnOnce(&dyn std::fmt::Display) -> ClusterError {
    let what = what.into();
    move |e| ClusterError::Nats {
        what,
        detail: e.to_string(),
    }
}

/// A change seen while watching the registry.
#[derive(Debug)]
pub enum Change {
    /// A version was deployed.
    Deployed(FunctionRecord),
    /// A function was removed.
    Removed(String),
    /// A secret was set: (function, key, sealed value).
    SecretSet(String, String, Vec<u8>),
    /// A secret was removed: (function, key).
    SecretRemoved(String, String),
}

/// The registry as one process sees it.
#[derive(Clone)]
pub struct ClusterRegistry {
    kv: kv::Store,
    objects: object_store::ObjectStore,
}

impl ClusterRegistry {
    /// Opens the bucket and object store, creating them (with `replicas`) if needed.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, ClusterError> {
        let kv = match js.get_key_value(BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: BUCKET.to_string(),
                    history: 1,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats(format!("create bucket {BUCKET}"))(&e))?,
        };
        let objects = match js.get_object_store(ARTIFACTS).await {
            Ok(o) => o,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: ARTIFACTS.to_string(),
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats(format!("create object store {ARTIFACTS}"))(&e))?,
        };
        Ok(ClusterRegistry { kv, objects })
    }

    /// Whether an artifact with this hash was uploaded.
    pub async fn has_artifact(&self, sha: &str) -> Result<bool, ClusterError> {
        match self.objects.info(sha).await {
            Ok(info) => Ok(!info.deleted),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(false),
            Err(e) => Err(nats(format!("look up artifact {sha}"))(&e)),
        }
    }

    /// Stores an artifact whose hash the caller has checked.
    pub async fn put_artifact(&self, sha: &str, bytes: &[u8]) -> Result<(), ClusterError> {
        if self.has_artifact(sha).await? {
            return Ok(());
        }
        let mut reader = bytes;
        self.objects
            .put(sha, &mut reader)
            .await
            .map_err(|e| nats(format!("store artifact {sha}"))(&e))?;
        Ok(())
    }

    /// Reads an artifact and verifies its hash.
    pub async fn fetch_artifact(&self, sha: &str) -> Result<Vec<u8>, ClusterError> {
        let mut object = match self.objects.get(sha).await {
            Ok(o) => o,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
                return Err(ClusterError::MissingArtifact(sha.to_string()));
            }
            Err(e) => return Err(nats(format!("fetch artifact {sha}"))(&e)),
        };
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| nats(format!("read artifact {sha}"))(&e))?;
        let actual = sha256_hex(&bytes);
        if actual != sha {
            return Err(ClusterError::Corrupt {
                sha: sha.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// The record deployed for `name`, if any.
    pub async fn record(&self, name: &str) -> Result<Option<FunctionRecord>, ClusterError> {
        let key = format!("fn.{name}");
        match self
            .kv
            .get(key.as_str())
            .await
            .map_err(|e| nats(format!("read {key}"))(&e))?
        {
            Some(v) => decode(&key, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Every key in the bucket.
    async fn keys(&self) -> Result<Vec<String>, ClusterError> {
        use futures::TryStreamExt;
        self.kv
            .keys()
            .await
            .map_err(|e| nats("list the registry")(&e))?
            .try_collect()
            .await
            .map_err(|e| nats("list the registry")(&e))
    }

    /// Every deployed record.
    pub async fn records(&self) -> Result<Vec<FunctionRecord>, ClusterError> {
        let keys = self.keys().await?;
        let mut out = Vec::new();
        for key in keys {
            if let Some(name) = key.strip_prefix("fn.")
                && let Some(r) = self.record(name).await?
            {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Hands out the next version of `name` (compare-and-set on `ver.<name>`).
    async fn next_version(&self, name: &str) -> Result<u64, ClusterError> {
        let key = format!("ver.{name}");
        loop {
            let entry = self
                .kv
                .entry(key.as_str())
                .await
                .map_err(|e| nats(format!("read {key}"))(&e))?;
            let (next, result) = match entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    let last: u64 = std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let next = last + 1;
                    let r = self
                        .kv
                        .update(key.as_str(), Bytes::from(next.to_string()), e.revision)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                    (next, r)
                }
                _ => {
                    let r = self
                        .kv
                        .create(key.as_str(), Bytes::from_static(b"1"))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                    (1, r)
                }
            };
            match result {
                Ok(()) => return Ok(next),
                // Someone else took this number: read again.
                Err(e) if e.contains("wrong last sequence") || e.contains("already exists") => {
                    continue;
                }
                Err(e) => return Err(nats(format!("update {key}"))(&e)),
            }
        }
    }

    /// Records a new version of `name`; nodes pick it up through their watch.
    pub async fn deploy(
        &self,
        name: &str,
        manifest: &str,
        artifact: &str,
    ) -> Result<FunctionRecord, ClusterError> {
        if !self.has_artifact(artifact).await? {
            return Err(ClusterError::MissingArtifact(artifact.to_string()));
        }
        let record = FunctionRecord {
            name: name.to_string(),
            version: self.next_version(name).await?,
            manifest: manifest.to_string(),
            artifact: artifact.to_string(),
            deployed_at_ms: now_ms(),
        };
        self.put(&record).await?;
        Ok(record)
    }

    /// Puts `record` back as the deployed one (a rollback after a failed deploy).
    pub async fn put(&self, record: &FunctionRecord) -> Result<(), ClusterError> {
        let key = format!("fn.{}", record.name);
        let json = serde_json::to_vec(record).map_err(|e| ClusterError::Record {
            key: key.clone(),
            detail: e.to_string(),
        })?;
        self.kv
            .put(key.as_str(), Bytes::from(json))
            .await
            .map_err(|e| nats(format!("write {key}"))(&e))?;
        Ok(())
    }

    /// Removes `name`; returns whether it was deployed.
    pub async fn remove(&self, name: &str) -> Result<bool, ClusterError> {
        let existed = self.record(name).await?.is_some();
        if existed {
            let key = format!("fn.{name}");
            self.kv
                .delete(key.as_str())
                .await
                .map_err(|e| nats(format!("delete {key}"))(&e))?;
        }
        Ok(existed)
    }

    /// Stores `function`'s secret `key`, already sealed.
    pub async fn put_secret(
        &self,
        function: &str,
        key: &str,
        sealed: &[u8],
    ) -> Result<(), ClusterError> {
        let k = format!("sec.{function}.{key}");
        self.kv
            .put(k.as_str(), Bytes::copy_from_slice(sealed))
            .await
            .map_err(|e| nats(format!("write secret {key} of {function}"))(&e))?;
        Ok(())
    }

    /// Removes a secret; returns whether it existed.
    pub async fn remove_secret(&self, function: &str, key: &str) -> Result<bool, ClusterError> {
        let k = format!("sec.{function}.{key}");
        let what = || format!("remove secret {key} of {function}");
        let existed = self
            .kv
            .get(k.as_str())
            .await
            .map_err(|e| nats(what())(&e))?
            .is_some();
        if existed {
            self.kv
                .delete(k.as_str())
                .await
                .map_err(|e| nats(what())(&e))?;
        }
        Ok(existed)
    }

    /// Every secret as (function, key, sealed), or only `function`'s.
    pub async fn secrets(
        &self,
        function: Option<&str>,
    ) -> Result<Vec<(String, String, Vec<u8>)>, ClusterError> {
        let keys = self.keys().await?;
        let mut out = Vec::new();
        for key in keys {
            let Some((f, k)) = secret_key(&key) else {
                continue;
            };
            if function.is_some_and(|want| want != f) {
                continue;
            }
            if let Some(v) = self
                .kv
                .get(key.as_str())
                .await
                .map_err(|e| nats(format!("read {key}"))(&e))?
            {
                out.push((f.to_string(), k.to_string(), v.to_vec()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every change from now on (deploys, removals and secrets), in order.
    pub async fn watch(
        &self,
    ) -> Result<impl futures::Stream<Item = Result<Change, ClusterError>> + use<>, ClusterError>
    {
        use futures::StreamExt;
        let watch = self
            .kv
            .watch_many(["fn.>", "sec.>"])
            .await
            .map_err(|e| nats("watch the registry")(&e))?;
        Ok(watch.filter_map(|entry| async move {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => return Some(Err(nats("watch the registry")(&e))),
            };
            let put = entry.operation == kv::Operation::Put;
            if let Some(name) = entry.key.strip_prefix("fn.") {
                return Some(if put {
                    decode(&entry.key, &entry.value).map(Change::Deployed)
                } else {
                    Ok(Change::Removed(name.to_string()))
                });
            }
            let (function, key) = secret_key(&entry.key)?;
            let (function, key) = (function.to_string(), key.to_string());
            Some(Ok(if put {
                Change::SecretSet(function, key, entry.value.to_vec())
            } else {
                Change::SecretRemoved(function, key)
            }))
        }))
    }
}

/// Splits a registry key `sec.<function>.<key>` into its function and key.
fn secret_key(k: &str) -> Option<(&str, &str)> {
    k.strip_prefix("sec.")?.split_once('.')
}

fn decode(key: &str, bytes: &[u8]) -> Result<FunctionRecord, ClusterError> {
    serde_json::from_slice(bytes).map_err(|e| ClusterError::Record {
        key: key.to_string(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn versions_never_repeat_and_corrupt_artifacts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let nats = crate::testkit::NatsServer::start(dir.path()).expect("nats-server");
        let client = crate::nats::connect(&nats.url(), "test").await.unwrap();
        let reg = ClusterRegistry::open(&jetstream::new(client), 1)
            .await
            .unwrap();
        let bytes = b"\0asm\x0d\0\x01\0component".to_vec();
        let sha = sha256_hex(&bytes);
        // Deploying before the upload names the missing artifact.
        assert!(matches!(
            reg.deploy("f", "name = \"f\"", &sha).await,
            Err(ClusterError::MissingArtifact(_))
        ));
        reg.put_artifact(&sha, &bytes).await.unwrap();
        assert_eq!(reg.fetch_artifact(&sha).await.unwrap(), bytes);
        let v1 = reg.deploy("f", "name = \"f\"", &sha).await.unwrap();
        assert!(reg.remove("f").await.unwrap());
        assert!(!reg.remove("f").await.unwrap());
        let v2 = reg.deploy("f", "name = \"f\"", &sha).await.unwrap();
        assert_eq!((v1.version, v2.version), (1, 2));
        assert_eq!(reg.records().await.unwrap(), vec![v2]);
        // An object whose bytes do not hash to its name is refused when fetched.
        let liar = sha256_hex(b"what the name promises");
        reg.put_artifact(&liar, b"something else").await.unwrap();
        let err = reg.fetch_artifact(&liar).await.unwrap_err();
        assert!(matches!(err, ClusterError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("refusing it"), "{err}");
    }
}
