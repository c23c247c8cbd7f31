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

use crate::engine::{CompileError, Flavor, NodeEngine};
use crate::host::InstanceState;
use crate::host::bindings::GuestPre;
use arc_swap::ArcSwapOption;
use skiff_core::api::CodeSource;
use skiff_core::control::ControlStore;
use skiff_core::instances::HttpWorld;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;
use wasmtime::component::Linker;
use wasmtime_wasi_http::handler::ProxyPre;

/// A component pre-linked as an HTTP handler of either world.
pub type HttpPre = ProxyPre<InstanceState>;

/// A component loaded and pre-linked, ready to instantiate.
pub struct Linked {
    /// The engine it was compiled for: its stores are made on it.
    pub engine: wasmtime::Engine,
    /// Which of the node's engines that is (`Concurrent` when it was asked for `Plain`
    /// but needs the async ABI).
    pub flavor: Flavor,
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
    /// Freshly compiled code not yet in the precompiled cache: written by
    /// [`CodeCache::save`] once the deploy succeeded, dropped with a refused one.
    unsaved: Mutex<Option<Vec<u8>>>,
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

/// The code of one artifact: loaded or not, shared by every deployment of it. A
/// deployment holds its slot, so an invocation reaches loaded code without taking any
/// lock of the cache (an atomic load and a timestamp).
pub struct CodeSlot {
    artifact: String,
    flavor: Flavor,
    linked: ArcSwapOption<Linked>,
    /// When it was last used, in ms since the cache started.
    used: AtomicU64,
    /// One load at a time per artifact; concurrent callers wait for it.
    loading: tokio::sync::Mutex<()>,
}

impl CodeSlot {
    /// The artifact (sha256) it holds the code of.
    pub fn artifact(&self) -> &str {
        &self.artifact
    }
}

#[derive(Default)]
struct Index {
    /// Every slot a deployment still holds, by artifact and engine.
    slots: HashMap<(String, Flavor), Weak<CodeSlot>>,
    /// The slots whose code is in memory.
    resident: Vec<Arc<CodeSlot>>,
}

/// The node's loaded components, by artifact sha256.
pub struct CodeCache {
    engine: NodeEngine,
    plain: Linker<InstanceState>,
    concurrent: Linker<InstanceState>,
    control: Arc<dyn ControlStore>,
    capacity: usize,
    started: Instant,
    /// Taken to find or make a slot (at deploy) and when code loads or is evicted —
    /// never by an invocation whose code is in memory.
    index: Mutex<Index>,
}

impl CodeCache {
    /// A cache of at most `capacity` (at least 1) loaded components.
    pub fn new(
        engine: NodeEngine,
        control: Arc<dyn ControlStore>,
        capacity: usize,
    ) -> wasmtime::Result<Self> {
        Ok(CodeCache {
            plain: crate::host::linker(engine.engine(Flavor::Plain))?,
            concurrent: crate::host::linker(engine.engine(Flavor::Concurrent))?,
            engine,
            control,
            capacity: capacity.max(1),
            started: Instant::now(),
            index: Mutex::new(Index::default()),
        })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        match self.index.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The slot of `artifact` compiled for `flavor`, shared with every other holder of it.
    pub fn slot(&self, artifact: &str, flavor: Flavor) -> Arc<CodeSlot> {
        let key = (artifact.to_string(), flavor);
        let mut index = self.index();
        if let Some(slot) = index.slots.get(&key).and_then(Weak::upgrade) {
            return slot;
        }
        index.slots.retain(|_, w| w.strong_count() > 0);
        let slot = Arc::new(CodeSlot {
            artifact: artifact.to_string(),
            flavor,
            linked: ArcSwapOption::empty(),
            used: AtomicU64::new(0),
            loading: tokio::sync::Mutex::new(()),
        });
        index.slots.insert(key, Arc::downgrade(&slot));
        slot
    }

    /// The linked code of `slot` (of a deployment that serves), loading it if it is not
    /// in memory, and caching what had to be compiled. Concurrent callers share one
    /// load; a failed load is not cached.
    pub async fn get(&self, slot: &Arc<CodeSlot>) -> Result<Arc<Linked>, LoadError> {
        if let Some(linked) = slot.linked.load_full() {
            slot.used.store(self.now(), Ordering::Relaxed);
            return Ok(linked);
        }
        let linked = self.get_unsaved(slot, None).await?;
        self.save(&slot.artifact).await?;
        Ok(linked)
    }

    /// As [`CodeCache::get`], for a deploy not yet accepted: freshly compiled code stays
    /// in memory only, until [`CodeCache::save`] (or [`CodeCache::discard`]). `wasm`:
    /// the artifact's bytes when the caller already fetched them (else they are fetched
    /// if a compile is needed).
    pub async fn get_unsaved(
        &self,
        slot: &Arc<CodeSlot>,
        wasm: Option<Vec<u8>>,
    ) -> Result<Arc<Linked>, LoadError> {
        if let Some(linked) = slot.linked.load_full() {
            slot.used.store(self.now(), Ordering::Relaxed);
            return Ok(linked);
        }
        let _loading = slot.loading.lock().await;
        if let Some(linked) = slot.linked.load_full() {
            return Ok(linked);
        }
        let linked = self.load(&slot.artifact, slot.flavor, wasm).await?;
        slot.linked.store(Some(linked.clone()));
        slot.used.store(self.now(), Ordering::Relaxed);
        self.admit(slot.clone());
        Ok(linked)
    }

    /// Counts `slot` as in memory, evicting the least recently used beyond capacity;
    /// invocations already holding evicted code finish on it.
    fn admit(&self, slot: Arc<CodeSlot>) {
        let mut index = self.index();
        index.resident.push(slot);
        while index.resident.len() > self.capacity {
            let Some((oldest, _)) = index
                .resident
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.used.load(Ordering::Relaxed))
            else {
                break;
            };
            let evicted = index.resident.swap_remove(oldest);
            evicted.linked.store(None);
        }
    }

    /// Whether `artifact`'s code is in memory now (for either engine), and from where
    /// it came.
    pub fn loaded(&self, artifact: &str) -> Option<CodeSource> {
        let index = self.index();
        [Flavor::Concurrent, Flavor::Plain]
            .into_iter()
            .find_map(|f| {
                let slot = index.slots.get(&(artifact.to_string(), f))?.upgrade()?;
                slot.linked.load().as_ref().map(|l| l.source)
            })
    }

    /// Components in memory now.
    pub fn len(&self) -> usize {
        self.index().resident.len()
    }

    /// Whether no component is in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most components kept in memory.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    async fn load(
        &self,
        artifact: &str,
        flavor: Flavor,
        wasm: Option<Vec<u8>>,
    ) -> Result<Arc<Linked>, LoadError> {
        let (engine, owned) = (self.engine.clone(), artifact.to_string());
        let cached = tokio::task::spawn_blocking(move || engine.load_cached(&owned, flavor))
            .await
            .map_err(|e| LoadError::Task(e.to_string()))??;
        let (component, source, flavor, unsaved) = match cached {
            Some(c) => (c, CodeSource::Cache, flavor, None),
            None => {
                let wasm = match wasm {
                    Some(w) => w,
                    None => self
                        .control
                        .fetch_artifact(artifact)
                        .await
                        .map_err(CompileError::from)?,
                };
                let (c, compiled, flavor) = self.compile(wasm, flavor).await?;
                (c, CodeSource::Compiled, flavor, Some(compiled))
            }
        };
        let linker = match flavor {
            Flavor::Plain => &self.plain,
            Flavor::Concurrent => &self.concurrent,
        };
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Imports(format!("{e:#}")))?;
        let (http, http_error) = http_pre(&pre);
        let (handler, handler_error) = match GuestPre::new(pre) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        Ok(Arc::new(Linked {
            engine: component.engine().clone(),
            flavor,
            http,
            handler,
            source,
            http_error,
            handler_error,
            unsaved: Mutex::new(unsaved),
        }))
    }
}

impl CodeCache {
    /// Compiles `wasm` for `flavor`. Code that does not compile without the async ABI
    /// (a component that uses it without naming a WASI 0.3 interface) is compiled with
    /// it instead; the flavor it ended with is returned.
    async fn compile(
        &self,
        wasm: Vec<u8>,
        flavor: Flavor,
    ) -> Result<(wasmtime::component::Component, Vec<u8>, Flavor), LoadError> {
        let wasm = Arc::new(wasm);
        let attempt = |flavor: Flavor| {
            let (engine, wasm) = (self.engine.clone(), wasm.clone());
            async move {
                tokio::task::spawn_blocking(move || engine.compile(&wasm, flavor))
                    .await
                    .map_err(|e| LoadError::Task(e.to_string()))
            }
        };
        match (attempt(flavor).await?, flavor) {
            (Ok((c, bytes)), _) => Ok((c, bytes, flavor)),
            (Err(CompileError::Invalid(_)), Flavor::Plain) => {
                let (c, bytes) = attempt(Flavor::Concurrent).await??;
                Ok((c, bytes, Flavor::Concurrent))
            }
            (Err(e), _) => Err(e.into()),
        }
    }

    /// Writes the freshly compiled code of `artifact` (either engine's) to the
    /// precompiled cache: called once a deploy that compiled it has succeeded.
    pub async fn save(&self, artifact: &str) -> Result<(), LoadError> {
        for flavor in [Flavor::Plain, Flavor::Concurrent] {
            let linked = {
                let index = self.index();
                let slot = index.slots.get(&(artifact.to_string(), flavor));
                slot.and_then(Weak::upgrade)
                    .and_then(|s| s.linked.load_full())
            };
            let Some(linked) = linked else { continue };
            let unsaved = match linked.unsaved.lock() {
                Ok(mut g) => g.take(),
                Err(p) => p.into_inner().take(),
            };
            let Some(bytes) = unsaved else { continue };
            let (engine, owned, flavor) =
                (self.engine.clone(), artifact.to_string(), linked.flavor);
            tokio::task::spawn_blocking(move || engine.save(&owned, flavor, &bytes))
                .await
                .map_err(|e| LoadError::Task(e.to_string()))??;
        }
        Ok(())
    }

    /// Drops code of `artifact` that was compiled for a deploy that was then refused
    /// (never saved): it leaves memory now rather than when the cache is full.
    pub fn discard(&self, artifact: &str) {
        let unsaved = |s: &Arc<CodeSlot>| {
            s.artifact == artifact
                && s.linked
                    .load()
                    .as_ref()
                    .is_some_and(|l| match l.unsaved.lock() {
                        Ok(g) => g.is_some(),
                        Err(p) => p.into_inner().is_some(),
                    })
        };
        let mut index = self.index();
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut index.resident)
            .into_iter()
            .partition(unsaved);
        index.resident = kept;
        for slot in gone {
            slot.linked.store(None);
        }
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
