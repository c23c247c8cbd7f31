//! Skiff's runtime: the node that hosts WebAssembly functions, the embedded mode that runs
//! everything in one process, and the `skiff` CLI.
//!
//! A request's path: [`server::listen`] accepts it → [`node::Node::handle`] finds the
//! route in the current snapshot → checks limits → instantiates the deployment's
//! pre-linked component in a fresh store ([`host`]) → calls
//! `wasi:http/incoming-handler` → streams the response back. Deploys arrive through
//! [`server::admin`], are validated and compiled once ([`node::deploy`], [`engine`]),
//! recorded in the control store ([`registry`]) and swapped in.

pub mod cli;
pub mod cluster;
pub mod engine;
pub mod events;
pub mod host;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod otlp;
pub mod registry;
pub mod server;
pub mod state;
pub mod traces;
