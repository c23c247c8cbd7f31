//! Admin endpoints over a function's secrets. Values are accepted and never returned.
//!
//! * `GET    /v1/functions/{name}/secrets` — the keys
//! * `PUT    /v1/functions/{name}/secrets/{key}` — set it to the request body (UTF-8)
//! * `DELETE /v1/functions/{name}/secrets/{key}` — remove it

use super::{Response, error, json, read_body};
use crate::node::Node;
use crate::node::secrets::SecretOpError;
use crate::secrets::MAX_SECRET_BYTES;
use http::{Method, StatusCode};
use hyper::body::Incoming;

/// The keys of a function's secrets.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SecretKeys {
    /// The function.
    pub function: String,
    /// Its secrets' keys, in order.
    pub keys: Vec<String>,
}

/// Decodes a `%XX`-escaped path segment.
pub(crate) fn segment(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

/// The answer to listing a function's secrets.
pub(crate) fn keys_answer(name: &str, keys: Vec<String>) -> Response {
    json(
        StatusCode::OK,
        &SecretKeys {
            function: name.to_string(),
            keys,
        },
    )
}

/// The answer to a secret that was set.
pub(crate) fn set_answer(name: &str, key: &str) -> Response {
    json(
        StatusCode::OK,
        &serde_json::json!({ "function": name, "key": key, "set": true }),
    )
}

/// The answer to removing a secret, by whether it existed.
pub(crate) fn removed_answer(name: &str, key: &str, existed: bool) -> Response {
    if existed {
        json(
            StatusCode::OK,
            &serde_json::json!({ "function": name, "key": key, "removed": true }),
        )
    } else {
        error(
            StatusCode::NOT_FOUND,
            format!("function `{name}` has no secret `{key}`; `skiff secret ls {name}` lists them"),
        )
    }
}

/// The answer to a method the secrets endpoint does not take.
pub(crate) fn method_not_allowed(method: &Method) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed here: GET /v1/functions/NAME/secrets lists keys; PUT and DELETE take /v1/functions/NAME/secrets/KEY"
        ),
    )
}

/// The answer to a failed secret operation.
pub(crate) fn secret_error(e: SecretOpError) -> Response {
    let status = if e.is_client_error() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    error(status, e.to_string())
}

/// Serves `/v1/functions/{name}/secrets[/{key}]` on a node.
pub async fn handle(
    node: &Node,
    name: &str,
    key: Option<&str>,
    req: http::Request<Incoming>,
) -> Response {
    let key = key.map(segment);
    match (req.method().clone(), key) {
        (Method::GET, None) => match node.secret_keys(name) {
            Ok(keys) => keys_answer(name, keys),
            Err(e) => secret_error(e),
        },
        (Method::PUT, Some(key)) => {
            let value = match read_body(req, MAX_SECRET_BYTES).await {
                Ok(v) => v,
                Err(resp) => return resp,
            };
            match node
                .seal_secret(name, &key, &value)
                .and_then(|sealed| node.put_secret(name, &key, &sealed))
            {
                Ok(()) => set_answer(name, &key),
                Err(e) => secret_error(e),
            }
        }
        (Method::DELETE, Some(key)) => match node.remove_secret(name, &key) {
            Ok(existed) => removed_answer(name, &key, existed),
            Err(e) => secret_error(e),
        },
        (method, _) => method_not_allowed(&method),
    }
}
