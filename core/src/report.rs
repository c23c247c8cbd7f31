//! The load report a runtime node publishes several times a second (NATS subject
//! `skiff.nodes.<node>`), and what the scheduler learns from it.

use serde::{Deserialize, Serialize};

/// The NATS subject prefix of load reports; a node publishes on `<prefix>.<node name>`.
pub const SUBJECT_PREFIX: &str = "skiff.nodes";

/// The header that names the node that served a response.
pub const NODE_HEADER: &str = "x-skiff-node";
/// The header a node sets on a 503 it answered without running anything (so the
/// scheduler may retry it on another node).
pub const REJECTED_HEADER: &str = "x-skiff-rejected";

/// How often a node reports while nothing changes.
pub const REPORT_EVERY_MS: u64 = 200;

/// A node not heard from for this long is dropped from the live set.
pub const EXPIRE_AFTER_MS: u64 = 1000;

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Taking work.
    Up,
    /// Finishing running work; send it nothing new.
    Draining,
    /// Gone: drop it at once.
    Left,
}

/// A function version a node serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    /// The function.
    pub name: String,
    /// Its version.
    pub version: u64,
    /// Its route (empty when it handles no HTTP).
    pub route: String,
}

/// A version a node could not load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    /// The function.
    pub name: String,
    /// Its version.
    pub version: u64,
    /// Why, as the node's deploy error says it.
    pub error: String,
}

/// The state copy a node keeps of one function it hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredState {
    /// The function.
    pub function: String,
    /// Keys held.
    pub keys: u64,
    /// Bytes of keys and values held.
    pub bytes: u64,
}

/// One load report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node's name (unique in the cluster).
    pub node: String,
    /// Base URL of the node's function listener, as the scheduler reaches it.
    pub url: String,
    /// Base URL of the node's admin API.
    pub admin: String,
    /// Up, draining or left.
    pub state: NodeState,
    /// Invocations running now.
    pub in_flight: u32,
    /// Invocations the node runs at once at most.
    pub capacity: u32,
    /// Events waiting in the consumers of the functions it hosts.
    pub queue: u64,
    /// Moving average of recent invocation durations, in microseconds.
    pub latency_us: u64,
    /// Resident memory of the node process, in bytes.
    pub memory_bytes: u64,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// Function versions it serves.
    pub functions: Vec<Served>,
    /// Versions it could not load.
    #[serde(default)]
    pub failed: Vec<Failed>,
    /// The state copies it keeps (cluster mode), by function.
    #[serde(default)]
    pub stored: Vec<StoredState>,
    /// Increases with every report, so that a late one never overwrites a newer one.
    pub seq: u64,
    /// Whether the node reaches NATS now: its writes and event deliveries need it, so a
    /// scheduler prefers nodes that do (a report that does not say counts as yes).
    #[serde(default = "reaches_nats")]
    pub nats: bool,
    /// The node's last second for the console (requests/s, latency, per function); the
    /// scheduler's `/v1/stream` is built from these.
    #[serde(default)]
    pub live: Option<crate::live::LiveSnapshot>,
}

fn reaches_nats() -> bool {
    true
}
