//! Deploying, restoring and removing functions on a node.
//!
//! Everything that can be done once per version happens here, not per request: manifest
//! validation, limit resolution, outbound policy parsing, compilation (or a verified cache
//! load) and linking into the code cache ([`super::code`]). Only a version that passed all of it is
//! recorded and swapped in.

use super::Exports;
use super::code::LoadError;
use super::deploy_error::DeployError;
use super::event_pool::EventPool;
use super::pool::HttpPool;
use super::{Deployment, Node, Snapshot};
use crate::component::{ComponentFacts, Toolchain};
use crate::engine::{CompileError, Flavor};
use crate::events::ConsumerSpec;
use crate::host::capability::{DeployContext, NodeServices};
use crate::host::{Deployed, SandboxSpec};
use crate::metrics::FnMetrics;
use skiff_core::Route;
use skiff_core::control::ControlError;
use skiff_core::deploy::{Checked, check_manifest};
use skiff_core::instances::HttpWorld;
use skiff_core::instances::InstancePolicy;
use skiff_core::limits::FunctionLimits;
use skiff_core::manifest::EventTrigger;
use skiff_core::manifest::{FunctionName, Manifest};
use skiff_core::record::FunctionRecord;
use skiff_core::schedule::Schedule;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// A version that passed every check, not yet recorded.
struct Prepared {
    name: FunctionName,
    manifest: Manifest,
    route: Option<Route>,
    limits: FunctionLimits,
    policy: InstancePolicy,
    caps: Deployed,
    exports: Exports,
    schedules: Vec<Schedule>,
}

impl Prepared {
    fn triggers_empty(&self) -> bool {
        self.manifest.events.is_empty() && self.schedules.is_empty()
    }
}

/// A compiled-code cache failure while deploying `name`.
fn compile_error(name: &FunctionName, source: CompileError) -> DeployError {
    DeployError::Compile {
        name: name.to_string(),
        source,
    }
}

/// A failure to load `name`'s code while deploying it.
fn load_error(name: &FunctionName, e: LoadError) -> DeployError {
    match e {
        LoadError::Compile(source) => compile_error(name, source),
        LoadError::Imports(detail) => DeployError::Imports {
            name: name.to_string(),
            import: missing_import(&detail),
            detail,
        },
        LoadError::Task(detail) => DeployError::Internal {
            name: name.to_string(),
            detail,
        },
    }
}

/// The import named in wasmtime's link error ("component imports instance
/// `wasi:foo/bar@1.0.0`, but a matching implementation was not found in the linker:
/// instance export `f` has the wrong type: function implementation is missing"): the
/// interface, with the function when one is named.
fn missing_import(detail: &str) -> String {
    let quoted = |after: &str| {
        let rest = detail.split_once(after)?.1;
        let rest = rest.split_once('`')?.1;
        Some(rest.split_once('`')?.0.to_string())
    };
    match (quoted("imports "), quoted("export ")) {
        (Some(interface), Some(function)) => format!("{interface}#{function}"),
        (Some(interface), None) => interface,
        _ => "an interface".to_string(),
    }
}

/// Whether a version's HTTP requests go through the pool of reused instances: 0.3
/// handlers always (its workers drive their async calls), 0.2 handlers only when reused.
fn pooled(exports: &Exports, policy: &InstancePolicy) -> bool {
    exports.http && (exports.world == HttpWorld::P3 || policy.reuses())
}

/// What a manifest asks its component to export.
#[derive(Clone, Copy)]
pub(crate) struct Wants {
    /// An HTTP handler (no `[[events]]` or `[[schedule]]`, or a route).
    pub http: bool,
    /// An event handler (`[[events]]` or `[[schedule]]`).
    pub events: bool,
}

/// How long a delivery may stay unacknowledged: the handler's timeout plus a margin.
fn ack_wait(limits: &FunctionLimits) -> std::time::Duration {
    limits.timeout + std::time::Duration::from_secs(5)
}

impl Node {
    /// Validates, compiles and links a version without touching what is deployed.
    async fn prepare(
        &self,
        expected: &FunctionName,
        manifest_text: &str,
        artifact: &str,
        snapshot: &Snapshot,
        lazy: bool,
    ) -> Result<Prepared, DeployError> {
        let Checked { manifest, route } = check_manifest(expected.as_str(), manifest_text)?;
        let name = manifest.name.clone();
        let limits = self.limits.resolve(&manifest.limits)?;
        let schedules = manifest.schedules().map_err(DeployError::Schedule)?;
        for (i, s) in schedules.iter().enumerate() {
            s.check_interval(i + 1, self.limits.timers.min_interval)
                .map_err(DeployError::Schedule)?;
        }
        let secrets = self.function_secrets(name.as_str()).await;
        let caps = Deployed::configure(&DeployContext {
            function: name.as_str(),
            manifest: &manifest,
            limits: &limits,
            secrets: &secrets,
            node: &NodeServices {
                state: self.state.clone(),
                metrics: self.metrics.clone(),
                admin: self.admin,
                timers: self.limits.timers,
            },
        })?;
        if !self.control.has_artifact(artifact).await? {
            return Err(ControlError::MissingArtifact(artifact.to_string()).into());
        }
        // A function handles HTTP, events, or both: whichever it exports.
        let triggered = !manifest.events.is_empty() || !manifest.schedule.is_empty();
        let wants = Wants {
            http: !triggered || manifest.http.route.is_some(),
            events: triggered,
        };
        let exports = self.exports(&name, artifact, !lazy, wants).await?;
        if wants.events && !exports.events {
            return Err(DeployError::NoEventHandler {
                name: name.to_string(),
                detail: exports.events_error.clone().unwrap_or_default(),
                toolchain: exports.toolchain,
            });
        }
        if wants.http && !exports.http {
            return Err(DeployError::NoHandler {
                name: name.to_string(),
                detail: exports.http_error.clone().unwrap_or_default(),
                toolchain: exports.toolchain,
            });
        }
        let route = match exports.http {
            true => {
                snapshot.routes.check(&route, &name)?;
                Some(route)
            }
            false => None,
        };
        let policy = self
            .limits
            .instances
            .resolve(&manifest.instances, exports.http.then_some(exports.world))
            .map_err(|source| DeployError::Instances {
                name: name.to_string(),
                source,
            })?;
        // Code reused through the pool runs on the engine with the async ABI: have it
        // compiled now rather than on the first request.
        let flavor = Flavor::needed(exports.concurrent, pooled(&exports, &policy));
        if !lazy {
            self.code
                .get_unsaved(&self.code.slot(artifact, flavor), None)
                .await
                .map_err(|e| load_error(&name, e))?;
        }
        Ok(Prepared {
            name,
            manifest,
            route,
            limits,
            policy,
            caps,
            exports,
            schedules,
        })
    }

    /// What `artifact` exports. Loads (and so verifies, compiles if needed, links) its
    /// code unless `lazy` and this node has linked it before (a restart), in which case
    /// the facts recorded then serve and the code loads on the first invocation. A
    /// component not linked here before has its import and export names read first:
    /// they choose the engine, and a component lacking what `wants` asks for is refused
    /// before it is compiled.
    async fn exports(
        &self,
        name: &FunctionName,
        artifact: &str,
        load: bool,
        wants: Wants,
    ) -> Result<Exports, DeployError> {
        let key = self.exports_key(artifact);
        let recorded = self
            .engine
            .index()
            .exports(&key)
            .map_err(|source| compile_error(name, source))?
            .map(Exports::from_bits);
        let (concurrent, toolchain, wasm) = match recorded {
            Some(exports) if !load => return Ok(exports),
            Some(exports) => (exports.concurrent, Toolchain::Unknown, None),
            None => {
                let (facts, wasm) = self.facts(name, artifact).await?;
                if let Some(refused) = Exports::lacking(&facts, wants) {
                    return Ok(refused);
                }
                // The bytes just read serve the compile too: not fetched (and hashed) twice.
                (facts.uses_wasi_03(), facts.toolchain(), Some(wasm))
            }
        };
        let slot = self.code.slot(artifact, Flavor::needed(concurrent, false));
        let linked = self
            .code
            .get_unsaved(&slot, wasm)
            .await
            .map_err(|e| load_error(name, e))?;
        // Recorded (with the compiled code) only once the deploy is accepted.
        Ok(Exports {
            toolchain,
            ..Exports::linked(&linked)
        })
    }

    /// `artifact`'s import and export names, read without compiling it, and its bytes.
    async fn facts(
        &self,
        name: &FunctionName,
        artifact: &str,
    ) -> Result<(ComponentFacts, Vec<u8>), DeployError> {
        let wasm = self
            .control
            .fetch_artifact(artifact)
            .await
            .map_err(|e| compile_error(name, e.into()))?;
        skiff_core::record::check_component_header(&wasm)
            .map_err(|e| compile_error(name, e.into()))?;
        let facts = ComponentFacts::scan(&wasm)
            .map_err(|e| compile_error(name, CompileError::Malformed(e.to_string())))?;
        Ok((facts, wasm))
    }

    /// Where what an artifact exports is recorded: per engine and Skiff version, since
    /// both decide whether it links.
    pub(super) fn exports_key(&self, artifact: &str) -> String {
        format!(
            "{artifact}-{}-{}",
            self.engine.compat(),
            env!("CARGO_PKG_VERSION")
        )
    }

    async fn install(&self, p: Prepared, record: FunctionRecord) -> Arc<Deployment> {
        let name = p.name.clone();
        let d = self.build(p, record).await;
        self.swap_in(vec![(name, d.clone())]);
        d
    }

    /// The deployment a prepared version becomes (not yet serving).
    async fn build(&self, p: Prepared, record: FunctionRecord) -> Arc<Deployment> {
        let mut triggers: Vec<(EventTrigger, ConsumerSpec)> = p
            .manifest
            .events
            .iter()
            .map(|t| {
                let spec = ConsumerSpec::new(&record.name, &t.topic, ack_wait(&p.limits));
                (t.clone(), spec)
            })
            .collect();
        // Each schedule's fires come through a consumer of its own topic, with its own
        // attempts and backoff.
        for (i, s) in p.schedules.iter().enumerate() {
            let trigger = EventTrigger {
                topic: skiff_core::schedule::topic(&record.name, i),
                max_attempts: s.max_attempts,
                backoff: skiff_core::manifest::Timeout(s.backoff),
                concurrency: None,
            };
            let spec = ConsumerSpec::new(&record.name, &trigger.topic, ack_wait(&p.limits));
            triggers.push((trigger, spec));
        }
        let handles_events = !p.triggers_empty();
        if !p.schedules.is_empty() {
            self.metrics.schedules.prepare(&record.name);
        }
        let spec = Arc::new(SandboxSpec {
            function: record.name.clone(),
            version: record.version,
            limits: p.limits,
            caps: p.caps,
        });
        let pooled = pooled(&p.exports, &p.policy);
        let code = self.code.slot(
            &record.artifact,
            Flavor::needed(p.exports.concurrent, pooled),
        );
        let metrics = FnMetrics::new(&self.metrics, &record.name, p.exports.http, handles_events);
        let pool = pooled.then(|| {
            HttpPool::new(
                spec.clone(),
                p.policy,
                code.clone(),
                metrics.clone(),
                self.pool_deps(),
            )
        });
        let events = EventPool::new(&record.name, p.policy, metrics.clone());
        Arc::new(Deployment {
            metrics,
            events,
            code,
            spec,
            policy: p.policy,
            pool,
            slots: Arc::new(Semaphore::new(p.limits.concurrency as usize)),
            record,
            route: p.route,
            exports: p.exports,
            triggers,
            schedules: p.schedules,
        })
    }

    /// Makes `deployments` serve, in one swap of the snapshot (a restart brings back
    /// thousands at once: one copy of the tables, not one per function).
    fn swap_in(&self, deployments: Vec<(FunctionName, Arc<Deployment>)>) {
        self.swap(move |old| {
            let mut routes = old.routes.clone();
            let mut functions = old.functions.clone();
            for (name, d) in deployments {
                // Only a function already deployed can own routes (and the scan is O(n)).
                if functions.contains_key(&name) {
                    routes.remove_owner(&name);
                }
                // Checked under the same lock in `prepare`; an error here would be a bug.
                if let Some(route) = &d.route
                    && let Err(e) = routes.insert(route, name.clone())
                {
                    tracing::error!(function = %name, error = %e, "route conflict after check");
                }
                functions.insert(name, d);
            }
            Snapshot { routes, functions }
        });
    }

    /// Deploys a new version of `name`; returns it once it serves.
    pub async fn deploy(
        self: &Arc<Self>,
        name: &str,
        manifest_text: &str,
        artifact: &str,
    ) -> Result<Arc<Deployment>, DeployError> {
        let path_name = FunctionName::new(name)?;
        let _guard = self.changes.lock().await;
        let prepared = match self
            .prepare(&path_name, manifest_text, artifact, &self.snapshot(), false)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                self.refused(artifact).await;
                return Err(e);
            }
        };
        self.accepted(artifact, &prepared.exports).await?;
        let record = self.control.deploy(name, manifest_text, artifact).await?;
        let d = self.install(prepared, record).await;
        self.announce_or_retry(&d).await?;
        tracing::info!(function = name, version = d.record.version, route = ?d.route.as_ref().map(ToString::to_string), "deployed");
        Ok(d)
    }

    /// Deploys `record` exactly as the cluster registry has it (its version included);
    /// a no-op when that version already serves. The artifact must be stored locally.
    pub async fn apply(self: &Arc<Self>, record: FunctionRecord) -> Result<bool, DeployError> {
        let name = FunctionName::new(&record.name)?;
        let _guard = self.changes.lock().await;
        let snapshot = self.snapshot();
        if let Some(serving) = snapshot.get(name.as_str()).map(|d| d.record.version) {
            if serving == record.version {
                return Ok(false);
            }
            if serving > record.version {
                return Err(DeployError::Older {
                    name: record.name,
                    serving,
                    offered: record.version,
                });
            }
        }
        let prepared = match self
            .prepare(&name, &record.manifest, &record.artifact, &snapshot, false)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                self.refused(&record.artifact).await;
                return Err(e);
            }
        };
        self.accepted(&record.artifact, &prepared.exports).await?;
        // A function this node starts hosting serves only once its state copy has caught
        // up with its shard: never a read older than what the cluster acknowledged.
        self.state
            .host(name.as_str())
            .await
            .map_err(|source| DeployError::State {
                name: record.name.clone(),
                source,
            })?;
        self.control.put(&record).await?;
        let d = self.install(prepared, record).await;
        self.announce_or_retry(&d).await?;
        tracing::info!(function = %d.record.name, version = d.record.version, "deployed from the cluster registry");
        Ok(true)
    }

    /// Brings back every recorded deployment (at start). A version that no longer loads
    /// is logged and skipped so that one broken function does not keep the node down.
    pub async fn restore(self: &Arc<Self>) -> Result<usize, ControlError> {
        let _guard = self.changes.lock().await;
        let mut ready = Vec::new();
        let empty = Snapshot::default();
        for record in self.control.records().await? {
            let prepared = match FunctionName::new(&record.name) {
                Ok(name) => {
                    self.prepare(&name, &record.manifest, &record.artifact, &empty, true)
                        .await
                }
                Err(e) => Err(e.into()),
            };
            match prepared {
                Ok(p) => {
                    // What had to be linked anew (a new engine or Skiff version) is kept.
                    if let Err(e) = self.accepted(&record.artifact, &p.exports).await {
                        tracing::warn!(function = %record.name, error = %e, "restored, but its compiled code was not cached");
                    }
                    let name = p.name.clone();
                    // In a cluster, waits until the copy caught up (when NATS answers).
                    if let Err(e) = self.state.host(name.as_str()).await {
                        tracing::warn!(function = %record.name, error = %e, "restored with the state copy it has; it catches up in the background");
                    }
                    ready.push((name, self.build(p, record).await));
                }
                Err(e) => {
                    tracing::error!(function = %record.name, version = record.version, error = %e, "cannot restore deployment; redeploy it")
                }
            }
        }
        let restored: Vec<Arc<Deployment>> = ready.iter().map(|(_, d)| d.clone()).collect();
        self.swap_in(ready);
        for d in &restored {
            if let Err(e) = self.announce_deployed(d).await {
                // The bus may not be reachable yet (NATS down at start): keep trying.
                tracing::warn!(function = %d.record.name, error = %e, "cannot start event triggers yet; retrying until the event bus answers");
                tokio::spawn(self.clone().announce_later(d.clone()));
            }
            tracing::debug!(function = %d.record.name, version = d.record.version, "restored");
        }
        tracing::info!(functions = restored.len(), "restored");
        if let Err(e) = self.collect().await {
            tracing::warn!(error = %e, "at start");
        }
        Ok(restored.len())
    }

    /// Tells the hook that `d` serves; if it cannot yet, keeps trying in the background
    /// and says so.
    async fn announce_or_retry(self: &Arc<Self>, d: &Arc<Deployment>) -> Result<(), DeployError> {
        match self.announce_deployed(d).await {
            Ok(()) => Ok(()),
            Err(source) => {
                tokio::spawn(self.clone().announce_later(d.clone()));
                Err(DeployError::Bus {
                    name: d.record.name.clone(),
                    version: d.record.version,
                    source,
                })
            }
        }
    }

    /// Tells the hook that `d` serves, retrying until it succeeds, unless another version
    /// or a removal took its place meanwhile (which announced itself).
    async fn announce_later(self: Arc<Self>, d: Arc<Deployment>) {
        let mut wait = Duration::from_millis(250);
        loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
            let _guard = self.changes.lock().await;
            let current = self.snapshot();
            if !current
                .get(&d.record.name)
                .is_some_and(|c| Arc::ptr_eq(c, &d))
            {
                return;
            }
            match self.announce_deployed(&d).await {
                Ok(()) => {
                    tracing::info!(function = %d.record.name, "event triggers started");
                    return;
                }
                Err(e) => {
                    tracing::debug!(function = %d.record.name, error = %e, "event triggers still wait")
                }
            }
        }
    }

    /// Removes `name`: new requests stop at once, running ones finish. Returns whether
    /// it was deployed.
    pub async fn remove(self: &Arc<Self>, name: &str) -> Result<bool, ControlError> {
        self.remove_as(name, true).await
    }

    /// Lets `name` go from this node (a cluster moved it to other nodes): as
    /// [`Node::remove`], but what it shares with its other nodes (event consumers) stays.
    pub async fn release(self: &Arc<Self>, name: &str) -> Result<bool, ControlError> {
        self.remove_as(name, false).await
    }

    async fn remove_as(self: &Arc<Self>, name: &str, gone: bool) -> Result<bool, ControlError> {
        let Ok(name) = FunctionName::new(name) else {
            return Ok(false);
        };
        let _guard = self.changes.lock().await;
        let existed = self.control.remove(name.as_str()).await?;
        self.swap(|old| {
            let mut routes = old.routes.clone();
            routes.remove_owner(&name);
            let mut functions = old.functions.clone();
            functions.remove(&name);
            Snapshot { routes, functions }
        });
        self.announce_removed(name.as_str(), gone).await;
        self.state.release(name.as_str());
        if existed {
            tracing::info!(function = %name, "removed");
            // Its artifact and compiled code, unless another version uses them.
            if let Err(e) = self.collect().await {
                tracing::warn!(error = %e, "after removing `{name}`");
            }
        }
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::missing_import;

    #[test]
    fn the_missing_import_is_named_plainly() {
        assert_eq!(
            missing_import(
                "component imports instance `example:missing/oracle`, but a matching implementation was not found in the linker: instance `example:missing/oracle` not found"
            ),
            "example:missing/oracle"
        );
        assert_eq!(
            missing_import(
                "component imports instance `wasi:cli/environment@0.2.0`, but a matching implementation was not found in the linker: instance export `get-flags` has the wrong type: function implementation is missing"
            ),
            "wasi:cli/environment@0.2.0#get-flags"
        );
        assert_eq!(missing_import("something else"), "an interface");
    }
}
