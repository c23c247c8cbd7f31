//! `wasi:keyvalue@0.2.0-draft` (store, atomics, batch) and `skiff:function/kv`
//! (compare-and-swap, prefix listing), backed by the node's [`StateBackend`].
//!
//! The function's namespace comes from the deployment, never from the guest: a guest
//! names only a bucket inside its own namespace, so another function's keys are out of
//! reach whatever it passes.

use super::InstanceState;
use super::bindings::{Bucket, KvError};
use super::capability::{Capability, CapabilityError, DeployContext, InstanceContext};
use crate::state::keys::MAX_BUCKET_BYTES;
use crate::state::{KvLimits, Namespace, Op, OpResult, StateBackend};
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::bindings::skiff::function::kv as skiff_kv;
use super::bindings::wasi::keyvalue::{atomics, batch, store};

/// The bucket name a guest gets when it opens "".
pub use skiff_core::state_keys::DEFAULT_BUCKET;

/// Per-invocation key-value context: whose state, under which limits, and (for an event
/// handler) the event its writes are keyed by.
pub struct KvCtx {
    shared: Arc<KvDeployed>,
    /// The triggering event's id and the number of writes made so far.
    cause: Option<(String, u32)>,
}

/// What every invocation of a deployed version shares: whose state, under which limits.
pub struct KvDeployed {
    store: Arc<dyn StateBackend>,
    metrics: Arc<crate::metrics::Metrics>,
    function: String,
    limits: KvLimits,
}

/// Key-value state.
pub struct Kv;

impl Capability for Kv {
    type Deployed = Arc<KvDeployed>;
    type Instance = KvCtx;

    fn link(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
        store::add_to_linker::<_, HasKv>(linker, view)?;
        atomics::add_to_linker::<_, HasKv>(linker, view)?;
        batch::add_to_linker::<_, HasKv>(linker, view)?;
        skiff_kv::add_to_linker::<_, HasKv>(linker, view)?;
        Ok(())
    }

    fn configure(cx: &DeployContext<'_>) -> Result<Self::Deployed, CapabilityError> {
        Ok(Arc::new(KvDeployed {
            store: cx.node.state.clone(),
            metrics: cx.node.metrics.clone(),
            function: cx.function.to_string(),
            limits: cx.limits.kv,
        }))
    }

    /// `cause` is the id of the event being handled, if any.
    fn instantiate(shared: &Self::Deployed, cx: &InstanceContext<'_>) -> KvCtx {
        KvCtx {
            shared: shared.clone(),
            cause: cx.cause.map(|c| (c.to_string(), 0)),
        }
    }
}

impl KvCtx {
    fn observe(&self, op: &str, started: std::time::Instant) {
        self.shared
            .metrics
            .kv(&self.shared.function, op, started.elapsed());
    }

    /// The idempotency key of the next write: (function, event, position, the op
    /// itself). A redelivered handler making the same write at the same position gets
    /// the first result back; a different write applies normally.
    fn next_key(&mut self, op: &Op) -> Option<String> {
        let (cause, n) = self.cause.as_mut()?;
        let digest = serde_json::to_vec(op)
            .map(|b| skiff_core::record::sha256_hex(&b))
            .unwrap_or_default();
        let key = format!(
            "{}/{cause}/{n}/{}",
            self.shared.function,
            &digest[..16.min(digest.len())]
        );
        *n += 1;
        Some(key)
    }
}

/// The view the generated host traits are implemented on.
pub struct KvView<'a> {
    ctx: &'a mut KvCtx,
    table: &'a mut ResourceTable,
}

struct HasKv;

impl HasData for HasKv {
    type Data<'a> = KvView<'a>;
}

fn view(s: &mut InstanceState) -> KvView<'_> {
    KvView {
        ctx: &mut s.caps.kv,
        table: &mut s.table,
    }
}

impl KvView<'_> {
    fn ns(&self, bucket: &Resource<Bucket>) -> Result<Namespace, KvError> {
        Ok(self.table.get(bucket)?.ns.clone())
    }

    async fn write(&mut self, op: Op) -> Result<OpResult, KvError> {
        let started = std::time::Instant::now();
        let name = match &op {
            Op::Set { .. } => "set",
            Op::Delete { .. } => "delete",
            Op::Increment { .. } => "increment",
            Op::CompareAndSwap { .. } => "cas",
            Op::SetMany { .. } => "set_many",
            Op::DeleteMany { .. } => "delete_many",
            Op::Purge { .. } => "purge",
        };
        let key = self.ctx.next_key(&op);
        let store = self.ctx.shared.store.clone();
        let r = store.write_once(op, self.ctx.shared.limits, key).await;
        self.ctx.observe(name, started);
        Ok(r?)
    }

    fn read(&self, op: &str, ns: &Namespace, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let started = std::time::Instant::now();
        let r = self.ctx.shared.store.get(ns, key);
        self.ctx.observe(op, started);
        Ok(r?)
    }
}

impl store::Host for KvView<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, KvError> {
        let bucket = if identifier.is_empty() {
            DEFAULT_BUCKET.to_string()
        } else {
            identifier
        };
        if bucket.len() > MAX_BUCKET_BYTES {
            return Err(KvError::NoSuchStore);
        }
        let ns = Namespace::new(&self.ctx.shared.function, &bucket);
        Ok(self.table.push(Bucket { ns })?)
    }

    fn convert_error(&mut self, err: KvError) -> wasmtime::Result<store::Error> {
        Ok(match err {
            KvError::NoSuchStore => store::Error::NoSuchStore,
            KvError::Other(m) => store::Error::Other(m),
        })
    }
}

impl store::HostBucket for KvView<'_> {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, KvError> {
        let ns = self.ns(&bucket)?;
        self.read("get", &ns, &key)
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), KvError> {
        let ns = self.ns(&bucket)?;
        self.write(Op::Set { ns, key, value }).await?;
        Ok(())
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), KvError> {
        let ns = self.ns(&bucket)?;
        self.write(Op::Delete { ns, key }).await?;
        Ok(())
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, KvError> {
        let ns = self.ns(&bucket)?;
        Ok(self.read("exists", &ns, &key)?.is_some())
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, KvError> {
        let ns = self.ns(&bucket)?;
        let (keys, cursor) = self.ctx.shared.store.list(&ns, "", cursor.unwrap_or(0))?;
        Ok(store::KeyResponse { keys, cursor })
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, KvError> {
        let ns = self.ns(&bucket)?;
        match self.write(Op::Increment { ns, key, delta }).await? {
            OpResult::Incremented(n) => Ok(n),
            other => Err(KvError::Other(format!("unexpected result {other:?}"))),
        }
    }
}

impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, KvError> {
        let ns = self.ns(&bucket)?;
        keys.into_iter()
            .map(|k| Ok(self.read("get", &ns, &k)?.map(|v| (k, v))))
            .collect()
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), KvError> {
        let ns = self.ns(&bucket)?;
        self.write(Op::SetMany {
            ns,
            items: key_values,
        })
        .await?;
        Ok(())
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<(), KvError> {
        let ns = self.ns(&bucket)?;
        self.write(Op::DeleteMany { ns, keys }).await?;
        Ok(())
    }
}

impl skiff_kv::Host for KvView<'_> {
    async fn compare_and_swap(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<bool, KvError> {
        let ns = self.ns(&bucket)?;
        match self
            .write(Op::CompareAndSwap {
                ns,
                key,
                expected,
                new,
            })
            .await?
        {
            OpResult::Swapped(s) => Ok(s),
            other => Err(KvError::Other(format!("unexpected result {other:?}"))),
        }
    }

    async fn get_consistent(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, KvError> {
        let ns = self.ns(&bucket)?;
        let started = std::time::Instant::now();
        let store = self.ctx.shared.store.clone();
        let r = store.get_consistent(&ns, &key).await;
        self.ctx.observe("get_consistent", started);
        Ok(r?)
    }

    async fn list_prefix(
        &mut self,
        bucket: Resource<Bucket>,
        prefix: String,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, KvError> {
        let ns = self.ns(&bucket)?;
        let (keys, cursor) = self
            .ctx
            .shared
            .store
            .list(&ns, &prefix, cursor.unwrap_or(0))?;
        Ok(store::KeyResponse { keys, cursor })
    }
}
