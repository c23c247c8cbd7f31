//! WASI 0.2 (clocks, random, cli, io, and filesystem and sockets interfaces that reach
//! nothing): a sandbox with no preopened directory, no socket, no inherited environment
//! and no arguments — only the manifest's `[env]`.

use super::{InstanceState, SandboxSpec, logging::CapturedOutput};
use wasmtime::component::Linker;
use wasmtime_wasi::WasiCtx;

/// Links the WASI 0.2 interfaces. Components built for `wasm32-wasip2` import more than
/// the `wasi:http/proxy` world (environment, exit, filesystem types) even when unused,
/// so all are linked; the context below grants none of them any authority.
pub fn add_to_linker(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)
}

/// The WASI context of one invocation.
pub fn context(spec: &SandboxSpec, logs: &CapturedOutput) -> WasiCtx {
    let mut b = WasiCtx::builder();
    b.envs(&spec.env);
    b.stdout(logs.stdout());
    b.stderr(logs.stderr());
    // Sockets: nothing is inherited and every address check fails (the builder's default),
    // and name lookup is switched off too. Outgoing HTTP goes through wasi:http instead.
    b.allow_ip_name_lookup(false);
    b.allow_tcp(false);
    b.allow_udp(false);
    b.max_random_size(super::HostLimits::RANDOM_BYTES);
    b.build()
}
