//! Captures a guest's stdout and stderr per invocation (bounded); once the invocation
//! ends the lines go to the node's log store (`skiff logs`) and to `tracing`.

use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

/// Bytes kept per stream per invocation; output beyond this is dropped.
pub const CAPTURE_LIMIT: usize = 64 << 10;

/// The stdout and stderr buffers of one invocation.
#[derive(Clone)]
pub struct CapturedOutput {
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
}

impl Default for CapturedOutput {
    fn default() -> Self {
        Self::new()
    }
}

impl CapturedOutput {
    /// Empty buffers.
    pub fn new() -> Self {
        CapturedOutput {
            stdout: MemoryOutputPipe::new(CAPTURE_LIMIT),
            stderr: MemoryOutputPipe::new(CAPTURE_LIMIT),
        }
    }

    /// The pipe handed to the guest as stdout.
    pub fn stdout(&self) -> MemoryOutputPipe {
        self.stdout.clone()
    }

    /// The pipe handed to the guest as stderr.
    pub fn stderr(&self) -> MemoryOutputPipe {
        self.stderr.clone()
    }

    /// Hands what the guest printed to `store` and to `tracing`.
    pub fn emit(
        &self,
        store: &crate::logs::LogStore,
        function: &str,
        version: u64,
        invocation: &str,
    ) {
        for (stream, pipe) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let bytes = pipe.contents();
            if bytes.is_empty() {
                continue;
            }
            let text = String::from_utf8_lossy(&bytes);
            for line in text.lines() {
                if stream == "stderr" {
                    tracing::warn!(target: "skiff::guest", function, version, invocation, stream, "{line}");
                } else {
                    tracing::info!(target: "skiff::guest", function, version, invocation, stream, "{line}");
                }
            }
            store.record(function, version, invocation, stream, &text);
        }
    }
}
