//! Captures a guest's stdout and stderr per instance (bounded); when a request it served
//! ends, what it printed since the last request ended goes to the node's log store
//! (`skiff logs`) and to `tracing`, under that request's invocation id.
//!
//! A reused instance prints across many requests, so the buffers drain on every emit, and
//! output past [`CAPTURE_LIMIT`] between two emits is dropped (counted, never an error the
//! guest sees: a guest whose `println!` failed would panic).

use bytes::{Bytes, BytesMut};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes kept per stream between two emits; output beyond this is dropped.
pub const CAPTURE_LIMIT: usize = 64 << 10;

#[derive(Default)]
struct Buffer {
    bytes: BytesMut,
    dropped: usize,
}

/// One captured stream: a bounded buffer that drains.
#[derive(Clone, Default)]
pub struct LogPipe {
    buffer: Arc<Mutex<Buffer>>,
}

impl LogPipe {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        match self.buffer.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut b = self.lock();
        let room = CAPTURE_LIMIT.saturating_sub(b.bytes.len());
        let kept = bytes.len().min(room);
        b.bytes.extend_from_slice(&bytes[..kept]);
        b.dropped += bytes.len() - kept;
    }

    /// What was written since the last take, and how many bytes were dropped.
    fn take(&self) -> (Bytes, usize) {
        let mut b = self.lock();
        let dropped = std::mem::take(&mut b.dropped);
        (b.bytes.split().freeze(), dropped)
    }
}

impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(CAPTURE_LIMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LogPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// The stdout and stderr buffers of one instance.
#[derive(Clone, Default)]
pub struct CapturedOutput {
    stdout: LogPipe,
    stderr: LogPipe,
}

impl CapturedOutput {
    /// Empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// The pipe handed to the guest as stdout.
    pub fn stdout(&self) -> LogPipe {
        self.stdout.clone()
    }

    /// The pipe handed to the guest as stderr.
    pub fn stderr(&self) -> LogPipe {
        self.stderr.clone()
    }

    /// Hands what the guest printed since the last emit to `store` and to `tracing`.
    pub fn emit(
        &self,
        store: &crate::logs::LogStore,
        function: &str,
        version: u64,
        invocation: &str,
    ) {
        for (stream, pipe) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let (bytes, dropped) = pipe.take();
            if bytes.is_empty() && dropped == 0 {
                continue;
            }
            let mut text = String::from_utf8_lossy(&bytes).into_owned();
            if dropped > 0 {
                text.push_str(&format!(
                    "\n[skiff: {dropped} more bytes of {stream} dropped; {CAPTURE_LIMIT} bytes are kept per request]\n"
                ));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_drain_and_bound_what_they_keep() {
        let mut p = LogPipe::default();
        OutputStream::write(&mut p, Bytes::from_static(b"one\n")).unwrap();
        assert_eq!(p.take(), (Bytes::from_static(b"one\n"), 0));
        assert_eq!(p.take().0.len(), 0, "taken output is gone");
        OutputStream::write(&mut p, Bytes::from(vec![b'x'; CAPTURE_LIMIT + 10])).unwrap();
        let (kept, dropped) = p.take();
        assert_eq!((kept.len(), dropped), (CAPTURE_LIMIT, 10));
    }
}
