//! Skiff's scheduler: the front door that decides which function, and in a cluster which
//! node, serves a request.
//!
//! Flow: request path → [`routes::RouteTable`] → function name → a node picked by
//! [`placement::pick`] over the [`live::LiveSet`] that load reports ([`report`]) keep
//! fresh → [`gateway::Gateway`] proxies to it. This crate never links wasmtime; the
//! embedded runtime shares its route table.

pub mod gateway;
pub mod live;
pub mod placement;
pub mod report;
pub mod routes;

pub use routes::{Route, RouteError, RouteTable};
