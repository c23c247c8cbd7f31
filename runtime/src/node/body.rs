//! Bodies on the invocation path: the request body with its size limit, and the small
//! replies the node writes itself.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use tokio::sync::oneshot;
use wasmtime_wasi_http::Error;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// A request body that fails once more than `limit` bytes arrive, and flags that it did
/// so that the node answers 413 whatever the guest does with the error.
pub struct LimitedBody {
    inner: Incoming,
    limit: u64,
    seen: u64,
    exceeded: Arc<AtomicBool>,
}

impl LimitedBody {
    /// Wraps `inner`.
    pub fn new(inner: Incoming, limit: u64, exceeded: Arc<AtomicBool>) -> Self {
        LimitedBody {
            inner,
            limit,
            seen: 0,
            exceeded,
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        this.exceeded.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Error::HttpRequestBodySize(Some(this.seen)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(Error::from(e)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a response body's end waits for: the invocation settled (`Err`: it was not).
pub type Gate = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A gate that opens when `rx` says the invocation settled.
pub fn gate(rx: oneshot::Receiver<Result<(), String>>) -> Gate {
    Box::pin(async move {
        rx.await
            .unwrap_or_else(|_| Err("the invocation was lost".to_string()))
    })
}

/// A function's response body whose end waits for the invocation to be settled (guest
/// finished, its events published). With a Content-Length the last data frame is held
/// back; otherwise the end of the stream is. If settling fails, the body ends in an
/// error, so the client never sees a complete answer whose effects were lost. The gate
/// is polled only once the guest's body is complete; a body not complete by `deadline`
/// ends in an error (the gate is then dropped unpolled).
pub struct GatedBody {
    inner: HyperOutgoingBody,
    remaining: Option<u64>,
    held: Option<Frame<Bytes>>,
    inner_done: bool,
    gate: Option<Gate>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl GatedBody {
    /// Wraps `inner`, which declares `length` bytes if known.
    pub fn new(
        inner: HyperOutgoingBody,
        length: Option<u64>,
        gate: Gate,
        deadline: Option<std::time::Instant>,
    ) -> Self {
        GatedBody {
            inner,
            remaining: length,
            held: None,
            inner_done: false,
            gate: Some(gate),
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
        }
    }
}

impl Body for GatedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        loop {
            if (this.held.is_some() || this.inner_done)
                && let Some(gate) = this.gate.as_mut()
            {
                let settled = ready!(gate.as_mut().poll(cx));
                this.gate = None;
                if let Err(e) = settled {
                    return Poll::Ready(Some(Err(Error::InternalError(Some(format!(
                        "the invocation did not complete: {e}"
                    ))))));
                }
            }
            if !this.inner_done
                && let Some(deadline) = this.deadline.as_mut()
                && deadline.as_mut().poll(cx).is_ready()
            {
                this.deadline = None;
                this.gate = None;
                this.inner_done = true;
                return Poll::Ready(Some(Err(Error::InternalError(Some(
                    "the function did not finish its answer within its timeout".into(),
                )))));
            }
            if let Some(frame) = this.held.take() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.inner_done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let (Some(rem), Some(data)) = (this.remaining.as_mut(), frame.data_ref()) {
                        *rem = rem.saturating_sub(data.len() as u64);
                        if *rem == 0 && this.gate.is_some() {
                            this.held = Some(frame);
                            continue;
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.inner_done = true,
            }
        }
    }
}

/// A plain-text reply from the node itself (not from a function).
pub fn reply(status: http::StatusCode, message: String) -> http::Response<HyperOutgoingBody> {
    let mut r = http::Response::new(
        Full::new(Bytes::from(message + "\n"))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
