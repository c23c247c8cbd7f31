//! Ids: random ones for invocations, traces and events that start something, and derived
//! ones for what a handler publishes, so that a redelivered handler's publications
//! de-duplicate.

/// A fresh random event id (for events not published by an event handler).
pub fn random_id() -> String {
    // The thread's CSPRNG (ChaCha, seeded and reseeded by the OS): no system call per id,
    // which on the invocation path (two ids per request) was measurable.
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

/// The id of the `n`-th event that a handler publishes while handling `cause`: the same
/// on every redelivery, so a retried handler's publications de-duplicate.
pub fn derived_id(cause: &str, function: &str, n: u32) -> String {
    let digest = skiff_core::record::sha256_hex(format!("{cause}/{function}/{n}").as_bytes());
    digest[..32].to_string()
}
