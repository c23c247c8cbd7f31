//! Who shares this machine's two cores with whom.
//!
//! libtest runs two tests at once here. Tests that measure time or how work spreads
//! (errors stop within 2 s, p2c beats round robin, a change serves within 3 s) take
//! [`alone`]: nothing else runs beside them, so what they measure is Skiff, not the other
//! test's compiler or cluster. Every other test takes [`beside_others`] (or
//! [`one_at_a_time`], which also keeps cluster tests apart from each other) as its first
//! line.
//!
//! One guard per test, taken first: an `alone` test waits until the running tests end,
//! and tests that start meanwhile wait for it (the lock is fair), so nothing deadlocks.

use tokio::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

static GATE: RwLock<()> = RwLock::const_new(());
static CLUSTERS: Mutex<()> = Mutex::const_new(());

/// Runs the calling test with no other test beside it.
pub async fn alone() -> RwLockWriteGuard<'static, ()> {
    GATE.write().await
}

/// Runs the calling test beside others, but never beside an [`alone`] one.
pub async fn beside_others() -> RwLockReadGuard<'static, ()> {
    GATE.read().await
}

/// [`beside_others`] for a test that is not async.
pub fn beside_others_blocking() -> RwLockReadGuard<'static, ()> {
    GATE.blocking_read()
}

/// A cluster test's turn: beside other tests, but not beside another cluster test (each
/// starts several processes; two clusters at once overload the machine).
pub struct ClusterTurn {
    _one: MutexGuard<'static, ()>,
    _beside: RwLockReadGuard<'static, ()>,
}

/// Waits for a [`ClusterTurn`]. The read side is taken before the mutex, so that a test
/// holding the mutex never waits for an [`alone`] one.
pub async fn one_at_a_time() -> ClusterTurn {
    let beside = beside_others().await;
    ClusterTurn {
        _one: CLUSTERS.lock().await,
        _beside: beside,
    }
}
