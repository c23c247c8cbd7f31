//! WASI 0.2 and 0.3 (clocks, random, cli, io, and filesystem and sockets interfaces that
//! reach nothing): a sandbox with no preopened directory, no socket, no inherited environment
//! and no arguments — only the manifest's `[env]`.

use super::InstanceState;
use super::capability::{Capability, CapabilityError, DeployContext, InstanceContext};
use super::logging::CapturedOutput;
use wasmtime::component::Linker;
use wasmtime_wasi::WasiCtx;

/// The WASI basics.
pub struct Wasi;

impl Capability for Wasi {
    /// `[env]` from the manifest: the only environment the guest sees.
    type Deployed = Vec<(String, String)>;
    type Instance = WasiCtx;

    /// Components built for `wasm32-wasip2` import more than the `wasi:http/proxy` world
    /// (environment, exit, filesystem types) even when unused, so all are linked; the
    /// context grants none of them any authority.
    fn link(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
        wasmtime_wasi::p2::add_to_linker_async(linker)?;
        // WASI 0.3's async interfaces, for `wasi:http/handler@0.3` components, on the
        // engine with the async ABI (see `crate::engine::Flavor`).
        match linker.engine().get_concurrency_support() {
            true => wasmtime_wasi::p3::add_to_linker(linker),
            false => Ok(()),
        }
    }

    fn configure(cx: &DeployContext<'_>) -> Result<Self::Deployed, CapabilityError> {
        Ok(cx
            .manifest
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn instantiate(env: &Self::Deployed, cx: &InstanceContext<'_>) -> WasiCtx {
        context(env, cx.logs)
    }
}

/// The WASI context of one invocation.
fn context(env: &[(String, String)], logs: &CapturedOutput) -> WasiCtx {
    let mut b = WasiCtx::builder();
    b.envs(env);
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
