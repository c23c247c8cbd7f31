//! `skiff scheduler`: the cluster's front door.
//!
//! * Load reports arrive on `skiff.nodes.*` and keep a [`LiveSet`] fresh; a node not heard
//!   from for a second is dropped, except while NATS itself is unreachable, when the last
//!   view keeps routing.
//! * The function listener is a [`Gateway`]: route → function → node by power of two
//!   choices → proxied, with `x-skiff-node` on every answer.
//! * The admin API deploys into the cluster registry and waits until a node serves the
//!   new version, shows the cluster's status, and forwards function-level calls (state,
//!   dead letters, publishing) to a live node; logs and traces are gathered from every
//!   node.

use super::registry::{ClusterError, ClusterRegistry};
use crate::api::{ClusterStatus, FunctionInfo, NodeView};
use crate::manifest::{FunctionName, Manifest};
use crate::registry::FunctionRecord;
use crate::secrets::{MAX_SECRET_BYTES, SecretError, SecretKey, check_key, check_value};
use crate::server::admin::read_body;
use crate::server::admin::secrets::{
    keys_answer, method_not_allowed, removed_answer, segment, set_answer,
};
use crate::server::admin::{
    AdminBody, Response, authorized, error, full, json, read_artifact, read_deploy_request,
    serve_http, text,
};
use crate::server::shutdown_signal;
use bytes::Bytes;
use futures::StreamExt;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use skiff_scheduler::gateway::Gateway;
use skiff_scheduler::live::{LiveSet, Placement};
use skiff_scheduler::report::{NodeReport, NodeState, SUBJECT_PREFIX};
use skiff_scheduler::{Route, RouteTable};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Options of `skiff scheduler`.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// NATS URL(s).
    pub nats: String,
    /// Address of the function listener.
    pub listen: SocketAddr,
    /// Address of the admin API.
    pub admin: SocketAddr,
    /// Bearer token the admin API requires (and forwards to nodes), if any.
    pub token: Option<String>,
    /// Largest request body forwarded.
    pub max_body: u64,
    /// How long a deploy waits for a node to serve the new version.
    pub deploy_timeout: Duration,
    /// How requests are placed on nodes.
    pub placement: Placement,
    /// Replicas of the streams it creates (default: the NATS cluster's size).
    pub replicas: Option<usize>,
    /// The secrets key file shared with the nodes (without it, secrets cannot be set).
    pub secrets_key: Option<std::path::PathBuf>,
    /// Largest component accepted for upload.
    pub max_artifact: usize,
}

/// The scheduler's shared state.
pub struct Scheduler {
    live: Arc<LiveSet>,
    gateway: Gateway,
    registry: ClusterRegistry,
    token: Option<String>,
    url: String,
    started: Instant,
    deploy_timeout: Duration,
    http: Client<HttpConnector, Full<Bytes>>,
    /// Serialises deploys so that route checks and version records do not interleave.
    deploys: tokio::sync::Mutex<()>,
    /// When reports could last start flowing (NATS connected); `None` while disconnected.
    heard_since: Mutex<Option<Instant>>,
    /// Seals secrets before they enter the registry.
    secrets_key: Option<SecretKey>,
    /// Largest component accepted for upload.
    max_artifact: usize,
}

/// Runs `skiff scheduler` until Ctrl-C or SIGTERM.
pub async fn run(opts: SchedulerOptions) -> anyhow::Result<()> {
    let secrets_key = match &opts.secrets_key {
        Some(path) => Some(SecretKey::load(path)?),
        None => None,
    };
    let client = super::connect(&opts.nats, "skiff-scheduler").await?;
    let replicas = super::replicas(&client, opts.replicas);
    let js = async_nats::jetstream::new(client.clone());
    let registry = super::until_ready("open the cluster registry", || {
        ClusterRegistry::open(&js, replicas)
    })
    .await?;
    let mut reports = client
        .subscribe(format!("{SUBJECT_PREFIX}.*"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe to load reports: {e}"))?;
    let (listener, admin_listener) = crate::server::bind(opts.listen, opts.admin).await?;
    let (listen, admin) = (listener.local_addr()?, admin_listener.local_addr()?);
    let live = Arc::new(LiveSet::new());
    let scheduler = Arc::new(Scheduler {
        gateway: Gateway::new(live.clone(), opts.max_body, opts.placement),
        live: live.clone(),
        registry,
        token: opts.token.clone(),
        url: format!("http://{listen}"),
        started: Instant::now(),
        deploy_timeout: opts.deploy_timeout,
        http: Client::builder(TokioExecutor::new()).build_http(),
        deploys: tokio::sync::Mutex::new(()),
        heard_since: Mutex::new(Some(Instant::now())),
        secrets_key,
        max_artifact: opts.max_artifact,
    });

    // Reports in.
    let reports_live = live.clone();
    tokio::spawn(async move {
        while let Some(msg) = reports.next().await {
            match serde_json::from_slice::<NodeReport>(&msg.payload) {
                Ok(r) => {
                    if r.state == NodeState::Left {
                        tracing::info!(node = %r.node, "node left");
                    }
                    reports_live.report(r, Instant::now());
                }
                Err(e) => {
                    tracing::warn!(subject = %msg.subject, error = %e, "unreadable load report")
                }
            }
        }
    });
    // The registry's routes, so that a function no live node serves answers 503.
    let routes_of = scheduler.clone();
    tokio::spawn(async move {
        loop {
            if let Ok(records) = routes_of.registry.records().await {
                let routes: Vec<(String, String)> = records
                    .iter()
                    .filter_map(|r| {
                        let m = Manifest::parse(&r.manifest, "skiff.toml").ok()?;
                        Some((r.name.clone(), m.route().ok()?.to_string()))
                    })
                    .collect();
                routes_of.live.set_registered(&routes);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    // Expiry, paused while NATS is away.
    let expiring = scheduler.clone();
    tokio::spawn(async move {
        let mut connected = true;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now_connected =
                client.connection_state() == async_nats::connection::State::Connected;
            let since = {
                let mut h = match expiring.heard_since.lock() {
                    Ok(h) => h,
                    Err(p) => p.into_inner(),
                };
                if now_connected && !connected {
                    tracing::info!("NATS is back; node reports resume");
                    *h = Some(Instant::now());
                } else if !now_connected && connected {
                    tracing::warn!("NATS unreachable; routing with the last known nodes");
                    *h = None;
                }
                *h
            };
            connected = now_connected;
            for node in expiring.live.expire(Instant::now(), since) {
                tracing::warn!(node, "node stopped reporting; no longer routing to it");
            }
        }
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let gateway = scheduler.clone();
    let serving = tokio::spawn(serve_gateway(listener, gateway, stop_rx.clone()));
    let admin_side = scheduler.clone();
    let admin_serving = tokio::spawn(serve_http(admin_listener, stop_rx, move |req| {
        let s = admin_side.clone();
        async move { s.handle(req).await }
    }));
    println!(
        "skiff is up: functions on http://{listen} · admin on http://{admin} · scheduler over NATS at {}",
        opts.nats
    );
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), admin_serving).await;
    Ok(())
}

async fn serve_gateway(listener: TcpListener, s: Arc<Scheduler>, stop: watch::Receiver<bool>) {
    serve_http(listener, stop, move |req| {
        let s = s.clone();
        async move { s.gateway.handle(req).await }
    })
    .await
}

fn registry_error(e: ClusterError) -> Response {
    match e {
        ClusterError::MissingArtifact(_) => error(StatusCode::BAD_REQUEST, e.to_string()),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

impl Scheduler {
    async fn handle(&self, req: http::Request<Incoming>) -> Response {
        let path = req.uri().path().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        if req.method() == Method::GET && segments == ["healthz"] {
            return text(StatusCode::OK, "ok\n");
        }
        if !authorized(self.token.as_deref(), &req) {
            return error(
                StatusCode::UNAUTHORIZED,
                "this admin API requires a token: pass --token or set SKIFF_TOKEN".into(),
            );
        }
        let method = req.method().clone();
        match (method, segments.as_slice()) {
            (Method::GET, ["metrics"]) => self.metrics(),
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
                match self.registry.remove(name).await {
                    Ok(true) => json(StatusCode::OK, &serde_json::json!({ "removed": name })),
                    Ok(false) => self.not_found(name).await,
                    Err(e) => registry_error(e),
                }
            }
            (Method::GET, ["v1", "functions", _, "logs"]) => self.gather_logs(req).await,
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
            (_, ["v1", ..]) => error(
                StatusCode::NOT_FOUND,
                format!("no admin endpoint {} {path}", req.method()),
            ),
            _ => error(
                StatusCode::NOT_FOUND,
                format!("no admin endpoint {path}; the API lives under /v1"),
            ),
        }
    }

    /// Secrets go into the registry sealed; nodes take them from there.
    async fn secrets(
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

    fn up_nodes(&self) -> Vec<NodeReport> {
        self.live
            .snapshot(Instant::now())
            .into_iter()
            .map(|(r, _, _)| r)
            .filter(|r| r.state == NodeState::Up)
            .collect()
    }

    /// The admin URL of a live node (one serving `function`, when given).
    fn node_for(&self, function: Option<&str>) -> Option<String> {
        self.up_nodes()
            .into_iter()
            .find(|r| function.is_none_or(|f| r.functions.iter().any(|s| s.name == f)))
            .map(|r| r.admin)
    }

    async fn not_found(&self, name: &str) -> Response {
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

    async fn no_node(&self, name: &str) -> Response {
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

    fn metrics(&self) -> Response {
        let text = crate::metrics::scheduler_metrics(
            &self.live.snapshot(Instant::now()),
            &self.gateway.counts,
        );
        let mut r = http::Response::new(full(Bytes::from(text)));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    }

    async fn status(&self) -> ClusterStatus {
        let now = Instant::now();
        let functions = self.functions().await.unwrap_or_default();
        ClusterStatus {
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
    async fn functions(&self) -> Result<Vec<FunctionInfo>, ClusterError> {
        let records = self.registry.records().await?;
        let from_nodes = self.node_functions().await;
        Ok(records
            .into_iter()
            .map(|r| self.merge(r, &from_nodes))
            .collect())
    }

    async fn function(&self, name: &str) -> Response {
        match self.registry.record(name).await {
            Ok(Some(r)) => {
                let from_nodes = self.node_functions().await;
                json(StatusCode::OK, &self.merge(r, &from_nodes))
            }
            Ok(None) => self.not_found(name).await,
            Err(e) => registry_error(e),
        }
    }

    /// What every live node says it serves.
    async fn node_functions(&self) -> Vec<FunctionInfo> {
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

    fn merge(&self, record: FunctionRecord, from_nodes: &[FunctionInfo]) -> FunctionInfo {
        let serving: Vec<&FunctionInfo> = from_nodes
            .iter()
            .filter(|f| f.name == record.name && f.version == record.version)
            .collect();
        let route = Manifest::parse(&record.manifest, "skiff.toml")
            .ok()
            .and_then(|m| m.route().ok())
            .map(|r| r.to_string())
            .unwrap_or_default();
        let url = Route::parse(&route)
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
                limits: crate::limits::NodeLimits::default().defaults,
                in_flight: 0,
                code: crate::engine::CodeSource::Compiled,
                deployed_at_ms: record.deployed_at_ms,
                nodes: Vec::new(),
            },
        };
        info.url = url;
        info.route = route;
        info.in_flight = serving.iter().map(|f| f.in_flight).sum();
        info.nodes = serving.iter().flat_map(|f| f.nodes.clone()).collect();
        info
    }

    async fn upload(&self, sha: &str, req: http::Request<Incoming>) -> Response {
        let bytes = match read_artifact(sha, req, self.max_artifact).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        match self.registry.put_artifact(sha, &bytes).await {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({ "artifact": sha })),
            Err(e) => registry_error(e),
        }
    }

    async fn deploy(&self, name: &str, req: http::Request<Incoming>) -> Response {
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
        if let Err(e) = FunctionName::new(name) {
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
        let manifest = match Manifest::parse(&request.manifest, "skiff.toml") {
            Ok(m) => m,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        if manifest.name.as_str() != name {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "deploy to `{name}` carries a manifest named `{}`; they must match",
                    manifest.name
                ),
            );
        }
        let route = match manifest.route() {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let _guard = self.deploys.lock().await;
        let records = match self.registry.records().await {
            Ok(r) => r,
            Err(e) => return registry_error(e),
        };
        // Route conflicts are checked against every other deployed function's manifest.
        let mut table = RouteTable::new();
        for r in records.iter().filter(|r| r.name != name) {
            if let Some(other) = Manifest::parse(&r.manifest, "skiff.toml")
                .ok()
                .and_then(|m| m.route().ok())
            {
                let _ = table.insert(&other, r.name.clone());
            }
        }
        let handles_http = manifest.events.is_empty() || manifest.http.route.is_some();
        if handles_http && let Err(e) = table.check(&route, &name.to_string()) {
            return error(StatusCode::CONFLICT, e.to_string());
        }
        let previous = records.into_iter().find(|r| r.name == name);
        let record = match self
            .registry
            .deploy(name, &request.manifest, &request.artifact)
            .await
        {
            Ok(r) => r,
            Err(e) => return registry_error(e),
        };
        drop(_guard);
        self.await_rollout(record, previous, wait_all, timeout)
            .await
    }

    /// Waits until the new version serves on a node (or on every live node with
    /// `wait_all`); rolls back when every node that tried it failed.
    async fn await_rollout(
        &self,
        record: FunctionRecord,
        previous: Option<FunctionRecord>,
        wait_all: bool,
        timeout: Duration,
    ) -> Response {
        let deadline = Instant::now() + timeout;
        let (name, version) = (record.name.clone(), record.version);
        loop {
            let nodes = self.up_nodes();
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

    /// One admin call to a node, with this scheduler's token; the body of a 2xx answer.
    async fn call(
        &self,
        admin: &str,
        method: Method,
        path_and_query: &str,
        body: Bytes,
    ) -> Result<Bytes, (StatusCode, String)> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{admin}{path_and_query}"));
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let bad = |e: String| (StatusCode::BAD_GATEWAY, e);
        let req = req.body(Full::new(body)).map_err(|e| bad(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(5), self.http.request(req))
            .await
            .map_err(|_| bad(format!("node at {admin} did not answer within 5s")))?
            .map_err(|e| bad(format!("node at {admin}: {e}")))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| bad(e.to_string()))?
            .to_bytes();
        if status.is_success() {
            Ok(bytes)
        } else {
            // Pass the node's own message on.
            let message = serde_json::from_slice::<crate::api::ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            Err((status, message))
        }
    }

    /// Sends `req` to a node's admin API as it came and streams the answer back.
    async fn forward(&self, admin: &str, req: http::Request<Incoming>) -> Response {
        let (parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let body = match http_body_util::Limited::new(body, self.max_artifact)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                );
            }
        };
        let mut out = http::Request::builder()
            .method(parts.method)
            .uri(format!("{admin}{path}"));
        for (k, v) in &parts.headers {
            if k != http::header::HOST {
                out = out.header(k, v);
            }
        }
        let Ok(out) = out.body(Full::new(body)) else {
            return error(StatusCode::BAD_REQUEST, format!("cannot forward {path}"));
        };
        match self.http.request(out).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                http::Response::from_parts(parts, streamed(body))
            }
            Err(e) => error(
                StatusCode::BAD_GATEWAY,
                format!("node at {admin} did not answer: {e}; retry"),
            ),
        }
    }

    /// Logs from every live node: merged by time; with `follow`, every node's stream.
    async fn gather_logs(&self, req: http::Request<Incoming>) -> Response {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let follow = req.uri().query().is_some_and(|q| q.contains("follow=true"));
        let nodes = self.up_nodes();
        if nodes.is_empty() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no live node to read logs from; start one with `skiff node --nats URL`".into(),
            );
        }
        if follow {
            // Every node's stream, interleaved as lines arrive.
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
            for n in nodes {
                let mut req = http::Request::builder()
                    .method(Method::GET)
                    .uri(format!("{}{path}", n.admin));
                if let Some(t) = &self.token {
                    req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
                }
                let Ok(req) = req.body(Full::new(Bytes::new())) else {
                    continue;
                };
                let http = self.http.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(resp) = http.request(req).await else {
                        return;
                    };
                    if !resp.status().is_success() {
                        return;
                    }
                    let mut body = resp.into_body();
                    while let Some(Ok(frame)) = body.frame().await {
                        if let Ok(data) = frame.into_data()
                            && tx.send(data).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
            drop(tx);
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
            });
            let mut r = http::Response::new(StreamBody::new(stream).boxed_unsync());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/x-ndjson"),
            );
            return r;
        }
        let tail = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "tail")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(crate::server::admin::logs::DEFAULT_TAIL);
        let calls = nodes
            .iter()
            .map(|n| self.call(&n.admin, Method::GET, &path, Bytes::new()));
        let answers = futures::future::join_all(calls).await;
        let mut lines: Vec<(u64, String)> = Vec::new();
        let mut last_error = None;
        for a in answers {
            match a {
                Ok(body) => {
                    for l in String::from_utf8_lossy(&body).lines() {
                        let ts = serde_json::from_str::<crate::logs::LogLine>(l)
                            .map(|x| x.ts_ms)
                            .unwrap_or(0);
                        lines.push((ts, l.to_string()));
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
        if lines.is_empty()
            && let Some(e) = last_error
        {
            return error(e.0, e.1);
        }
        lines.sort_by_key(|(ts, _)| *ts);
        let skip = lines.len().saturating_sub(tail);
        let mut out = String::new();
        for (_, l) in lines.into_iter().skip(skip) {
            out.push_str(&l);
            out.push('\n');
        }
        let mut r = http::Response::new(full(Bytes::from(out)));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-ndjson"),
        );
        r
    }

    /// A trace's spans from every live node.
    async fn gather_trace(&self, id: &str, req: http::Request<Incoming>) -> Response {
        let path = req.uri().path().to_string();
        let nodes = self.up_nodes();
        let calls = nodes
            .iter()
            .map(|n| self.call(&n.admin, Method::GET, &path, Bytes::new()));
        let mut spans: Vec<crate::traces::Span> = Vec::new();
        for body in futures::future::join_all(calls).await.into_iter().flatten() {
            if let Ok(mut s) = serde_json::from_slice::<Vec<crate::traces::Span>>(&body) {
                spans.append(&mut s);
            }
        }
        if spans.is_empty() {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "no live node knows trace `{id}` (each keeps its newest {} spans); trace ids come back in the x-skiff-trace-id response header",
                    crate::traces::MAX_SPANS
                ),
            );
        }
        spans.sort_by_key(|s| s.start_ms);
        json(StatusCode::OK, &spans)
    }
}

/// A node's streamed answer as an admin body; a broken stream simply ends it.
fn streamed(body: Incoming) -> AdminBody {
    let stream = futures::stream::unfold(body, |mut body| async move {
        match body.frame().await {
            Some(Ok(f)) => Some((Ok::<_, std::convert::Infallible>(f), body)),
            _ => None,
        }
    });
    StreamBody::new(stream).boxed_unsync()
}
