//! The function listener: HTTP/1.1 with bounded request heads (431), a header-read
//! timeout against slow clients, and each request handed to the node. A cluster node
//! started with a cluster token answers only requests that carry it (the scheduler's);
//! the token is removed before the function sees the request.

use crate::node::{Node, reply};
use skiff_core::cluster_token::{self, ClusterToken};
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
    token: Option<ClusterToken>,
    stop: watch::Receiver<bool>,
) {
    let conn = ConnLimits {
        header_read_timeout: limits.header_read_timeout,
        max_header_bytes: limits.max_header_bytes,
    };
    accept_loop(listener, conn, stop, move |mut req| {
        let node = node.clone();
        let token = token.clone();
        async move {
            if let Some(token) = &token {
                if !cluster_token::is_health(req.uri().path()) && !token.in_header(req.headers()) {
                    node.metrics().rejected("", "cluster_token");
                    return reply(
                        http::StatusCode::UNAUTHORIZED,
                        cluster_token::refusal(node.name()),
                    );
                }
                req.headers_mut().remove(cluster_token::HEADER);
            }
            node.handle(req).await
        }
    })
    .await
}
