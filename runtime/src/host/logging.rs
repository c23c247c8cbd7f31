//! Captures a guest's stdout and stderr per invocation (bounded), and emits the lines
//! through `tracing` with the function, version and stream once the invocation ends.

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

    /// Emits what the guest printed as log lines.
    pub fn emit(&self, function: &str, version: u64) {
        for (stream, pipe) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let bytes = pipe.contents();
            for line in String::from_utf8_lossy(&bytes).lines() {
                if stream == "stderr" {
                    tracing::warn!(target: "skiff::guest", function, version, stream, "{line}");
                } else {
                    tracing::info!(target: "skiff::guest", function, version, stream, "{line}");
                }
            }
        }
    }
}
