//! Skiff's scheduler: the whole `skiff scheduler` process, the cluster's front door. It
//! never links wasmtime (CI checks `cargo tree -p skiff-scheduler`).
//!
//! The layer map (each module uses only those above it, and `skiff-core`):
//! * [`placement`] — pure: power of two choices over expected wait; [`assign`] — pure:
//!   which nodes host which function.
//! * [`live`] — the live set that nodes' load reports keep fresh, and the routes.
//! * [`gateway`] — request path → function → node → proxied, with the retry rule.
//! * [`shared`] — the scheduler's shared state, which every module below works on.
//! * [`process`] — [`run`]: NATS, the registry client, the listeners, the background
//!   loops that follow reports and expire silent nodes.
//! * [`view`] — the last known view kept on disk; [`probe`] — nodes asked directly while
//!   NATS is unreachable.
//! * [`admin`] — the admin API; [`rollout`] — deploys and waiting for nodes to serve;
//!   [`nodes`] — calls forwarded to nodes, logs and traces gathered from them;
//!   [`metrics`] — `/metrics`; [`rebalance`] — keeping the assignment true to the live
//!   nodes; [`moves`] — `skiff move` and `skiff drain`; [`shards`] — spreading the state
//!   shards' stream leaders over the NATS servers.

pub mod admin;
pub mod assign;
pub mod gateway;
pub mod live;
pub mod metrics;
pub mod moves;
pub mod nodes;
pub mod placement;
pub mod probe;
pub mod process;
pub mod rebalance;
pub mod rollout;
pub mod shards;
pub mod shared;
pub mod stream;
pub mod view;

pub use process::{SchedulerOptions, run};
