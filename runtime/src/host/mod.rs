//! Host capabilities a function's sandbox can reach, each in its own module: WASI 0.2
//! and 0.3 basics without ambient authority ([`wasi`]), `wasi:http` 0.2 and 0.3 with the
//! outbound policy ([`http`]), `wasi:config` with the manifest's `[config]` and the operator's secrets
//! ([`config`]), key-value state ([`kv`]), and captured stdout/stderr ([`logging`]).
//!
//! Each is a [`capability::Capability`]: it links itself, checks its part of the manifest
//! at deploy, and builds its per-invocation state; `capabilities!` below lists them.
//! [`InstanceState`] is the store data of one invocation; [`SandboxSpec`] is everything
//! about a deployed version that does not change per request, built once at deploy.
//! [`HostLimits`] bound what the host allocates on a guest's behalf.

pub mod bindings;
pub mod capability;
pub mod config;
pub mod events;
pub mod http;
pub mod kv;
pub mod limiter;
pub mod logging;
pub mod wasi;

use capability::{InstanceContext, capabilities};
use skiff_core::limits::FunctionLimits;
use std::time::Instant;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

capabilities! {
    wasi: wasi::Wasi,
    http: http::OutboundHttp,
    config: config::Config,
    kv: kv::Kv,
    events: events::Events,
}

/// Per-deployment facts every invocation's sandbox is built from, made once at deploy.
pub struct SandboxSpec {
    /// The function's name (for logs).
    pub function: String,
    /// The deployed version (for logs).
    pub version: u64,
    /// The function's resolved limits.
    pub limits: FunctionLimits,
    /// What each capability keeps for this version.
    pub caps: Deployed,
}

impl std::fmt::Debug for SandboxSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxSpec")
            .field("function", &self.function)
            .field("version", &self.version)
            .field("limits", &self.limits)
            .finish()
    }
}

/// The store data of one invocation.
pub struct InstanceState {
    table: ResourceTable,
    /// Each capability's state.
    pub caps: Instances,
    /// Enforces the memory limit and remembers whether it was hit.
    pub limiter: limiter::GuestLimiter,
    /// The guest's captured output.
    pub logs: logging::CapturedOutput,
    /// When the invocation's wall-clock budget runs out.
    pub deadline: Instant,
}

impl InstanceState {
    /// A fresh sandbox for one invocation of `spec`; `cause` is the id of the event it
    /// handles, if it is an event invocation; `traceparent` goes on what it sends on.
    pub fn new(
        spec: &SandboxSpec,
        started: Instant,
        cause: Option<&str>,
        traceparent: String,
    ) -> InstanceState {
        let logs = logging::CapturedOutput::new();
        let mut table = ResourceTable::new();
        table.set_max_capacity(HostLimits::RESOURCES);
        let cx = InstanceContext {
            cause,
            traceparent: &traceparent,
            logs: &logs,
        };
        InstanceState {
            caps: Instances::new(&spec.caps, &cx),
            table,
            limiter: limiter::GuestLimiter::new(spec.limits.memory),
            logs,
            deadline: started + spec.limits.timeout,
        }
    }
}

impl InstanceState {
    /// A reused instance begins a request that must be done by `deadline`: the guest is
    /// interrupted only once every request it has begun is past its deadline, and what
    /// it publishes from now on carries `traceparent`.
    pub fn begin(&mut self, deadline: Instant, traceparent: String) {
        self.deadline = self.deadline.max(deadline);
        self.caps.events.begin(traceparent);
    }

    /// A reused instance begins an event delivery (one at a time), due by `deadline`.
    pub fn begin_delivery(&mut self, deadline: Instant, cause: &str, traceparent: String) {
        self.deadline = deadline;
        self.caps.events.begin_delivery(cause, traceparent);
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.caps.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.caps.http.ctx,
            table: &mut self.table,
            hooks: &mut self.caps.http.hooks,
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
    link_all(&mut linker)?;
    Ok(linker)
}
