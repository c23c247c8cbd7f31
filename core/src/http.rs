//! The admin API's plumbing, shared by the node's and the scheduler's: answers in JSON
//! with `{"error": ...}` on failure, bounded body reads, the bearer-token check (constant
//! time), the artifact upload check, and the answers about secrets both APIs give.

use crate::api::{DeployRequest, ErrorBody, SecretKeys};
use crate::record::{check_component_header, is_sha256_hex, sha256_hex};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use subtle::ConstantTimeEq;

/// Largest JSON request body.
const MAX_JSON_BYTES: usize = 1 << 20;

/// The body of an admin API answer: whole, or streamed (`logs -f`).
pub type AdminBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// An admin API answer.
pub type Response = http::Response<AdminBody>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> AdminBody {
    Full::new(bytes.into()).boxed_unsync()
}

/// Reads an uploaded component named by its sha256 and checks it, before anything
/// compiles it: the name is a sha256, the body is at most `max` bytes (a larger
/// declared length is refused before the body is read) and hashes to the name, and it
/// starts like a component.
pub async fn read_artifact(
    sha: &str,
    req: http::Request<Incoming>,
    max: usize,
) -> Result<Bytes, Response> {
    if !is_sha256_hex(sha) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("`{sha}` is not a sha256; upload to /v1/artifacts/<hex sha256 of the body>"),
        ));
    }
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the component is larger than this server's limit of {}; build it smaller (a release build, wasm-opt) or start the server with a larger --max-artifact",
                crate::manifest::Size(max as u64)
            ),
        )
    };
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    let bytes = match read_body(req, max).await {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
        Err(r) => return Err(r),
    };
    let actual = sha256_hex(&bytes);
    if actual != sha {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "upload does not match its name: the body hashes to {actual}, not {sha}; the upload was damaged, retry it"
            ),
        ));
    }
    if let Err(e) = check_component_header(&bytes) {
        return Err(error(StatusCode::BAD_REQUEST, e.to_string()));
    }
    Ok(bytes)
}

/// What every admin API answers before its own endpoints: `/healthz` (always open), then
/// 401 without the bearer `token` when one is set. `None`: go on.
pub fn gate(token: Option<&str>, req: &http::Request<Incoming>) -> Option<Response> {
    if req.method() == Method::GET && req.uri().path().trim_matches('/') == "healthz" {
        return Some(text(StatusCode::OK, "ok\n"));
    }
    if !authorized(token, req) {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "this admin API requires a token: pass --token or set SKIFF_TOKEN".into(),
        ));
    }
    None
}

/// The answer for a path no admin endpoint serves.
pub fn no_endpoint(method: &Method, path: &str) -> Response {
    if path.trim_matches('/').split('/').next() == Some("v1") {
        error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {path}"),
        )
    } else {
        error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {path}; the API lives under /v1"),
        )
    }
}

/// Whether `req` carries the bearer `token` (compared in constant time); always true
/// when no token is configured.
pub fn authorized(token: Option<&str>, req: &http::Request<Incoming>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    presented.as_bytes().ct_eq(token.as_bytes()).into()
}

/// Reads a [`DeployRequest`] body.
pub async fn read_deploy_request(req: http::Request<Incoming>) -> Result<DeployRequest, Response> {
    let bytes = read_body(req, MAX_JSON_BYTES).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!(
                "deploy request is not valid JSON of the form {{\"manifest\": ..., \"artifact\": ...}}: {e}"
            ),
        )
    })
}

pub async fn read_body(req: http::Request<Incoming>, max: usize) -> Result<Bytes, Response> {
    match Limited::new(req.into_body(), max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds the admin API's limit of {max} bytes"),
        )),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        )),
    }
}

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut r = http::Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut r = http::Response::new(full(Bytes::from(body)));
            *r.status_mut() = status;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {e}"),
        ),
    }
}

pub fn error(status: StatusCode, message: String) -> Response {
    let body = serde_json::to_vec(&ErrorBody { error: message }).unwrap_or_default();
    let mut r = http::Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Decodes a `%XX`-escaped path segment.
pub fn segment(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

/// The answer to listing a function's secrets.
pub fn keys_answer(name: &str, keys: Vec<String>) -> Response {
    json(
        StatusCode::OK,
        &SecretKeys {
            function: name.to_string(),
            keys,
        },
    )
}

/// The answer to a secret that was set.
pub fn set_answer(name: &str, key: &str) -> Response {
    json(
        StatusCode::OK,
        &serde_json::json!({ "function": name, "key": key, "set": true }),
    )
}

/// The answer to removing a secret, by whether it existed.
pub fn removed_answer(name: &str, key: &str, existed: bool) -> Response {
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
pub fn method_not_allowed(method: &Method) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed here: GET /v1/functions/NAME/secrets lists keys; PUT and DELETE take /v1/functions/NAME/secrets/KEY"
        ),
    )
}
