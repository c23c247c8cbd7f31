//! The fresh 0.2 path: a new sandbox from the deployment's pre-linked component for each
//! request, run in the one task the request spawns, which also settles it.

use super::body::{LimitedBody, gate, reply};
use super::invoke::{
    Call, Head, Response, failed, observe_instantiation, settle_events, too_large,
};
use super::sandbox::{Failure, classify, new_store};
use super::{Deployment, Node};
use crate::events::Bus;
use crate::host::InstanceState;
use crate::metrics::InFlight;
use crate::traces::Finish;
use http::StatusCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::Store;
use wasmtime::component::Resource;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};

impl Node {
    /// Runs a 0.2 handler in a fresh sandbox, in its own task (so that it can keep
    /// writing the body after it handed back the head).
    pub(super) async fn run_fresh(&self, call: Call, req: http::Request<LimitedBody>) -> Response {
        let (pre, engine) = match self.code.get(&call.dep.code).await {
            Ok(linked) => match &linked.http {
                Some(ProxyPre::P2(pre)) => (pre.clone(), linked.engine.clone()),
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
            &engine,
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
