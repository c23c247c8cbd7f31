//! What the console's live view shows each second: the nodes and the functions, as a
//! node samples itself and as the scheduler puts its nodes' samples together. Plain
//! data: a node's load report carries its own ([`crate::report::NodeReport::live`]).

use serde::{Deserialize, Serialize};

/// One second of a node, as the console shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveNode {
    /// The node's name.
    pub node: String,
    /// `up`, `draining`, `left`.
    pub state: String,
    /// Invocations running.
    pub in_flight: u32,
    /// Invocations it runs at once at most.
    pub capacity: u32,
    /// Invocations ended per second.
    pub rps: f64,
    /// Failed invocations per second.
    pub errors: f64,
    /// Median latency (ms) of the last window.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency (ms) of the last window.
    pub p99_ms: Option<f64>,
    /// Resident memory of the process.
    pub memory_bytes: u64,
    /// Functions it serves.
    pub functions: usize,
}

/// One second of a function, over every node that serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveFunction {
    /// The name.
    pub name: String,
    /// The version serving.
    pub version: u64,
    /// `wasi:http 0.2`, `wasi:http 0.3`, or none (events only).
    pub world: Option<String>,
    /// Its HTTP route.
    pub route: String,
    /// Invocations running now (each holds an instance).
    pub instances: u32,
    /// Invocations ended per second.
    pub rps: f64,
    /// Failed invocations per second.
    pub errors: f64,
    /// 99th percentile latency (ms) of the last window.
    pub p99_ms: Option<f64>,
    /// Its triggers, as `skiff ls` shows them.
    pub triggers: Vec<String>,
}

/// What `/v1/stream` sends once a second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveSnapshot {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `embedded`, `cluster` (a node's own view) or `scheduler` (the cluster's).
    pub mode: String,
    /// The nodes.
    pub nodes: Vec<LiveNode>,
    /// The functions.
    pub functions: Vec<LiveFunction>,
}
