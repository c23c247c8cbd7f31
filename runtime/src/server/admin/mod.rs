//! The admin API (see [`crate::api`] for the endpoints): deploys, listing, removal,
//! status and key-value state ([`kv`]), behind an optional bearer token. `/healthz` is
//! always open.

pub mod events;
pub mod kv;
pub mod logs;
pub mod secrets;

use crate::api::{DeployRequest, ErrorBody};
use crate::engine::check_component_header;
use crate::node::Node;
use crate::registry::{is_sha256_hex, sha256_hex};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Largest component accepted for upload unless `--max-artifact` says otherwise.
pub const MAX_ARTIFACT_BYTES: usize = 50 << 20;
/// Largest JSON request body.
const MAX_JSON_BYTES: usize = 1 << 20;

/// The body of an admin API answer: whole, or streamed (`logs -f`).
pub type AdminBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// An admin API answer.
pub type Response = http::Response<AdminBody>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> AdminBody {
    Full::new(bytes.into()).boxed_unsync()
}

/// Reads an uploaded component named by its sha256 and checks it, before anything
/// compiles it: the name is a sha256, the body is at most `max` bytes (a larger
/// declared length is refused before the body is read) and hashes to the name, and it
/// starts like a component.
pub(crate) async fn read_artifact(
    sha: &str,
    req: http::Request<Incoming>,
    max: usize,
) -> Result<Bytes, Response> {
    if !is_sha256_hex(sha) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("`{sha}` is not a sha256; upload to /v1/artifacts/<hex sha256 of the body>"),
        ));
    }
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the component is larger than this server's limit of {}; build it smaller (a release build, wasm-opt) or start the server with a larger --max-artifact",
                crate::manifest::Size(max as u64)
            ),
        )
    };
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    let bytes = match read_body(req, max).await {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
        Err(r) => return Err(r),
    };
    let actual = sha256_hex(&bytes);
    if actual != sha {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "upload does not match its name: the body hashes to {actual}, not {sha}; the upload was damaged, retry it"
            ),
        ));
    }
    if let Err(e) = check_component_header(&bytes) {
        return Err(error(StatusCode::BAD_REQUEST, e.to_string()));
    }
    Ok(bytes)
}

/// Whether `req` carries the bearer `token` (compared in constant time); always true
/// when no token is configured.
pub fn authorized(token: Option<&str>, req: &http::Request<Incoming>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    presented.as_bytes().ct_eq(token.as_bytes()).into()
}

/// Serves HTTP/1.1 on `listener` with `handle` until `stop` turns true: the admin API's
/// loop, shared by every process that has one.
pub async fn serve_http<F, Fut, B>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                // Small answers must not wait for Nagle's algorithm (40 ms stalls).
                let _ = stream.set_nodelay(true);
                let handle = handle.clone();
                let conn = builder.serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| {
                        let fut = handle(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    }),
                );
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "admin connection ended with an error");
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
}

/// The admin API's shared state.
pub struct Admin {
    node: Arc<Node>,
    token: Option<String>,
}

impl Admin {
    /// An admin API over `node`, requiring `token` when set.
    pub fn new(node: Arc<Node>, token: Option<String>) -> Self {
        Admin { node, token }
    }

    /// Accepts admin connections until `stop` turns true.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: watch::Receiver<bool>) {
        serve_http(listener, stop, move |req| {
            let admin = self.clone();
            async move { admin.handle(req).await }
        })
        .await
    }

    fn authorized(&self, req: &http::Request<Incoming>) -> bool {
        authorized(self.token.as_deref(), req)
    }

    /// Serves one admin request.
    pub async fn handle(&self, req: http::Request<Incoming>) -> Response {
        let path = req.uri().path().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        if req.method() == Method::GET && segments == ["healthz"] {
            return text(StatusCode::OK, "ok\n");
        }
        if !self.authorized(&req) {
            return error(
                StatusCode::UNAUTHORIZED,
                "this admin API requires a token: pass --token or set SKIFF_TOKEN".into(),
            );
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
            (Method::GET, ["metrics"]) => {
                let mut r = http::Response::new(full(Bytes::from(self.node.metrics_text().await)));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
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
            (Method::GET, ["v1", "traces", id]) => {
                let spans = self.node.traces().trace(id);
                if spans.is_empty() {
                    error(
                        StatusCode::NOT_FOUND,
                        format!(
                            "no trace `{id}` on this node (it keeps the newest {} spans); trace ids come back in the x-skiff-trace-id response header",
                            crate::traces::MAX_SPANS
                        ),
                    )
                } else {
                    json(StatusCode::OK, &spans)
                }
            }
            (Method::GET, ["v1", "functions", name, "logs"]) => {
                let name = name.to_string();
                logs::logs(&self.node, &name, &req)
            }
            (_, ["v1", "functions", name, "dead-letters", rest @ ..]) => {
                events::dead_letters(&self.node, name, rest, req.method()).await
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
        let op = crate::state::Op::Purge {
            function: name.to_string(),
        };
        match self
            .node
            .state()
            .write(op, crate::state::KvLimits::default())
            .await
        {
            Ok(crate::state::OpResult::Purged(0)) if !removed => self.not_found(name),
            Ok(crate::state::OpResult::Purged(keys)) => json(
                StatusCode::OK,
                &serde_json::json!({ "removed": name, "state": "purged", "keys": keys }),
            ),
            Ok(other) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("unexpected purge result {other:?}"),
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
        let registry = self.node.registry().clone();
        match tokio::task::spawn_blocking(move || registry.put_artifact(&bytes)).await {
            Ok(Ok(stored)) => json(StatusCode::OK, &serde_json::json!({ "artifact": stored })),
            Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
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

/// Reads a [`DeployRequest`] body.
pub(crate) async fn read_deploy_request(
    req: http::Request<Incoming>,
) -> Result<DeployRequest, Response> {
    let bytes = read_body(req, MAX_JSON_BYTES).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!(
                "deploy request is not valid JSON of the form {{\"manifest\": ..., \"artifact\": ...}}: {e}"
            ),
        )
    })
}

pub(crate) async fn read_body(req: http::Request<Incoming>, max: usize) -> Result<Bytes, Response> {
    match Limited::new(req.into_body(), max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds the admin API's limit of {max} bytes"),
        )),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        )),
    }
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Response {
    let mut r = http::Response::new(full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

pub(crate) fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut r = http::Response::new(full(Bytes::from(body)));
            *r.status_mut() = status;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {e}"),
        ),
    }
}

pub(crate) fn error(status: StatusCode, message: String) -> Response {
    let body = serde_json::to_vec(&ErrorBody { error: message }).unwrap_or_default();
    let mut r = http::Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
