//! The scheduler's front door: route → function → node (by [`crate::placement`]) → proxy.
//!
//! Requests are forwarded over pooled keep-alive HTTP/1.1 connections and responses are
//! streamed back with `x-skiff-node` naming the node that served them.
//!
//! **When a retry is safe.** The request body is read (up to the body limit) before it is
//! sent, so it can be sent again. A request is retried on another node only when the first
//! node certainly did not run the function:
//! * the connection could not be opened (refused, unreachable, connect timeout): nothing
//!   was sent;
//! * the node answered `503` with `x-skiff-rejected` (at capacity, at the function's
//!   concurrency limit, or draining): it refused before instantiating anything.
//!
//! A failure after the request was sent (a reset, a node killed mid-request) is not retried,
//! because the function may have run and a retry could apply its effects twice; the client
//! gets `502` and decides. A node cut off by a partition sends no reset: a request it holds
//! fails with `502` as soon as the node leaves the live set, instead of hanging.

use crate::live::{LiveSet, NoTarget, Placement, Target};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use skiff_core::cluster_token::{self, ClusterToken};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use skiff_core::report::{NODE_HEADER, REJECTED_HEADER};

/// The body of a gateway response.
pub type GatewayBody = BoxBody<Bytes, hyper::Error>;

/// How long a node that refused a connection is left out of placement.
const AVOID_FOR: Duration = Duration::from_secs(2);

/// Headers that belong to one connection and must not be forwarded.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
];

/// Counts of what the gateway did, for metrics.
#[derive(Debug, Default)]
pub struct GatewayCounts {
    /// Requests answered by a node.
    pub proxied: AtomicU64,
    /// Requests sent again to another node after a safe failure.
    pub retried: AtomicU64,
    /// Requests no node could take (503).
    pub unavailable: AtomicU64,
    /// Requests that failed after being sent (502).
    pub failed: AtomicU64,
    /// Requests for a path no function serves (404).
    pub not_found: AtomicU64,
}

/// The scheduler's request path.
pub struct Gateway {
    live: Arc<LiveSet>,
    client: Client<HttpConnector, Full<Bytes>>,
    max_body: u64,
    placement: Placement,
    random: RandomState,
    counter: AtomicU64,
    /// Presented to every node (`--cluster-token-file`), replacing what a client sent.
    cluster_token: Option<ClusterToken>,
    /// What it did.
    pub counts: GatewayCounts,
}

fn reply(status: StatusCode, message: String) -> Response<GatewayBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(message + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl Gateway {
    /// A gateway over `live` that accepts request bodies up to `max_body` bytes and places
    /// requests by `placement`.
    pub fn new(
        live: Arc<LiveSet>,
        max_body: u64,
        placement: Placement,
        cluster_token: Option<ClusterToken>,
    ) -> Gateway {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        Gateway {
            live,
            client,
            max_body,
            placement,
            random: RandomState::new(),
            counter: AtomicU64::new(0),
            cluster_token,
            counts: GatewayCounts::default(),
        }
    }

    fn random(&self) -> u64 {
        self.random
            .hash_one(self.counter.fetch_add(1, Ordering::Relaxed))
    }

    /// Serves one request from a client.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<GatewayBody> {
        let path = req.uri().path().to_string();
        let Some(function) = self.live.function_for(&path) else {
            return self.not_found(&path);
        };
        let (mut parts, body) = req.into_parts();
        let body = match self.buffer(body).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        for h in HOP_BY_HOP {
            parts.headers.remove(h);
        }
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let mut tried: Vec<String> = Vec::new();
        loop {
            let target = match self.live.pick(
                &function,
                &tried,
                Instant::now(),
                self.placement,
                match self.placement {
                    Placement::PowerOfTwo => self.random(),
                    Placement::RoundRobin => self.counter.fetch_add(1, Ordering::Relaxed),
                },
                self.random(),
            ) {
                Ok(t) => t,
                Err(NoTarget::NoNode(f)) => return self.unavailable(&f, &tried),
            };
            match self
                .send(&target, &parts, &path_and_query, body.clone())
                .await
            {
                Ok(resp) => {
                    let refused = resp.status() == StatusCode::SERVICE_UNAVAILABLE
                        && resp.headers().contains_key(REJECTED_HEADER);
                    if refused {
                        tried.push(target.node.clone());
                        self.counts.retried.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    self.counts.proxied.fetch_add(1, Ordering::Relaxed);
                    return resp;
                }
                Err(Failure::NotSent(e)) => {
                    tracing::warn!(node = %target.node, error = %e, "node refused the connection; trying another");
                    self.live.avoid(&target.node, Instant::now(), AVOID_FOR);
                    tried.push(target.node.clone());
                    self.counts.retried.fetch_add(1, Ordering::Relaxed);
                }
                Err(Failure::AfterSend(e)) => {
                    self.counts.failed.fetch_add(1, Ordering::Relaxed);
                    let mut r = reply(
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "node `{}` failed while serving `{function}` ({e}); the function may have run, so the request was not retried",
                            target.node
                        ),
                    );
                    if let Ok(v) = HeaderValue::from_str(&target.node) {
                        r.headers_mut().insert(NODE_HEADER, v);
                    }
                    return r;
                }
            }
        }
    }

    /// No route matches `path`.
    fn not_found(&self, path: &str) -> Response<GatewayBody> {
        self.counts.not_found.fetch_add(1, Ordering::Relaxed);
        // What is deployed is the operator's to know, not every client's.
        reply(
            StatusCode::NOT_FOUND,
            format!(
                "no function serves `{path}`; `skiff ls` lists the deployed functions and their routes"
            ),
        )
    }

    /// Buffers the request body up to `--max-body`, so that a retry can send it again.
    async fn buffer(&self, body: Incoming) -> Result<Bytes, Response<GatewayBody>> {
        match Limited::new(body, self.max_body as usize).collect().await {
            Ok(b) => Ok(b.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body is larger than the scheduler forwards ({} bytes); send less or raise the scheduler's --max-body",
                    self.max_body
                ),
            )),
            Err(e) => Err(reply(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )),
        }
    }

    /// No node can take `function` (after trying `tried`): 503 with Retry-After.
    fn unavailable(&self, function: &str, tried: &[String]) -> Response<GatewayBody> {
        self.counts.unavailable.fetch_add(1, Ordering::Relaxed);
        let mut r = reply(
            StatusCode::SERVICE_UNAVAILABLE,
            if tried.is_empty() {
                format!(
                    "no live node can take `{function}` now; start one with `skiff node --nats URL` or retry shortly"
                )
            } else {
                format!(
                    "no node could take `{function}`: tried {}; retry shortly",
                    tried.join(", ")
                )
            },
        );
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        r
    }

    async fn send(
        &self,
        target: &Target,
        parts: &http::request::Parts,
        path_and_query: &str,
        body: Bytes,
    ) -> Result<Response<GatewayBody>, Failure> {
        let uri: http::Uri = format!("{}{}", target.url, path_and_query)
            .parse()
            .map_err(|e: http::uri::InvalidUri| Failure::NotSent(e.to_string()))?;
        let mut req = Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .version(http::Version::HTTP_11)
            .body(Full::new(body))
            .map_err(|e| Failure::NotSent(e.to_string()))?;
        *req.headers_mut() = parts.headers.clone();
        req.headers_mut().remove(http::header::HOST);
        // A client never chooses the cluster token: it is this scheduler's, or absent.
        match &self.cluster_token {
            Some(t) => t.stamp(req.headers_mut()),
            None => drop(req.headers_mut().remove(cluster_token::HEADER)),
        }
        target.outstanding.fetch_add(1, Ordering::Relaxed);
        target.sent.fetch_add(1, Ordering::Relaxed);
        let guard = Outstanding(target.outstanding.clone());
        let mut gone = target.gone.clone();
        let resp = tokio::select! {
            resp = self.client.request(req) => resp.map_err(|e| {
                if e.is_connect() {
                    Failure::NotSent(format!("{e}"))
                } else {
                    Failure::AfterSend(format!("{e}"))
                }
            })?,
            // Resolves only when the node left the live set (its sender was dropped).
            _ = gone.changed() => {
                return Err(Failure::AfterSend(
                    "it stopped answering while it held the request (no load report or probe for a second)".into(),
                ));
            }
        };
        let (mut parts, body) = resp.into_parts();
        if let Ok(v) = HeaderValue::from_str(&target.node) {
            parts.headers.insert(NODE_HEADER, v);
        }
        // The outstanding count drops when the response body has been streamed out.
        let body = body
            .map_frame(move |f| {
                let _hold = &guard;
                f
            })
            .boxed();
        Ok(Response::from_parts(parts, body))
    }
}

enum Failure {
    /// Nothing reached the node: safe to retry elsewhere.
    NotSent(String),
    /// The request (or part of it) reached the node.
    AfterSend(String),
}

/// Decrements a node's outstanding count when dropped.
struct Outstanding(Arc<std::sync::atomic::AtomicU32>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
