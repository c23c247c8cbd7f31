//! The control store: which functions are deployed, at which version, with which
//! artifact and secrets, behind one trait with two implementations.
//!
//! * The node's local store (redb and artifact files, in the runtime crate): what
//!   `skiff up` deploys into, and a cluster node's copy of what it serves.
//! * The cluster registry in JetStream ([`crate::cluster_registry`]): what the scheduler
//!   deploys into and every node follows.
//!
//! Both hand out versions that never repeat for a function (not even after a removal),
//! verify an artifact's sha256 whenever they give its bytes back, keep secrets only
//! sealed, and report every change in order to whoever watches. One conformance suite
//! (`conformance`, with the `testkit` feature) runs against both.

use crate::hosting::{Hosting, HostingTable};
use crate::record::FunctionRecord;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

/// Why the control store could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// An artifact was asked for that was never uploaded.
    #[error("artifact {0} has not been uploaded; upload it before deploying the function")]
    MissingArtifact(String),
    /// An artifact's bytes do not hash to its name; the message names where it lies.
    #[error("{0}")]
    Corrupt(String),
    /// The store failed or could not be reached; the message says what and what to do.
    #[error("{0}")]
    Unavailable(String),
    /// A record to put back is not signed by this store's key: it never came from this
    /// scheduler, and putting it back would vouch for it.
    #[error("{0}")]
    Untrusted(String),
    /// A compare-and-set lost to another writer; read again and retry.
    #[error("{0}")]
    Conflict(String),
}

impl ControlError {
    /// Whether the caller's input is at fault (as opposed to the store).
    pub fn is_client_error(&self) -> bool {
        matches!(self, ControlError::MissingArtifact(_))
    }
}

/// A change seen while watching the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A version was deployed (or put back).
    Deployed(FunctionRecord),
    /// A function was removed.
    Removed(String),
    /// A secret was set: (function, key, sealed value).
    SecretSet(String, String, Vec<u8>),
    /// A secret was removed: (function, key).
    SecretRemoved(String, String),
    /// Where functions run changed (cluster only).
    Hosting(crate::hosting::HostingChange),
}

/// A secret as stored: (function, key, sealed value).
pub type SealedSecret = (String, String, Vec<u8>);

/// How long an uploaded artifact that no version references yet is spared from
/// collection: the CLI uploads, then deploys.
pub const UPLOAD_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// Artifacts uploaded and not yet deployed or refused, with when: what a collection
/// (a node's, or the scheduler's of the cluster's store) must spare for
/// [`UPLOAD_GRACE`].
#[derive(Default)]
pub struct PendingUploads(std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>);

impl PendingUploads {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, std::time::Instant>> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Notes that `sha` was just uploaded (forgetting uploads older than the grace).
    pub fn uploaded(&self, sha: &str) {
        let mut uploads = self.lock();
        uploads.retain(|_, at| at.elapsed() < UPLOAD_GRACE);
        uploads.insert(sha.to_string(), std::time::Instant::now());
    }

    /// `sha`'s deploy was recorded or refused: no longer an upload on its way.
    pub fn settled(&self, sha: &str) {
        self.lock().remove(sha);
    }

    /// Whether `sha` was uploaded within the grace and is not settled yet.
    pub fn is_spared(&self, sha: &str) -> bool {
        self.lock()
            .get(sha)
            .is_some_and(|at| at.elapsed() < UPLOAD_GRACE)
    }

    /// The uploads still within their grace.
    pub fn spared(&self) -> std::collections::HashSet<String> {
        let mut uploads = self.lock();
        uploads.retain(|_, at| at.elapsed() < UPLOAD_GRACE);
        uploads.keys().cloned().collect()
    }
}

/// Function records, versions, artifacts, secrets, and a watch over their changes.
pub trait ControlStore: Send + Sync {
    /// Stores `bytes` under their sha256 (durably; a second put is a no-op) and answers
    /// the hash.
    fn put_artifact<'a>(&'a self, bytes: &'a [u8]) -> BoxFuture<'a, Result<String, ControlError>>;

    /// Whether an artifact with this hash is stored.
    fn has_artifact<'a>(&'a self, sha: &'a str) -> BoxFuture<'a, Result<bool, ControlError>>;

    /// The hashes of every stored artifact.
    fn artifacts(&self) -> BoxFuture<'_, Result<Vec<String>, ControlError>>;

    /// Removes a stored artifact (nothing if it is not there) and answers the bytes it
    /// freed. The caller makes sure no record references it.
    fn remove_artifact<'a>(&'a self, sha: &'a str) -> BoxFuture<'a, Result<u64, ControlError>>;

    /// An artifact's bytes, verified against its hash.
    fn fetch_artifact<'a>(&'a self, sha: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ControlError>>;

    /// The record deployed for `name`, if any.
    fn record<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<FunctionRecord>, ControlError>>;

    /// Every deployed record, by name.
    fn records(&self) -> BoxFuture<'_, Result<Vec<FunctionRecord>, ControlError>>;

    /// Records the next version of `name` (its artifact must be stored) and answers it.
    fn deploy<'a>(
        &'a self,
        name: &'a str,
        manifest: &'a str,
        artifact: &'a str,
    ) -> BoxFuture<'a, Result<FunctionRecord, ControlError>>;

    /// Stores `record` as it is, version included: a rollback, or a node taking what the
    /// cluster deployed. Later versions handed out stay above it.
    fn put<'a>(&'a self, record: &'a FunctionRecord) -> BoxFuture<'a, Result<(), ControlError>>;

    /// Removes `name`'s record; answers whether it existed.
    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, ControlError>>;

    /// Stores `function`'s secret `key`, already sealed.
    fn put_secret<'a>(
        &'a self,
        function: &'a str,
        key: &'a str,
        sealed: &'a [u8],
    ) -> BoxFuture<'a, Result<(), ControlError>>;

    /// Removes a secret; answers whether it existed.
    fn remove_secret<'a>(
        &'a self,
        function: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<bool, ControlError>>;

    /// The sealed secrets of `function` (every function's when `None`), in order.
    fn secrets<'a>(
        &'a self,
        function: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<SealedSecret>, ControlError>>;

    /// Every change from now on, in order.
    fn watch(
        &self,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Change, ControlError>>, ControlError>>;

    /// Where each function runs and which nodes are drained. A store of one node places
    /// nothing: everything runs on it.
    fn hosting(&self) -> BoxFuture<'_, Result<HostingTable, ControlError>> {
        Box::pin(std::future::ready(Ok(HostingTable::default())))
    }

    /// Sets `function`'s hosting if its record is still at `revision` (`0`: none yet);
    /// answers the new revision, or [`ControlError::Conflict`] when someone else wrote
    /// first.
    fn put_hosting<'a>(
        &'a self,
        function: &'a str,
        hosting: &'a Hosting,
        revision: u64,
    ) -> BoxFuture<'a, Result<u64, ControlError>> {
        let _ = (function, hosting, revision);
        Box::pin(std::future::ready(Err(single_node())))
    }

    /// Forgets `function`'s hosting (it was removed).
    fn remove_hosting<'a>(&'a self, function: &'a str) -> BoxFuture<'a, Result<(), ControlError>> {
        let _ = function;
        Box::pin(std::future::ready(Ok(())))
    }

    /// Drains `node` (true) or takes it back (false).
    fn set_drained<'a>(
        &'a self,
        node: &'a str,
        drained: bool,
    ) -> BoxFuture<'a, Result<(), ControlError>> {
        let _ = (node, drained);
        Box::pin(std::future::ready(Err(single_node())))
    }
}

fn single_node() -> ControlError {
    ControlError::Unavailable(
        "placing functions on nodes needs a cluster (`skiff scheduler` with `skiff node`s); on one node everything runs there".into(),
    )
}

/// The conformance suite every [`ControlStore`] passes.
#[cfg(feature = "testkit")]
pub mod conformance {
    use super::{Change, ControlError, ControlStore};
    use futures::StreamExt;
    use std::time::Duration;

    /// Runs the suite on an empty store.
    pub async fn run(store: &dyn ControlStore) {
        let mut changes = store.watch().await.expect("watch");
        assert!(store.records().await.unwrap().is_empty());
        assert_eq!(store.record("f").await.unwrap(), None);

        // Artifacts: stored under their hash, verified on the way out.
        let bytes = b"\0asm\x0d\0\x01\0 conformance".to_vec();
        let missing = crate::record::sha256_hex(b"never stored");
        assert!(matches!(
            store.deploy("f", "name = \"f\"", &missing).await,
            Err(ControlError::MissingArtifact(_))
        ));
        let sha = store.put_artifact(&bytes).await.unwrap();
        assert_eq!(sha, crate::record::sha256_hex(&bytes));
        assert_eq!(store.put_artifact(&bytes).await.unwrap(), sha, "idempotent");
        assert!(store.has_artifact(&sha).await.unwrap());
        assert!(!store.has_artifact(&missing).await.unwrap());
        assert_eq!(store.fetch_artifact(&sha).await.unwrap(), bytes);
        assert!(matches!(
            store.fetch_artifact(&missing).await,
            Err(ControlError::MissingArtifact(_))
        ));
        // Listed, removed, and put back.
        assert_eq!(store.artifacts().await.unwrap(), vec![sha.clone()]);
        assert_eq!(
            store.remove_artifact(&sha).await.unwrap(),
            bytes.len() as u64
        );
        assert_eq!(store.remove_artifact(&sha).await.unwrap(), 0);
        assert!(!store.has_artifact(&sha).await.unwrap());
        assert!(store.artifacts().await.unwrap().is_empty());
        assert_eq!(store.put_artifact(&bytes).await.unwrap(), sha);

        // Versions count up and never repeat, not even after a removal.
        let v1 = store.deploy("f", "name = \"f\"", &sha).await.unwrap();
        let v2 = store.deploy("f", "name = \"f\" # 2", &sha).await.unwrap();
        assert_eq!((v1.version, v2.version), (1, 2));
        assert_eq!(store.record("f").await.unwrap(), Some(v2.clone()));
        assert_eq!(store.records().await.unwrap(), vec![v2.clone()]);
        assert!(store.remove("f").await.unwrap());
        assert!(!store.remove("f").await.unwrap());
        assert_eq!(store.record("f").await.unwrap(), None);
        let v3 = store.deploy("f", "name = \"f\" # 3", &sha).await.unwrap();
        assert_eq!(v3.version, 3);
        // A record put back keeps its version; the next one goes above every one seen.
        store.put(&v2).await.unwrap();
        assert_eq!(store.record("f").await.unwrap(), Some(v2.clone()));
        let v4 = store.deploy("f", "name = \"f\" # 4", &sha).await.unwrap();
        assert_eq!(v4.version, 4);

        // Secrets: only sealed bytes, listed by function.
        store.put_secret("f", "token", b"sealed-1").await.unwrap();
        store.put_secret("g", "other", b"sealed-2").await.unwrap();
        assert_eq!(
            store.secrets(Some("f")).await.unwrap(),
            vec![("f".into(), "token".into(), b"sealed-1".to_vec())]
        );
        assert_eq!(store.secrets(None).await.unwrap().len(), 2);
        assert!(store.remove_secret("f", "token").await.unwrap());
        assert!(!store.remove_secret("f", "token").await.unwrap());
        assert!(store.secrets(Some("f")).await.unwrap().is_empty());

        // The watch saw every change, in order.
        let expected = vec![
            Change::Deployed(v1),
            Change::Deployed(v2.clone()),
            Change::Removed("f".into()),
            Change::Deployed(v3),
            Change::Deployed(v2),
            Change::Deployed(v4),
            Change::SecretSet("f".into(), "token".into(), b"sealed-1".to_vec()),
            Change::SecretSet("g".into(), "other".into(), b"sealed-2".to_vec()),
            Change::SecretRemoved("f".into(), "token".into()),
        ];
        let mut seen = Vec::new();
        while seen.len() < expected.len() {
            match tokio::time::timeout(Duration::from_secs(5), changes.next()).await {
                Ok(Some(change)) => seen.push(change.unwrap()),
                _ => break,
            }
        }
        assert_eq!(seen, expected);
    }
}
