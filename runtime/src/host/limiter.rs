//! The per-invocation resource limiter: caps linear memory at the function's limit and
//! records that the cap was hit, so the node can answer "memory limit exceeded" rather
//! than a bare trap.

/// Error returned to wasmtime when a guest grows past its memory limit; it traps the guest.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded (the guest asked for {desired} bytes)")]
pub struct MemoryLimitExceeded {
    /// The function's limit.
    pub limit: u64,
    /// What the guest asked for.
    pub desired: u64,
}

/// Tables may not grow past this many elements (wasmtime's pooling default is far larger).
const TABLE_ELEMENTS: usize = 100_000;

/// Implements [`wasmtime::ResourceLimiter`] for one invocation.
#[derive(Debug)]
pub struct GuestLimiter {
    memory: u64,
    /// Set once a grow was refused.
    pub memory_exceeded: bool,
}

impl GuestLimiter {
    /// A limiter allowing `memory` bytes of linear memory.
    pub fn new(memory: u64) -> Self {
        GuestLimiter {
            memory,
            memory_exceeded: false,
        }
    }
}

impl wasmtime::ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory {
            self.memory_exceeded = true;
            // Trapping (rather than returning false) stops a guest whose allocator would
            // otherwise spin or abort with a less useful message.
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                limit: self.memory,
                desired: desired as u64,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS)
    }
}
