//! The admin API (see `skiff_core::api` for the endpoints): deploys, listing, removal,
//! status and key-value state ([`kv`]), behind an optional bearer token; on a cluster
//! node with a cluster token, behind that token instead (only the scheduler is answered).
//! `/healthz` is always open, and so are the console's assets (`/ui`) and `/v1/session`,
//! which carry no data.

pub mod events;
pub mod kv;
pub mod logs;
pub mod schedules;
pub mod secrets;

use crate::cluster::reporter::Reporter;
use crate::node::Node;
use bytes::Bytes;
use http::{Method, StatusCode};
use hyper::body::Incoming;
use skiff_core::cluster_token::{self, ClusterToken};
use skiff_core::console::{self, LiveHub};
use skiff_core::http::{
    Response, error, full, gate, json, no_endpoint, read_artifact, read_deploy_request, text,
};
use skiff_core::serve::{ConnLimits, serve};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The admin API's shared state.
pub struct Admin {
    node: Arc<Node>,
    token: Option<String>,
    /// A cluster node's load reports, also served on `GET /v1/report`.
    reporter: Option<Arc<Reporter>>,
    /// With it, only the scheduler (which presents it) is answered; it replaces `token`.
    cluster_token: Option<ClusterToken>,
    /// The console's live view (`/v1/stream`).
    live: Arc<LiveHub>,
}

impl Admin {
    /// An admin API over `node`, requiring `token` when set.
    pub fn new(node: Arc<Node>, token: Option<String>) -> Self {
        Admin {
            node,
            token,
            reporter: None,
            cluster_token: None,
            live: Arc::new(LiveHub::default()),
        }
    }

    /// The hub `/v1/stream` serves (fed by [`crate::server::live::run`]).
    pub fn live(&self) -> Arc<LiveHub> {
        self.live.clone()
    }

    /// Answers only requests that carry `token` (the scheduler's), besides `/healthz`.
    pub fn with_cluster_token(mut self, token: Option<ClusterToken>) -> Self {
        self.cluster_token = token;
        self
    }

    /// Serves `reporter`'s reports on `GET /v1/report` (a cluster node).
    pub fn with_reporter(mut self, reporter: Arc<Reporter>) -> Self {
        self.reporter = Some(reporter);
        self
    }

    /// Accepts admin connections until `stop` turns true.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: watch::Receiver<bool>) {
        serve(listener, ConnLimits::default(), stop, move |req| {
            let admin = self.clone();
            async move { admin.handle(req).await }
        })
        .await
    }

    /// Serves one admin request.
    pub async fn handle(&self, req: http::Request<Incoming>) -> Response {
        let path = req.uri().path().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match &self.cluster_token {
            Some(cluster) if !cluster_token::is_health(&path) => {
                if !cluster.in_header_or_bearer(req.headers()) {
                    return cluster_token::refused(self.node.name());
                }
            }
            _ => {
                if let Some(answer) = console::open(self.token.as_deref(), &req) {
                    return answer;
                }
                if let Some(answer) = gate(self.token.as_deref(), &req) {
                    return answer;
                }
            }
        }
        let method = req.method().clone();
        let changes_functions = matches!(
            (&method, segments.as_slice()),
            (&Method::PUT, ["v1", "functions", _])
                | (&Method::DELETE, ["v1", "functions", _])
                | (&Method::PUT, ["v1", "artifacts", _])
                | (&Method::PUT, ["v1", "functions", _, "secrets", _])
                | (&Method::DELETE, ["v1", "functions", _, "secrets", _])
        );
        if changes_functions && self.node.is_cluster() {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "node `{}` is part of a cluster and takes its functions and secrets from the cluster registry; deploy, remove and set secrets through the scheduler (--server http://SCHEDULER:7071)",
                    self.node.name()
                ),
            );
        }
        match (method, segments.as_slice()) {
            (Method::GET, ["v1", "status"]) => json(StatusCode::OK, &self.node.status()),
            (Method::GET, ["v1", "report"]) => match &self.reporter {
                Some(r) => json(StatusCode::OK, &r.report()),
                None => error(
                    StatusCode::NOT_FOUND,
                    "only a cluster node (`skiff node`) has a load report; see GET /v1/status"
                        .into(),
                ),
            },
            (Method::GET, ["metrics"]) => self.metrics().await,
            (Method::GET, ["v1", "functions"]) => json(StatusCode::OK, &self.node.list()),
            (Method::GET, ["v1", "functions", name]) => self.get_function(name),
            (Method::PUT, ["v1", "functions", name]) => {
                let name = name.to_string();
                self.deploy(&name, req).await
            }
            (Method::DELETE, ["v1", "functions", name]) => {
                let purge = req.uri().query().is_some_and(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .any(|(k, v)| k == "purge_state" && v == "true")
                });
                self.remove(name, purge).await
            }
            (Method::POST, ["v1", "events", topic]) => {
                let topic = topic.to_string();
                events::publish(&self.node, &topic, req).await
            }
            (Method::GET, ["v1", "traces", id]) => self.trace(id),
            (Method::GET, ["v1", "stream"]) => self.live.subscribe(),
            (Method::GET, ["v1", "functions", name, "manifest"]) => {
                match self.node.snapshot().get(name) {
                    Some(d) => text(StatusCode::OK, d.record.manifest.clone()),
                    None => self.not_found(name),
                }
            }
            (Method::GET, ["v1", "functions", name, "invocations"]) => {
                match self.node.snapshot().get(name) {
                    Some(_) => json(StatusCode::OK, &self.node.traces().recent(name, 50)),
                    None => self.not_found(name),
                }
            }
            (Method::GET, ["v1", "functions", name, "logs"]) => {
                let name = name.to_string();
                logs::logs(&self.node, &name, &req)
            }
            (_, ["v1", "functions", name, "dead-letters", rest @ ..]) => {
                events::dead_letters(&self.node, name, rest, req.method()).await
            }
            (_, ["v1", "functions", name, "schedules", rest @ ..]) => {
                let d = self.node.snapshot().get(name).cloned();
                schedules::schedules(&self.node, d, name, rest, req.method()).await
            }
            (_, ["v1", "functions", name, "secrets"]) => {
                let name = name.to_string();
                secrets::handle(&self.node, &name, None, req).await
            }
            (_, ["v1", "functions", name, "secrets", key]) => {
                let (name, key) = (name.to_string(), key.to_string());
                secrets::handle(&self.node, &name, Some(&key), req).await
            }
            (_, ["v1", "functions", name, "kv", rest @ ..]) => {
                let name = name.to_string();
                let key = rest.join("/");
                kv::handle(&self.node, &name, Some(&key), req).await
            }
            (Method::PUT, ["v1", "artifacts", sha]) => {
                let sha = sha.to_string();
                self.upload(&sha, req).await
            }
            _ => no_endpoint(req.method(), &path),
        }
    }

    async fn metrics(&self) -> Response {
        let mut r = http::Response::new(full(Bytes::from(self.node.metrics_text().await)));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    }

    fn trace(&self, id: &str) -> Response {
        let spans = self.node.traces().trace(id);
        if spans.is_empty() {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "no trace `{id}` on this node (it keeps the newest {} spans); trace ids come back in the x-skiff-trace-id response header",
                    crate::traces::MAX_SPANS
                ),
            );
        }
        json(StatusCode::OK, &spans)
    }

    fn not_found(&self, name: &str) -> Response {
        error(
            StatusCode::NOT_FOUND,
            format!(
                "function `{name}` not found; deployed: {}",
                self.node.snapshot().names()
            ),
        )
    }

    fn get_function(&self, name: &str) -> Response {
        match self.node.snapshot().get(name) {
            Some(d) => json(StatusCode::OK, &self.node.info(d)),
            None => self.not_found(name),
        }
    }

    async fn remove(&self, name: &str, purge_state: bool) -> Response {
        let removed = match self.node.remove(name).await {
            Ok(r) => r,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        if !purge_state {
            return match removed {
                true => json(
                    StatusCode::OK,
                    &serde_json::json!({ "removed": name, "state": "kept" }),
                ),
                false => self.not_found(name),
            };
        }
        // Purging works for a function already removed (its state was kept then).
        match self.node.purge_state(name).await {
            Ok(0) if !removed => self.not_found(name),
            Ok(keys) => json(
                StatusCode::OK,
                &serde_json::json!({ "removed": name, "state": "purged", "keys": keys }),
            ),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    async fn upload(&self, sha: &str, req: http::Request<Incoming>) -> Response {
        let max = self.node.limits().max_artifact_bytes;
        let bytes = match read_artifact(sha, req, max).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        match self.node.control().put_artifact(&bytes).await {
            Ok(stored) => {
                self.node.uploaded(&stored);
                json(StatusCode::OK, &serde_json::json!({ "artifact": stored }))
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    async fn deploy(&self, name: &str, req: http::Request<Incoming>) -> Response {
        let body = match read_deploy_request(req).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        match self.node.deploy(name, &body.manifest, &body.artifact).await {
            Ok(d) => json(StatusCode::OK, &self.node.info(&d)),
            Err(e) => {
                let status = if e.is_conflict() {
                    StatusCode::CONFLICT
                } else if e.is_client_error() {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                error(status, e.to_string())
            }
        }
    }
}
