//! The node's side of the console's live view: once a second, the pulse's window
//! (invocations, errors, latency per function) with the node's status becomes a
//! [`LiveSnapshot`] on the hub that `/v1/stream` subscribers read. One sampler per
//! process, whatever the number of subscribers.

use crate::metrics::pulse::Window;
use crate::node::{Lifecycle, Node};
use skiff_core::console::{LiveFunction, LiveHub, LiveNode, LiveSnapshot};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often a snapshot is taken.
pub const EVERY: Duration = Duration::from_secs(1);

/// Samples `node` into `hub` every [`EVERY`] until the process ends.
pub async fn run(node: Arc<Node>, hub: Arc<LiveHub>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    // The first window starts now, not at process start.
    let _ = node.metrics().pulse.sample();
    loop {
        tick.tick().await;
        let secs = last.elapsed().as_secs_f64();
        last = Instant::now();
        hub.publish(&snapshot(&node, secs));
    }
}

/// The node as it is now, with the rates of the window of `secs` seconds that ends now.
pub fn snapshot(node: &Node, secs: f64) -> LiveSnapshot {
    let windows = node.metrics().pulse.sample();
    let status = node.status();
    let mut all = Window::default();
    for w in windows.values() {
        all.merge(w);
    }
    let rates = all.rates(secs);
    let functions = status
        .functions
        .iter()
        .map(|f| {
            let r = windows
                .get(&f.name)
                .map(|w| w.rates(secs))
                .unwrap_or_default();
            LiveFunction {
                name: f.name.clone(),
                version: f.version,
                world: f.world.map(|w| w.to_string()),
                route: f.route.clone(),
                instances: f.in_flight,
                rps: r.rps,
                errors: r.errors,
                p99_ms: r.p99_ms,
                triggers: f.triggers.clone(),
            }
        })
        .collect();
    LiveSnapshot {
        time_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        mode: status.mode.clone(),
        nodes: vec![LiveNode {
            node: status.node.clone(),
            state: match node.lifecycle() {
                Lifecycle::Up => "up",
                Lifecycle::Draining => "draining",
                Lifecycle::Left => "left",
            }
            .to_string(),
            in_flight: status.in_flight,
            capacity: status.capacity,
            rps: rates.rps,
            errors: rates.errors,
            p50_ms: rates.p50_ms,
            p99_ms: rates.p99_ms,
            memory_bytes: crate::cluster::reporter::resident_memory(),
            functions: status.functions.len(),
        }],
        functions,
    }
}
