//! A sandbox for one deployed version, and how a run in it failed: shared by the fresh
//! 0.2 path, the pooled path (0.3, and 0.2 with reuse) and event deliveries.

use crate::host::limiter::MemoryLimitExceeded;
use crate::host::{HostLimits, InstanceState, SandboxSpec};
use skiff_core::manifest::{Size, Timeout};
use std::time::Instant;
use wasmtime::{Store, Trap, UpdateDeadline};

/// A fresh store for `spec`, with its memory limit and a deadline of `started` plus the
/// function's timeout armed; `cause` is the id of the event it handles, if any.
pub fn new_store(
    engine: &wasmtime::Engine,
    spec: &SandboxSpec,
    started: Instant,
    cause: Option<&str>,
    traceparent: String,
) -> Store<InstanceState> {
    let mut store = Store::new(
        engine,
        InstanceState::new(spec, started, cause, traceparent),
    );
    store.limiter(|s| &mut s.limiter);
    store.set_hostcall_fuel(HostLimits::hostcall_bytes(&spec.limits));
    store.set_max_component_handles(HostLimits::HANDLES);
    // Every epoch tick the guest yields to the executor (so a busy guest cannot starve
    // others on its thread) and is interrupted once past its deadline (for a reused
    // instance: the latest deadline of the requests it has begun).
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

/// How an invocation failed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The guest grew past its memory limit.
    MemoryLimit,
    /// The guest ran past its timeout.
    Timeout,
    /// The guest trapped.
    Trap(String),
    /// An event handler returned `err`.
    Handler(String),
    /// An HTTP handler returned without a response.
    NoResponse,
    /// The reused instance serving the request trapped (in this request or in another
    /// it was serving at once).
    Instance(String),
}

impl Failure {
    /// The `outcome` label of the invocation counter (and the reason an instance retired).
    pub fn label(&self) -> &'static str {
        match self {
            Failure::MemoryLimit => "memory",
            Failure::Timeout => "timeout",
            Failure::Trap(_) | Failure::Instance(_) => "trap",
            Failure::Handler(_) | Failure::NoResponse => "error",
        }
    }

    /// What went wrong and what to do, for the client and the log.
    pub fn describe(&self, spec: &SandboxSpec) -> String {
        let name = &spec.function;
        let limits = &spec.limits;
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
            Failure::Instance(why) => format!(
                "function `{name}` failed: {why}; its instance was retired, and the requests it was serving at once failed with it; its output is in the node's log"
            ),
        }
    }

    /// The status a client gets for it.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Failure::Timeout => http::StatusCode::GATEWAY_TIMEOUT,
            _ => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Why a run in `state`'s store ended in `e`.
pub fn classify(e: &wasmtime::Error, state: &InstanceState) -> Failure {
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
