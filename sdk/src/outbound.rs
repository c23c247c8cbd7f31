//! Outgoing HTTP through the standard `wasi:http/outgoing-handler`.
//!
//! ```text
//! let req = http::Request::get("https://api.example.com/v1/items").body(Vec::new())?;
//! let res = skiff_sdk::outbound::send(req)?;
//! ```
//!
//! Only origins in the manifest's `allowed_outbound_hosts` are reachable (nothing by
//! default, and never the node's admin API): any other call fails with
//! [`Error::Denied`]. The host bounds connect and read times and the response size.

use crate::Response;
use std::fmt;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

/// Why an outgoing request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The host refused it: the origin is not in `allowed_outbound_hosts` (the standard
    /// `HTTP-request-denied` error code).
    Denied,
    /// Any other failure, with the host's error code.
    Failed(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Denied => f.write_str(
                "outgoing request denied: add its origin to allowed_outbound_hosts in skiff.toml",
            ),
            Error::Failed(m) => write!(f, "outgoing request failed: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ErrorCode> for Error {
    fn from(e: ErrorCode) -> Self {
        match e {
            ErrorCode::HttpRequestDenied => Error::Denied,
            other => Error::Failed(format!("{other:?}")),
        }
    }
}

/// Sends `req` (absolute URI) and reads the whole response.
pub fn send(req: http::Request<Vec<u8>>) -> Result<Response, Error> {
    let (parts, body) = req.into_parts();
    let headers = Fields::new();
    for (name, value) in &parts.headers {
        headers
            .append(name.as_str(), value.as_bytes())
            .map_err(|e| Error::Failed(format!("header `{name}`: {e:?}")))?;
    }
    let request = OutgoingRequest::new(headers);
    let method = match parts.method.as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_string()),
    };
    let bad = |what: &str| Error::Failed(format!("invalid request {what}"));
    request.set_method(&method).map_err(|()| bad("method"))?;
    let scheme = match parts.uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") | None => Scheme::Https,
        Some(other) => Scheme::Other(other.to_string()),
    };
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| bad("scheme"))?;
    request
        .set_authority(parts.uri.authority().map(|a| a.as_str()))
        .map_err(|()| bad("authority"))?;
    request
        .set_path_with_query(parts.uri.path_and_query().map(|p| p.as_str()))
        .map_err(|()| bad("path"))?;
    let outgoing = request.body().map_err(|()| bad("body"))?;
    {
        let stream = outgoing.write().map_err(|()| bad("body stream"))?;
        for chunk in body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| Error::Failed(format!("writing the body: {e:?}")))?;
        }
    }
    let pending = outgoing_handler::handle(request, None)?;
    OutgoingBody::finish(outgoing, None)?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(code))) => return Err(code.into()),
        Some(Err(())) | None => return Err(Error::Failed("response already taken".into())),
    };
    let mut builder = http::Response::builder().status(response.status());
    for (name, value) in response.headers().entries() {
        builder = builder.header(name, value);
    }
    let incoming = response
        .consume()
        .map_err(|()| Error::Failed("response body already taken".into()))?;
    let mut out = Vec::new();
    {
        let stream = incoming
            .stream()
            .map_err(|()| Error::Failed("response body stream already taken".into()))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(Error::Failed(format!(
                        "reading the body: {}",
                        e.to_debug_string()
                    )));
                }
            }
        }
    }
    if let Some(code) = wasip2::http::types::IncomingBody::finish(incoming)
        .get()
        .and_then(|r| r.ok())
        .and_then(|r| r.err())
    {
        return Err(code.into());
    }
    builder
        .body(out)
        .map_err(|e| Error::Failed(format!("response: {e}")))
}
