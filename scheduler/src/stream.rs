//! The console's live view of the cluster (`/v1/stream` on the scheduler's admin API):
//! each live node's last second as its reports carry it, and each function summed over
//! the nodes that serve it (requests/s, errors/s and instances added; p99 the worst
//! node's). A snapshot goes out as soon as a report brings a newer second from any node
//! (looked at every 250 ms), and at least once a second: load shows on the console
//! within about 1.5 s of starting (the node's 1 s window, its 200 ms report, this look).

use crate::shared::Scheduler;
use skiff_core::console::{LiveFunction, LiveNode, LiveSnapshot};
use skiff_core::report::{NodeReport, NodeState};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the reports are looked at.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Publishes snapshots until the process ends.
pub async fn run(s: Arc<Scheduler>) {
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut newest_sent = 0;
    let mut sent_at = Instant::now();
    loop {
        tick.tick().await;
        let reports: Vec<NodeReport> = s
            .live
            .snapshot(Instant::now())
            .into_iter()
            .map(|(r, _, _)| r)
            .collect();
        let newest = reports
            .iter()
            .filter_map(|r| r.live.as_ref().map(|l| l.time_ms))
            .max()
            .unwrap_or(0);
        if newest > newest_sent || sent_at.elapsed() >= Duration::from_secs(1) {
            s.stream.publish(&snapshot(&reports));
            newest_sent = newest;
            sent_at = Instant::now();
        }
    }
}

/// The cluster as `reports` show it.
pub fn snapshot(reports: &[NodeReport]) -> LiveSnapshot {
    let mut functions: BTreeMap<String, LiveFunction> = BTreeMap::new();
    let mut nodes = Vec::with_capacity(reports.len());
    for r in reports {
        let own = r.live.as_ref();
        let node = own.and_then(|l| l.nodes.first());
        nodes.push(LiveNode {
            node: r.node.clone(),
            state: match r.state {
                NodeState::Up => "up",
                NodeState::Draining => "draining",
                NodeState::Left => "left",
            }
            .to_string(),
            in_flight: r.in_flight,
            capacity: r.capacity,
            rps: node.map_or(0.0, |n| n.rps),
            errors: node.map_or(0.0, |n| n.errors),
            p50_ms: node.and_then(|n| n.p50_ms),
            p99_ms: node.and_then(|n| n.p99_ms),
            memory_bytes: r.memory_bytes,
            functions: r.functions.len(),
        });
        for f in own.map(|l| l.functions.as_slice()).unwrap_or_default() {
            functions
                .entry(f.name.clone())
                .and_modify(|sum| {
                    sum.version = sum.version.max(f.version);
                    sum.instances += f.instances;
                    sum.rps += f.rps;
                    sum.errors += f.errors;
                    sum.p99_ms = match (sum.p99_ms, f.p99_ms) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                })
                .or_insert_with(|| f.clone());
        }
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    LiveSnapshot {
        time_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        mode: "scheduler".into(),
        nodes,
        functions: functions.into_values().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_core::report::Served;

    fn report(node: &str, rps: f64, p99: f64) -> NodeReport {
        let f = LiveFunction {
            name: "hello".into(),
            version: 2,
            world: Some("wasi:http 0.2".into()),
            route: "/hello/...".into(),
            instances: 1,
            rps,
            errors: 0.5,
            p99_ms: Some(p99),
            triggers: vec![],
        };
        NodeReport {
            node: node.into(),
            url: String::new(),
            admin: String::new(),
            state: NodeState::Up,
            in_flight: 1,
            capacity: 10,
            queue: 0,
            latency_us: 0,
            memory_bytes: 1 << 20,
            uptime_secs: 1,
            functions: vec![Served {
                name: "hello".into(),
                version: 2,
                route: "/hello/...".into(),
            }],
            failed: vec![],
            stored: vec![],
            seq: 1,
            nats: true,
            live: Some(LiveSnapshot {
                time_ms: 1,
                mode: "cluster".into(),
                nodes: vec![LiveNode {
                    node: node.into(),
                    state: "up".into(),
                    in_flight: 1,
                    capacity: 10,
                    rps,
                    errors: 0.5,
                    p50_ms: Some(1.0),
                    p99_ms: Some(p99),
                    memory_bytes: 1 << 20,
                    functions: 1,
                }],
                functions: vec![f],
            }),
        }
    }

    #[test]
    fn functions_sum_over_nodes_and_nodes_keep_their_own() {
        let mut silent = report("n3", 0.0, 0.0);
        silent.live = None;
        let s = snapshot(&[report("n2", 30.0, 9.0), report("n1", 10.0, 4.0), silent]);
        assert_eq!(s.mode, "scheduler");
        let names: Vec<&str> = s.nodes.iter().map(|n| n.node.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n3"]);
        assert_eq!(s.nodes[0].rps, 10.0);
        assert_eq!(
            s.nodes[2].rps, 0.0,
            "a node without a live sample shows none"
        );
        assert_eq!(s.functions.len(), 1);
        let f = &s.functions[0];
        assert_eq!(
            (f.rps, f.errors, f.instances, f.p99_ms),
            (40.0, 1.0, 2, Some(9.0))
        );
    }
}
