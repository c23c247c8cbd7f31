//! Admin endpoints over a function's secrets. Values are accepted and never returned.
//!
//! * `GET    /v1/functions/{name}/secrets` — the keys
//! * `PUT    /v1/functions/{name}/secrets/{key}` — set it to the request body (UTF-8)
//! * `DELETE /v1/functions/{name}/secrets/{key}` — remove it

use crate::node::Node;
use crate::node::secrets::SecretOpError;
use http::{Method, StatusCode};
use hyper::body::Incoming;
use skiff_core::http::{
    Response, error, keys_answer, method_not_allowed, read_body, removed_answer, segment,
    set_answer,
};
use skiff_core::secrets::MAX_SECRET_BYTES;

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
        (Method::GET, None) => match node.secret_keys(name).await {
            Ok(keys) => keys_answer(name, keys),
            Err(e) => secret_error(e),
        },
        (Method::PUT, Some(key)) => {
            let value = match read_body(req, MAX_SECRET_BYTES).await {
                Ok(v) => v,
                Err(resp) => return resp,
            };
            let stored = match node.seal_secret(name, &key, &value) {
                Ok(sealed) => node.put_secret(name, &key, &sealed).await,
                Err(e) => Err(e),
            };
            match stored {
                Ok(()) => set_answer(name, &key),
                Err(e) => secret_error(e),
            }
        }
        (Method::DELETE, Some(key)) => match node.remove_secret(name, &key).await {
            Ok(existed) => removed_answer(name, &key, existed),
            Err(e) => secret_error(e),
        },
        (method, _) => method_not_allowed(&method),
    }
}
