//! A node's load reports: published on `skiff.nodes.<node>` every
//! [`skiff_core::report::REPORT_EVERY_MS`] ms, and sooner when the
//! number of running invocations moves sharply, so that the scheduler's picture is never
//! more than a fraction of a second old.
//!
//! The same report answers `GET /v1/report` on the node's admin API, so that a scheduler
//! that cannot reach NATS probes the nodes it knows directly.

use crate::node::{Lifecycle, Node};
use skiff_core::console::LiveHub;
use skiff_core::report::{
    Failed, NodeReport, NodeState, REPORT_EVERY_MS, SUBJECT_PREFIX, Served, StoredState,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the reporter looks at the node's load.
const LOOK_EVERY: Duration = Duration::from_millis(25);

/// Publishes one node's load.
pub struct Reporter {
    node: Arc<Node>,
    /// Set once NATS answered; reports are only served over the admin API before.
    client: std::sync::OnceLock<async_nats::Client>,
    url: String,
    admin: String,
    seq: AtomicU64,
    /// Events waiting for the node's consumers, refreshed about once a second.
    queue: AtomicU64,
    /// The console's live view of this node, sent along with each report.
    live: std::sync::OnceLock<Arc<LiveHub>>,
}

/// Resident memory of this process in bytes (0 where /proc is not available).
pub fn resident_memory() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

impl Reporter {
    /// A reporter for `node`, which the scheduler reaches at `url` (functions) and
    /// `admin` (admin API). It publishes once [`Reporter::attach`]ed to NATS.
    pub fn new(node: Arc<Node>, url: String, admin: String) -> Self {
        Reporter {
            node,
            client: std::sync::OnceLock::new(),
            url,
            admin,
            seq: AtomicU64::new(0),
            queue: AtomicU64::new(0),
            live: std::sync::OnceLock::new(),
        }
    }

    /// Sends `hub`'s latest snapshot along with each report.
    pub fn send_live(&self, hub: Arc<LiveHub>) {
        let _ = self.live.set(hub);
    }

    /// Publishes over `client` from now on.
    pub fn attach(&self, client: async_nats::Client) {
        let _ = self.client.set(client);
    }

    /// The node's report now (each one with a higher `seq`).
    pub fn report(&self) -> NodeReport {
        let node = &self.node;
        let snapshot = node.snapshot();
        NodeReport {
            node: node.name().to_string(),
            url: self.url.clone(),
            admin: self.admin.clone(),
            state: match node.lifecycle() {
                Lifecycle::Up => NodeState::Up,
                Lifecycle::Draining => NodeState::Draining,
                Lifecycle::Left => NodeState::Left,
            },
            in_flight: node.in_flight(),
            capacity: node.limits().node_concurrency,
            queue: self.queue.load(Ordering::Relaxed),
            latency_us: node.metrics().recent_latency_us.load(Ordering::Relaxed),
            memory_bytes: resident_memory(),
            uptime_secs: node.started().elapsed().as_secs(),
            functions: snapshot
                .deployments()
                .map(|d| Served {
                    name: d.record.name.clone(),
                    version: d.record.version,
                    route: d.route_pattern(),
                })
                .collect(),
            failed: node
                .failures()
                .into_iter()
                .map(|(name, version, error)| Failed {
                    name,
                    version,
                    error,
                })
                .collect(),
            stored: node
                .state()
                .stored()
                .unwrap_or_default()
                .into_iter()
                .map(|(function, keys, bytes)| StoredState {
                    function,
                    keys,
                    bytes,
                })
                .collect(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            nats: self
                .client
                .get()
                .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected),
            live: self.live.get().and_then(|h| h.latest()),
        }
    }

    /// Publishes a report now (also used on state changes: draining, leaving).
    pub async fn publish(&self) {
        let Some(client) = self.client.get() else {
            return;
        };
        let report = self.report();
        let subject = format!("{SUBJECT_PREFIX}.{}", report.node);
        match serde_json::to_vec(&report) {
            Ok(json) => {
                if let Err(e) = client.publish(subject, json.into()).await {
                    tracing::debug!(error = %e, "cannot publish a load report");
                }
                // Reports are small and frequent; pushing them out now keeps them fresh.
                let _ = client.flush().await;
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a load report"),
        }
    }

    async fn refresh_queue(&self) {
        let mut total = 0;
        let deployments: Vec<_> = self.node.snapshot().deployments().cloned().collect();
        for d in deployments {
            for (_, consumer) in &d.triggers {
                if let Ok(Ok(n)) = tokio::time::timeout(
                    Duration::from_millis(200),
                    self.node.bus().pending(&consumer.name),
                )
                .await
                {
                    total += n;
                }
            }
        }
        self.queue.store(total, Ordering::Relaxed);
    }

    /// Reports until the node leaves.
    pub async fn run(self: Arc<Self>) {
        let every = Duration::from_millis(REPORT_EVERY_MS);
        let mut last_sent = Instant::now() - every;
        let mut last_in_flight = u32::MAX;
        let mut last_state = Lifecycle::Up;
        let mut last_queue = Instant::now() - Duration::from_secs(1);
        let mut last_ended = 0;
        loop {
            let state = self.node.lifecycle();
            if state == Lifecycle::Left {
                return;
            }
            if last_queue.elapsed() >= Duration::from_secs(1) {
                last_queue = Instant::now();
                self.refresh_queue().await;
                // An idle node's latency fades, so that a node the scheduler avoided for
                // being slow is tried again instead of starving on an old average.
                let metrics = self.node.metrics();
                let ended = metrics.ended.load(Ordering::Relaxed);
                if ended == last_ended {
                    let l = metrics.recent_latency_us.load(Ordering::Relaxed);
                    metrics.recent_latency_us.store(l / 2, Ordering::Relaxed);
                }
                last_ended = ended;
            }
            let in_flight = self.node.in_flight();
            let capacity = self.node.limits().node_concurrency;
            // "Sharp": an eighth of capacity (at least two invocations) since the last report.
            let sharp = in_flight.abs_diff(last_in_flight) >= (capacity / 8).max(2);
            if sharp || state != last_state || last_sent.elapsed() >= every {
                self.publish().await;
                last_sent = Instant::now();
                last_in_flight = in_flight;
                last_state = state;
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }
}
