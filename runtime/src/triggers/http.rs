//! The function listener: HTTP/1.1 with bounded request heads (431), a header-read
//! timeout against slow clients, and each request handed to the node.

use crate::node::Node;
use skiff_core::limits::NodeLimits;
use skiff_core::serve::{ConnLimits, serve as accept_loop};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Accepts connections until `stop` turns true, then lets open connections finish their
/// current request.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    limits: NodeLimits,
    stop: watch::Receiver<bool>,
) {
    let conn = ConnLimits {
        header_read_timeout: limits.header_read_timeout,
        max_header_bytes: limits.max_header_bytes,
    };
    accept_loop(listener, conn, stop, move |req| {
        let node = node.clone();
        async move { node.handle(req).await }
    })
    .await
}
