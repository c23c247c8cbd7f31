//! What Skiff's node, scheduler and CLI share; never links wasmtime.
//!
//! The layer map (each module uses only those above it):
//! * [`units`] — sizes and durations as written; [`record`] — function records, artifact
//!   hashes and the component header check.
//! * [`topic`], [`routes`], [`secrets`] — validated names: event topics, HTTP routes,
//!   config and secret keys (and how secrets are sealed).
//! * [`manifest`] — `skiff.toml`, parsed strictly into those types; [`schedule`] —
//!   its `[[schedule]]` tables and their slots; [`fire`] — the event a fire becomes.
//! * [`limits`] — invocation and key-value limits, resolved against a node's maxima;
//!   [`instances`] — instance reuse (`[instances]`), resolved per HTTP world.
//! * [`deploy`] — the one deploy check both the node and the scheduler run.
//! * [`report`] — a node's load report (NATS wire type).
//! * [`api`] — the admin API's wire types; [`http`] — its shared answers and body reads.
//! * [`serve`] — the one accept loop for every listener; [`prom`] — Prometheus text.
//! * [`control`] — the [`control::ControlStore`] trait (function records, versions,
//!   artifacts, secrets, watch) and its conformance suite.
//! * [`hosting`] — which nodes host which functions (the scheduler's assignment).
//! * [`nats`] — connecting to NATS; [`cluster_registry`] — the control store in
//!   JetStream, written by the scheduler and followed by nodes, with the
//!   assignment and the state shard count kept there.
//! * `testkit` (feature `testkit`) — real nats-server processes for tests.

pub mod api;
pub mod cluster_registry;
pub mod cluster_token;
pub mod console;
pub mod control;
pub mod deferred;
pub mod deploy;
pub mod fire;
pub mod hosting;
pub mod http;
pub mod instances;
pub mod limits;
pub mod live;
pub mod manifest;
pub mod nats;
pub mod nats_auth;
pub mod outbound;
pub mod prom;
pub mod record;
pub mod report;
pub mod routes;
pub mod schedule;
pub mod secrets;
pub mod serve;
pub mod signing;
pub mod state_keys;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod topic;
pub mod units;

pub use routes::{Route, RouteError, RouteTable};
