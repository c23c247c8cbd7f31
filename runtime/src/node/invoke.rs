//! One invocation, in three steps that every path shares:
//!
//! 1. **admit** ([`Node::handle`]): route, head and body size, node and function
//!    concurrency; then [`Call`], the invocation's id, trace and metrics, made once.
//! 2. **run**: a fresh 0.2 sandbox in one task ([`Node::run_fresh`]), or a reused
//!    instance from the deployment's pool ([`Node::run_pooled`], every 0.3 handler and
//!    0.2 handlers with `[instances] reuse`), or an event delivery ([`Node::invoke_event`]).
//! 3. **settle**: the response head goes out at once with the invocation headers; its
//!    body's end waits until the events the guest published are on the bus and the
//!    invocation is counted ([`Node::answered`]); a failure becomes an answer that says
//!    what went wrong ([`Node::failed`]).

use super::body::{GatedBody, LimitedBody, gate, reply};
use super::pool::{Shared, Ticket};
use super::sandbox::{Failure, classify, new_store};
use super::{Deployment, Node};
use crate::events::{Bus, Event};
use crate::host::InstanceState;
use crate::host::bindings::skiff::function::events as wit_events;
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
use wasmtime::Store;
use wasmtime::component::Resource;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::{ExpirationError, InstantiationError, ProxyPre};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};

/// The response header that names the invocation (its lines in `skiff logs` carry it).
pub const INVOCATION_HEADER: &str = "x-skiff-invocation-id";

/// Responses up to this size (by Content-Length) are written whole, in one go.
pub const ONE_WRITE_BYTES: u64 = 64 << 10;

/// The response type of the function listener.
pub type Response = http::Response<HyperOutgoingBody>;

/// One admitted HTTP invocation: everything about it that does not depend on how it runs.
struct Call {
    dep: Arc<Deployment>,
    invocation: String,
    trace: TraceContext,
    finish: Finish,
    /// Set when the request body outgrew `[limits] body`.
    exceeded: Arc<AtomicBool>,
    /// Node and function slots, held until the invocation is settled.
    permits: [OwnedSemaphorePermit; 2],
    deadline: Instant,
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
            return reply(
                StatusCode::NOT_FOUND,
                format!(
                    "no function serves `{}`; deployed: {}",
                    req.uri().path(),
                    snapshot.names()
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

    /// Runs a 0.2 handler in a fresh sandbox, in its own task (so that it can keep
    /// writing the body after it handed back the head).
    async fn run_fresh(&self, call: Call, req: http::Request<LimitedBody>) -> Response {
        let pre = match self.code.get(&call.dep.code).await {
            Ok(linked) => match &linked.http {
                Some(ProxyPre::P2(pre)) => pre.clone(),
                _ => {
                    return reply(
                        StatusCode::NOT_FOUND,
                        format!("function `{}` does not handle HTTP", call.dep.record.name),
                    );
                }
            },
            Err(e) => {
                return reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "cannot load function `{}`: {e}; redeploy it",
                        call.dep.record.name
                    ),
                );
            }
        };
        let started = call.finish.started;
        let mut store = new_store(
            self.engine.engine(),
            &call.dep.spec,
            started,
            None,
            call.trace.traceparent(),
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        let prepared = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .and_then(|r| {
                let out = store.data_mut().http().new_response_outparam(tx)?;
                Ok((r, out))
            });
        let (request, outparam) = match prepared {
            Ok(p) => p,
            Err(e) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    format!("cannot pass the request to the function: {e}"),
                );
            }
        };
        let Call {
            dep,
            invocation,
            trace,
            finish,
            exceeded,
            permits,
            deadline: _,
        } = call;
        let (answered_tx, answered_rx) = tokio::sync::oneshot::channel();
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel();
        let task = spawn_guest(Guest {
            store,
            pre,
            request,
            outparam,
            permits,
            dep: dep.clone(),
            node: self.settling(),
            finish,
            invocation: invocation.clone(),
            answered: answered_rx,
            gate: gate_tx,
        });
        let answer = rx.await;
        if exceeded.load(Ordering::Relaxed) {
            self.metrics.rejected(&dep.record.name, "body");
            return too_large(&dep);
        }
        match answer {
            Ok(Ok(resp)) => {
                // The guest task settles the invocation (publishes its events, counts
                // it) once it ends, even if the client goes away first.
                let _ = answered_tx.send(!resp.status().is_server_error());
                let head = Head::new(&dep, &invocation, &trace);
                self.answered(head, resp, gate(gate_rx), None).await
            }
            Ok(Err(code)) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "function `{}` answered with an error: {code:?}",
                    dep.record.name
                ),
            ),
            Err(_) => {
                drop(answered_tx);
                let failure = match task.await {
                    Ok(Ok(())) => Failure::NoResponse,
                    Ok(Err(f)) => f,
                    Err(e) => Failure::Trap(format!("the invocation task ended: {e}")),
                };
                failed(&dep, failure)
            }
        }
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
    async fn answered(
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
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("function `{function}` failed while writing its answer: {e}"),
                ),
            };
        }
        http::Response::from_parts(parts, body.boxed_unsync())
    }

    /// Runs `dep`'s event handler on one delivery; returns the events it published, or
    /// why it failed.
    pub async fn invoke_event(
        &self,
        dep: &Arc<Deployment>,
        event: &Event,
        attempt: u32,
    ) -> Result<Vec<Event>, String> {
        let linked = self
            .code
            .get(&dep.code)
            .await
            .map_err(|e| format!("cannot load function `{}`: {e}", dep.record.name))?;
        let Some(pre) = linked.handler.clone() else {
            return Err(format!(
                "function `{}` no longer handles events",
                dep.record.name
            ));
        };
        let _permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "the node is stopping".to_string())?;
        let started = Instant::now();
        let invocation = crate::ids::random_id();
        let traceparent = event
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
            .map(|(_, v)| v.as_str());
        let trace = TraceContext::continue_or_start(traceparent, &invocation);
        let finish = self.finish(dep, metrics::EVENT, &event.topic, trace.clone(), started);
        let _in_flight = InFlight::of(&dep.metrics);
        let deadline = started + dep.spec.limits.timeout;
        let wit_event = wit_events::Event {
            id: event.id.clone(),
            topic: event.topic.clone(),
            data: event.data.clone(),
            headers: event.headers.clone(),
            attempt,
        };
        let reused = dep.events.take();
        let served = reused.as_ref().map_or(0, |i| i.served);
        let (mut store, guest) = match reused {
            Some(mut idle) => {
                idle.store
                    .data_mut()
                    .begin_delivery(deadline, &event.id, trace.traceparent());
                dep.metrics.reused.inc();
                (idle.store, Some(idle.guest))
            }
            None => (
                new_store(
                    self.engine.engine(),
                    &dep.spec,
                    started,
                    Some(&event.id),
                    trace.traceparent(),
                ),
                None,
            ),
        };
        let run = async {
            let guest = match guest {
                Some(g) => g,
                None => {
                    let t = Instant::now();
                    let g = pre.instantiate_async(&mut store).await?;
                    observe_instantiation(&dep.metrics, t);
                    g
                }
            };
            let r = guest
                .skiff_function_event_handler()
                .call_handle(&mut store, &wit_event)
                .await?;
            Ok::<_, wasmtime::Error>((r, guest))
        };
        let outcome = match tokio::time::timeout_at(deadline.into(), run).await {
            Ok(Ok((Ok(()), guest))) => Ok(guest),
            Ok(Ok((Err(msg), _))) => Err(Failure::Handler(msg)),
            Ok(Err(e)) => Err(classify(&e, store.data())),
            Err(_) => Err(Failure::Timeout),
        };
        store.data().logs.emit(
            &self.logs,
            &dep.spec.function,
            dep.spec.version,
            &invocation,
        );
        finish.done(outcome.as_ref().err().map_or("ok", Failure::label));
        match outcome {
            Ok(guest) => {
                let published = store.data().caps.events.outbox.take();
                // Ready for the next delivery (or dropped, past its quota).
                store.data_mut().deadline = Instant::now();
                dep.events
                    .give_back(super::event_pool::Idle::new(store, guest, served + 1));
                Ok(published)
            }
            Err(f) => {
                self.metrics.retired(&dep.record.name, f.label());
                Err(f.describe(&dep.spec))
            }
        }
    }
}

/// The headers every answer of an invocation carries.
struct Head {
    function: String,
    version: HeaderValue,
    invocation: Option<HeaderValue>,
    trace: Option<HeaderValue>,
}

impl Head {
    fn new(dep: &Deployment, invocation: &str, trace: &TraceContext) -> Head {
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
fn failed(dep: &Deployment, failure: Failure) -> Response {
    reply(failure.status(), failure.describe(&dep.spec))
}

/// What a guest task needs of the node to settle its invocation.
#[derive(Clone)]
struct Settling {
    bus: Arc<dyn Bus>,
    logs: Arc<crate::logs::LogStore>,
}

impl Node {
    fn settling(&self) -> Settling {
        Settling {
            bus: self.bus.clone(),
            logs: self.logs.clone(),
        }
    }
}

/// Publishes an invocation's events if it answered below 500; the outcome label says
/// whether the invocation as a whole succeeded.
async fn settle_events(
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

/// How a fresh guest's run ended (its events are settled by the task itself).
type GuestTask = tokio::task::JoinHandle<Result<(), Failure>>;

/// One HTTP invocation's guest, ready to run.
struct Guest {
    store: Store<InstanceState>,
    pre: wasmtime_wasi_http::p2::bindings::ProxyPre<InstanceState>,
    request: Resource<HostIncomingRequest>,
    outparam: Resource<HostResponseOutparam>,
    permits: [OwnedSemaphorePermit; 2],
    dep: Arc<Deployment>,
    node: Settling,
    finish: Finish,
    invocation: String,
    /// Whether the guest's answer allows its events (below 500); closed when it gave none.
    answered: tokio::sync::oneshot::Receiver<bool>,
    /// Opens the answer's body once the invocation is settled.
    gate: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Runs the guest in the one task its request spawns: it keeps streaming the body after
/// the response head has been handed back, then settles the invocation; the permits live
/// exactly as long as it runs.
fn spawn_guest(g: Guest) -> GuestTask {
    let Guest {
        mut store,
        pre,
        request,
        outparam,
        permits,
        dep,
        node,
        finish,
        invocation,
        answered,
        gate,
    } = g;
    let deadline = tokio::time::Instant::from_std(store.data().deadline);
    tokio::spawn(async move {
        let _permits = permits;
        let _in_flight = InFlight::of(&dep.metrics);
        let run = async {
            let t = Instant::now();
            let proxy = pre.instantiate_async(&mut store).await?;
            observe_instantiation(&dep.metrics, t);
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, request, outparam)
                .await
        };
        let outcome = match tokio::time::timeout_at(deadline, run).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(classify(&e, store.data())),
            Err(_) => Err(Failure::Timeout),
        };
        let spec = &dep.spec;
        store
            .data()
            .logs
            .emit(&node.logs, &spec.function, spec.version, &invocation);
        if let Err(f) = &outcome {
            tracing::warn!(function = %spec.function, version = spec.version, failure = ?f, "invocation failed");
        }
        let outbox = store.data().caps.events.outbox.take();
        // Dropping the store drops the response outparam: a guest that never answered
        // is known as such to the request now.
        drop(store);
        let label = match (answered.await, &outcome) {
            (Ok(publish), Ok(())) => {
                let (result, label) =
                    settle_events(&*node.bus, &dep.metrics, outbox, publish).await;
                let _ = gate.send(result);
                label
            }
            (Ok(_), Err(f)) => {
                let _ = gate.send(Err(format!("{f:?}")));
                f.label()
            }
            (Err(_), Ok(())) => "error",
            (Err(_), Err(f)) => f.label(),
        };
        finish.done(label);
        outcome
    })
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

fn too_large(dep: &Deployment) -> Response {
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
