//! Deploying through the scheduler: the upload goes to the cluster's object store, the
//! version is checked (the same check a node runs, [`skiff_core::deploy`]) and recorded in
//! the registry, and the answer waits until a node (or every live node) serves it, rolling
//! back when every node that tried it failed. An artifact a refused version or a removal
//! leaves unreferenced leaves the object store.

use crate::admin::registry_error;
use crate::shared::Scheduler;
use http::StatusCode;
use hyper::body::Incoming;
use skiff_core::deploy::{check_manifest, route_table};
use skiff_core::http::{Response, error, json, read_artifact, read_deploy_request};
use skiff_core::record::FunctionRecord;
use skiff_core::report::NodeReport;
use std::time::{Duration, Instant};

impl Scheduler {
    pub(crate) async fn upload(&self, sha: &str, req: http::Request<Incoming>) -> Response {
        let bytes = match read_artifact(sha, req, self.max_artifact).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        match self.registry.put_artifact(&bytes).await {
            Ok(stored) => {
                self.uploads.uploaded(&stored);
                json(StatusCode::OK, &serde_json::json!({ "artifact": stored }))
            }
            Err(e) => registry_error(e),
        }
    }

    pub(crate) async fn deploy(&self, name: &str, req: http::Request<Incoming>) -> Response {
        let mut wait_all = false;
        let mut timeout = self.deploy_timeout;
        for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "wait" => wait_all = v == "all",
                "timeout" => match humantime::parse_duration(&v) {
                    Ok(t) => timeout = t,
                    Err(e) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("timeout `{v}` is not a duration ({e}); say e.g. 30s"),
                        );
                    }
                },
                _ => {}
            }
        }
        let request = match read_deploy_request(req).await {
            Ok(r) => r,
            Err(resp) => return resp,
        };
        let checked = match check_manifest(name, &request.manifest) {
            Ok(c) => c,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let _guard = self.deploys.lock().await;
        let records = match self.registry.records().await {
            Ok(r) => r,
            Err(e) => return registry_error(e),
        };
        // Route conflicts are checked against every other deployed function's route.
        if checked.claims_http()
            && let Err(e) =
                route_table(&records, Some(name)).check(&checked.route, &name.to_string())
        {
            return error(StatusCode::CONFLICT, e.to_string());
        }
        let previous = records.into_iter().find(|r| r.name == name);
        // Placed before it is recorded, so that nodes not assigned to it never load it.
        let wanted = crate::rebalance::wanted(&request.manifest, name, self.placement_nodes);
        if let Err(e) = crate::rebalance::place_new(self, name, wanted).await {
            return registry_error(e);
        }
        let record = match self
            .registry
            .deploy(name, &request.manifest, &request.artifact)
            .await
        {
            Ok(r) => r,
            Err(e) => return registry_error(e),
        };
        // Recorded: referenced now, so no longer spared as an upload on its way.
        self.uploads.settled(&request.artifact);
        drop(_guard);
        self.await_rollout(record, previous, wait_all, timeout)
            .await
    }

    /// Waits until the new version serves on a node (or on every live node with
    /// `wait_all`); rolls back when every node that tried it failed.
    pub(crate) async fn await_rollout(
        &self,
        record: FunctionRecord,
        previous: Option<FunctionRecord>,
        wait_all: bool,
        timeout: Duration,
    ) -> Response {
        let deadline = Instant::now() + timeout;
        let (name, version) = (record.name.clone(), record.version);
        let mut hosting = None;
        let mut read_at = Instant::now();
        loop {
            // Only the nodes assigned to it load it (the assignment may change meanwhile).
            if hosting.is_none() || read_at.elapsed() >= Duration::from_millis(500) {
                if let Ok(t) = self.registry.hosting().await {
                    hosting = Some(t);
                }
                read_at = Instant::now();
            }
            let mut nodes = self.up_nodes();
            if let Some(t) = &hosting {
                nodes.retain(|n| t.hosts(&name, &n.node));
            }
            let ready: Vec<&NodeReport> = nodes
                .iter()
                .filter(|n| {
                    n.functions
                        .iter()
                        .any(|f| f.name == name && f.version == version)
                })
                .collect();
            let failed: Vec<(&NodeReport, &str)> = nodes
                .iter()
                .filter_map(|n| {
                    n.failed
                        .iter()
                        .find(|f| f.name == name && f.version == version)
                        .map(|f| (n, f.error.as_str()))
                })
                .collect();
            let settled = ready.len() + failed.len() == nodes.len();
            if !ready.is_empty() && (!wait_all || settled) {
                return self.function(&name).await;
            }
            if ready.is_empty() && !failed.is_empty() && settled {
                let (node, why) = failed[0];
                let rolled_back = match &previous {
                    Some(p) => self
                        .registry
                        .put(p)
                        .await
                        .map(|_| format!("v{} keeps serving", p.version)),
                    None => self
                        .registry
                        .remove(&name)
                        .await
                        .map(|_| "nothing was deployed".to_string()),
                };
                let after = match rolled_back {
                    Ok(s) => s,
                    Err(e) => format!("and the rollback failed too: {e}"),
                };
                // The refused version's artifact, unless another version uses it.
                self.drop_if_unused(&record.artifact).await;
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "`{name}` v{version} failed to load on node `{}`: {why}; {after}",
                        node.node
                    ),
                );
            }
            if Instant::now() >= deadline {
                let live: Vec<String> = nodes.iter().map(|n| n.node.clone()).collect();
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "no node served `{name}` v{version} within {}{} (live nodes: {}); the version stays registered and nodes that start will load it — start nodes with `skiff node --nats URL`, or `skiff rm {name}` to withdraw it",
                        humantime::format_duration(timeout),
                        if wait_all { " on every node" } else { "" },
                        if live.is_empty() {
                            "none".to_string()
                        } else {
                            live.join(", ")
                        }
                    ),
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Scheduler {
    /// Removes `sha` from the cluster's object store if no recorded version references it
    /// and no deploy is on its way with it (a node removes its own copy likewise).
    /// Failures are logged: the artifact stays.
    pub(crate) async fn drop_if_unused(&self, sha: &str) {
        if self.uploads.is_spared(sha) {
            return;
        }
        match self.registry.records().await {
            Ok(records) if records.iter().any(|r| r.artifact == sha) => {}
            Ok(_) => match self.registry.remove_artifact(sha).await {
                Ok(0) => {}
                Ok(bytes) => {
                    tracing::info!(artifact = sha, bytes, "removed an artifact no version uses")
                }
                Err(e) => {
                    tracing::warn!(artifact = sha, error = %e, "cannot remove an unused artifact")
                }
            },
            Err(e) => {
                tracing::warn!(artifact = sha, error = %e, "cannot list versions; the unused artifact stays")
            }
        }
    }
}
