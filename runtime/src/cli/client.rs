//! The admin API client the CLI uses: JSON in and out, clear errors when the server is
//! unreachable or refuses.

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use skiff_core::api::ErrorBody;

/// A request body the client can send: whole or streamed.
pub type ClientBody = BoxBody<Bytes, std::io::Error>;

/// A failed admin call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL is malformed.
    #[error("invalid server URL `{0}`; pass --server http://HOST:PORT (or set SKIFF_SERVER)")]
    BadUrl(String),
    /// The server could not be reached.
    #[error(
        "cannot reach the Skiff server at {server}: {detail}; start it with `skiff up` or point --server (SKIFF_SERVER) at it"
    )]
    Unreachable {
        /// The server URL.
        server: String,
        /// What went wrong.
        detail: String,
    },
    /// The server answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The server's message.
        message: String,
    },
    /// The answer did not decode.
    #[error("unexpected answer from {server}: {detail}")]
    Decode {
        /// The server URL.
        server: String,
        /// What was wrong.
        detail: String,
    },
}

/// A client of one server's admin API.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: Client<HttpConnector, ClientBody>,
}

/// Turns a sending error into a sentence, following the error's causes.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

/// A body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> ClientBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A plain HTTP client (for invoking functions).
pub fn http_client() -> Client<HttpConnector, ClientBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

impl AdminClient {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:7071`).
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        let uri: http::Uri = base
            .parse()
            .map_err(|_| ClientError::BadUrl(base.clone()))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(ClientError::BadUrl(base));
        }
        Ok(AdminClient {
            base,
            token,
            http: http_client(),
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `body` to `path` and decodes a JSON answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: ClientBody,
    ) -> Result<T, ClientError> {
        let bytes = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            server: self.base.clone(),
            detail: e.to_string(),
        })
    }

    /// Sends `body` to `path`; the answer's body when it is a success, else its error.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: ClientBody,
    ) -> Result<Bytes, ClientError> {
        let resp = self.stream(method, path, body).await?;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Unreachable {
                server: self.base.clone(),
                detail: describe(&e),
            })?
            .to_bytes();
        Ok(bytes)
    }

    /// Sends `body` to `path`; a successful answer as it arrives (its body may be a
    /// stream), else the server's error.
    pub async fn stream(
        &self,
        method: Method,
        path: &str,
        body: ClientBody,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(body)
            .map_err(|_| ClientError::BadUrl(self.base.clone()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| ClientError::Unreachable {
                server: self.base.clone(),
                detail: describe(&e),
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| {
                format!(
                    "server answered {status}: {}",
                    String::from_utf8_lossy(&bytes).trim()
                )
            });
        Err(ClientError::Api { status, message })
    }

    /// GET and decode.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, full(Bytes::new())).await
    }
}
