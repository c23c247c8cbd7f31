//! Admin endpoints for events:
//!
//! * `POST /v1/events/{topic}[?at_ms=T]` — publish the request body (headers
//!   `x-skiff-header-NAME` become event headers), delivered at `T` (ms since the epoch)
//!   if given → `{"id": ...}`
//! * `GET  /v1/functions/{name}/dead-letters` — the function's dead letters
//! * `GET  /v1/functions/{name}/dead-letters/{id}` — one, with its payload
//! * `POST /v1/functions/{name}/dead-letters/{id}/replay` — deliver it again
//! * `POST /v1/functions/{name}/dead-letters/replay` — replay them all

use crate::host::events::MAX_EVENT_BYTES;
use crate::node::Node;
use crate::node::operator::PublishError;
use http::StatusCode;
use hyper::body::Incoming;
use skiff_core::http::{Response, error, json, read_body};
use skiff_core::topic::check_topic;

/// `POST /v1/events/{topic}`.
pub async fn publish(node: &Node, topic: &str, req: http::Request<Incoming>) -> Response {
    // Before reading the body: a wrong topic is refused at once.
    if let Err(e) = check_topic(topic) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| {
            let name = k.as_str().strip_prefix("x-skiff-header-")?;
            Some((name.to_string(), v.to_str().ok()?.to_string()))
        })
        .collect();
    let at = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "at_ms")
            .map(|(_, v)| v.to_string())
    });
    let at_ms = match at.map(|v| v.parse::<u64>()) {
        None => 0,
        Some(Ok(at)) => at.max(1),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "at_ms must be a time in milliseconds since the Unix epoch".to_string(),
            );
        }
    };
    let data = match read_body(req, MAX_EVENT_BYTES).await {
        Ok(b) => b.to_vec(),
        Err(resp) => return resp,
    };
    match node.publish(topic, data, headers, at_ms).await {
        Ok(id) => json(
            StatusCode::OK,
            &serde_json::json!({ "id": id, "topic": topic, "at_ms": at_ms }),
        ),
        Err(PublishError::Refused(why)) => error(StatusCode::BAD_REQUEST, why),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `.../dead-letters[/{id}[/replay]]`.
pub async fn dead_letters(
    node: &Node,
    function: &str,
    rest: &[&str],
    method: &http::Method,
) -> Response {
    let bus = node.bus();
    match (method.clone(), rest) {
        (http::Method::GET, []) => match bus.dead_letters(function).await {
            Ok(list) => json(StatusCode::OK, &list),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        (http::Method::GET, [id]) => match bus.dead_letters(function).await {
            Ok(list) => match list.into_iter().find(|d| d.event.id == *id) {
                Some(d) => json(StatusCode::OK, &d),
                None => error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "function `{function}` has no dead letter `{id}`; list them with `skiff dead-letters ls {function}`"
                    ),
                ),
            },
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        (http::Method::POST, ["replay"]) => {
            let list = match bus.dead_letters(function).await {
                Ok(l) => l,
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
            let mut replayed = 0;
            for d in list {
                match bus.replay(function, &d.event.id).await {
                    Ok(true) => replayed += 1,
                    Ok(false) => {}
                    Err(e) => return error(StatusCode::CONFLICT, e.to_string()),
                }
            }
            json(StatusCode::OK, &serde_json::json!({ "replayed": replayed }))
        }
        (http::Method::POST, [id, "replay"]) => match bus.replay(function, id).await {
            Ok(true) => json(StatusCode::OK, &serde_json::json!({ "replayed": 1 })),
            Ok(false) => error(
                StatusCode::NOT_FOUND,
                format!("function `{function}` has no dead letter `{id}`"),
            ),
            Err(e) => error(StatusCode::CONFLICT, e.to_string()),
        },
        _ => error(
            StatusCode::NOT_FOUND,
            "dead letters: GET .../dead-letters[/ID], POST .../dead-letters[/ID]/replay".into(),
        ),
    }
}
