//! The one accept loop every listener uses (the node's function listener, both admin
//! APIs and the scheduler's gateway), plus binding and the stop signal.
//!
//! It sets TCP_NODELAY (small answers must not wait 40 ms for Nagle's algorithm), bounds
//! the request head and the time to send it, backs off when `accept` fails (running out
//! of file descriptors must not turn into a busy loop), and on stop lets open connections
//! finish the request they are on.

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How one listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// How long a client may take to send its request head.
    pub header_read_timeout: Duration,
    /// Largest request head in bytes; hyper answers 431 past it (at least 8 KiB).
    pub max_header_bytes: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 32 << 10,
        }
    }
}

/// The first pause after a failed `accept`; it doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// The longest pause after failed `accept`s in a row.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves HTTP/1.1 on `listener` with `handle` until `stop` turns true, then waits for
/// open connections to finish their current request.
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let mut backoff = ACCEPT_BACKOFF;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => {
                        backoff = ACCEPT_BACKOFF;
                        stream
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, pause = ?backoff, "accept failed; pausing before the next");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.changed() => break,
                        }
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                };
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                let handle = handle.clone();
                let conn = builder.serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| {
                        let fut = handle(req);
                        async move { Ok::<_, Infallible>(fut.await) }
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

/// A listening address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for {what}: {source}; {hint}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// Which listener.
    pub what: &'static str,
    /// What to do.
    pub hint: &'static str,
    /// The OS's error.
    pub source: std::io::Error,
}

/// Binds the function listener and the admin API, naming the flag to change when an
/// address is taken.
pub async fn bind(
    listen: SocketAddr,
    admin: SocketAddr,
) -> Result<(TcpListener, TcpListener), BindError> {
    let functions = TcpListener::bind(listen)
        .await
        .map_err(|source| BindError {
            addr: listen,
            what: "functions",
            hint: "is another server using it? pick another with --listen",
            source,
        })?;
    let admin_listener = TcpListener::bind(admin).await.map_err(|source| BindError {
        addr: admin,
        what: "the admin API",
        hint: "pick another with --admin",
        source,
    })?;
    Ok((functions, admin_listener))
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
