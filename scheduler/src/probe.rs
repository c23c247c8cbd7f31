//! Direct health probes: while NATS is unreachable (or has not answered since start), the
//! scheduler asks every node it knows for its load report over the node's admin API
//! (`GET /v1/report`) several times a second. A node that answers stays routable; one
//! that does not is dropped like a node whose reports stopped, and taken back once it
//! answers again. While NATS is connected, a node whose reports stopped is probed once
//! before it is dropped: the reports may have stopped only because it, or this scheduler,
//! lost its NATS server.

use crate::shared::Scheduler;
use bytes::Bytes;
use http::Method;
use skiff_core::report::{NodeReport, NodeState, REPORT_EVERY_MS};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Probes the known nodes whenever NATS is not connected, for as long as the scheduler runs.
pub async fn run(s: Arc<Scheduler>) {
    let mut probing = false;
    loop {
        tokio::time::sleep(Duration::from_millis(REPORT_EVERY_MS)).await;
        for (report, _, _) in s.live.snapshot(Instant::now()) {
            s.remember(&report);
        }
        if s.nats_connected() {
            if probing {
                tracing::info!("NATS answers: node reports replace direct probes");
                probing = false;
            }
            continue;
        }
        if !probing {
            tracing::warn!("NATS unreachable: probing the known nodes directly");
            probing = true;
        }
        let targets = s.known_nodes();
        let answers =
            futures::future::join_all(targets.iter().map(|(node, admin)| probe(&s, node, admin)))
                .await;
        for report in answers.into_iter().flatten() {
            if report.state == NodeState::Left {
                s.forget(&report.node);
            }
            s.live.report(report, Instant::now());
        }
    }
}

/// One node's report, or `None` (logged) if it did not give one.
pub(crate) async fn probe(s: &Scheduler, node: &str, admin: &str) -> Option<NodeReport> {
    let call = s.call(admin, Method::GET, "/v1/report", Bytes::new());
    let answer = match tokio::time::timeout(PROBE_TIMEOUT, call).await {
        Ok(Ok(body)) => body,
        Ok(Err((status, why))) => {
            tracing::debug!(node, %status, error = %why, "probe failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(node, "probe timed out");
            return None;
        }
    };
    match serde_json::from_slice::<NodeReport>(&answer) {
        Ok(r) if r.node == node => Some(r),
        Ok(r) => {
            tracing::warn!(node, answered = %r.node, "another node answers at this node's admin address");
            None
        }
        Err(e) => {
            tracing::warn!(node, error = %e, "unreadable probe answer");
            None
        }
    }
}
