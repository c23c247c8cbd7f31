//! Traces through workflows: every invocation is a span of a W3C trace. An HTTP request's
//! `traceparent` is continued (else a trace starts), events carry the `traceparent` of
//! the invocation that published them, and the invocations they trigger join that trace.
//! The node keeps the newest [`MAX_SPANS`] spans; `skiff trace ID` shows one trace's chain.

pub use skiff_core::api::{MAX_SPANS, Span};
use std::collections::VecDeque;
use std::sync::Mutex;

/// The response header naming the trace.
pub const TRACE_HEADER: &str = "x-skiff-trace-id";

/// Where an invocation sits in its trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits: this invocation.
    pub span_id: String,
    /// The span that caused it, if any.
    pub parent: Option<String>,
}

impl TraceContext {
    /// Continues `traceparent` (`00-<trace>-<span>-<flags>`) if it is valid, else starts a
    /// new trace. `invocation` (32 hex digits) provides the span id.
    pub fn continue_or_start(traceparent: Option<&str>, invocation: &str) -> TraceContext {
        let span_id = invocation[..16.min(invocation.len())].to_string();
        if let Some((trace_id, parent)) = traceparent.and_then(parse_traceparent) {
            return TraceContext {
                trace_id,
                span_id,
                parent: Some(parent),
            };
        }
        TraceContext {
            trace_id: crate::ids::random_id(),
            span_id,
            parent: None,
        }
    }

    /// The `traceparent` value that makes this invocation the parent.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0')
}

/// (trace id, parent span id) of a valid version-00 `traceparent`.
pub fn parse_traceparent(v: &str) -> Option<(String, String)> {
    let mut parts = v.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00"
        || parts.next().is_some()
        || !is_hex(trace, 32)
        || !is_hex(span, 16)
        || flags.len() != 2
    {
        return None;
    }
    Some((trace.to_ascii_lowercase(), span.to_ascii_lowercase()))
}

/// Shards of the span store: a span goes to its trace's shard, so that concurrent
/// invocations rarely meet on a lock and a trace is read from one shard.
const SHARDS: usize = 16;

/// The node's recent spans (the newest [`MAX_SPANS`], kept per shard).
pub struct TraceStore {
    shards: [Mutex<VecDeque<Span>>; SHARDS],
    /// Where finished spans are also sent (an OTLP exporter), if anywhere.
    export: std::sync::OnceLock<tokio::sync::mpsc::Sender<Span>>,
}

impl Default for TraceStore {
    fn default() -> Self {
        TraceStore {
            shards: std::array::from_fn(|_| Mutex::new(VecDeque::new())),
            export: std::sync::OnceLock::new(),
        }
    }
}

impl TraceStore {
    /// Also sends every finished span to `exporter` (see [`crate::otlp`]).
    pub fn export_to(&self, exporter: tokio::sync::mpsc::Sender<Span>) {
        let _ = self.export.set(exporter);
    }

    fn shard(&self, trace_id: &str) -> std::sync::MutexGuard<'_, VecDeque<Span>> {
        // Trace ids are random hex: their last digit spreads them evenly.
        let i = trace_id
            .bytes()
            .last()
            .map_or(0, |b| usize::from(b) % SHARDS);
        match self.shards[i].lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Records a finished span.
    pub fn record(&self, span: Span) {
        if let Some(tx) = self.export.get() {
            // A slow collector must never slow invocations: when the exporter's queue is
            // full the span is kept here only (the exporter counts what it missed).
            let _ = tx.try_send(span.clone());
        }
        let mut spans = self.shard(&span.trace_id);
        if spans.len() >= MAX_SPANS / SHARDS {
            spans.pop_front();
        }
        spans.push_back(span);
    }

    /// The latest `limit` spans of `function`, newest first.
    pub fn recent(&self, function: &str, limit: usize) -> Vec<Span> {
        let mut out: Vec<Span> = Vec::new();
        for shard in &self.shards {
            let spans = shard.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(spans.iter().filter(|s| s.function == function).cloned());
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.start_ms));
        out.truncate(limit);
        out
    }

    /// The spans of `trace_id`, by start time.
    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        let spans = self.shard(trace_id);
        let mut out: Vec<Span> = spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        out.sort_by_key(|s| s.start_ms);
        out
    }
}

/// Records how one invocation ended: its metrics and its span.
#[derive(Clone)]
pub struct Finish {
    /// The function's metric handles.
    pub metrics: crate::metrics::FnMetrics,
    /// The node's spans.
    pub traces: std::sync::Arc<TraceStore>,
    /// The node's name.
    pub node: String,
    /// The function.
    pub function: String,
    /// `http` or `event`.
    pub kind: &'static str,
    /// The path or topic.
    pub detail: String,
    /// Its place in the trace.
    pub trace: TraceContext,
    /// When it started.
    pub started: std::time::Instant,
    /// When it started, ms since the Unix epoch.
    pub start_ms: u64,
}

impl Finish {
    /// Counts the invocation and records its span.
    pub fn done(&self, outcome: &str) {
        let took = self.started.elapsed();
        self.metrics.invocation(self.kind, outcome, took);
        self.traces.record(Span {
            trace_id: self.trace.trace_id.clone(),
            span_id: self.trace.span_id.clone(),
            parent: self.trace.parent.clone(),
            function: self.function.clone(),
            trigger: format!("{} {}", self.kind, self.detail),
            outcome: outcome.to_string(),
            start_ms: self.start_ms,
            duration_us: took.as_micros() as u64,
            node: self.node.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_bad_ones_start_a_trace() {
        let inv = "0123456789abcdef0123456789abcdef";
        let root = TraceContext::continue_or_start(None, inv);
        assert_eq!(root.trace_id.len(), 32);
        assert_eq!(root.span_id, "0123456789abcdef");
        let child = TraceContext::continue_or_start(
            Some(&root.traceparent()),
            "fedcba9876543210fedcba9876543210",
        );
        assert_eq!(child.trace_id, root.trace_id);
        assert_eq!(child.parent.as_deref(), Some("0123456789abcdef"));
        for bad in [
            "",
            "01-x-y-01",
            "00-00000000000000000000000000000000-0123456789abcdef-01",
            "00-abc-def-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
            assert!(
                TraceContext::continue_or_start(Some(bad), inv)
                    .parent
                    .is_none()
            );
        }
    }
}
