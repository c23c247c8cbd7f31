//! The processes a node runs in: the admin API ([`admin`]), and the wiring of `skiff up`
//! and `skiff node` ([`embedded`]), the one place that names concrete stores.

pub mod admin;
pub mod embedded;
pub mod live;
