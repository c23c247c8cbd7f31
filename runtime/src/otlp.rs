//! Export of spans to an OpenTelemetry collector: OTLP over HTTP with JSON encoding
//! (`POST {endpoint}/v1/traces`), which every collector accepts without a protobuf
//! dependency here. Spans are batched (up to [`BATCH`] or every [`FLUSH_EVERY`]); a batch
//! the collector refuses or cannot take is logged and dropped — invocations never wait for
//! the collector, and the node keeps its own copy for `skiff trace`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use skiff_core::api::Span;
use std::time::Duration;
use tokio::sync::mpsc;

/// Spans sent in one request at most.
pub const BATCH: usize = 512;
/// How long a span waits for its batch to fill.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Spans queued for the exporter at most; more are not exported.
const QUEUE: usize = 8192;

/// An endpoint that is not an http:// URL.
#[derive(Debug, thiserror::Error)]
#[error(
    "OTLP endpoint `{0}` is not an http:// URL; pass e.g. --otlp-endpoint http://collector:4318"
)]
pub struct EndpointError(String);

fn string(key: &str, value: &str) -> Value {
    json!({ "key": key, "value": { "stringValue": value } })
}

/// The OTLP JSON request for `spans` of node `node`.
pub fn request_body(spans: &[Span], node: &str) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let start = u128::from(s.start_ms) * 1_000_000;
            let end = start + u128::from(s.duration_us) * 1000;
            let (kind, what) = match s.trigger.split_once(' ') {
                // SERVER for HTTP requests, CONSUMER for event deliveries.
                Some(("event", topic)) => (5, ("skiff.event.topic", topic)),
                Some((_, path)) => (2, ("url.path", path)),
                None => (1, ("skiff.trigger", s.trigger.as_str())),
            };
            let mut span = json!({
                "traceId": s.trace_id,
                "spanId": s.span_id,
                "name": format!("{} {}", s.function, s.trigger),
                "kind": kind,
                "startTimeUnixNano": start.to_string(),
                "endTimeUnixNano": end.to_string(),
                "attributes": [
                    string("skiff.function", &s.function),
                    string("skiff.node", &s.node),
                    string("skiff.outcome", &s.outcome),
                    string(what.0, what.1),
                ],
                // 1 = OK, 2 = ERROR.
                "status": if s.outcome == "ok" {
                    json!({ "code": 1 })
                } else {
                    json!({ "code": 2, "message": s.outcome })
                },
            });
            if let Some(parent) = &s.parent {
                span["parentSpanId"] = json!(parent);
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                string("service.name", "skiff"),
                string("service.instance.id", node),
                string("service.version", env!("CARGO_PKG_VERSION")),
            ]},
            "scopeSpans": [{
                "scope": { "name": "skiff", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }],
    })
}

/// Starts the exporter for node `node`; returns where to send finished spans.
pub fn start(endpoint: &str, node: &str) -> Result<mpsc::Sender<Span>, EndpointError> {
    let base = endpoint.trim_end_matches('/');
    if !base.starts_with("http://") {
        return Err(EndpointError(endpoint.to_string()));
    }
    let url: http::Uri = format!("{base}/v1/traces")
        .parse()
        .map_err(|_| EndpointError(endpoint.to_string()))?;
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(export(rx, url, node.to_string()));
    Ok(tx)
}

async fn export(mut rx: mpsc::Receiver<Span>, url: http::Uri, node: String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // Wait for a first span, then up to FLUSH_EVERY for the batch to fill.
        match rx.recv().await {
            Some(s) => batch.push(s),
            None => return,
        }
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let body = request_body(&batch, &node).to_string();
        let req = http::Request::post(url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        let sent = match req {
            Ok(req) => tokio::time::timeout(Duration::from_secs(10), client.request(req)).await,
            Err(e) => {
                tracing::error!(error = %e, "cannot build an OTLP request");
                batch.clear();
                continue;
            }
        };
        match sent {
            Ok(Ok(resp)) if resp.status().is_success() => {
                let _ = resp.into_body().collect().await;
            }
            Ok(Ok(resp)) => {
                tracing::warn!(status = %resp.status(), spans = batch.len(), %url, "the OTLP collector refused spans; dropped")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, spans = batch.len(), %url, "cannot reach the OTLP collector; spans dropped")
            }
            Err(_) => {
                tracing::warn!(spans = batch.len(), %url, "the OTLP collector did not answer within 10s; spans dropped")
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_become_otlp_json() {
        let span = Span {
            trace_id: "0123456789abcdef0123456789abcdef".into(),
            span_id: "0123456789abcdef".into(),
            parent: Some("fedcba9876543210".into()),
            function: "orders".into(),
            trigger: "event orders.created".into(),
            outcome: "error".into(),
            start_ms: 1_700_000_000_000,
            duration_us: 1500,
            node: "n1".into(),
        };
        let v = request_body(&[span], "n1");
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "0123456789abcdef0123456789abcdef");
        assert_eq!(s["parentSpanId"], "fedcba9876543210");
        assert_eq!(s["kind"], 5);
        assert_eq!(s["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(s["endTimeUnixNano"], "1700000000001500000");
        assert_eq!(s["status"]["code"], 2);
        assert_eq!(
            v["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "skiff"
        );
        assert!(start("grpc://x:4317", "n").is_err());
    }
}
