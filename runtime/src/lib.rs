//! Skiff's runtime: the node that hosts WebAssembly functions, the wiring of `skiff up`
//! and `skiff node`, and the `skiff` CLI.
//!
//! The layer map (each module uses only those below it; `skiff-core` underneath all):
//! * [`cli`] — the command line; [`server`] — the admin API and the wiring
//!   (`server::embedded`, the only place that names a concrete store).
//! * [`triggers`] — what makes a function run: the HTTP listener and the event
//!   consumer loops, reaching the node through narrow handles.
//! * [`cluster`] — a node's side of the cluster: following the registry, load reports.
//! * [`node`] — deploy (`node::deploy`), invoke (`node::invoke`: route → limits →
//!   instantiate → call → answer), the code cache; [`engine`] — wasmtime and the
//!   compiled-code cache.
//! * [`host`] — the capabilities a sandbox reaches, one module each.
//! * [`logs`], [`traces`], [`metrics`], [`otlp`] — what invocations leave behind.
//! * The stores behind their traits: [`state`] (`StateBackend`), [`events`] (`Bus`),
//!   [`registry`] (the local `ControlStore`; the trait and the JetStream one are in
//!   `skiff-core`).
//! * [`localdb`] — the redb group-commit writer under state and the embedded bus;
//!   [`files`], [`ids`] — small helpers.

pub mod cli;
pub mod cluster;
pub mod component;
pub mod engine;
pub mod events;
pub mod files;
pub mod host;
pub mod ids;
pub mod localdb;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod otlp;
pub mod registry;
pub mod server;
pub mod state;
pub mod traces;
pub mod triggers;
