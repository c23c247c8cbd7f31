//! The scheduler's `/metrics`, built fresh at each scrape from the live set and the
//! gateway's counters.

use crate::gateway::GatewayCounts;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use skiff_core::report::NodeReport;
use std::time::Duration;

/// A node as the scheduler's metrics label it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    /// The node's name.
    pub node: String,
}

/// A gateway outcome label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayOutcome {
    /// proxied, unavailable, failed or not_found.
    pub outcome: String,
}

/// What the scheduler knows of where functions run, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct PlacementCounts {
    /// Functions placed on or moved to a node since start.
    pub moves: u64,
    /// Functions hosted on fewer live nodes than they ask for, now.
    pub under_replicated: u64,
}

/// The scheduler's `/metrics`: the live nodes' reported load and what the gateway did,
/// built fresh from `nodes` (report, age, requests sent) at each scrape.
pub fn scheduler_metrics(
    nodes: &[(NodeReport, Duration, u64)],
    counts: &GatewayCounts,
    placement: &PlacementCounts,
) -> String {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let mut registry = Registry::default();
    let live: Gauge = Gauge::default();
    live.set(nodes.len() as i64);
    registry.register(
        "skiff_scheduler_nodes",
        "Live nodes the scheduler routes to",
        live,
    );
    let per_node = |f: &dyn Fn(&NodeReport, u64) -> f64| {
        let family = Family::<NodeLabel, Gauge<f64, AtomicU64>>::default();
        for (r, _, sent) in nodes {
            family
                .get_or_create(&NodeLabel {
                    node: r.node.clone(),
                })
                .set(f(r, *sent));
        }
        family
    };
    registry.register(
        "skiff_scheduler_node_in_flight",
        "Invocations running on each node, as last reported",
        per_node(&|r, _| f64::from(r.in_flight)),
    );
    registry.register(
        "skiff_scheduler_node_capacity",
        "Invocations each node runs at once at most",
        per_node(&|r, _| f64::from(r.capacity)),
    );
    registry.register_with_unit(
        "skiff_scheduler_node_latency",
        "Moving average of each node's invocation durations",
        Unit::Seconds,
        per_node(&|r, _| r.latency_us as f64 / 1e6),
    );
    registry.register_with_unit(
        "skiff_scheduler_node_memory",
        "Resident memory of each node process",
        Unit::Bytes,
        per_node(&|r, _| r.memory_bytes as f64),
    );
    registry.register(
        "skiff_scheduler_node_queue",
        "Events waiting for each node's consumers",
        per_node(&|r, _| r.queue as f64),
    );
    let sent = Family::<NodeLabel, Counter>::default();
    for (r, _, n) in nodes {
        sent.get_or_create(&NodeLabel {
            node: r.node.clone(),
        })
        .inc_by(*n);
    }
    registry.register(
        "skiff_scheduler_node_requests",
        "Requests the scheduler sent to each node",
        sent,
    );
    let outcomes = Family::<GatewayOutcome, Counter>::default();
    for (o, n) in [
        ("proxied", &counts.proxied),
        ("unavailable", &counts.unavailable),
        ("failed", &counts.failed),
        ("not_found", &counts.not_found),
    ] {
        outcomes
            .get_or_create(&GatewayOutcome { outcome: o.into() })
            .inc_by(n.load(Relaxed));
    }
    registry.register(
        "skiff_scheduler_requests",
        "Requests through the scheduler by outcome",
        outcomes,
    );
    let retried: Counter = Counter::default();
    retried.inc_by(counts.retried.load(Relaxed));
    registry.register(
        "skiff_scheduler_retries",
        "Requests sent again to another node after a safe failure",
        retried,
    );
    let moves: Counter = Counter::default();
    moves.inc_by(placement.moves);
    registry.register(
        "skiff_scheduler_function_moves",
        "Functions this scheduler placed on or moved to a node (placed, node lost, drained, balance, by hand)",
        moves,
    );
    let under: Gauge = Gauge::default();
    under.set(i64::try_from(placement.under_replicated).unwrap_or(i64::MAX));
    registry.register(
        "skiff_scheduler_under_replicated_functions",
        "Functions hosted on fewer live nodes than their [placement] nodes asks for",
        under,
    );
    skiff_core::prom::build_info(&mut registry);
    skiff_core::prom::encode(&registry)
}
