//! The wasmtime engine of a node and its compiled-code cache.
//!
//! Two engines per node, both async with epoch interruption (one ticker thread advances
//! both epochs every [`EPOCH_TICK`]) and the pooling allocator with copy-on-write memory
//! images; they differ in the component model's async ABI ([`Flavor`]). A 0.2 component
//! served fresh runs on the engine without it, because turning it on makes every host
//! call of every component pay for wasmtime's concurrent-task bookkeeping (measured:
//! 12–15% of a 0.2 hello's throughput).
//! Components are precompiled once per (artifact sha256, engine compatibility hash); the
//! precompiled file's own sha256 is recorded in the cache's index ([`CodeIndex`], beside
//! the files) and checked before the file is deserialized, so a truncated or altered file
//! is recompiled, never loaded. Within a process, Cranelift's incremental cache
//! ([`incremental`]) keeps compiled functions by their IR, so a redeploy compiles only
//! what changed.

mod incremental;

use crate::files::{FileError, write_durably};
use redb::{Database, ReadableDatabase, TableDefinition};
use skiff_core::limits::NodeLimits;
use skiff_core::record::{HeaderError, check_component_header, sha256_hex};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of timeouts and of yielding to other work.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A failure to set up the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime refused the configuration.
    #[error("cannot configure wasmtime: {0}")]
    Config(String),
    /// The cache's index could not be opened.
    #[error("cannot open the compiled-code index `{path}`: {detail}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The cache folder could not be created.
    #[error("cannot create compiled-code cache `{path}`: {source}")]
    CacheDir {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A failure to turn an artifact into a loadable component.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The header says it is not a component.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// wasmtime could not compile it.
    #[error("the component does not compile: {0}")]
    Invalid(String),
    /// Its sections could not be read (truncated or not WebAssembly inside).
    #[error(
        "the component is malformed: {0}; rebuild it with its toolchain, or check that the file was copied whole"
    )]
    Malformed(String),
    /// The artifact could not be had from the control store.
    #[error(transparent)]
    Artifact(#[from] skiff_core::control::ControlError),
    /// The compiled-code cache could not be read or written.
    #[error("compiled-code cache: {0}")]
    Cache(String),
}

impl From<FileError> for CompileError {
    fn from(e: FileError) -> Self {
        CompileError::Cache(e.to_string())
    }
}

/// Which of a node's two engines code is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// Without the component model's async ABI (`Config::concurrency_support(false)`):
    /// 0.2 components served with a fresh instance per request, and event-only
    /// components that use no async ABI. The cheaper one per host call.
    Plain,
    /// With the async ABI: 0.3 components, and every component whose instances are
    /// reused through wasmtime-wasi-http's `ProxyHandler` (its workers drive calls
    /// with `run_concurrent`, which needs it).
    Concurrent,
}

impl Flavor {
    /// The engine a deployment's code needs: `concurrent` whether the component uses
    /// the async ABI (see [`crate::component::ComponentFacts::uses_wasi_03`]), `pooled`
    /// whether its HTTP instances are reused through the pool.
    pub fn needed(concurrent: bool, pooled: bool) -> Flavor {
        match concurrent || pooled {
            true => Flavor::Concurrent,
            false => Flavor::Plain,
        }
    }
}

/// One engine and its compatibility hash (precompiled code is keyed by it).
#[derive(Clone)]
struct Flavored {
    engine: Engine,
    compat: String,
}

/// A node's two engines together with their compiled-code cache.
#[derive(Clone)]
pub struct NodeEngine {
    plain: Flavored,
    concurrent: Flavored,
    compat: String,
    cache_dir: PathBuf,
    index: std::sync::Arc<CodeIndex>,
}

impl NodeEngine {
    /// Builds the engine for `limits` and starts its epoch ticker.
    pub fn new(limits: &NodeLimits, cache_dir: &Path) -> Result<NodeEngine, EngineError> {
        std::fs::create_dir_all(cache_dir).map_err(|source| EngineError::CacheDir {
            path: cache_dir.to_path_buf(),
            source,
        })?;
        let functions = std::sync::Arc::new(incremental::FunctionCache::default());
        let plain = flavored(limits, Flavor::Plain, functions.clone())?;
        let concurrent = flavored(limits, Flavor::Concurrent, functions)?;
        let compat = format!("{}{}", plain.compat, concurrent.compat);

        let ticker = (plain.engine.weak(), concurrent.engine.weak());
        std::thread::Builder::new()
            .name("skiff-epoch".into())
            .spawn(move || {
                while let (Some(a), Some(b)) = (ticker.0.upgrade(), ticker.1.upgrade()) {
                    a.increment_epoch();
                    b.increment_epoch();
                    drop((a, b));
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| EngineError::Config(format!("cannot start epoch ticker: {e}")))?;

        let index = CodeIndex::open(&cache_dir.join("index.redb"))?;
        Ok(NodeEngine {
            plain,
            concurrent,
            compat,
            cache_dir: cache_dir.to_path_buf(),
            index: std::sync::Arc::new(index),
        })
    }

    /// The wasmtime engine of `flavor`.
    pub fn engine(&self, flavor: Flavor) -> &Engine {
        &self.flavored(flavor).engine
    }

    fn flavored(&self, flavor: Flavor) -> &Flavored {
        match flavor {
            Flavor::Plain => &self.plain,
            Flavor::Concurrent => &self.concurrent,
        }
    }

    /// Both engines' compatibility hashes: what is recorded about linked code is keyed
    /// by it.
    pub fn compat(&self) -> &str {
        &self.compat
    }

    /// The cache's index (also records what linked artifacts export).
    pub fn index(&self) -> &CodeIndex {
        &self.index
    }

    fn key(&self, artifact: &str, flavor: Flavor) -> String {
        format!("{artifact}-{}", self.flavored(flavor).compat)
    }

    /// The component for `artifact` from the verified cache, if it is there and intact.
    /// Blocking: call it off the async executor.
    pub fn load_cached(
        &self,
        artifact: &str,
        flavor: Flavor,
    ) -> Result<Option<Component>, CompileError> {
        let key = self.key(artifact, flavor);
        let path = self.cache_dir.join(format!("{key}.cwasm"));
        let Some(expected) = self.index.compiled_hash(&key)? else {
            return Ok(None);
        };
        let Ok(bytes) = std::fs::read(&path) else {
            return Ok(None);
        };
        if sha256_hex(&bytes) != expected {
            tracing::warn!(artifact, path = %path.display(), "precompiled code does not match its recorded hash; recompiling");
            return Ok(None);
        }
        // SAFETY: the bytes were produced by `precompile_component` of an engine with this
        // compatibility hash and are byte-for-byte what was recorded.
        match unsafe { Component::deserialize(self.engine(flavor), &bytes) } {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                tracing::warn!(artifact, error = %e, "precompiled code unusable; recompiling");
                Ok(None)
            }
        }
    }

    /// Compiles `wasm` (the artifact's verified bytes) for `flavor`; answers the
    /// component and its precompiled bytes, which [`NodeEngine::save`] caches once the
    /// deploy that needed them succeeded (a refused deploy leaves no file behind).
    /// Blocking: call it off the async executor.
    pub fn compile(
        &self,
        wasm: &[u8],
        flavor: Flavor,
    ) -> Result<(Component, Vec<u8>), CompileError> {
        check_component_header(wasm)?;
        let compiled = self
            .engine(flavor)
            .precompile_component(wasm)
            .map_err(|e| CompileError::Invalid(format!("{e:#}")))?;
        // SAFETY: produced just above by this engine.
        let component = unsafe { Component::deserialize(self.engine(flavor), &compiled) }
            .map_err(|e| CompileError::Invalid(format!("{e:#}")))?;
        Ok((component, compiled))
    }

    /// Caches `compiled` (from [`NodeEngine::compile`]) for `artifact`: the file first,
    /// then its hash in the index, so a crash in between leaves a file that is never
    /// loaded (and is collected). Blocking.
    pub fn save(
        &self,
        artifact: &str,
        flavor: Flavor,
        compiled: &[u8],
    ) -> Result<(), CompileError> {
        let key = self.key(artifact, flavor);
        write_durably(&self.cache_dir.join(format!("{key}.cwasm")), compiled)?;
        self.index.set_compiled_hash(&key, &sha256_hex(compiled))
    }

    /// Removes the precompiled files (and their index entries) of every artifact not in
    /// `keep`, and files an older engine or Skiff version left; answers the bytes freed.
    /// Blocking.
    pub fn collect(&self, keep: &std::collections::HashSet<String>) -> Result<u64, CompileError> {
        let current = [&self.plain.compat, &self.concurrent.compat];
        let entries = std::fs::read_dir(&self.cache_dir)
            .map_err(|e| CompileError::Cache(format!("{}: {e}", self.cache_dir.display())))?;
        let mut freed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((artifact, compat)) = name
                .strip_suffix(".cwasm")
                .and_then(|stem| stem.split_once('-'))
            else {
                continue;
            };
            if keep.contains(artifact) && current.iter().any(|c| c.as_str() == compat) {
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            match std::fs::remove_file(entry.path()) {
                Ok(()) => freed += size,
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove unused compiled code")
                }
            }
        }
        self.index.retain(|key| {
            key.split_once('-')
                .is_some_and(|(artifact, _)| keep.contains(artifact))
        })?;
        Ok(freed)
    }
}

/// One engine of `flavor` for `limits`.
fn flavored(
    limits: &NodeLimits,
    flavor: Flavor,
    functions: std::sync::Arc<incremental::FunctionCache>,
) -> Result<Flavored, EngineError> {
    let mut config = Config::new();
    config
        .enable_incremental_compilation(functions)
        .map_err(|e| EngineError::Config(format!("{e:#}")))?;
    config.epoch_interruption(true);
    config.memory_init_cow(true);
    match flavor {
        // WASI 0.3 components (`wasi:http/handler@0.3`) use the component model's async
        // ABI, and `ProxyHandler` drives every reused instance with `run_concurrent`.
        Flavor::Concurrent => {
            config.wasm_component_model_async(true);
        }
        Flavor::Plain => {
            config.concurrency_support(false);
        }
    }
    // Requests hold node slots; reused instances also live between requests (until
    // idle), so each pool has room for twice as many instances as requests at once.
    let slots = limits.node_concurrency.max(1).saturating_mul(2);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(slots);
    // A wasm32-wasip2 component holds a handful of core instances, memories and tables.
    pool.total_core_instances(slots.saturating_mul(8));
    pool.total_memories(slots.saturating_mul(2));
    pool.total_tables(slots.saturating_mul(8));
    pool.total_stacks(slots);
    pool.max_memory_size(usize::try_from(limits.max.memory).unwrap_or(usize::MAX));
    // Reset the first 2 MiB of a slot with memset instead of madvise. A typical Rust
    // guest's memory (1 MiB shadow stack + data + a small heap) fits, so releasing it
    // makes no madvise call and no cross-core TLB flush — measured: hello from ~5.3k to
    // ~7.8k req/s on 2 cores; 1 MiB did not help because the guest's memory exceeds it.
    pool.linear_memory_keep_resident(2 << 20);
    pool.table_keep_resident(1 << 20);
    // On Linux ≥ 6.7, PAGEMAP_SCAN finds the pages an instance actually dirtied and
    // only those are reset: a hello-world touches a few of its ~1.1 MiB, so the
    // memset above shrinks to a few KiB per request (elsewhere: the plain memset).
    pool.pagemap_scan(wasmtime::Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config).map_err(|e| EngineError::Config(format!("{e:#}")))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    Ok(Flavored {
        engine,
        compat: format!("{:016x}", h.finish()),
    })
}

const COMPILED: TableDefinition<&str, &str> = TableDefinition::new("compiled");
const EXPORTS: TableDefinition<&str, u8> = TableDefinition::new("exports");

/// The compiled-code cache's index (`<cache>/index.redb`): the sha256 of each
/// precompiled file, and what each linked artifact exports, so that a restart restores
/// routes without loading any code.
pub struct CodeIndex {
    db: Database,
    path: PathBuf,
}

impl CodeIndex {
    fn open(path: &Path) -> Result<CodeIndex, EngineError> {
        let failed = |e: &dyn std::fmt::Display| EngineError::Index {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        let db = Database::create(path).map_err(|e| failed(&e))?;
        let tx = db.begin_write().map_err(|e| failed(&e))?;
        tx.open_table(COMPILED).map_err(|e| failed(&e))?;
        tx.open_table(EXPORTS).map_err(|e| failed(&e))?;
        tx.commit().map_err(|e| failed(&e))?;
        Ok(CodeIndex {
            db,
            path: path.to_path_buf(),
        })
    }

    fn failed(&self, e: impl std::fmt::Display) -> CompileError {
        CompileError::Cache(format!("{}: {e}", self.path.display()))
    }

    /// The recorded sha256 of a precompiled file, by cache key.
    pub fn compiled_hash(&self, key: &str) -> Result<Option<String>, CompileError> {
        let tx = self.db.begin_read().map_err(|e| self.failed(e))?;
        let table = tx.open_table(COMPILED).map_err(|e| self.failed(e))?;
        let v = table.get(key).map_err(|e| self.failed(e))?;
        Ok(v.map(|v| v.value().to_string()))
    }

    fn set_compiled_hash(&self, key: &str, sha: &str) -> Result<(), CompileError> {
        let tx = self.db.begin_write().map_err(|e| self.failed(e))?;
        tx.open_table(COMPILED)
            .map_err(|e| self.failed(e))?
            .insert(key, sha)
            .map_err(|e| self.failed(e))?;
        tx.commit().map_err(|e| self.failed(e))
    }

    /// Drops every entry (compiled hashes and exports) whose key `keep` refuses.
    fn retain(&self, keep: impl Fn(&str) -> bool) -> Result<(), CompileError> {
        let tx = self.db.begin_write().map_err(|e| self.failed(e))?;
        tx.open_table(COMPILED)
            .map_err(|e| self.failed(e))?
            .retain(|k, _| keep(k))
            .map_err(|e| self.failed(e))?;
        tx.open_table(EXPORTS)
            .map_err(|e| self.failed(e))?
            .retain(|k, _| keep(k))
            .map_err(|e| self.failed(e))?;
        tx.commit().map_err(|e| self.failed(e))
    }

    /// What a linked artifact exports (bits), by artifact, engine and Skiff version.
    pub fn exports(&self, key: &str) -> Result<Option<u8>, CompileError> {
        let tx = self.db.begin_read().map_err(|e| self.failed(e))?;
        let table = tx.open_table(EXPORTS).map_err(|e| self.failed(e))?;
        let v = table.get(key).map_err(|e| self.failed(e))?;
        Ok(v.map(|v| v.value()))
    }

    /// Records what a linked artifact exports.
    pub fn set_exports(&self, key: &str, bits: u8) -> Result<(), CompileError> {
        if self.exports(key)? == Some(bits) {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(|e| self.failed(e))?;
        tx.open_table(EXPORTS)
            .map_err(|e| self.failed(e))?
            .insert(key, bits)
            .map_err(|e| self.failed(e))?;
        tx.commit().map_err(|e| self.failed(e))
    }
}
