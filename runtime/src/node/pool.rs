//! Reused instances of one deployed HTTP function, driven by wasmtime-wasi-http's
//! [`ProxyHandler`] (its workers accept requests into live instances, concurrently for
//! `wasi:http/handler@0.3`, one at a time for 0.2). This module is the policy the
//! handler asks about: when to make an instance, whether one takes another request, when
//! one expires, and what is counted when it goes.
//!
//! The rules (DESIGN.md, "Instances"):
//! * The timeout is per request: a request past its deadline gets 504 and its instance
//!   takes no other request; the guest is interrupted once every request it has begun
//!   is past its deadline.
//! * Memory is per instance: growth past the limit traps, and a trap retires the
//!   instance. Its other in-flight requests get 500 naming the failure; none is retried
//!   on another instance, since its effects may have happened.
//! * An instance that trapped, timed out or hit a limit is never handed another request.
//! * An idle instance is dropped after `idle`; an instance that served `reuse` requests
//!   is dropped once its last one ends.

use super::code::{CodeCache, CodeSlot};
use super::sandbox::{Failure, classify, new_store};
use crate::host::events::Outbox;
use crate::host::logging::CapturedOutput;
use crate::host::{InstanceState, SandboxSpec};
use crate::metrics::{FnMetrics, Metrics};
use skiff_core::instances::InstancePolicy;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use wasmtime::component::GuestTaskId;
use wasmtime::{Store, StoreContextMut};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, ProxyHandler, ShouldAccept, WorkerExpiration, WorkerState, WorkerStatus,
};

/// How long past a request's deadline its instance may still be stuck in a host call
/// before the worker is dropped from outside (the guest itself is interrupted by epoch).
const GRACE: Duration = Duration::from_secs(1);

/// What a node lends every pool.
#[derive(Clone)]
pub struct PoolDeps {
    /// Where linked code comes from (loaded when an instance is made, not per request).
    pub code: Arc<CodeCache>,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// Where a retired instance's last output goes.
    pub logs: Arc<crate::logs::LogStore>,
}

/// The reused instances of one deployed version.
pub struct HttpPool {
    handler: ProxyHandler<PoolState>,
}

impl HttpPool {
    /// A pool for `spec` (its code in `code`) under `policy`; makes no instance yet.
    pub fn new(
        spec: Arc<SandboxSpec>,
        policy: InstancePolicy,
        code: Arc<CodeSlot>,
        metrics: FnMetrics,
        deps: PoolDeps,
    ) -> HttpPool {
        HttpPool {
            handler: ProxyHandler::new(PoolState {
                spec,
                metrics,
                policy,
                code,
                deps,
            }),
        }
    }

    /// Hands `request` to an instance (making one if none is free) and waits for its
    /// response head.
    pub async fn handle(
        &self,
        ticket: Arc<Ticket>,
        request: wasmtime_wasi_http::handler::Request,
    ) -> wasmtime::Result<wasmtime_wasi_http::handler::Response> {
        self.handler.handle(ticket, request).await
    }
}

/// One request handed to a pool.
pub struct Ticket {
    deadline: Instant,
    traceparent: String,
    instance: OnceLock<Arc<Shared>>,
}

impl Ticket {
    /// A request due by `deadline`, in trace `traceparent`.
    pub fn new(deadline: Instant, traceparent: String) -> Arc<Ticket> {
        Arc::new(Ticket {
            deadline,
            traceparent,
            instance: OnceLock::new(),
        })
    }

    /// The instance that took the request, once one has.
    pub fn instance(&self) -> Option<&Arc<Shared>> {
        self.instance.get()
    }
}

/// What requests share with the instance serving them: its output and outbox (settled
/// by each request as it ends) and, once it is gone, why.
pub struct Shared {
    /// The guest's stdout and stderr.
    pub logs: CapturedOutput,
    /// Events it published and no request has settled yet.
    pub outbox: Outbox,
    served: AtomicU32,
    retired: watch::Sender<Option<Failure>>,
    retiring: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Takes no further request (a request it served ran out of time, say).
    pub fn retire(&self) {
        self.retiring.store(true, Ordering::Relaxed);
    }

    fn is_retiring(&self) -> bool {
        self.retiring.load(Ordering::Relaxed)
    }

    /// Why the instance failed, once it is gone (none: it ended without failing, or
    /// it is still alive after `wait`).
    pub async fn failure(&self, wait: Duration) -> Option<Failure> {
        let mut rx = self.retired.subscribe();
        let ended = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
        match ended {
            Ok(Ok(f)) => f.clone(),
            _ => None,
        }
    }
}

struct PoolState {
    spec: Arc<SandboxSpec>,
    metrics: FnMetrics,
    policy: InstancePolicy,
    code: Arc<CodeSlot>,
    deps: PoolDeps,
}

impl HandlerState for PoolState {
    type StoreData = InstanceState;
    type WorkerExpiration = Expiry;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<InstanceState, Expiry, Worker>> {
        let linked = self
            .deps
            .code
            .get(&self.code)
            .await
            .map_err(wasmtime::Error::new)?;
        let Some(pre) = linked.http.as_ref() else {
            wasmtime::bail!("function `{}` no longer handles HTTP", self.spec.function);
        };
        let started = Instant::now();
        let mut store = new_store(&linked.engine, &self.spec, started, None, String::new());
        let shared = Arc::new(Shared {
            logs: store.data().logs.clone(),
            outbox: store.data().caps.events.outbox.clone(),
            served: AtomicU32::new(0),
            retired: watch::Sender::new(None),
            retiring: false.into(),
        });
        let proxy = pre.instantiate_async(&mut store).await?;
        super::invoke::observe_instantiation(&self.metrics, started);
        Ok(Instance {
            store,
            proxy,
            view: <InstanceState as WasiHttpView>::http,
            expiration: Expiry {
                idle: self.policy.idle,
                timeout: self.spec.limits.timeout,
                shared: shared.clone(),
                sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            },
            state: Worker {
                metrics: self.metrics.clone(),
                shared,
                policy: self.policy,
                spec: self.spec.clone(),
                deps: self.deps.clone(),
            },
        })
    }
}

/// Decides for one instance whether it takes requests.
pub struct Worker {
    metrics: FnMetrics,
    shared: Arc<Shared>,
    policy: InstancePolicy,
    spec: Arc<SandboxSpec>,
    deps: PoolDeps,
}

impl WorkerState for Worker {
    type StoreData = InstanceState;
    type RequestData = Arc<Ticket>;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if self.shared.is_retiring() || total >= self.policy.reuse as usize {
            ShouldAccept::Never
        } else if concurrent >= self.policy.concurrency as usize {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<'_, InstanceState>,
        ticket: Arc<Ticket>,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        store
            .data_mut()
            .begin(ticket.deadline, ticket.traceparent.clone());
        if self.shared.served.fetch_add(1, Ordering::Relaxed) > 0 {
            self.metrics.reused.inc();
        }
        let deadline = tokio::time::Instant::from_std(ticket.deadline);
        let _ = ticket.instance.set(self.shared.clone());
        Box::pin(tokio::time::sleep_until(deadline))
    }

    fn drop(&self, store: Store<InstanceState>, result: wasmtime::Result<()>) {
        let spec = &self.spec;
        // A worker that outlived a request's deadline ends in an error of its own ("guest
        // timed out"): that is the timeout, not a trap.
        let failure = result.err().map(|e| match classify(&e, store.data()) {
            Failure::Trap(_) if self.shared.is_retiring() => Failure::Timeout,
            f => f,
        });
        let reason = match &failure {
            Some(f) => f.label(),
            None if self.shared.is_retiring() => "timeout",
            None if self.shared.served.load(Ordering::Relaxed) >= self.policy.reuse => "reuse",
            None => "idle",
        };
        if let Some(f) = &failure {
            tracing::warn!(function = %spec.function, version = spec.version, failure = ?f, "instance retired");
        }
        self.deps.metrics.retired(&spec.function, reason);
        // Output after the last request settled (a trap's message, say).
        self.shared
            .logs
            .emit(&self.deps.logs, &spec.function, spec.version, "instance");
        self.shared.retired.send_replace(Some(
            failure.unwrap_or_else(|| Failure::Instance("it was retired".into())),
        ));
        drop(store);
    }
}

/// When an instance expires: `idle` after its last request, `timeout` after its last
/// response head while it still runs (post-return work, a body being written), and
/// `timeout` plus `GRACE` after its last request began while one is unanswered.
pub struct Expiry {
    idle: Duration,
    timeout: Duration,
    shared: Arc<Shared>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl WorkerExpiration for Expiry {
    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        start: Instant,
    ) -> Poll<()> {
        let me = self.get_mut();
        if status == WorkerStatus::Idle && me.shared.is_retiring() {
            return Poll::Ready(());
        }
        let span = match status {
            WorkerStatus::Idle => me.idle,
            WorkerStatus::PostReturn => me.timeout,
            WorkerStatus::Requests => me.timeout + GRACE,
        };
        let Some(deadline) = start.checked_add(span) else {
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        if me.sleep.deadline() != deadline {
            me.sleep.as_mut().reset(deadline);
        }
        me.sleep.as_mut().poll(cx)
    }
}
