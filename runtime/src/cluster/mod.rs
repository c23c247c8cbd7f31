//! A runtime node's side of cluster mode (`skiff node`): it follows the registry that
//! the scheduler (`skiff-scheduler`) writes, and reports its load. The registry client and
//! the NATS helpers live in `skiff-core`.
//!
//! * [`sync`] — a node follows the registry (list, then watch) into its local control
//!   store, fetching and verifying artifacts, so it can keep serving while NATS is away.
//! * [`reporter`] — a node's load reports, several times a second and on sharp change.

pub mod reporter;
pub mod sync;
