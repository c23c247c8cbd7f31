//! One invocation: listener → route → limits → instantiate → call → response.

use super::body::{LimitedBody, reply};
use super::{Deployment, Node};
use crate::host::InstanceState;
use crate::host::limiter::MemoryLimitExceeded;
use crate::manifest::{Size, Timeout};
use http::{HeaderValue, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// The response type of the function listener.
pub type Response = http::Response<HyperOutgoingBody>;

/// How an invocation ended when the guest produced no response.
#[derive(Debug)]
enum Failure {
    MemoryLimit,
    Timeout,
    Trap(String),
    NoResponse,
}

impl Node {
    /// Serves one request on the function listener.
    pub async fn handle(&self, req: http::Request<Incoming>) -> Response {
        let started = Instant::now();
        // hyper bounds the head only while it is still arriving; a head read in one go can
        // exceed its buffer, so measure it exactly here.
        if head_size(&req) > self.limits.max_header_bytes {
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
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body is larger than function `{name}` accepts ({}); send less or raise [limits] body",
                    Size(limit)
                ),
            );
        }
        let Ok(node_permit) = self.slots.clone().try_acquire_owned() else {
            return busy(format!(
                "node is at capacity ({} invocations running); retry shortly",
                self.limits.node_concurrency
            ));
        };
        let Ok(fn_permit) = dep.slots.clone().try_acquire_owned() else {
            return busy(format!(
                "function `{name}` is at its concurrency limit ({}); retry shortly",
                dep.spec.limits.concurrency
            ));
        };
        invoke(
            self.engine.engine(),
            dep,
            req,
            [node_permit, fn_permit],
            started,
        )
        .await
    }
}

fn busy(message: String) -> Response {
    let mut r = reply(StatusCode::SERVICE_UNAVAILABLE, message);
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

async fn invoke(
    engine: &wasmtime::Engine,
    dep: Arc<Deployment>,
    req: http::Request<Incoming>,
    permits: [OwnedSemaphorePermit; 2],
    started: Instant,
) -> Response {
    let mut store = Store::new(engine, InstanceState::new(&dep.spec, started));
    store.limiter(|s| &mut s.limiter);
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

    let deadline = tokio::time::Instant::from_std(store.data().deadline);
    let task_dep = dep.clone();
    // The guest runs in its own task so that it can keep streaming the body after the
    // response head has been handed back; the permits live exactly as long as it runs.
    let task = tokio::spawn(async move {
        let _permits = permits;
        let dep = task_dep;
        let run = async {
            let proxy = dep.pre.instantiate_async(&mut store).await?;
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
        store.data().logs.emit(&dep.spec.function, dep.spec.version);
        if let Err(f) = &outcome {
            tracing::warn!(function = %dep.spec.function, version = dep.spec.version, failure = ?f, "invocation failed");
        }
        outcome
    });

    let name = &dep.record.name;
    let limits = &dep.spec.limits;
    let too_large = || {
        reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body is larger than function `{name}` accepts ({}); send less or raise [limits] body",
                Size(limits.body)
            ),
        )
    };
    match rx.await {
        Ok(Ok(mut resp)) => {
            if exceeded.load(Ordering::Relaxed) {
                return too_large();
            }
            resp.headers_mut()
                .insert("x-skiff-version", HeaderValue::from(dep.record.version));
            resp
        }
        Ok(Err(code)) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("function `{name}` answered with an error: {code:?}"),
        ),
        Err(_) => {
            if exceeded.load(Ordering::Relaxed) {
                return too_large();
            }
            let failure = match task.await {
                Ok(Ok(())) => Failure::NoResponse,
                Ok(Err(f)) => f,
                Err(e) => Failure::Trap(format!("the invocation task ended: {e}")),
            };
            match failure {
                Failure::MemoryLimit => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "function `{name}` exceeded its memory limit of {}; use less memory or raise [limits] memory",
                        Size(limits.memory)
                    ),
                ),
                Failure::Timeout => reply(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "function `{name}` did not finish within its timeout of {}; make it faster or raise [limits] timeout",
                        Timeout(limits.timeout)
                    ),
                ),
                Failure::Trap(detail) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("function `{name}` failed: {detail}; its output is in the node's log"),
                ),
                Failure::NoResponse => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("function `{name}` returned without setting a response"),
                ),
            }
        }
    }
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
