//! Host capabilities a function's sandbox can reach, each in its own module: WASI 0.2
//! basics without ambient authority ([`wasi`]), `wasi:http` with the outbound policy
//! ([`http`]), `wasi:config` with the manifest's `[config]` and the operator's secrets
//! ([`config`]), key-value state ([`kv`]), and captured stdout/stderr ([`logging`]).
//!
//! [`InstanceState`] is the store data of one invocation; [`SandboxSpec`] is everything
//! about a deployed version that does not change per request, built once at deploy.
//! [`HostLimits`] bound what the host allocates on a guest's behalf.

pub mod bindings;
pub mod config;
pub mod events;
pub mod http;
pub mod kv;
pub mod limiter;
pub mod logging;
pub mod wasi;

use crate::state::StateStore;
use skiff_core::limits::FunctionLimits;
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
    /// What `wasi:config/store` answers: `[config]` and the function's secrets.
    pub config: config::ConfigCell,
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
    config: Arc<wasmtime_wasi_config::WasiConfigVariables>,
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
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(HostLimits::FIELDS_BYTES);
        let mut table = ResourceTable::new();
        table.set_max_capacity(HostLimits::RESOURCES);
        InstanceState {
            wasi,
            http,
            table,
            outbound: http::OutboundHooks::new(spec.outbound.clone(), spec.metrics.clone()),
            config: spec.config.current(),
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

/// Bounds on what the host allocates for a guest, so that no guest can make the node's
/// memory grow without limit through WASI calls (its own linear memory is bounded by
/// `[limits] memory`).
pub struct HostLimits;

impl HostLimits {
    /// Largest `wasi:random` request; a larger one traps.
    pub const RANDOM_BYTES: u64 = 1 << 20;
    /// Entries in one invocation's WASI resource table (streams, fields, requests...).
    pub const RESOURCES: usize = 10_000;
    /// Live component-model handles in one store.
    pub const HANDLES: usize = 10_000;
    /// In-memory size of one `wasi:http` fields (headers) resource.
    pub const FIELDS_BYTES: usize = 64 << 10;
    /// Bytes one call may carry from guest to host, at least: enough for the largest
    /// key-value write or event the limits allow (see [`HostLimits::hostcall_bytes`]).
    pub const HOSTCALL_BYTES: usize = 4 << 20;

    /// Bytes one call may carry from guest to host for a function with `limits`.
    pub fn hostcall_bytes(limits: &FunctionLimits) -> usize {
        let kv = limits.kv.value_bytes.saturating_add(limits.kv.key_bytes);
        let kv = usize::try_from(kv).unwrap_or(usize::MAX);
        Self::HOSTCALL_BYTES.max(kv.saturating_add(64 << 10))
    }
}

/// The linker every deployed component is pre-instantiated against.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<InstanceState>> {
    let mut linker = Linker::new(engine);
    wasi::add_to_linker(&mut linker)?;
    http::add_to_linker(&mut linker)?;
    config::add_to_linker(&mut linker)?;
    kv::add_to_linker(&mut linker)?;
    events::add_to_linker(&mut linker)?;
    Ok(linker)
}
