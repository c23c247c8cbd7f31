//! One invocation: listener → route → limits → instantiate → call → response; and the
//! same sandbox for an event delivery.

use super::body::{GatedBody, LimitedBody, reply};
use super::{Deployment, Node};
use crate::events::Event;
use crate::host::bindings::skiff::function::events as wit_events;
use crate::host::limiter::MemoryLimitExceeded;
use crate::host::{HostLimits, InstanceState};
use crate::metrics::{self, InFlight, Metrics};
use crate::traces::TraceContext;
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use skiff_core::manifest::{Size, Timeout};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::component::Resource;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};

/// The response header that names the invocation (its lines in `skiff logs` carry it).
pub const INVOCATION_HEADER: &str = "x-skiff-invocation-id";

/// Responses up to this size (by Content-Length) are written whole, in one go.
pub const ONE_WRITE_BYTES: u64 = 64 << 10;

/// The response type of the function listener.
pub type Response = http::Response<HyperOutgoingBody>;

/// How an invocation failed.
#[derive(Debug)]
enum Failure {
    MemoryLimit,
    Timeout,
    Trap(String),
    /// An event handler returned `err`.
    Handler(String),
    NoResponse,
}

impl Failure {
    /// The `outcome` label of the invocation counter.
    fn label(&self) -> &'static str {
        match self {
            Failure::MemoryLimit => "memory",
            Failure::Timeout => "timeout",
            Failure::Trap(_) => "trap",
            Failure::Handler(_) | Failure::NoResponse => "error",
        }
    }

    fn describe(&self, dep: &Deployment) -> String {
        let name = &dep.record.name;
        let limits = &dep.spec.limits;
        match self {
            Failure::MemoryLimit => format!(
                "function `{name}` exceeded its memory limit of {}; use less memory or raise [limits] memory",
                Size(limits.memory)
            ),
            Failure::Timeout => format!(
                "function `{name}` did not finish within its timeout of {}; make it faster or raise [limits] timeout",
                Timeout(limits.timeout)
            ),
            Failure::Trap(detail) => {
                format!("function `{name}` failed: {detail}; its output is in the node's log")
            }
            Failure::Handler(msg) => format!("function `{name}`'s event handler failed: {msg}"),
            Failure::NoResponse => {
                format!("function `{name}` returned without setting a response")
            }
        }
    }
}

/// A fresh store for one invocation, with its memory limit and deadline armed.
fn new_store(
    engine: &wasmtime::Engine,
    dep: &Deployment,
    started: Instant,
    cause: Option<&str>,
    trace: &TraceContext,
) -> Store<InstanceState> {
    let mut store = Store::new(
        engine,
        InstanceState::new(&dep.spec, started, cause, trace.traceparent()),
    );
    store.limiter(|s| &mut s.limiter);
    store.set_hostcall_fuel(HostLimits::hostcall_bytes(&dep.spec.limits));
    store.set_max_component_handles(HostLimits::HANDLES);
    // Every epoch tick the guest yields to the executor (so a busy guest cannot starve
    // others on its thread) and is interrupted once past its deadline.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|ctx| {
        if Instant::now() >= ctx.data().deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store
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
        let limit = dep.spec.limits.body;
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
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
        self.invoke_http(dep, req, [node_permit, fn_permit], started)
            .await
    }

    /// Invocations the node could start now.
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    async fn invoke_http(
        &self,
        dep: Arc<Deployment>,
        req: http::Request<Incoming>,
        permits: [OwnedSemaphorePermit; 2],
        started: Instant,
    ) -> Response {
        let pre = match self.code.get(&dep.record.artifact).await {
            Ok(linked) => linked.http.clone(),
            Err(e) => {
                return reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "cannot load function `{}`: {e}; redeploy it",
                        dep.record.name
                    ),
                );
            }
        };
        let Some(pre) = pre else {
            return reply(
                StatusCode::NOT_FOUND,
                format!("function `{}` does not handle HTTP", dep.record.name),
            );
        };
        let invocation = crate::ids::random_id();
        let traceparent = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok());
        let trace = TraceContext::continue_or_start(traceparent, &invocation);
        let finish = self.finish(
            &dep.record.name,
            metrics::HTTP,
            req.uri().path(),
            trace.clone(),
            started,
        );
        let mut store = new_store(self.engine.engine(), &dep, started, None, &trace);
        let exceeded = Arc::new(AtomicBool::new(false));
        let limit = dep.spec.limits.body;
        let req = req.map(|b| LimitedBody::new(b, limit, exceeded.clone()));
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

        let task = spawn_guest(Guest {
            store,
            pre,
            request,
            outparam,
            permits,
            dep: dep.clone(),
            metrics: self.metrics.clone(),
            logs: self.logs.clone(),
            invocation: invocation.clone(),
        });
        let call = Call {
            dep,
            invocation,
            trace,
            finish,
            exceeded,
            task,
        };
        match rx.await {
            Ok(Ok(resp)) => self.answered(call, resp).await,
            Ok(Err(code)) => {
                call.finish.done("error");
                reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "function `{}` answered with an error: {code:?}",
                        call.dep.record.name
                    ),
                )
            }
            Err(_) => self.unanswered(call).await,
        }
    }

    /// The guest handed back a response head: send it on, and complete its body only
    /// once the invocation has (its events are published if it succeeded and answered
    /// below 500, so that a client never sees a complete success whose events were lost).
    async fn answered(&self, call: Call, resp: http::Response<HyperOutgoingBody>) -> Response {
        let Call {
            dep,
            invocation,
            trace,
            finish,
            exceeded,
            task,
        } = call;
        let name = dep.record.name.clone();
        if exceeded.load(Ordering::Relaxed) {
            self.metrics.rejected(&name, "body");
            return too_large(&dep);
        }
        let (mut parts, body) = resp.into_parts();
        parts
            .headers
            .insert("x-skiff-version", HeaderValue::from(dep.record.version));
        if let Ok(v) = HeaderValue::from_str(&invocation) {
            parts.headers.insert(INVOCATION_HEADER, v);
        }
        if let Ok(v) = HeaderValue::from_str(&trace.trace_id) {
            parts.headers.insert(crate::traces::TRACE_HEADER, v);
        }
        let publish = !parts.status.is_server_error();
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel();
        let (bus, metrics) = (self.bus.clone(), self.metrics.clone());
        tokio::spawn(async move {
            let (result, outcome) = match task.await {
                Ok((Ok(()), outbox)) if publish && !outbox.is_empty() => {
                    let n = outbox.len() as u64;
                    let r = bus.publish(outbox).await.map_err(|e| e.to_string());
                    if r.is_ok() {
                        Metrics::count(&metrics.published, &name, n);
                    }
                    (r, "ok")
                }
                Ok((Ok(()), _)) => (Ok(()), if publish { "ok" } else { "error" }),
                Ok((Err(f), _)) => (Err(format!("{f:?}")), f.label()),
                Err(e) => (Err(e.to_string()), "trap"),
            };
            finish.done(outcome);
            let _ = gate_tx.send(result);
        });
        let length = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = GatedBody::new(body, length, gate_rx);
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
                    format!(
                        "function `{}` failed while writing its answer: {e}",
                        dep.record.name
                    ),
                ),
            };
        }
        http::Response::from_parts(parts, body.boxed_unsync())
    }

    /// The guest ended without handing back a response: say why.
    async fn unanswered(&self, call: Call) -> Response {
        let dep = &call.dep;
        if call.exceeded.load(Ordering::Relaxed) {
            self.metrics.rejected(&dep.record.name, "body");
            return too_large(dep);
        }
        let failure = match call.task.await {
            Ok((Ok(()), _)) => Failure::NoResponse,
            Ok((Err(f), _)) => f,
            Err(e) => Failure::Trap(format!("the invocation task ended: {e}")),
        };
        call.finish.done(failure.label());
        let status = match failure {
            Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        reply(status, failure.describe(dep))
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
            .get(&dep.record.artifact)
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
        let finish = self.finish(
            &dep.record.name,
            metrics::EVENT,
            &event.topic,
            trace.clone(),
            started,
        );
        let _in_flight = InFlight::start(&self.metrics, &dep.record.name);
        let mut store = new_store(self.engine.engine(), dep, started, Some(&event.id), &trace);
        let deadline = tokio::time::Instant::from_std(store.data().deadline);
        let wit_event = wit_events::Event {
            id: event.id.clone(),
            topic: event.topic.clone(),
            data: event.data.clone(),
            headers: event.headers.clone(),
            attempt,
        };
        let run = async {
            let t = Instant::now();
            let guest = pre.instantiate_async(&mut store).await?;
            observe_instantiation(&self.metrics, &dep.record.name, t);
            guest
                .skiff_function_event_handler()
                .call_handle(&mut store, &wit_event)
                .await
        };
        let outcome = match tokio::time::timeout_at(deadline, run).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(msg))) => Err(Failure::Handler(msg)),
            Ok(Err(e)) => Err(classify(&e, store.data())),
            Err(_) => Err(Failure::Timeout),
        };
        store.data().logs.emit(
            &self.logs,
            &dep.spec.function,
            dep.spec.version,
            &invocation,
        );
        let label = outcome.as_ref().err().map_or("ok", Failure::label);
        finish.done(label);
        match outcome {
            Ok(()) => Ok(std::mem::take(&mut store.data_mut().caps.events.outbox)),
            Err(f) => Err(f.describe(dep)),
        }
    }
}

/// What a guest run produced: how it ended, and the events it published.
type GuestTask = tokio::task::JoinHandle<(Result<(), Failure>, Vec<Event>)>;

/// One HTTP invocation's guest, ready to run.
struct Guest {
    store: Store<InstanceState>,
    pre: ProxyPre<InstanceState>,
    request: Resource<HostIncomingRequest>,
    outparam: Resource<HostResponseOutparam>,
    permits: [OwnedSemaphorePermit; 2],
    dep: Arc<Deployment>,
    metrics: Arc<Metrics>,
    logs: Arc<crate::logs::LogStore>,
    invocation: String,
}

/// An HTTP invocation in flight, waiting for its answer.
struct Call {
    dep: Arc<Deployment>,
    invocation: String,
    trace: TraceContext,
    finish: crate::traces::Finish,
    exceeded: Arc<AtomicBool>,
    task: GuestTask,
}

/// Runs the guest in its own task, so that it can keep streaming the body after the
/// response head has been handed back; the permits live exactly as long as it runs.
fn spawn_guest(g: Guest) -> GuestTask {
    let Guest {
        mut store,
        pre,
        request,
        outparam,
        permits,
        dep,
        metrics,
        logs,
        invocation,
    } = g;
    let deadline = tokio::time::Instant::from_std(store.data().deadline);
    tokio::spawn(async move {
        let _permits = permits;
        let _in_flight = InFlight::start(&metrics, &dep.record.name);
        let run = async {
            let t = Instant::now();
            let proxy = pre.instantiate_async(&mut store).await?;
            observe_instantiation(&metrics, &dep.record.name, t);
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
        store
            .data()
            .logs
            .emit(&logs, &dep.spec.function, dep.spec.version, &invocation);
        if let Err(f) = &outcome {
            tracing::warn!(function = %dep.spec.function, version = dep.spec.version, failure = ?f, "invocation failed");
        }
        let outbox = std::mem::take(&mut store.data_mut().caps.events.outbox);
        (outcome, outbox)
    })
}

fn observe_instantiation(m: &Metrics, function: &str, started: Instant) {
    m.instantiation
        .get_or_create(&metrics::Function {
            function: function.into(),
        })
        .observe(started.elapsed().as_secs_f64());
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

fn classify(e: &wasmtime::Error, state: &InstanceState) -> Failure {
    if state.limiter.memory_exceeded || e.downcast_ref::<MemoryLimitExceeded>().is_some() {
        return Failure::MemoryLimit;
    }
    if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        return Failure::Timeout;
    }
    // The trap code says what happened; the guest's own message (a panic's, say) is on
    // its stderr, which goes to the function's log rather than to the HTTP client.
    let detail = match e.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => e.root_cause().to_string(),
    };
    Failure::Trap(detail)
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
