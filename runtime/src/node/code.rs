//! Linked code on demand, in a bounded cache.
//!
//! A deployment names its artifact; the code that runs it — the component loaded from
//! the verified precompiled cache (or compiled) and pre-linked as an HTTP handler and an
//! event handler — is loaded the first time an invocation needs it and kept in a cache
//! of at most `capacity` components, shared by every deployment of the same artifact.
//! The least recently used component is dropped when a new one needs room; invocations
//! already holding it finish on it. So a node holds thousands of idle functions at the
//! cost of their records, and pays a load (a few milliseconds from the precompiled file)
//! when a function that was evicted is called again.

use crate::engine::{CompileError, NodeEngine};
use crate::host::InstanceState;
use crate::host::bindings::GuestPre;
use skiff_core::api::CodeSource;
use skiff_core::control::ControlStore;
use skiff_core::instances::HttpWorld;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;
use wasmtime::component::Linker;
use wasmtime_wasi_http::handler::ProxyPre;

/// A component pre-linked as an HTTP handler of either world.
pub type HttpPre = ProxyPre<InstanceState>;

/// A component loaded and pre-linked, ready to instantiate.
pub struct Linked {
    /// As an HTTP handler, when it exports `wasi:http/handler@0.3` (tried first) or
    /// `wasi:http/incoming-handler@0.2`.
    pub http: Option<HttpPre>,
    /// As an event handler, when it exports `skiff:function/event-handler`.
    pub handler: Option<GuestPre<InstanceState>>,
    /// Where its code came from.
    pub source: CodeSource,
    /// Why it is not an HTTP handler (wasmtime's words), for deploy errors.
    pub http_error: Option<String>,
    /// Why it is not an event handler, for deploy errors.
    pub handler_error: Option<String>,
}

impl Linked {
    /// The HTTP world it implements (0.2 when it handles no HTTP).
    pub fn world(&self) -> HttpWorld {
        match self.http {
            Some(ProxyPre::P3(_)) => HttpWorld::P3,
            _ => HttpWorld::P2,
        }
    }
}

/// Why code could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The artifact did not load or compile.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// The component imports something the node does not provide (wasmtime's words).
    #[error("the component needs an import Skiff does not provide: {0}")]
    Imports(String),
    /// The blocking load task died.
    #[error("the loading task failed: {0}")]
    Task(String),
}

type Slot = Arc<OnceCell<Arc<Linked>>>;

struct Entry {
    slot: Slot,
    used: u64,
}

#[derive(Default)]
struct Lru {
    entries: HashMap<String, Entry>,
    tick: u64,
}

/// The node's loaded components, by artifact sha256.
pub struct CodeCache {
    engine: NodeEngine,
    linker: Linker<InstanceState>,
    control: Arc<dyn ControlStore>,
    capacity: usize,
    lru: Mutex<Lru>,
}

impl CodeCache {
    /// A cache of at most `capacity` (at least 1) loaded components.
    pub fn new(
        engine: NodeEngine,
        linker: Linker<InstanceState>,
        control: Arc<dyn ControlStore>,
        capacity: usize,
    ) -> Self {
        CodeCache {
            engine,
            linker,
            control,
            capacity: capacity.max(1),
            lru: Mutex::new(Lru::default()),
        }
    }

    fn lru(&self) -> std::sync::MutexGuard<'_, Lru> {
        match self.lru.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The slot for `artifact`, marked as just used; makes room for it if it is new.
    fn slot(&self, artifact: &str) -> Slot {
        let mut lru = self.lru();
        lru.tick += 1;
        let tick = lru.tick;
        if let Some(e) = lru.entries.get_mut(artifact) {
            e.used = tick;
            return e.slot.clone();
        }
        while lru.entries.len() >= self.capacity {
            let Some(oldest) = lru
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            lru.entries.remove(&oldest);
        }
        let slot = Slot::default();
        lru.entries.insert(
            artifact.to_string(),
            Entry {
                slot: slot.clone(),
                used: tick,
            },
        );
        slot
    }

    /// The linked code of `artifact`, loading it if it is not in memory. Concurrent
    /// callers share one load; a failed load is not cached.
    pub async fn get(&self, artifact: &str) -> Result<Arc<Linked>, LoadError> {
        let slot = self.slot(artifact);
        slot.get_or_try_init(|| self.load(artifact)).await.cloned()
    }

    /// Whether `artifact`'s code is in memory now, and from where it came.
    pub fn loaded(&self, artifact: &str) -> Option<CodeSource> {
        self.lru()
            .entries
            .get(artifact)
            .and_then(|e| e.slot.get().map(|l| l.source))
    }

    /// Components in memory now.
    pub fn len(&self) -> usize {
        self.lru()
            .entries
            .values()
            .filter(|e| e.slot.initialized())
            .count()
    }

    /// Whether no component is in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most components kept in memory.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    async fn load(&self, artifact: &str) -> Result<Arc<Linked>, LoadError> {
        let (engine, owned) = (self.engine.clone(), artifact.to_string());
        let cached = tokio::task::spawn_blocking(move || engine.load_cached(&owned))
            .await
            .map_err(|e| LoadError::Task(e.to_string()))??;
        let (component, source) = match cached {
            Some(c) => (c, CodeSource::Cache),
            None => {
                let wasm = self
                    .control
                    .fetch_artifact(artifact)
                    .await
                    .map_err(CompileError::from)?;
                let (engine, owned) = (self.engine.clone(), artifact.to_string());
                let c = tokio::task::spawn_blocking(move || engine.compile(&owned, &wasm))
                    .await
                    .map_err(|e| LoadError::Task(e.to_string()))??;
                (c, CodeSource::Compiled)
            }
        };
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Imports(format!("{e:#}")))?;
        let (http, http_error) = http_pre(&pre);
        let (handler, handler_error) = match GuestPre::new(pre) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        Ok(Arc::new(Linked {
            http,
            handler,
            source,
            http_error,
            handler_error,
        }))
    }
}

/// `pre` as an HTTP handler: 0.3 if it exports `wasi:http/handler@0.3`, else 0.2 if it
/// exports `wasi:http/incoming-handler@0.2`, else why neither (wasmtime's words for both).
fn http_pre(
    pre: &wasmtime::component::InstancePre<InstanceState>,
) -> (Option<HttpPre>, Option<String>) {
    use wasmtime_wasi_http::{p2, p3};
    let p3_error = match p3::bindings::ServicePre::new(pre.clone()) {
        Ok(p) => return (Some(ProxyPre::P3(p)), None),
        Err(e) => e,
    };
    match p2::bindings::ProxyPre::new(pre.clone()) {
        Ok(p) => (Some(ProxyPre::P2(p)), None),
        Err(p2_error) => (None, Some(format!("0.2: {p2_error:#}; 0.3: {p3_error:#}"))),
    }
}
