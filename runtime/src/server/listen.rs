//! The function listener: HTTP/1.1 with bounded request heads (431), a header-read
//! timeout against slow clients, and each request handed to the node.

use crate::limits::NodeLimits;
use crate::node::Node;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Accepts connections until `stop` turns true, then lets open connections finish their
/// current request.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    limits: NodeLimits,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper answers 431 when the head outgrows its buffer; it needs at least 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let node = node.clone();
                let conn = builder.serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| {
                        let node = node.clone();
                        async move { Ok::<_, Infallible>(node.handle(req).await) }
                    }),
                );
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    graceful.shutdown().await;
}
