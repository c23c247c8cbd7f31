//! Reused instances of one deployed event handler, under the same `[instances]` policy
//! as HTTP: an instance handles `reuse` deliveries, one at a time (the handler export is
//! a synchronous call), and is dropped after `idle` unused. A delivery that fails (trap,
//! timeout, memory, or the handler's `err`) retires its instance: the next delivery, a
//! retry of it included, starts on a fresh one.

use crate::host::InstanceState;
use crate::host::bindings::Guest;
use crate::metrics::FnMetrics;
use skiff_core::instances::InstancePolicy;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;
use wasmtime::Store;

/// An instance waiting for its next delivery.
pub struct Idle {
    /// Its store.
    pub store: Store<InstanceState>,
    /// The instantiated handler.
    pub guest: Guest,
    /// Deliveries it has handled.
    pub served: u32,
    since: Instant,
}

impl Idle {
    /// An instance that has handled `served` deliveries, idle from now.
    pub fn new(store: Store<InstanceState>, guest: Guest, served: u32) -> Idle {
        Idle {
            store,
            guest,
            served,
            since: Instant::now(),
        }
    }
}

/// The idle instances of one deployed event handler.
pub struct EventPool {
    function: String,
    policy: InstancePolicy,
    metrics: FnMetrics,
    idle: Mutex<Vec<Idle>>,
    sweeping: std::sync::atomic::AtomicBool,
}

impl EventPool {
    /// A pool for `function` under `policy`.
    pub fn new(function: &str, policy: InstancePolicy, metrics: FnMetrics) -> Arc<EventPool> {
        Arc::new(EventPool {
            function: function.to_string(),
            policy,
            metrics,
            idle: Mutex::new(Vec::new()),
            sweeping: false.into(),
        })
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Idle>> {
        match self.idle.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// An idle instance still within its policy, if any.
    pub fn take(&self) -> Option<Idle> {
        let mut idle = self.idle();
        self.expire(&mut idle);
        idle.pop()
    }

    /// Takes back an instance that handled a delivery successfully; it is dropped if it
    /// has served its quota.
    pub fn give_back(self: &Arc<Self>, instance: Idle) {
        if instance.served >= self.policy.reuse {
            self.metrics.node().retired(&self.function, "reuse");
            return;
        }
        self.idle().push(instance);
        if !self
            .sweeping
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tokio::spawn(sweep(Arc::downgrade(self), self.policy.idle));
        }
    }

    /// Drops the instances idle for longer than the policy allows.
    fn expire(&self, idle: &mut Vec<Idle>) {
        let before = idle.len();
        idle.retain(|i| i.since.elapsed() < self.policy.idle);
        for _ in idle.len()..before {
            self.metrics.node().retired(&self.function, "idle");
        }
    }
}

/// Drops expired instances while any is idle (so that they give back their pool slots
/// without waiting for a delivery), then stops until the next one is given back.
async fn sweep(pool: Weak<EventPool>, idle: std::time::Duration) {
    let every = (idle / 2).max(std::time::Duration::from_millis(50));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut instances = pool.idle();
        pool.expire(&mut instances);
        if instances.is_empty() {
            pool.sweeping
                .store(false, std::sync::atomic::Ordering::Relaxed);
            return;
        }
    }
}
