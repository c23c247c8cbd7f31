//! The cluster's function registry in JetStream.
//!
//! * KV bucket `skiff_registry`: `fn.<name>` → the JSON [`FunctionRecord`] now deployed
//!   (deleted on removal), and `ver.<name>` → the last version handed out, updated with
//!   compare-and-set so that two deploys racing through two schedulers never share a
//!   number and a removed function never reuses one; `sec.<name>.<key>` → a secret,
//!   sealed with the cluster's shared secrets key (never plain text).
//! * Object store `skiff_artifacts`: components named by their sha256; whoever reads one
//!   verifies the hash before using it.

mod hosting;

use crate::control::{Change, ControlError, ControlStore, SealedSecret};
use crate::hosting::{Hosting, HostingTable};
use crate::record::{FunctionRecord, now_ms, sha256_hex};
use crate::signing::RecordSigner;
use async_nats::jetstream::{self, kv, object_store};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::io::AsyncReadExt;

/// The registry's KV bucket.
pub const BUCKET: &str = "skiff_registry";
/// The artifacts' object store.
pub const ARTIFACTS: &str = "skiff_artifacts";

pub(crate) fn nats(what: impl Into<String>) -> impl FnOnce(&dyn std::fmt::Display) -> ControlError {
    let what = what.into();
    move |e| match crate::nats::recent_refusal() {
        Some(refused) => ControlError::Unavailable(format!(
            "cluster registry: cannot {what}: {e}; NATS refused this process's user a permission ({refused}): give it the permission set its role needs (deploy/nats/permissions.conf)"
        )),
        None => ControlError::Unavailable(format!(
            "cluster registry: cannot {what}: {e} (is NATS reachable?)"
        )),
    }
}

/// The registry as one process sees it.
#[derive(Clone)]
pub struct ClusterRegistry {
    pub(crate) kv: kv::Store,
    objects: object_store::ObjectStore,
    signer: Option<RecordSigner>,
}

impl ClusterRegistry {
    /// Opens the bucket and object store, creating them (with `replicas`) if needed.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, ControlError> {
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
        Ok(ClusterRegistry {
            kv,
            objects,
            signer: None,
        })
    }

    /// This registry signing every record it deploys with `signer` (the scheduler's
    /// `--signing-key`), so that nodes that trust its public key run them, and putting
    /// back (rolling back to) only records that key signed.
    pub fn signed_by(mut self, signer: Option<RecordSigner>) -> Self {
        self.signer = signer;
        self
    }

    /// Writes `record` as it is.
    async fn write(&self, record: &FunctionRecord) -> Result<(), ControlError> {
        let key = format!("fn.{}", record.name);
        let json = serde_json::to_vec(record).map_err(|e| {
            ControlError::Unavailable(format!("cannot encode registry record `{key}`: {e}"))
        })?;
        self.kv
            .put(key.as_str(), Bytes::from(json))
            .await
            .map_err(|e| nats(format!("write {key}"))(&e))?;
        Ok(())
    }

    /// Every key in the bucket.
    pub(crate) async fn keys(&self) -> Result<Vec<String>, ControlError> {
        use futures::TryStreamExt;
        self.kv
            .keys()
            .await
            .map_err(|e| nats("list the registry")(&e))?
            .try_collect()
            .await
            .map_err(|e| nats("list the registry")(&e))
    }

    /// Hands out the next version of `name` (compare-and-set on `ver.<name>`), above the
    /// version the registry holds too: a record written around the counter (by another
    /// tool, or forged) never shares its number with a later deploy.
    async fn next_version(&self, name: &str) -> Result<u64, ControlError> {
        let key = format!("ver.{name}");
        loop {
            let held = self.record(name).await?.map_or(0, |r| r.version);
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
                    let next = last.max(held) + 1;
                    let r = self
                        .kv
                        .update(key.as_str(), Bytes::from(next.to_string()), e.revision)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                    (next, r)
                }
                _ => {
                    let next = held + 1;
                    let r = self
                        .kv
                        .create(key.as_str(), Bytes::from(next.to_string()))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                    (next, r)
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
}

impl ControlStore for ClusterRegistry {
    fn has_artifact<'a>(&'a self, sha: &'a str) -> BoxFuture<'a, Result<bool, ControlError>> {
        Box::pin(async move {
            match self.objects.info(sha).await {
                Ok(info) => Ok(!info.deleted),
                Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(false),
                Err(e) => Err(nats(format!("look up artifact {sha}"))(&e)),
            }
        })
    }

    fn put_artifact<'a>(&'a self, bytes: &'a [u8]) -> BoxFuture<'a, Result<String, ControlError>> {
        Box::pin(async move {
            let sha = sha256_hex(bytes);
            if self.has_artifact(&sha).await? {
                return Ok(sha);
            }
            let mut reader = bytes;
            self.objects
                .put(sha.as_str(), &mut reader)
                .await
                .map_err(|e| nats(format!("store artifact {sha}"))(&e))?;
            Ok(sha)
        })
    }

    fn artifacts(&self) -> BoxFuture<'_, Result<Vec<String>, ControlError>> {
        Box::pin(async move {
            use futures::TryStreamExt;
            let list = self
                .objects
                .list()
                .await
                .map_err(|e| nats("list artifacts")(&e))?;
            let infos: Vec<object_store::ObjectInfo> = list
                .try_collect()
                .await
                .map_err(|e| nats("list artifacts")(&e))?;
            Ok(infos
                .into_iter()
                .filter(|i| !i.deleted)
                .map(|i| i.name)
                .collect())
        })
    }

    fn remove_artifact<'a>(&'a self, sha: &'a str) -> BoxFuture<'a, Result<u64, ControlError>> {
        Box::pin(async move {
            let size = match self.objects.info(sha).await {
                Ok(info) if !info.deleted => info.size as u64,
                Ok(_) => return Ok(0),
                Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(nats(format!("look up artifact {sha}"))(&e)),
            };
            self.objects
                .delete(sha)
                .await
                .map_err(|e| nats(format!("remove artifact {sha}"))(&e))?;
            Ok(size)
        })
    }

    fn fetch_artifact<'a>(&'a self, sha: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ControlError>> {
        Box::pin(async move {
            let mut object = match self.objects.get(sha).await {
                Ok(o) => o,
                Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
                    return Err(ControlError::MissingArtifact(sha.to_string()));
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
                return Err(ControlError::Corrupt(format!(
                    "artifact {sha} in the cluster store is corrupt (its bytes hash to {actual}); refusing it — redeploy the function"
                )));
            }
            Ok(bytes)
        })
    }

    fn record<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<FunctionRecord>, ControlError>> {
        Box::pin(async move {
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
        })
    }

    fn records(&self) -> BoxFuture<'_, Result<Vec<FunctionRecord>, ControlError>> {
        Box::pin(async move {
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
        })
    }

    fn deploy<'a>(
        &'a self,
        name: &'a str,
        manifest: &'a str,
        artifact: &'a str,
    ) -> BoxFuture<'a, Result<FunctionRecord, ControlError>> {
        Box::pin(async move {
            if !self.has_artifact(artifact).await? {
                return Err(ControlError::MissingArtifact(artifact.to_string()));
            }
            let mut record = FunctionRecord {
                name: name.to_string(),
                version: self.next_version(name).await?,
                manifest: manifest.to_string(),
                artifact: artifact.to_string(),
                deployed_at_ms: now_ms(),
                signature: None,
            };
            if let Some(signer) = &self.signer {
                signer.sign(&mut record);
            }
            self.write(&record).await?;
            Ok(record)
        })
    }

    fn put<'a>(&'a self, record: &'a FunctionRecord) -> BoxFuture<'a, Result<(), ControlError>> {
        Box::pin(async move {
            if let Some(signer) = &self.signer {
                signer.verifier().verify(record).map_err(|e| {
                    ControlError::Untrusted(format!(
                        "not putting back version {} of `{}`: {e}",
                        record.version, record.name
                    ))
                })?;
            }
            self.write(record).await
        })
    }

    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, ControlError>> {
        Box::pin(async move {
            let existed = self.record(name).await?.is_some();
            if existed {
                let key = format!("fn.{name}");
                self.kv
                    .delete(key.as_str())
                    .await
                    .map_err(|e| nats(format!("delete {key}"))(&e))?;
            }
            Ok(existed)
        })
    }

    fn put_secret<'a>(
        &'a self,
        function: &'a str,
        key: &'a str,
        sealed: &'a [u8],
    ) -> BoxFuture<'a, Result<(), ControlError>> {
        Box::pin(async move {
            let k = format!("sec.{function}.{key}");
            self.kv
                .put(k.as_str(), Bytes::copy_from_slice(sealed))
                .await
                .map_err(|e| nats(format!("write secret {key} of {function}"))(&e))?;
            Ok(())
        })
    }

    fn remove_secret<'a>(
        &'a self,
        function: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<bool, ControlError>> {
        Box::pin(async move {
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
        })
    }

    fn secrets<'a>(
        &'a self,
        function: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<SealedSecret>, ControlError>> {
        Box::pin(async move {
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
        })
    }

    fn watch(
        &self,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Change, ControlError>>, ControlError>> {
        Box::pin(async move {
            use futures::StreamExt;
            let watch = self
                .kv
                .watch_many(["fn.>", "sec.>", "place.>", "drain.>"])
                .await
                .map_err(|e| nats("watch the registry")(&e))?;
            let changes: BoxStream<'static, Result<Change, ControlError>> =
                Box::pin(watch.filter_map(|entry| async move {
                    let entry = match entry {
                        Ok(e) => e,
                        Err(e) => return Some(Err(nats("watch the registry")(&e))),
                    };
                    let put = entry.operation == kv::Operation::Put;
                    if let Some(change) = hosting::hosting_change(&entry) {
                        return Some(change);
                    }
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
                }));
            Ok(changes)
        })
    }

    fn hosting(&self) -> BoxFuture<'_, Result<HostingTable, ControlError>> {
        Box::pin(self.read_hosting())
    }

    fn put_hosting<'a>(
        &'a self,
        function: &'a str,
        hosting: &'a Hosting,
        revision: u64,
    ) -> BoxFuture<'a, Result<u64, ControlError>> {
        Box::pin(self.write_hosting(function, hosting, revision))
    }

    fn remove_hosting<'a>(&'a self, function: &'a str) -> BoxFuture<'a, Result<(), ControlError>> {
        Box::pin(self.delete_hosting(function))
    }

    fn set_drained<'a>(
        &'a self,
        node: &'a str,
        drained: bool,
    ) -> BoxFuture<'a, Result<(), ControlError>> {
        Box::pin(self.write_drained(node, drained))
    }
}

/// Splits a registry key `sec.<function>.<key>` into its function and key.
fn secret_key(k: &str) -> Option<(&str, &str)> {
    k.strip_prefix("sec.")?.split_once('.')
}

fn decode(key: &str, bytes: &[u8]) -> Result<FunctionRecord, ControlError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ControlError::Unavailable(format!(
            "cluster registry record `{key}` is unreadable: {e}; redeploy the function"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn registry(dir: &std::path::Path) -> (crate::testkit::NatsServer, ClusterRegistry) {
        let nats = crate::testkit::NatsServer::start(dir).expect("nats-server");
        let client = crate::nats::connect(
            &nats.url(),
            "test",
            &crate::testkit::secured().auth(crate::testkit::Role::Scheduler),
        )
        .await
        .unwrap();
        let reg = ClusterRegistry::open(&jetstream::new(client), 1)
            .await
            .unwrap();
        (nats, reg)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_cluster_registry_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let (_nats, reg) = registry(dir.path()).await;
        crate::control::conformance::run(&reg).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_signing_registry_signs_deploys_and_puts_back_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (_nats, reg) = registry(dir.path()).await;
        let signer = RecordSigner::generate().unwrap();
        let reg = reg.signed_by(Some(signer.clone()));
        let sha = reg.put_artifact(b"\0asm\x0d\0\x01\0x").await.unwrap();
        let v1 = reg.deploy("f", "name = \"f\"\n", &sha).await.unwrap();
        signer.verifier().verify(&v1).unwrap();
        assert_eq!(reg.record("f").await.unwrap(), Some(v1.clone()));
        // Its own record goes back as it was.
        reg.put(&v1).await.unwrap();
        // A record signed with another key, or edited, or unsigned, is never vouched for.
        let mut forged = v1.clone();
        forged.version = 7;
        RecordSigner::generate().unwrap().sign(&mut forged);
        let unsigned = FunctionRecord {
            signature: None,
            ..v1.clone()
        };
        for bad in [forged.clone(), unsigned] {
            let err = reg.put(&bad).await.unwrap_err();
            assert!(matches!(err, ControlError::Untrusted(_)), "{err}");
        }
        // A record written around the counter: the next deploy numbers above it.
        reg.clone().signed_by(None).put(&forged).await.unwrap();
        let next = reg.deploy("f", "name = \"f\"\n", &sha).await.unwrap();
        assert_eq!(next.version, 8);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn corrupt_artifacts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_nats, reg) = registry(dir.path()).await;
        // An object whose bytes do not hash to its name is refused when fetched.
        let liar = sha256_hex(b"what the name promises");
        let mut reader: &[u8] = b"something else";
        reg.objects.put(liar.as_str(), &mut reader).await.unwrap();
        let err = reg.fetch_artifact(&liar).await.unwrap_err();
        assert!(matches!(err, ControlError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("refusing it"), "{err}");
    }
}
