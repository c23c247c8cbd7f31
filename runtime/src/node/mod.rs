//! The runtime node: holds the deployed functions and runs invocations.
//!
//! A request's path through the node, in five files: `triggers/http.rs` (the listener)
//! → [`invoke`] (admit: route lookup in the current [`Snapshot`], body size, node and
//! function concurrency; then settle) → `fresh.rs` (a fresh 0.2 sandbox) or [`pool`]
//! (a reused instance: every `wasi:http/handler@0.3` component, and 0.2 ones with
//! `[instances] reuse`) → [`sandbox`] (the store, its limits, and how a run failed) →
//! the response streamed back through `body.rs`, its end held until the invocation is
//! settled. Event deliveries run in [`deliver`], reusing instances through
//! [`event_pool`]. Deploys build a new
//! [`Deployment`] off to the side and swap the snapshot ([`deploy`]), so in-flight
//! invocations finish on the version they started with.

mod body;
pub mod code;
pub mod collect;
pub mod deliver;
pub mod deploy;
pub mod deploy_error;
pub mod event_pool;
mod fresh;
pub mod invoke;
pub mod operator;
pub mod pool;
pub mod sandbox;
pub mod secrets;

use crate::engine::NodeEngine;
use crate::events::{Bus, ConsumerSpec};
use crate::host::SandboxSpec;
use crate::state::StateBackend;
use skiff_core::api::CodeSource;
use skiff_core::api::{FunctionInfo, NodeStatus};
use skiff_core::control::ControlStore;
use skiff_core::instances::{HttpWorld, InstancePolicy};
use skiff_core::limits::NodeLimits;
use skiff_core::manifest::EventTrigger;
use skiff_core::manifest::FunctionName;
use skiff_core::record::FunctionRecord;
use skiff_core::{Route, RouteTable};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tokio::sync::Semaphore;

pub(crate) use body::reply;
pub use deploy_error::DeployError;

/// One deployed version of a function, ready to instantiate.
pub struct Deployment {
    /// The stored record (name, version, manifest, artifact).
    pub record: FunctionRecord,
    /// The route it serves, when the component handles HTTP.
    pub route: Option<Route>,
    /// Per-invocation sandbox facts.
    pub spec: Arc<SandboxSpec>,
    /// How its instances are reused.
    pub policy: InstancePolicy,
    /// Its metric handles.
    pub metrics: crate::metrics::FnMetrics,
    /// Its event handler's idle instances (see [`event_pool`]).
    pub events: Arc<event_pool::EventPool>,
    /// Its code, loaded or not (see [`code`]).
    pub code: Arc<code::CodeSlot>,
    /// Its reused instances, when `policy` reuses them or the component is a
    /// wasi:http 0.3 handler (see [`pool`]).
    pub pool: Option<pool::HttpPool>,
    /// What its component exports; the linked code itself is in the node's code cache.
    pub exports: Exports,
    /// Its event triggers and their durable consumers (one per schedule among them).
    pub triggers: Vec<(EventTrigger, ConsumerSpec)>,
    /// Its `[[schedule]]` tables, checked.
    pub schedules: Vec<skiff_core::schedule::Schedule>,
    /// Bounds this version's concurrent invocations.
    pub slots: Arc<Semaphore>,
}

/// What a component exports, known from linking it once.
#[derive(Debug, Clone, Default)]
pub struct Exports {
    /// An HTTP handler: `wasi:http/incoming-handler@0.2` or `wasi:http/handler@0.3`.
    pub http: bool,
    /// Which of the two (meaningful when `http`).
    pub world: HttpWorld,
    /// `skiff:function/event-handler`.
    pub events: bool,
    /// Why it is not an HTTP handler (when linked in this process).
    pub http_error: Option<String>,
    /// Why it is not an event handler (when linked in this process).
    pub events_error: Option<String>,
    /// Whether its code needs the engine with the component model's async ABI.
    pub concurrent: bool,
    /// What built it, when its bytes were read in this process (for error hints).
    pub toolchain: crate::component::Toolchain,
}

impl Exports {
    /// As recorded in the control store.
    pub fn bits(&self) -> u8 {
        u8::from(self.http)
            | (u8::from(self.events) << 1)
            | (u8::from(self.world == HttpWorld::P3) << 2)
            | (u8::from(self.concurrent) << 3)
    }

    /// From the recorded bits.
    pub fn from_bits(bits: u8) -> Exports {
        Exports {
            http: bits & 1 != 0,
            events: bits & 2 != 0,
            world: if bits & 4 != 0 {
                HttpWorld::P3
            } else {
                HttpWorld::P2
            },
            concurrent: bits & 8 != 0,
            ..Exports::default()
        }
    }

    /// What linked code exports.
    pub fn linked(linked: &code::Linked) -> Exports {
        Exports {
            http: linked.http.is_some(),
            world: linked.world(),
            events: linked.handler.is_some(),
            http_error: linked.http_error.clone(),
            events_error: linked.handler_error.clone(),
            concurrent: linked.flavor == crate::engine::Flavor::Concurrent,
            toolchain: Default::default(),
        }
    }

    /// When `facts` (read without compiling) show that the component lacks an export
    /// the manifest asks for: what it does export, with the reason.
    pub(crate) fn lacking(
        facts: &crate::component::ComponentFacts,
        wants: deploy::Wants,
    ) -> Option<Exports> {
        let world = facts.http_world();
        let (http, events) = (world.is_some(), facts.handles_events());
        if (!wants.http || http) && (!wants.events || events) {
            return None;
        }
        let detail = format!("it exports {}", facts.exports_line());
        Some(Exports {
            http,
            world: world.unwrap_or_default(),
            events,
            http_error: Some(detail.clone()),
            events_error: Some(detail),
            concurrent: facts.uses_wasi_03(),
            toolchain: facts.toolchain(),
        })
    }
}

impl Deployment {
    /// Its route pattern, e.g. `/hello/...` (empty when it handles no HTTP).
    pub fn route_pattern(&self) -> String {
        self.route
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    /// Invocations of this version running now.
    pub fn in_flight(&self) -> u32 {
        self.spec.limits.concurrency - self.slots.available_permits() as u32
    }
}

/// An immutable view of what is deployed; replaced whole on every change.
#[derive(Default)]
pub struct Snapshot {
    routes: RouteTable<FunctionName>,
    functions: BTreeMap<FunctionName, Arc<Deployment>>,
}

impl Snapshot {
    /// The deployment serving `path`, if any.
    pub fn lookup(&self, path: &str) -> Option<&Arc<Deployment>> {
        self.routes
            .lookup(path)
            .and_then(|name| self.functions.get(name))
    }

    /// Every deployment, by name.
    pub fn deployments(&self) -> impl Iterator<Item = &Arc<Deployment>> {
        self.functions.values()
    }

    /// The deployment of `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Arc<Deployment>> {
        FunctionName::new(name)
            .ok()
            .and_then(|n| self.functions.get(&n))
    }

    /// The names of every deployed function, for error messages.
    pub fn names(&self) -> String {
        if self.functions.is_empty() {
            "none".to_string()
        } else {
            self.functions
                .keys()
                .map(FunctionName::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

/// A runtime node.
pub struct Node {
    name: String,
    mode: &'static str,
    url: String,
    started: Instant,
    engine: NodeEngine,
    /// Linked components, loaded on demand and bounded.
    pub(crate) code: Arc<code::CodeCache>,
    control: Arc<dyn ControlStore>,
    state: Arc<dyn StateBackend>,
    bus: Arc<dyn Bus>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    pub(crate) logs: Arc<crate::logs::LogStore>,
    pub(crate) traces: Arc<crate::traces::TraceStore>,
    limits: NodeLimits,
    /// The admin API's address: functions may never call it.
    admin: Option<std::net::SocketAddr>,
    /// Seals and opens the functions' secrets (none: secrets cannot be set or read).
    secrets_key: Option<Arc<skiff_core::secrets::SecretKey>>,
    slots: Arc<Semaphore>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Serialises deploys and removals so that route checks and swaps do not interleave.
    changes: tokio::sync::Mutex<()>,
    /// Told of every change to what the node serves (the event triggers).
    hook: std::sync::OnceLock<Arc<dyn DeploymentHook>>,
    /// Versions that failed to load here (cluster mode reports them), by function.
    failed: std::sync::Mutex<BTreeMap<String, (u64, String)>>,
    /// Up, draining or left (see [`Lifecycle`]).
    lifecycle: std::sync::atomic::AtomicU8,
    /// Artifacts uploaded for deploys still on their way (see [`collect`]).
    uploads: skiff_core::control::PendingUploads,
    /// Where the node keeps its files.
    data_dir: Option<std::path::PathBuf>,
}

/// Told of every change to what a node serves, while the change is made: a deploy is
/// acknowledged only once its hook succeeded. The node knows nothing else of who listens.
pub trait DeploymentHook: Send + Sync {
    /// `d` now serves: new, redeployed or restored.
    fn deployed<'a>(
        &'a self,
        d: &'a Arc<Deployment>,
    ) -> futures::future::BoxFuture<'a, Result<(), crate::events::BusError>>;
    /// `name` no longer serves here: removed (`gone`: everywhere, so what it shares with
    /// other nodes goes too), or moved to other nodes (they carry on with it).
    fn removed<'a>(&'a self, name: &'a str, gone: bool) -> futures::future::BoxFuture<'a, ()>;
}

/// Where a node is in its life; cluster mode reports it to the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Lifecycle {
    /// Taking work.
    Up = 0,
    /// Finishing running work; the scheduler sends nothing new.
    Draining = 1,
    /// Stopped.
    Left = 2,
}

/// What a node is built from.
pub struct NodeConfig {
    /// The node's name.
    pub name: String,
    /// `embedded` or `cluster`.
    pub mode: &'static str,
    /// Base URL of the function listener, for the URLs the API reports.
    pub url: String,
    /// Limits and maxima.
    pub limits: NodeLimits,
    /// The admin API's bound address, which outgoing requests may never reach.
    pub admin: Option<std::net::SocketAddr>,
    /// The key the functions' secrets are sealed with.
    pub secrets_key: Option<Arc<skiff_core::secrets::SecretKey>>,
    /// Where the node keeps its files (measured for `skiff_data_dir_bytes`).
    pub data_dir: Option<std::path::PathBuf>,
}

impl Node {
    /// A node with nothing deployed yet; call [`Node::restore`] to bring back deployments.
    pub fn new(
        config: NodeConfig,
        engine: NodeEngine,
        control: Arc<dyn ControlStore>,
        state: Arc<dyn StateBackend>,
        bus: Arc<dyn Bus>,
    ) -> wasmtime::Result<Node> {
        let code = Arc::new(code::CodeCache::new(
            engine.clone(),
            control.clone(),
            config.limits.code_cache,
        )?);
        let logs = Arc::new(crate::logs::LogStore::new(&config.name));
        Ok(Node {
            name: config.name,
            mode: config.mode,
            url: config.url,
            started: Instant::now(),
            slots: Arc::new(Semaphore::new(config.limits.node_concurrency as usize)),
            limits: config.limits,
            admin: config.admin,
            secrets_key: config.secrets_key,
            engine,
            code,
            control,
            state,
            bus,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            logs,
            traces: Arc::new(crate::traces::TraceStore::default()),
            hook: std::sync::OnceLock::new(),
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            changes: tokio::sync::Mutex::new(()),
            failed: std::sync::Mutex::new(BTreeMap::new()),
            lifecycle: std::sync::atomic::AtomicU8::new(Lifecycle::Up as u8),
            uploads: Default::default(),
            data_dir: config.data_dir,
        })
    }

    /// Sets who is told of deployment changes; call before [`Node::restore`]. A second
    /// call is ignored.
    pub fn set_hook(&self, hook: Arc<dyn DeploymentHook>) {
        if self.hook.set(hook).is_err() {
            tracing::warn!("deployment hook already set; ignoring another");
        }
    }

    /// Tells the hook that `d` serves.
    pub(crate) async fn announce_deployed(
        &self,
        d: &Arc<Deployment>,
    ) -> Result<(), crate::events::BusError> {
        match self.hook.get() {
            Some(h) => h.deployed(d).await,
            None => Ok(()),
        }
    }

    /// Tells the hook that `name` was removed.
    pub(crate) async fn announce_removed(&self, name: &str, gone: bool) {
        if let Some(h) = self.hook.get() {
            h.removed(name, gone).await;
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(s) => s.clone(),
            // A panic while swapping cannot leave a half-written Arc; keep serving.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn swap(&self, f: impl FnOnce(&Snapshot) -> Snapshot) {
        let mut guard = match self.snapshot.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let next = f(&guard);
        *guard = Arc::new(next);
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the node is part of a cluster (deploys come from the cluster registry).
    pub fn is_cluster(&self) -> bool {
        self.mode == "cluster"
    }

    /// Where the node is in its life.
    pub fn lifecycle(&self) -> Lifecycle {
        match self.lifecycle.load(std::sync::atomic::Ordering::Relaxed) {
            0 => Lifecycle::Up,
            1 => Lifecycle::Draining,
            _ => Lifecycle::Left,
        }
    }

    /// Moves the node to `state`.
    pub fn set_lifecycle(&self, state: Lifecycle) {
        self.lifecycle
            .store(state as u8, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records that `version` of `function` could not be loaded here.
    pub fn set_failed(&self, function: &str, version: u64, error: String) {
        if let Ok(mut f) = self.failed.lock() {
            f.insert(function.to_string(), (version, error));
        }
    }

    /// Forgets a failure of `function` (it loaded, or was removed).
    pub fn clear_failed(&self, function: &str) {
        if let Ok(mut f) = self.failed.lock() {
            f.remove(function);
        }
    }

    /// Versions that failed to load here: (function, version, error).
    pub fn failures(&self) -> Vec<(String, u64, String)> {
        self.failed
            .lock()
            .map(|f| {
                f.iter()
                    .map(|(n, (v, e))| (n.clone(), *v, e.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The node's limits.
    pub fn limits(&self) -> &NodeLimits {
        &self.limits
    }

    /// When the node started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The control store.
    pub fn control(&self) -> &Arc<dyn ControlStore> {
        &self.control
    }

    /// The state store.
    pub fn state(&self) -> &Arc<dyn StateBackend> {
        &self.state
    }

    /// The event bus.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// The node's function logs.
    pub fn logs(&self) -> &Arc<crate::logs::LogStore> {
        &self.logs
    }

    /// The node's recent spans.
    pub fn traces(&self) -> &Arc<crate::traces::TraceStore> {
        &self.traces
    }

    /// How a new invocation of `function` will be recorded when it ends.
    pub(crate) fn finish(
        &self,
        dep: &Deployment,
        kind: &'static str,
        detail: &str,
        trace: crate::traces::TraceContext,
        started: Instant,
    ) -> crate::traces::Finish {
        crate::traces::Finish {
            metrics: dep.metrics.clone(),
            traces: self.traces.clone(),
            node: self.name.clone(),
            function: dep.record.name.clone(),
            kind,
            detail: detail.to_string(),
            trace,
            started,
            start_ms: skiff_core::record::now_ms(),
        }
    }

    /// What a deployment's pool of reused instances borrows from the node.
    pub(crate) fn pool_deps(&self) -> pool::PoolDeps {
        pool::PoolDeps {
            code: self.code.clone(),
            metrics: self.metrics.clone(),
            logs: self.logs.clone(),
        }
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The Prometheus text exposition, with consumer lag read from the bus now.
    pub async fn metrics_text(&self) -> String {
        let deployments: Vec<Arc<Deployment>> =
            self.snapshot().functions.values().cloned().collect();
        for d in deployments {
            for (_, consumer) in &d.triggers {
                match self.bus.pending(&consumer.name).await {
                    Ok(n) => {
                        self.metrics
                            .lag
                            .get_or_create(&crate::metrics::Consumer {
                                function: d.record.name.clone(),
                                consumer: consumer.name.clone(),
                            })
                            .set(n as i64);
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot read consumer lag"),
                }
            }
        }
        self.metrics
            .node_capacity
            .set(i64::from(self.limits.node_concurrency));
        self.metrics.node_in_flight.set(i64::from(self.in_flight()));
        self.metrics.code_loaded.set(self.code.len() as i64);
        if let Some(dir) = self.data_dir.clone() {
            match tokio::task::spawn_blocking(move || crate::files::dir_size(&dir)).await {
                Ok(bytes) => {
                    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
                    self.metrics.data_dir_bytes.set(bytes);
                }
                Err(e) => tracing::debug!(error = %e, "cannot measure the data dir"),
            }
        }
        self.metrics.encode()
    }

    /// Invocations running now on the node.
    pub fn in_flight(&self) -> u32 {
        self.limits.node_concurrency - self.slots.available_permits() as u32
    }

    /// How a deployment looks through the API.
    pub fn info(&self, d: &Deployment) -> FunctionInfo {
        FunctionInfo {
            name: d.record.name.clone(),
            version: d.record.version,
            route: d.route_pattern(),
            url: d
                .route
                .as_ref()
                .map(|r| format!("{}{}", self.url, r.base_path()))
                .unwrap_or_default(),
            triggers: d.triggers.iter().map(|(t, _)| t.topic.clone()).collect(),
            artifact: d.record.artifact.clone(),
            limits: d.spec.limits,
            world: d.exports.http.then_some(d.exports.world),
            instances: Some(d.policy),
            in_flight: d.in_flight(),
            code: self
                .code
                .loaded(&d.record.artifact)
                .unwrap_or(CodeSource::Unloaded),
            deployed_at_ms: d.record.deployed_at_ms,
            nodes: vec![self.name.clone()],
            placement: None,
        }
    }

    /// Every deployed function.
    pub fn list(&self) -> Vec<FunctionInfo> {
        self.snapshot()
            .functions
            .values()
            .map(|d| self.info(d))
            .collect()
    }

    /// The node's status.
    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            node: self.name.clone(),
            mode: self.mode.to_string(),
            url: self.url.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            in_flight: self.in_flight(),
            capacity: self.limits.node_concurrency,
            functions: self.list(),
        }
    }

    /// Waits until no invocation runs, or `max` passes; returns whether it drained.
    pub async fn drain(&self, max: std::time::Duration) -> bool {
        let all = self.limits.node_concurrency;
        matches!(
            tokio::time::timeout(max, self.slots.acquire_many(all)).await,
            Ok(Ok(_))
        )
    }
}
