//! Host capabilities a function's sandbox can reach, each in its own module: WASI 0.2
//! basics without ambient authority ([`wasi`]), `wasi:http` with the outbound policy
//! ([`http`]), key-value state ([`kv`]), and captured stdout/stderr ([`logging`]).
//!
//! [`InstanceState`] is the store data of one invocation; [`SandboxSpec`] is everything
//! about a deployed version that does not change per request, built once at deploy.

pub mod bindings;
pub mod events;
pub mod http;
pub mod kv;
pub mod limiter;
pub mod logging;
pub mod wasi;

use crate::limits::FunctionLimits;
use crate::state::StateStore;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Per-deployment facts every invocation's sandbox is built from.
#[derive(Debug)]
pub struct SandboxSpec {
    /// The function's name (for logs).
    pub function: String,
    /// The deployed version (for logs).
    pub version: u64,
    /// The function's resolved limits.
    pub limits: FunctionLimits,
    /// `[env]` from the manifest: the only environment the guest sees.
    pub env: Vec<(String, String)>,
    /// Where outgoing HTTP may go.
    pub outbound: Arc<http::OutboundPolicy>,
    /// The node's state store (the function sees only its own namespace).
    pub state: Arc<StateStore>,
    /// The node's metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The store data of one invocation.
pub struct InstanceState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: http::OutboundHooks,
    kv: kv::KvCtx,
    /// Events published by this invocation, held until it succeeds.
    pub events: events::EventCtx,
    /// Enforces the memory limit and remembers whether it was hit.
    pub limiter: limiter::GuestLimiter,
    /// The guest's captured output.
    pub logs: logging::CapturedOutput,
    /// When the invocation's wall-clock budget runs out.
    pub deadline: Instant,
}

impl InstanceState {
    /// A fresh sandbox for one invocation of `spec`; `cause` is the id of the event it
    /// handles, if it is an event invocation; `traceparent` goes on the events it publishes.
    pub fn new(
        spec: &SandboxSpec,
        started: Instant,
        cause: Option<&str>,
        traceparent: String,
    ) -> InstanceState {
        let logs = logging::CapturedOutput::new();
        let wasi = wasi::context(spec, &logs);
        InstanceState {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            outbound: http::OutboundHooks::new(spec.outbound.clone()),
            kv: kv::KvCtx::new(spec, cause),
            events: events::EventCtx::new(&spec.function, cause, traceparent),
            limiter: limiter::GuestLimiter::new(spec.limits.memory),
            logs,
            deadline: started + spec.limits.timeout,
        }
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// The linker every deployed component is pre-instantiated against.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<InstanceState>> {
    let mut linker = Linker::new(engine);
    wasi::add_to_linker(&mut linker)?;
    http::add_to_linker(&mut linker)?;
    kv::add_to_linker(&mut linker)?;
    events::add_to_linker(&mut linker)?;
    Ok(linker)
}
