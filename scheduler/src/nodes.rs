//! The scheduler talking to its nodes' admin APIs: picking a live node, forwarding a call
//! as it came, and gathering logs and traces from every node.

use crate::shared::Scheduler;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use skiff_core::api::{DEFAULT_LOG_TAIL, LogLine, MAX_SPANS, Span};
use skiff_core::cluster_token;
use skiff_core::http::{AdminBody, Response, error, full, json};
use skiff_core::report::{NodeReport, NodeState};
use std::time::{Duration, Instant};

impl Scheduler {
    pub(crate) fn up_nodes(&self) -> Vec<NodeReport> {
        self.live
            .snapshot(Instant::now())
            .into_iter()
            .map(|(r, _, _)| r)
            .filter(|r| r.state == NodeState::Up)
            .collect()
    }

    /// The admin URL of a live node (one serving `function`, when given).
    pub(crate) fn node_for(&self, function: Option<&str>) -> Option<String> {
        self.up_nodes()
            .into_iter()
            .find(|r| function.is_none_or(|f| r.functions.iter().any(|s| s.name == f)))
            .map(|r| r.admin)
    }

    /// `req` with what a node asks of its scheduler: the admin token and the cluster
    /// token, where this scheduler has them.
    fn to_node(&self, mut req: http::request::Builder) -> http::request::Builder {
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(t) = &self.cluster_token {
            req = req.header(cluster_token::HEADER, t.header_value());
        }
        req
    }

    /// One admin call to a node, with this scheduler's tokens; the body of a 2xx answer.
    pub(crate) async fn call(
        &self,
        admin: &str,
        method: Method,
        path_and_query: &str,
        body: Bytes,
    ) -> Result<Bytes, (StatusCode, String)> {
        let req = self.to_node(
            http::Request::builder()
                .method(method)
                .uri(format!("{admin}{path_and_query}")),
        );
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
            let message = serde_json::from_slice::<skiff_core::api::ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            Err((status, message))
        }
    }

    /// Sends `req` to a node's admin API as it came and streams the answer back.
    pub(crate) async fn forward(&self, admin: &str, req: http::Request<Incoming>) -> Response {
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
            if k != http::header::HOST && k != cluster_token::HEADER {
                out = out.header(k, v);
            }
        }
        if let Some(t) = &self.cluster_token {
            out = out.header(cluster_token::HEADER, t.header_value());
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
    pub(crate) async fn gather_logs(&self, req: http::Request<Incoming>) -> Response {
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
                let req = self.to_node(
                    http::Request::builder()
                        .method(Method::GET)
                        .uri(format!("{}{path}", n.admin)),
                );
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
            .unwrap_or(DEFAULT_LOG_TAIL);
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
                        let ts = serde_json::from_str::<LogLine>(l)
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
    pub(crate) async fn gather_trace(&self, id: &str, req: http::Request<Incoming>) -> Response {
        let path = req.uri().path().to_string();
        let nodes = self.up_nodes();
        let calls = nodes
            .iter()
            .map(|n| self.call(&n.admin, Method::GET, &path, Bytes::new()));
        let mut spans: Vec<Span> = Vec::new();
        for body in futures::future::join_all(calls).await.into_iter().flatten() {
            if let Ok(mut s) = serde_json::from_slice::<Vec<Span>>(&body) {
                spans.append(&mut s);
            }
        }
        if spans.is_empty() {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "no live node knows trace `{id}` (each keeps its newest {} spans); trace ids come back in the x-skiff-trace-id response header",
                    MAX_SPANS
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
