//! `GET /v1/functions/{name}/logs?tail=N&follow=true`: the function's recent log lines as
//! JSON lines, oldest first; with `follow`, the answer stays open and streams new lines as
//! invocations end. (A line recorded while the answer starts may appear twice.)

use crate::node::Node;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use skiff_core::api::{DEFAULT_LOG_TAIL, LogLine};
use skiff_core::http::{AdminBody, Response, error};
use skiff_core::manifest::FunctionName;
use std::convert::Infallible;
use tokio::sync::broadcast::error::RecvError;

fn frame(line: &LogLine) -> Result<Frame<Bytes>, Infallible> {
    let mut bytes = serde_json::to_vec(line).unwrap_or_default();
    bytes.push(b'\n');
    Ok(Frame::data(Bytes::from(bytes)))
}

/// Serves the endpoint.
pub fn logs(node: &Node, name: &str, req: &http::Request<Incoming>) -> Response {
    if let Err(e) = FunctionName::new(name) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let mut tail = DEFAULT_LOG_TAIL;
    let mut follow = false;
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "tail" => tail = v.parse().unwrap_or(DEFAULT_LOG_TAIL),
            "follow" => follow = v == "true" || v == "1",
            _ => {}
        }
    }
    if node.snapshot().get(name).is_none() && node.logs().tail(name, 1).is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "function `{name}` not found; deployed: {}",
                node.snapshot().names()
            ),
        );
    }
    // Subscribe before reading the tail so that no line falls between the two.
    let live = follow.then(|| node.logs().follow());
    let recent: Vec<_> = node.logs().tail(name, tail).iter().map(frame).collect();
    let body: AdminBody = match live {
        None => StreamBody::new(futures::stream::iter(recent)).boxed_unsync(),
        Some(rx) => {
            let function = name.to_string();
            let updates = futures::stream::unfold(rx, move |mut rx| {
                let function = function.clone();
                async move {
                    loop {
                        match rx.recv().await {
                            Ok(l) if l.function == function => return Some((frame(&l), rx)),
                            Ok(_) | Err(RecvError::Lagged(_)) => continue,
                            Err(RecvError::Closed) => return None,
                        }
                    }
                }
            });
            StreamBody::new(futures::StreamExt::chain(
                futures::stream::iter(recent),
                updates,
            ))
            .boxed_unsync()
        }
    };
    let mut r = http::Response::new(body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    r
}
