//! One invocation, in three steps that every path shares:
//!
//! 1. **admit** ([`Node::handle`]): route, head and body size, node and function
//!    concurrency; then `Call`, the invocation's id, trace and metrics, made once.
//! 2. **run**: a fresh 0.2 sandbox in one task (`fresh.rs`), or a reused instance from
//!    the deployment's pool (`Node::run_pooled` here, over [`super::pool`]: every 0.3
//!    handler, and 0.2 handlers with `[instances] reuse`); an event delivery runs in
//!    `deliver.rs` under the same sandbox rules.
//! 3. **settle**: the response head goes out at once with the invocation headers; its
//!    body's end waits until the events the guest published are on the bus and the
//!    invocation is counted (`Node::answered`); a failure becomes an answer that says
//!    what went wrong (`failed`).

use super::body::{GatedBody, LimitedBody, reply};
use super::pool::{Shared, Ticket};
use super::sandbox::Failure;
use super::{Deployment, Node};
use crate::events::{Bus, Event};
use crate::metrics::{self, FnMetrics, InFlight};
use crate::traces::{Finish, TraceContext};
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use skiff_core::manifest::Size;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;
use wasmtime_wasi_http::handler::{ExpirationError, InstantiationError};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// The response header that names the invocation (its lines in `skiff logs` carry it).
pub const INVOCATION_HEADER: &str = "x-skiff-invocation-id";

/// Responses up to this size (by Content-Length) are written whole, in one go.
pub const ONE_WRITE_BYTES: u64 = 64 << 10;

/// The response type of the function listener.
pub type Response = http::Response<HyperOutgoingBody>;

/// One admitted HTTP invocation: everything about it that does not depend on how it runs.
pub(super) struct Call {
    pub(super) dep: Arc<Deployment>,
    pub(super) invocation: String,
    pub(super) trace: TraceContext,
    pub(super) finish: Finish,
    /// Set when the request body outgrew `[limits] body`.
    pub(super) exceeded: Arc<AtomicBool>,
    /// Node and function slots, held until the invocation is settled.
    pub(super) permits: [OwnedSemaphorePermit; 2],
    pub(super) deadline: Instant,
}

impl Node {
    /// Serves one request on the function listener.
    pub async fn handle(&self, req: http::Request<Incoming>) -> Response {
        let started = Instant::now();
        // hyper bounds the head only while it is still arriving; a head read in one go can
        // exceed its buffer, so measure it exactly here.
        if head_size(&req) > self.limits.max_header_bytes {
            self.metrics.rejected("", "headers");
            return reply(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "request headers exceed this server's limit of {}; send fewer or smaller headers",
                    Size(self.limits.max_header_bytes as u64)
                ),
            );
        }
        let snapshot = self.snapshot();
        let Some(dep) = snapshot.lookup(req.uri().path()).cloned() else {
            // A cluster node that just let a function go may still get a request the
            // scheduler routed by an older report: nothing ran, so it may go elsewhere.
            if self.is_cluster() {
                let mut r = reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "node `{}` does not host what serves `{}` (any more); the scheduler sends it to a node that does",
                        self.name(),
                        req.uri().path()
                    ),
                );
                r.headers_mut().insert(
                    skiff_core::report::REJECTED_HEADER,
                    HeaderValue::from_static("not-hosted"),
                );
                return r;
            }
            // What is deployed is the operator's to know, not every client's: the CLI
            // and the admin API name it.
            return reply(
                StatusCode::NOT_FOUND,
                format!(
                    "no function serves `{}`; `skiff ls` lists the deployed functions and their routes",
                    req.uri().path()
                ),
            );
        };
        drop(snapshot);
        let name = &dep.record.name;
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > dep.spec.limits.body) {
            self.metrics.rejected(name, "body");
            return too_large(&dep);
        }
        let Ok(node_permit) = self.slots.clone().try_acquire_owned() else {
            self.metrics.rejected(name, "capacity");
            return busy(format!(
                "node is at capacity ({} invocations running); retry shortly",
                self.limits.node_concurrency
            ));
        };
        let Ok(fn_permit) = dep.slots.clone().try_acquire_owned() else {
            self.metrics.rejected(name, "concurrency");
            return busy(format!(
                "function `{name}` is at its concurrency limit ({}); retry shortly",
                dep.spec.limits.concurrency
            ));
        };
        let invocation = crate::ids::random_id();
        let traceparent = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok());
        let trace = TraceContext::continue_or_start(traceparent, &invocation);
        let finish = self.finish(
            &dep,
            metrics::HTTP,
            req.uri().path(),
            trace.clone(),
            started,
        );
        let exceeded = Arc::new(AtomicBool::new(false));
        let req = req.map(|b| LimitedBody::new(b, dep.spec.limits.body, exceeded.clone()));
        let call = Call {
            deadline: started + dep.spec.limits.timeout,
            dep,
            invocation,
            trace,
            finish,
            exceeded,
            permits: [node_permit, fn_permit],
        };
        if call.dep.pool.is_some() {
            self.run_pooled(call, req).await
        } else {
            self.run_fresh(call, req).await
        }
    }

    /// Invocations the node could start now.
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// Hands the request to the deployment's pool of reused instances.
    async fn run_pooled(&self, call: Call, req: http::Request<LimitedBody>) -> Response {
        let Some(pool) = call.dep.pool.as_ref() else {
            return reply(StatusCode::INTERNAL_SERVER_ERROR, "no pool".into());
        };
        let ticket = Ticket::new(call.deadline, call.trace.traceparent());
        let req = req.map(BodyExt::boxed_unsync);
        let in_flight = InFlight::of(&call.dep.metrics);
        // The pool's own expiry answers at the deadline; this bounds a worker stuck
        // where the pool cannot see it.
        let limit = tokio::time::Instant::from_std(call.deadline + Duration::from_secs(2));
        let answer = tokio::time::timeout_at(limit, pool.handle(ticket.clone(), req)).await;
        let shared = ticket.instance().cloned();
        if call.exceeded.load(Ordering::Relaxed) {
            self.metrics.rejected(&call.dep.record.name, "body");
            if let Some(s) = &shared {
                s.outbox.take();
            }
            return too_large(&call.dep);
        }
        let resp = match answer {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                let failure = pooled_failure(&e, shared.as_deref()).await;
                if let Some(s) = &shared {
                    s.outbox.take();
                    s.logs.emit(
                        &self.logs,
                        &call.dep.spec.function,
                        call.dep.spec.version,
                        &call.invocation,
                    );
                }
                call.finish.done(failure.label());
                return failed(&call.dep, failure);
            }
            Err(_) => {
                if let Some(s) = &shared {
                    s.retire();
                }
                call.finish.done(Failure::Timeout.label());
                return failed(&call.dep, Failure::Timeout);
            }
        };
        let Some(shared) = shared else {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the instance was lost".into(),
            );
        };
        let head = Head::new(&call.dep, &call.invocation, &call.trace);
        let deadline = call.deadline;
        let settle = Settle {
            publish: !resp.status().is_server_error(),
            call,
            shared,
            bus: self.bus.clone(),
            logs: self.logs.clone(),
            _in_flight: in_flight,
            done: false,
        };
        let gate: super::body::Gate = Box::pin(settle.run());
        self.answered(head, resp, gate, Some(deadline)).await
    }

    /// The guest handed back a response head: send it on with the invocation headers,
    /// and complete its body only once `gate` (the settlement) opens.
    pub(super) async fn answered(
        &self,
        head: Head,
        resp: http::Response<HyperOutgoingBody>,
        gate: super::body::Gate,
        deadline: Option<Instant>,
    ) -> Response {
        let (mut parts, body) = resp.into_parts();
        let function = head.apply(&mut parts.headers);
        let length = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = GatedBody::new(body, length, gate, deadline);
        if length.is_some_and(|n| n <= ONE_WRITE_BYTES) {
            // A small answer goes out in one write: its end waits for the invocation
            // anyway, and a head flushed alone costs a second TCP segment (a fifth of the
            // CPU of a hello-world, measured). It also turns a failure mid-body into a
            // clean 500.
            return match body.collect().await {
                Ok(whole) => http::Response::from_parts(
                    parts,
                    Full::new(whole.to_bytes())
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                ),
                Err(e) => {
                    let mut r = reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("function `{function}` failed while writing its answer: {e}"),
                    );
                    // The failure keeps the invocation's ids, so that it can be traced.
                    for name in Head::NAMES {
                        if let Some(v) = parts.headers.remove(name) {
                            r.headers_mut().insert(name, v);
                        }
                    }
                    r
                }
            };
        }
        http::Response::from_parts(parts, body.boxed_unsync())
    }
}

/// The headers every answer of an invocation carries.
pub(super) struct Head {
    function: String,
    version: HeaderValue,
    invocation: Option<HeaderValue>,
    trace: Option<HeaderValue>,
}

impl Head {
    /// The headers it sets.
    const NAMES: [&'static str; 3] = [
        "x-skiff-version",
        INVOCATION_HEADER,
        crate::traces::TRACE_HEADER,
    ];

    pub(super) fn new(dep: &Deployment, invocation: &str, trace: &TraceContext) -> Head {
        Head {
            function: dep.record.name.clone(),
            version: HeaderValue::from(dep.record.version),
            invocation: HeaderValue::from_str(invocation).ok(),
            trace: HeaderValue::from_str(&trace.trace_id).ok(),
        }
    }

    /// Sets the headers; returns the function's name.
    fn apply(self, headers: &mut http::HeaderMap) -> String {
        headers.insert("x-skiff-version", self.version);
        if let Some(v) = self.invocation {
            headers.insert(INVOCATION_HEADER, v);
        }
        if let Some(v) = self.trace {
            headers.insert(crate::traces::TRACE_HEADER, v);
        }
        self.function
    }
}

/// The answer to an invocation that ended without one: what went wrong.
pub(super) fn failed(dep: &Deployment, failure: Failure) -> Response {
    reply(failure.status(), failure.describe(&dep.spec))
}

/// Publishes an invocation's events if it answered below 500; the outcome label says
/// whether the invocation as a whole succeeded.
pub(super) async fn settle_events(
    bus: &dyn Bus,
    metrics: &FnMetrics,
    outbox: Vec<Event>,
    publish: bool,
) -> (Result<(), String>, &'static str) {
    if !publish {
        return (Ok(()), "error");
    }
    if outbox.is_empty() {
        return (Ok(()), "ok");
    }
    let n = outbox.len() as u64;
    match bus.publish(outbox).await {
        Ok(()) => {
            metrics.published.inc_by(n);
            (Ok(()), "ok")
        }
        Err(e) => (Err(e.to_string()), "error"),
    }
}

/// The settlement of a pooled request, run when the guest's body is complete: its
/// instance's events go to the bus, its output to the log, and it is counted. Dropped
/// unrun (the body failed, timed out, or the client left), it discards the events and
/// counts the failure. With `[instances] concurrency` above 1, an instance's events and
/// output between two settlements are settled with whichever request ends first.
struct Settle {
    call: Call,
    shared: Arc<Shared>,
    publish: bool,
    bus: Arc<dyn Bus>,
    logs: Arc<crate::logs::LogStore>,
    _in_flight: InFlight,
    done: bool,
}

impl Settle {
    async fn run(mut self) -> Result<(), String> {
        let outbox = self.shared.outbox.take();
        let (result, outcome) =
            settle_events(&*self.bus, &self.call.dep.metrics, outbox, self.publish).await;
        self.emit();
        self.call.finish.done(outcome);
        self.done = true;
        result
    }

    fn emit(&self) {
        let spec = &self.call.dep.spec;
        self.shared.logs.emit(
            &self.logs,
            &spec.function,
            spec.version,
            &self.call.invocation,
        );
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let dropped = self.shared.outbox.take().len();
        if dropped > 0 {
            tracing::warn!(function = %self.call.dep.spec.function, dropped, "events of an unfinished invocation discarded");
        }
        self.emit();
        let outcome = if Instant::now() >= self.call.deadline {
            self.shared.retire();
            "timeout"
        } else {
            "error"
        };
        self.call.finish.done(outcome);
    }
}

/// Why the pool gave no response.
async fn pooled_failure(e: &wasmtime::Error, shared: Option<&Shared>) -> Failure {
    if e.downcast_ref::<ExpirationError>().is_some() {
        if let Some(s) = shared {
            s.retire();
        }
        return Failure::Timeout;
    }
    if let Some(i) = e.downcast_ref::<InstantiationError<Arc<Ticket>>>() {
        return Failure::Trap(format!("its instance could not start: {:#}", i.error));
    }
    // The worker ended with the request unanswered: ask the instance why.
    let reason = match shared {
        Some(s) => s.failure(Duration::from_millis(500)).await,
        None => None,
    };
    // Which of its requests a trap came from cannot be told: each gets the same answer.
    match reason {
        Some(Failure::Trap(why)) => Failure::Instance(why),
        Some(Failure::Instance(_)) | None => Failure::Instance(format!("{e:#}")),
        Some(f) => f,
    }
}

/// Counts a new sandbox and how long it took to instantiate.
pub(super) fn observe_instantiation(m: &FnMetrics, started: Instant) {
    m.instantiation.observe(started.elapsed().as_secs_f64());
    m.created.inc();
}

fn busy(message: String) -> Response {
    let mut r = reply(StatusCode::SERVICE_UNAVAILABLE, message);
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    // Nothing ran: the scheduler may safely send the request to another node.
    r.headers_mut().insert(
        skiff_core::report::REJECTED_HEADER,
        HeaderValue::from_static("capacity"),
    );
    r
}

pub(super) fn too_large(dep: &Deployment) -> Response {
    reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "request body is larger than function `{}` accepts ({}); send less or raise [limits] body",
            dep.record.name,
            Size(dep.spec.limits.body)
        ),
    )
}

/// Bytes of the request head as it came over the wire: request line and header lines.
fn head_size(req: &http::Request<Incoming>) -> usize {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + " HTTP/1.1\r\n".len()
        + 1;
    req.headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
}
