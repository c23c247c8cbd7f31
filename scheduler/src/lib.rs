//! Skiff's scheduler: the front door that decides which function, and in a cluster which
//! node, serves a request.
//!
//! Flow: request path → [`routes::RouteTable`] → function name → (cluster mode) a node
//! picked by load. This crate holds only pure placement logic and never links wasmtime,
//! so the embedded runtime and the cluster scheduler share one implementation.

pub mod routes;

pub use routes::{Route, RouteError, RouteTable};
