//! The admin API's wire types, shared by the node's and the scheduler's admin APIs and
//! the CLI client: every body that crosses the admin API is one of these.
//!
//! Endpoints (all JSON; every one but `/healthz` needs the bearer token when one is set):
//! * `GET  /healthz` — liveness, no token.
//! * `PUT  /v1/artifacts/{sha256}` — upload a component; the body must hash to the name.
//! * `PUT  /v1/functions/{name}` — deploy: [`DeployRequest`] → [`FunctionInfo`].
//! * `GET  /v1/functions` — [`FunctionInfo`] list; `GET /v1/functions/{name}` — one.
//! * `DELETE /v1/functions/{name}` — remove (in-flight invocations finish).
//! * `GET  /v1/status` — [`NodeStatus`].
//! * `GET  /v1/report` on a cluster node — its load report
//!   ([`crate::report::NodeReport`]), as it publishes it; a scheduler that cannot reach
//!   NATS probes the nodes it knows with it.
//!
//! * `PUT  /v1/functions/{name}?wait=all&timeout=30s` — on a scheduler, wait for every live
//!   node (default: one) to serve the new version, at most `timeout`.
//! * `GET  /v1/status` on a scheduler — [`ClusterStatus`]: every live node's last load
//!   report and the deployed functions.
//!
//! Key-value, dead-letter, logs, traces and publishing endpoints are documented in
//! the node's `server::admin`; a scheduler forwards them to a live node (logs and traces:
//! gathered from every node).
//!
//! Errors answer `{"error": "..."}` with a message that names what is wrong and what to do.

use crate::limits::FunctionLimits;
use serde::{Deserialize, Serialize};

/// Lines `GET /v1/functions/{name}/logs` returns unless it asks for `tail`.
pub const DEFAULT_LOG_TAIL: usize = 100;
/// Spans each node keeps for `GET /v1/traces/{id}` (the newest).
pub const MAX_SPANS: usize = 20_000;

/// Body of `PUT /v1/functions/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRequest {
    /// The manifest text (skiff.toml).
    pub manifest: String,
    /// sha256 (hex) of an uploaded artifact.
    pub artifact: String,
}

/// A deployed function as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionInfo {
    /// The function's name.
    pub name: String,
    /// The version now serving.
    pub version: u64,
    /// The route pattern, e.g. `/hello/...` (empty: the function handles no HTTP).
    pub route: String,
    /// Absolute URL of the route's root on this server's listener (empty without a route).
    pub url: String,
    /// Topic patterns of its event triggers.
    #[serde(default)]
    pub triggers: Vec<String>,
    /// sha256 of the component.
    pub artifact: String,
    /// Resolved limits.
    pub limits: FunctionLimits,
    /// The HTTP world its component implements (none: it handles only events).
    #[serde(default)]
    pub world: Option<crate::instances::HttpWorld>,
    /// How its instances are reused.
    #[serde(default)]
    pub instances: Option<crate::instances::InstancePolicy>,
    /// Invocations running now.
    pub in_flight: u32,
    /// Where the running code came from.
    pub code: CodeSource,
    /// Milliseconds since the Unix epoch.
    pub deployed_at_ms: u64,
    /// Nodes serving this version (this node on a node; every node through a scheduler).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Where the cluster places it (through a scheduler only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementInfo>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's name.
    pub node: String,
    /// `embedded` or `cluster`.
    pub mode: String,
    /// The function listener's base URL.
    pub url: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Invocations running now on the node.
    pub in_flight: u32,
    /// Invocations the node runs at once at most.
    pub capacity: u32,
    /// Deployed functions.
    pub functions: Vec<FunctionInfo>,
}

/// Where a cluster places one function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementInfo {
    /// Nodes the manifest (or the scheduler's default) asks for; `None`: every node.
    pub wanted: Option<u32>,
    /// Nodes assigned now (empty with `wanted` unset: every node that is not drained).
    pub assigned: Vec<String>,
    /// Nodes it is moving away from, serving until the assigned ones do.
    pub leaving: Vec<String>,
    /// Moved by hand (`skiff move`): balancing leaves it.
    pub pinned: bool,
    /// Fewer live nodes host it than it asks for.
    pub under_replicated: bool,
}

/// One state shard's stream and the NATS server leading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardView {
    /// The stream, `SKIFF_STATE_<k>`.
    pub stream: String,
    /// The NATS server that leads it now (`None`: no leader, e.g. during an election).
    pub leader: Option<String>,
}

/// `POST /v1/functions/{name}/move`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveRequest {
    /// The node to move it to.
    pub to: String,
    /// The node to move it from (default: the busiest of its nodes).
    #[serde(default)]
    pub from: Option<String>,
}

/// `GET /v1/status` on a scheduler.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Always `scheduler`.
    pub mode: String,
    /// The scheduler's function listener.
    pub url: String,
    /// Seconds since the scheduler started.
    pub uptime_secs: u64,
    /// Live nodes.
    pub nodes: Vec<NodeView>,
    /// Deployed functions.
    pub functions: Vec<FunctionInfo>,
    /// The state shards' streams and their leaders.
    #[serde(default)]
    pub shards: Vec<ShardView>,
    /// Nodes an operator drained.
    #[serde(default)]
    pub drained: Vec<String>,
}

/// One live node as a scheduler sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// Its last load report.
    #[serde(flatten)]
    pub report: crate::report::NodeReport,
    /// How long ago that report arrived.
    pub last_report_ms: u64,
    /// Requests this scheduler sent it.
    pub sent: u64,
}

/// An error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What is wrong and what to do.
    pub error: String,
}

/// Whether the component came from the precompiled cache or was compiled just now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodeSource {
    /// Loaded from a verified precompiled file.
    Cache,
    /// Compiled from the artifact.
    Compiled,
    /// Not in memory now: loaded on the next invocation.
    Unloaded,
}

/// One line a guest printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Milliseconds since the Unix epoch (when the invocation ended).
    pub ts_ms: u64,
    /// The function.
    pub function: String,
    /// Its version.
    pub version: u64,
    /// The invocation that printed it.
    pub invocation: String,
    /// The node it ran on.
    pub node: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The text, without the newline.
    pub line: String,
}

/// One finished invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// The trace.
    pub trace_id: String,
    /// This invocation.
    pub span_id: String,
    /// What caused it.
    pub parent: Option<String>,
    /// The function.
    pub function: String,
    /// `http <path>` or `event <topic>`.
    pub trigger: String,
    /// `ok`, `error`, `trap`, `timeout`, `memory`.
    pub outcome: String,
    /// When it started, ms since the Unix epoch.
    pub start_ms: u64,
    /// How long it took, in microseconds.
    pub duration_us: u64,
    /// The node it ran on.
    pub node: String,
}

/// A page of keys.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct KeyPage {
    /// The keys, in byte order.
    pub keys: Vec<String>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub cursor: Option<u64>,
}

/// The keys of a function's secrets.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SecretKeys {
    /// The function.
    pub function: String,
    /// Its secrets' keys, in order.
    pub keys: Vec<String>,
}

/// An event on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique; stable across redeliveries; used to de-duplicate publication.
    pub id: String,
    /// The topic, e.g. `orders.created`.
    pub topic: String,
    /// The payload.
    pub data: Vec<u8>,
    /// Headers given at publication.
    pub headers: Vec<(String, String)>,
    /// Milliseconds since the Unix epoch.
    pub published_at_ms: u64,
    /// How far the publisher's node had applied its function's part of the cluster's
    /// state log when the event was published: a handler of the same function runs only
    /// once its node's copy has applied at least this far, so it sees every write the
    /// publisher made before publishing (other functions cannot read that state).
    /// 0 (embedded mode, operators): no wait.
    #[serde(default)]
    pub after: u64,
    /// The function whose position `after` is (empty: none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub after_of: String,
    /// Deliver no earlier than this (ms since the epoch); 0: at once.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deliver_at_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// What a node keeps of one schedule: whether it is paused, and its last fire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// Fires are skipped while paused.
    #[serde(default)]
    pub paused: bool,
    /// The slot of the last fire that came from the timer (ms; 0: none yet).
    #[serde(default)]
    pub last_slot_ms: u64,
    /// When the timer fired it.
    #[serde(default)]
    pub last_fired_ms: u64,
    /// `running`, `ok`, `failed: <why>`, `dead-lettered: <why>`, `missed` or `paused`.
    #[serde(default)]
    pub last_outcome: String,
    /// When the last fire settled.
    #[serde(default)]
    pub last_done_ms: u64,
    /// Fires whose handler succeeded (made-up slots included).
    #[serde(default)]
    pub fires: u64,
    /// Slots the catch-up policy dropped.
    #[serde(default)]
    pub misses: u64,
}

/// One schedule as `skiff schedules` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleInfo {
    /// The function.
    pub function: String,
    /// Its position among the function's `[[schedule]]` tables (0-based; the topic's
    /// last token).
    pub index: usize,
    /// `cron … (zone)` or `every …`.
    pub schedule: String,
    /// `latest`, `all` or `none`.
    pub catch_up: String,
    /// The next slots (ms since the epoch).
    pub next_ms: Vec<u64>,
    /// Pause state and the last fire.
    #[serde(flatten)]
    pub record: ScheduleRecord,
}

/// An event that ran out of attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The function whose handler failed.
    pub function: String,
    /// The consumer it came through (replay goes back through it).
    pub consumer: String,
    /// The event.
    pub event: Event,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure.
    pub error: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}
