//! A node follows the cluster registry: on (re)connection it lists what is deployed,
//! brings its local control store in line (deploying what is new, removing what was
//! removed while it was away), then applies each change as it is watched. Artifacts are
//! fetched once, verified and kept locally, so a restarted node serves its last known
//! functions even while NATS is unreachable.
//!
//! A node hosts only the functions the scheduler assigned to it (or those that run
//! everywhere, unless it is drained): it follows the assignment too, taking a function
//! when it arrives (fetch, compile, catch its state up, serve) and letting one go when
//! it leaves (stop serving, stop following its state, drop the copy after a grace).
//!
//! A node started with `--trust` runs only records whose signature verifies with that
//! key: any other record is refused, logged, counted, and reported (so that `skiff status`
//! and the deploy say why), and the last good version keeps serving.

use crate::node::Node;
use futures::StreamExt;
use skiff_core::control::{Change, ControlError, ControlStore};
use skiff_core::hosting::{HostingChange, HostingTable};
use skiff_core::record::FunctionRecord;
use skiff_core::signing::RecordVerifier;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Follows the registry for as long as the node runs, reconnecting after failures.
pub async fn run(node: Arc<Node>, registry: Arc<dyn ControlStore>, trust: Option<RecordVerifier>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        match follow(&node, registry.as_ref(), trust.as_ref()).await {
            Ok(()) => backoff = Duration::from_millis(250),
            Err(e) => {
                tracing::warn!(error = %e, "lost the cluster registry; serving the last known functions and retrying");
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

async fn follow(
    node: &Arc<Node>,
    registry: &dyn ControlStore,
    trust: Option<&RecordVerifier>,
) -> Result<(), ControlError> {
    // Watch first, so that nothing that changes while we list is missed; the watch's
    // entries wait until the listing has been applied.
    let mut changes = registry.watch().await?;
    let mut hosting = registry.hosting().await?;
    let mut records: BTreeMap<String, FunctionRecord> = registry
        .records()
        .await?
        .into_iter()
        .map(|r| (r.name.clone(), r))
        .collect();
    let here: Vec<String> = node
        .snapshot()
        .deployments()
        .map(|d| d.record.name.clone())
        .collect();
    for name in here {
        if !records.contains_key(&name) {
            remove(node, &name).await;
        }
    }
    let names: Vec<String> = records.keys().cloned().collect();
    for name in &names {
        reconcile(node, registry, trust, &records, &hosting, name).await;
    }
    // Secrets: take every one the registry has, drop those it no longer has.
    let secrets = registry.secrets(None).await?;
    for (function, key, sealed) in &secrets {
        put_secret(node, function, key, sealed).await;
    }
    match node.sealed_secrets().await {
        Ok(local) => {
            for (function, key, _) in local {
                if !secrets.iter().any(|(f, k, _)| *f == function && *k == key) {
                    remove_secret(node, &function, &key).await;
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot list this node's secrets"),
    }
    tracing::info!(
        functions = records.len(),
        hosted = node.snapshot().deployments().count(),
        "in step with the cluster registry"
    );
    while let Some(change) = changes.next().await {
        match change? {
            Change::Deployed(record) => {
                let name = record.name.clone();
                records.insert(name.clone(), record);
                reconcile(node, registry, trust, &records, &hosting, &name).await;
            }
            Change::Removed(name) => {
                records.remove(&name);
                remove(node, &name).await;
            }
            Change::Hosting(HostingChange::Placed(name, placed)) => {
                match placed {
                    Some(h) => hosting.functions.insert(name.clone(), (h, 0)),
                    None => hosting.functions.remove(&name),
                };
                reconcile(node, registry, trust, &records, &hosting, &name).await;
            }
            Change::Hosting(HostingChange::Drained(who, drained)) => {
                if drained {
                    hosting.drained.insert(who.clone());
                } else {
                    hosting.drained.remove(&who);
                }
                if who == node.name() {
                    tracing::info!(drained, "this node's drain changed");
                    let names: Vec<String> = records.keys().cloned().collect();
                    for name in &names {
                        reconcile(node, registry, trust, &records, &hosting, name).await;
                    }
                }
            }
            Change::SecretSet(function, key, sealed) => {
                put_secret(node, &function, &key, &sealed).await
            }
            Change::SecretRemoved(function, key) => remove_secret(node, &function, &key).await,
        }
    }
    Err(ControlError::Unavailable(
        "cluster registry: the watch ended".into(),
    ))
}

/// Brings `name` in line with the registry here: serves its recorded version when this
/// node hosts it, and lets it go when it does not.
async fn reconcile(
    node: &Arc<Node>,
    registry: &dyn ControlStore,
    trust: Option<&RecordVerifier>,
    records: &BTreeMap<String, FunctionRecord>,
    hosting: &HostingTable,
    name: &str,
) {
    let serving = node.snapshot().get(name).is_some();
    match records.get(name) {
        Some(record) if hosting.hosts(name, node.name()) => {
            if !serving {
                tracing::info!(function = name, "hosting a function assigned to this node");
                node.metrics().moves_in.inc();
            }
            apply(node, registry, trust, record.clone()).await
        }
        _ if serving && records.contains_key(name) => {
            tracing::info!(
                function = name,
                "no longer hosting a function moved off this node"
            );
            node.metrics().moves_out.inc();
            node.clear_failed(name);
            if let Err(e) = node.release(name).await {
                tracing::error!(function = name, error = %e, "cannot let go of a function moved off this node");
            }
        }
        _ if serving => remove(node, name).await,
        _ => node.clear_failed(name),
    }
}

/// Deploys `record` here; a failure is recorded for the load reports (the scheduler turns
/// it into the deploy's answer) and never stops the node.
async fn apply(
    node: &Arc<Node>,
    registry: &dyn ControlStore,
    trust: Option<&RecordVerifier>,
    record: FunctionRecord,
) {
    let (name, version) = (record.name.clone(), record.version);
    if let Some(Err(e)) = trust.map(|t| t.verify(&record)) {
        tracing::error!(function = %name, version, error = %e, "refusing a registry record that is not signed by the trusted key");
        node.metrics()
            .untrusted
            .get_or_create(&crate::metrics::Function {
                function: name.clone(),
            })
            .inc();
        node.set_failed(
            &name,
            version,
            format!("{e}; refused, and the last good version keeps serving"),
        );
        return;
    }
    let result = async {
        let here = node.control();
        if !here
            .has_artifact(&record.artifact)
            .await
            .map_err(|e| e.to_string())?
        {
            let bytes = registry
                .fetch_artifact(&record.artifact)
                .await
                .map_err(|e| e.to_string())?;
            here.put_artifact(&bytes).await.map_err(|e| e.to_string())?;
        }
        node.apply(record).await.map_err(|e| e.to_string())
    }
    .await;
    match result {
        Ok(_) => node.clear_failed(&name),
        Err(e) => {
            tracing::error!(function = %name, version, error = %e, "cannot load the version the cluster deployed");
            node.set_failed(&name, version, e);
        }
    }
}

async fn remove(node: &Arc<Node>, name: &str) {
    node.clear_failed(name);
    if let Err(e) = node.remove(name).await {
        tracing::error!(function = name, error = %e, "cannot remove a function the cluster removed");
    }
}

async fn put_secret(node: &Node, function: &str, key: &str, sealed: &[u8]) {
    if let Err(e) = node.put_secret(function, key, sealed).await {
        tracing::error!(function, key, error = %e, "cannot take a secret from the cluster registry");
    }
}

async fn remove_secret(node: &Node, function: &str, key: &str) {
    if let Err(e) = node.remove_secret(function, key).await {
        tracing::error!(function, key, error = %e, "cannot remove a secret the cluster removed");
    }
}
