//! Admin endpoints over a function's key-value state, for operators inspecting and
//! repairing it. Keys travel percent-encoded in the path; the bucket (default
//! `default`), a key prefix and a listing cursor travel in the query.
//!
//! * `GET    /v1/functions/{name}/kv?bucket=&prefix=&cursor=` — a page of keys
//! * `GET    /v1/functions/{name}/kv/{key}?bucket=&consistent=true` — the raw value
//!   (`consistent`: as last written anywhere in the cluster, not as applied here)
//! * `PUT    /v1/functions/{name}/kv/{key}?bucket=` — set it to the request body
//! * `DELETE /v1/functions/{name}/kv/{key}?bucket=` — delete it

use crate::node::Node;
use crate::state::StateError;
use bytes::Bytes;
use http::{Method, StatusCode};
use hyper::body::Incoming;
use skiff_core::api::KeyPage;
use skiff_core::http::{Response, error, full, json, read_body};

pub use skiff_core::state_keys::{KvTarget, parse_target};

fn state_error(e: StateError) -> Response {
    match e {
        StateError::Refused(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
        e => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Serves a `/v1/functions/{name}/kv...` request; `key_path` is what follows `kv/`.
pub async fn handle(
    node: &Node,
    name: &str,
    key_path: Option<&str>,
    req: http::Request<Incoming>,
) -> Response {
    let target = match parse_target(name, key_path, req.uri().query().unwrap_or("")) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let KvTarget {
        ns,
        key,
        consistent,
        prefix,
        cursor,
    } = target;
    let state = node.state();
    let Some(key) = key else {
        if req.method() != Method::GET {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "list keys with GET; get, set and delete one at /v1/functions/{name}/kv/{key}"
                    .into(),
            );
        }
        return match state.list(&ns, &prefix, cursor) {
            Ok((keys, cursor)) => json(StatusCode::OK, &KeyPage { keys, cursor }),
            Err(e) => state_error(e),
        };
    };
    match *req.method() {
        Method::GET => match if consistent {
            state.get_consistent(&ns, &key).await
        } else {
            state.get(&ns, &key)
        } {
            Ok(Some(v)) => {
                let mut r = http::Response::new(full(Bytes::from(v)));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/octet-stream"),
                );
                r
            }
            Ok(None) => error(
                StatusCode::NOT_FOUND,
                format!(
                    "key `{key}` is not set in function `{name}` (bucket `{}`)",
                    ns.bucket
                ),
            ),
            Err(e) => state_error(e),
        },
        Method::PUT => {
            let max = usize::try_from(node.kv_limits(name).value_bytes).unwrap_or(usize::MAX);
            let value = match read_body(req, max).await {
                Ok(b) => b.to_vec(),
                Err(resp) => return resp,
            };
            match node.kv_set(ns, key, value).await {
                Ok(_) => json(StatusCode::OK, &serde_json::json!({ "set": true })),
                Err(e) => state_error(e),
            }
        }
        Method::DELETE => match node.kv_delete(ns, key).await {
            Ok(_) => json(StatusCode::OK, &serde_json::json!({ "deleted": true })),
            Err(e) => state_error(e),
        },
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET, PUT or DELETE on a key".into(),
        ),
    }
}
