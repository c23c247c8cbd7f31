//! The scheduler's admin API: the same endpoints as a node's (see `skiff_core::api`),
//! answered from the cluster registry and the live nodes. Deploys go to [`crate::rollout`];
//! function-level calls and logs and traces to the nodes ([`crate::nodes`]).

use crate::shared::Scheduler;
use bytes::Bytes;
use http::{Method, StatusCode};
use hyper::body::Incoming;
use skiff_core::api::{ClusterStatus, FunctionInfo, NodeView, PlacementInfo, ShardView};
use skiff_core::control::ControlError;
use skiff_core::deploy::record_route;
use skiff_core::hosting::HostingTable;
use skiff_core::http::{
    Response, error, full, gate, json, keys_answer, method_not_allowed, no_endpoint, read_body,
    removed_answer, segment, set_answer,
};
use skiff_core::manifest::FunctionName;
use skiff_core::record::FunctionRecord;
use skiff_core::secrets::{MAX_SECRET_BYTES, SecretError, check_key, check_value};
use std::time::Instant;

pub(crate) fn registry_error(e: ControlError) -> Response {
    match e {
        ControlError::MissingArtifact(_) => error(StatusCode::BAD_REQUEST, e.to_string()),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

impl Scheduler {
    pub(crate) async fn handle(&self, req: http::Request<Incoming>) -> Response {
        let path = req.uri().path().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        if let Some(answer) = skiff_core::console::open(self.token.as_deref(), &req) {
            return answer;
        }
        if let Some(answer) = gate(self.token.as_deref(), &req) {
            return answer;
        }
        let method = req.method().clone();
        match (method, segments.as_slice()) {
            (Method::GET, ["metrics"]) => self.metrics(),
            (Method::GET, ["v1", "stream"]) => self.stream.subscribe(),
            (Method::GET, ["v1", "status"]) => json(StatusCode::OK, &self.status().await),
            (Method::GET, ["v1", "functions"]) => match self.functions().await {
                Ok(list) => json(StatusCode::OK, &list),
                Err(e) => registry_error(e),
            },
            (Method::GET, ["v1", "functions", name]) => self.function(name).await,
            (Method::PUT, ["v1", "artifacts", sha]) => {
                let sha = sha.to_string();
                self.upload(&sha, req).await
            }
            (Method::PUT, ["v1", "functions", name]) => {
                let name = name.to_string();
                self.deploy(&name, req).await
            }
            (Method::DELETE, ["v1", "functions", name]) => {
                if req
                    .uri()
                    .query()
                    .is_some_and(|q| q.contains("purge_state=true"))
                {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "purging state is not available in cluster mode yet; remove the function, then delete its keys with `skiff kv del`".into(),
                    );
                }
                let artifact = match self.registry.record(name).await {
                    Ok(r) => r.map(|r| r.artifact),
                    Err(e) => return registry_error(e),
                };
                match self.registry.remove(name).await {
                    Ok(true) => {
                        if let Err(e) = self.registry.remove_hosting(name).await {
                            tracing::warn!(function = %name, error = %e, "removed, but its placement stays until the next round");
                        }
                        if let Some(sha) = artifact {
                            self.drop_if_unused(&sha).await;
                        }
                        json(StatusCode::OK, &serde_json::json!({ "removed": name }))
                    }
                    Ok(false) => self.not_found(name).await,
                    Err(e) => registry_error(e),
                }
            }
            (Method::GET, ["v1", "functions", _, "logs"]) => self.gather_logs(req).await,
            (Method::POST, ["v1", "functions", name, "move"]) => {
                let name = name.to_string();
                self.move_function(&name, req).await
            }
            (Method::POST, ["v1", "nodes", node, "drain"]) => {
                let node = segment(node);
                self.drain_node(&node, false).await
            }
            (Method::POST, ["v1", "nodes", node, "undrain"]) => {
                let node = segment(node);
                self.drain_node(&node, true).await
            }
            (_, ["v1", "functions", name, "secrets"]) => {
                let name = name.to_string();
                self.secrets(&name, None, req).await
            }
            (_, ["v1", "functions", name, "secrets", key]) => {
                let (name, key) = (name.to_string(), segment(key));
                self.secrets(&name, Some(&key), req).await
            }
            (Method::GET, ["v1", "traces", id]) => {
                let id = id.to_string();
                self.gather_trace(&id, req).await
            }
            (_, ["v1", "functions", name, ..]) => {
                let name = name.to_string();
                match self.node_for(Some(&name)) {
                    Some(admin) => self.forward(&admin, req).await,
                    None => self.no_node(&name).await,
                }
            }
            (_, ["v1", "events", ..]) => match self.node_for(None) {
                Some(admin) => self.forward(&admin, req).await,
                None => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no live node to take the event; start one with `skiff node --nats URL`".into(),
                ),
            },
            _ => no_endpoint(req.method(), &path),
        }
    }

    /// Secrets go into the registry sealed; nodes take them from there.
    pub(crate) async fn secrets(
        &self,
        name: &str,
        key: Option<&str>,
        req: http::Request<Incoming>,
    ) -> Response {
        if let Err(e) = FunctionName::new(name) {
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
        if let Some(key) = key
            && let Err(e) = check_key(key)
        {
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
        match (req.method().clone(), key) {
            (Method::GET, None) => match self.registry.secrets(Some(name)).await {
                Ok(list) => keys_answer(name, list.into_iter().map(|(_, k, _)| k).collect()),
                Err(e) => registry_error(e),
            },
            (Method::PUT, Some(key)) => {
                let Some(secrets_key) = &self.secrets_key else {
                    return error(StatusCode::CONFLICT, SecretError::NoKey.to_string());
                };
                let value = match read_body(req, MAX_SECRET_BYTES).await {
                    Ok(v) => v,
                    Err(resp) => return resp,
                };
                let sealed = match check_value(&value)
                    .and_then(|v| secrets_key.seal(name, key, v.as_bytes()))
                {
                    Ok(s) => s,
                    Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
                };
                match self.registry.put_secret(name, key, &sealed).await {
                    Ok(()) => set_answer(name, key),
                    Err(e) => registry_error(e),
                }
            }
            (Method::DELETE, Some(key)) => match self.registry.remove_secret(name, key).await {
                Ok(existed) => removed_answer(name, key, existed),
                Err(e) => registry_error(e),
            },
            (method, _) => method_not_allowed(&method),
        }
    }

    pub(crate) async fn not_found(&self, name: &str) -> Response {
        let names = match self.registry.records().await {
            Ok(r) if !r.is_empty() => r
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
            Ok(_) => "none".to_string(),
            Err(e) => return registry_error(e),
        };
        error(
            StatusCode::NOT_FOUND,
            format!("function `{name}` not found; deployed: {names}"),
        )
    }

    pub(crate) async fn no_node(&self, name: &str) -> Response {
        match self.registry.record(name).await {
            Ok(Some(_)) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "no live node serves `{name}` now; start one with `skiff node --nats URL` or retry shortly"
                ),
            ),
            Ok(None) => self.not_found(name).await,
            Err(e) => registry_error(e),
        }
    }

    pub(crate) fn metrics(&self) -> Response {
        let placement = crate::metrics::PlacementCounts {
            moves: self.moves.get(),
            under_replicated: self.hosting_view().1.len() as u64,
        };
        let text = crate::metrics::scheduler_metrics(
            &self.live.snapshot(Instant::now()),
            &self.gateway.counts,
            &placement,
        );
        let mut r = http::Response::new(full(Bytes::from(text)));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    }

    pub(crate) async fn status(&self) -> ClusterStatus {
        let now = Instant::now();
        let functions = self.functions().await.unwrap_or_default();
        let (table, _) = self.hosting_view();
        ClusterStatus {
            shards: self.shard_leaders().await,
            drained: table.drained.iter().cloned().collect(),
            mode: "scheduler".into(),
            url: self.url.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            nodes: self
                .live
                .snapshot(now)
                .into_iter()
                .map(|(report, age, sent)| NodeView {
                    report,
                    last_report_ms: age.as_millis() as u64,
                    sent,
                })
                .collect(),
            functions,
        }
    }

    /// Every deployed function: the cluster registry's records, with what the nodes that
    /// serve them report (their limits, in-flight counts summed).
    pub(crate) async fn functions(&self) -> Result<Vec<FunctionInfo>, ControlError> {
        let records = self.registry.records().await?;
        let table = self.registry.hosting().await?;
        let from_nodes = self.node_functions().await;
        let live = self.up_node_names();
        Ok(records
            .into_iter()
            .map(|r| self.merge(r, &from_nodes, &table, &live))
            .collect())
    }

    pub(crate) async fn function(&self, name: &str) -> Response {
        match self.registry.record(name).await {
            Ok(Some(r)) => {
                let from_nodes = self.node_functions().await;
                let table = match self.registry.hosting().await {
                    Ok(t) => t,
                    Err(e) => return registry_error(e),
                };
                let live = self.up_node_names();
                json(StatusCode::OK, &self.merge(r, &from_nodes, &table, &live))
            }
            Ok(None) => self.not_found(name).await,
            Err(e) => registry_error(e),
        }
    }

    /// What every live node says it serves.
    pub(crate) async fn node_functions(&self) -> Vec<FunctionInfo> {
        let calls = self.up_nodes().into_iter().map(|n| async move {
            let r = self
                .call(&n.admin, Method::GET, "/v1/functions", Bytes::new())
                .await
                .ok()?;
            serde_json::from_slice::<Vec<FunctionInfo>>(&r).ok()
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .flatten()
            .collect()
    }

    pub(crate) fn merge(
        &self,
        record: FunctionRecord,
        from_nodes: &[FunctionInfo],
        table: &HostingTable,
        live: &[String],
    ) -> FunctionInfo {
        let serving: Vec<&FunctionInfo> = from_nodes
            .iter()
            .filter(|f| f.name == record.name && f.version == record.version)
            .collect();
        let parsed = record_route(&record);
        let route = parsed.as_ref().map(|r| r.to_string()).unwrap_or_default();
        let url = parsed
            .map(|r| format!("{}{}", self.url, r.base_path()))
            .unwrap_or_default();
        let mut info = match serving.first() {
            Some(f) => (*f).clone(),
            None => FunctionInfo {
                name: record.name.clone(),
                version: record.version,
                route: route.clone(),
                url: String::new(),
                triggers: Vec::new(),
                artifact: record.artifact.clone(),
                limits: skiff_core::limits::NodeLimits::default().defaults,
                world: None,
                instances: None,
                in_flight: 0,
                code: skiff_core::api::CodeSource::Compiled,
                deployed_at_ms: record.deployed_at_ms,
                nodes: Vec::new(),
                placement: None,
            },
        };
        info.url = url;
        info.route = route;
        info.in_flight = serving.iter().map(|f| f.in_flight).sum();
        info.nodes = serving.iter().flat_map(|f| f.nodes.clone()).collect();
        info.placement = self.placement_of(&record, table, live);
        info
    }

    /// Where the cluster places `record`'s function.
    fn placement_of(
        &self,
        record: &FunctionRecord,
        table: &HostingTable,
        live: &[String],
    ) -> Option<PlacementInfo> {
        let h = table.of(&record.name);
        let wanted = crate::rebalance::wanted(&record.manifest, &record.name, self.placement_nodes);
        let assigned = h.nodes.clone().unwrap_or_default();
        let live_assigned = assigned.iter().filter(|n| live.contains(n)).count();
        Some(PlacementInfo {
            wanted,
            under_replicated: wanted.is_some_and(|n| live_assigned < n as usize),
            assigned,
            leaving: h.leaving.clone(),
            pinned: h.pinned,
        })
    }

    /// The names of the live nodes that take work.
    fn up_node_names(&self) -> Vec<String> {
        self.up_nodes().into_iter().map(|n| n.node).collect()
    }

    /// Each state shard's stream and its leader, as JetStream says now.
    async fn shard_leaders(&self) -> Vec<ShardView> {
        let (Some(client), Some(shards)) = (self.nats.get(), self.shards.get()) else {
            return Vec::new();
        };
        let js = async_nats::jetstream::new(client.clone());
        crate::shards::read(&js, *shards)
            .await
            .into_iter()
            .map(|s| ShardView {
                stream: s.stream,
                leader: s.leader,
            })
            .collect()
    }
}
