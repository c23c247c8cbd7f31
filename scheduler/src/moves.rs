//! Moving functions by hand: `skiff move FUNCTION --to NODE` (the function is pinned there,
//! make-before-break) and `skiff drain NODE` (everything leaves it; the rebalancer moves
//! each function to another node while the drained one keeps serving it, and `--undo`
//! takes the node back). Both answer once the cluster did it, or say what is missing.

use crate::admin::registry_error;
use crate::shared::Scheduler;
use http::StatusCode;
use hyper::body::Incoming;
use skiff_core::api::MoveRequest;
use skiff_core::control::ControlError;
use skiff_core::hosting::Hosting;
use skiff_core::http::{Response, error, json, read_body};
use skiff_core::report::{NodeReport, NodeState};
use std::time::{Duration, Instant};

impl Scheduler {
    /// The live nodes that take new functions (up, not drained), by name.
    fn eligible_nodes(&self, drained: &std::collections::BTreeSet<String>) -> Vec<NodeReport> {
        self.up_nodes()
            .into_iter()
            .filter(|n| !drained.contains(&n.node))
            .collect()
    }

    /// `POST /v1/functions/{name}/move` with a [`MoveRequest`].
    pub(crate) async fn move_function(&self, name: &str, req: http::Request<Incoming>) -> Response {
        let body = match read_body(req, 64 * 1024).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let ask: MoveRequest = match serde_json::from_slice(&body) {
            Ok(m) => m,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("a move is JSON {{\"to\": \"NODE\", \"from\": \"NODE\"?}}: {e}"),
                );
            }
        };
        let record = match self.registry.record(name).await {
            Ok(Some(r)) => r,
            Ok(None) => return self.not_found(name).await,
            Err(e) => return registry_error(e),
        };
        let table = match self.registry.hosting().await {
            Ok(t) => t,
            Err(e) => return registry_error(e),
        };
        let Some((current, revision)) = table.functions.get(name).cloned() else {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "`{name}` runs on every node, so there is nowhere to move it; give it `[placement] nodes = N` in its skiff.toml and deploy again"
                ),
            );
        };
        let eligible = self.eligible_nodes(&table.drained);
        if !eligible.iter().any(|n| n.node == ask.to) {
            let known: Vec<String> = eligible.iter().map(|n| n.node.clone()).collect();
            let why = if table.drained.contains(&ask.to) {
                format!(
                    "node `{}` is drained; take it back with `skiff drain {} --undo` first",
                    ask.to, ask.to
                )
            } else {
                format!(
                    "unknown node `{}`; live nodes that take functions: {}",
                    ask.to,
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                )
            };
            return error(StatusCode::BAD_REQUEST, why);
        }
        let assigned = current.nodes.clone().unwrap_or_default();
        if assigned.contains(&ask.to) {
            return error(
                StatusCode::CONFLICT,
                format!("`{name}` already runs on `{}`", ask.to),
            );
        }
        let from = match &ask.from {
            Some(f) if assigned.contains(f) => f.clone(),
            Some(f) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "`{name}` does not run on `{f}`; it runs on: {}",
                        assigned.join(", ")
                    ),
                );
            }
            None => match self.busiest(&assigned) {
                Some(f) => f,
                None => {
                    return error(
                        StatusCode::CONFLICT,
                        format!(
                            "`{name}` has no node to move from; it is being placed — retry in a moment"
                        ),
                    );
                }
            },
        };
        let mut nodes: Vec<String> = assigned.into_iter().filter(|n| *n != from).collect();
        nodes.push(ask.to.clone());
        let mut leaving = current.leaving.clone();
        leaving.push(from.clone());
        let next = Hosting {
            nodes: Some(nodes),
            leaving,
            wanted: current.wanted,
            pinned: true,
        };
        match self.registry.put_hosting(name, &next, revision).await {
            Ok(_) => {}
            Err(ControlError::Conflict(why)) => {
                return error(StatusCode::CONFLICT, format!("{why}, then move it again"));
            }
            Err(e) => return registry_error(e),
        }
        self.moves.inc();
        tracing::info!(function = name, from = %from, to = %ask.to, why = "by hand", "moving a function");
        let to = ask.to.clone();
        let served = self
            .wait_until(|nodes| {
                nodes.iter().any(|n| {
                    n.node == to
                        && n.functions
                            .iter()
                            .any(|f| f.name == name && f.version == record.version)
                })
            })
            .await;
        if served {
            return self.function(name).await;
        }
        let why = self
            .up_nodes()
            .into_iter()
            .find(|n| n.node == to)
            .and_then(|n| n.failed.into_iter().find(|f| f.name == name))
            .map(|f| format!(": {}", f.error))
            .unwrap_or_default();
        error(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "`{name}` is assigned to `{to}`, but `{to}` did not serve it within {}{why}; `{from}` keeps serving it until it does",
                humantime::format_duration(self.deploy_timeout)
            ),
        )
    }

    /// The node of `among` running the most invocations now.
    fn busiest(&self, among: &[String]) -> Option<String> {
        let nodes = self.up_nodes();
        among
            .iter()
            .max_by_key(|n| {
                nodes
                    .iter()
                    .find(|r| &r.node == *n)
                    .map_or(0, |r| r.in_flight)
            })
            .cloned()
    }

    /// `POST /v1/nodes/{node}/drain` (`undo`: take it back).
    pub(crate) async fn drain_node(&self, node: &str, undo: bool) -> Response {
        let table = match self.registry.hosting().await {
            Ok(t) => t,
            Err(e) => return registry_error(e),
        };
        let live: Vec<NodeReport> = self
            .live
            .snapshot(Instant::now())
            .into_iter()
            .map(|(r, _, _)| r)
            .filter(|r| r.state != NodeState::Left)
            .collect();
        let known = live.iter().any(|n| n.node == node) || table.drained.contains(node);
        if !known {
            let names: Vec<String> = live.iter().map(|n| n.node.clone()).collect();
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown node `{node}`; live nodes: {}",
                    if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    }
                ),
            );
        }
        if undo {
            return match self.registry.set_drained(node, false).await {
                Ok(()) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "node": node, "drained": false }),
                ),
                Err(e) => registry_error(e),
            };
        }
        let hosted: Vec<String> = live
            .iter()
            .find(|n| n.node == node)
            .map(|n| n.functions.iter().map(|f| f.name.clone()).collect())
            .unwrap_or_default();
        let others = self
            .eligible_nodes(&table.drained)
            .into_iter()
            .filter(|n| n.node != node)
            .count();
        if others == 0 && !hosted.is_empty() {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "`{node}` is the last node that takes functions, and it hosts {}: draining it would leave them on no node; start another node first",
                    hosted.join(", ")
                ),
            );
        }
        if let Err(e) = self.registry.set_drained(node, true).await {
            return registry_error(e);
        }
        tracing::info!(node, functions = hosted.len(), "draining a node");
        let emptied = self
            .wait_until(|nodes| {
                nodes
                    .iter()
                    .find(|n| n.node == node)
                    .is_none_or(|n| n.functions.is_empty())
            })
            .await;
        let left: Vec<String> = self
            .up_nodes()
            .into_iter()
            .find(|n| n.node == node)
            .map(|n| n.functions.into_iter().map(|f| f.name).collect())
            .unwrap_or_default();
        if emptied {
            json(
                StatusCode::OK,
                &serde_json::json!({ "node": node, "drained": true, "moved": hosted }),
            )
        } else {
            error(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "`{node}` is drained, but still serves {} after {}: their new nodes do not serve them yet, and it keeps serving until they do; see `skiff status`",
                    left.join(", "),
                    humantime::format_duration(self.deploy_timeout)
                ),
            )
        }
    }

    /// Waits up to the deploy timeout until `done` holds for the live nodes' reports.
    async fn wait_until(&self, done: impl Fn(&[NodeReport]) -> bool) -> bool {
        let deadline = Instant::now() + self.deploy_timeout;
        loop {
            let nodes: Vec<NodeReport> = self
                .live
                .snapshot(Instant::now())
                .into_iter()
                .map(|(r, _, _)| r)
                .collect();
            if done(&nodes) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
