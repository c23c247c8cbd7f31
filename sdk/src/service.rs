//! Async handlers on WASI 0.3 (`wasi:http/handler@0.3.0`, world `wasi:http/service`).
//!
//! ```text
//! use skiff_sdk::service::Request;
//!
//! async fn hello(req: Request) -> String {
//!     format!("Hello! You asked for {}\n", req.uri().path())
//! }
//!
//! skiff_sdk::http_service!(hello);
//! ```
//!
//! The handler is an `async fn` taking a [`Request`] whose body streams in
//! ([`read_body`] reads it whole) and returning anything that implements
//! [`crate::IntoResponse`], or a [`Streaming`] response whose body streams out. Skiff
//! reuses a 0.3 instance for many requests, some at once (`[instances]` in skiff.toml):
//! globals live across requests. Key-value state ([`crate::kv`]), events
//! ([`crate::events`]) and configuration ([`crate::config`]) work from async code as
//! they do from a 0.2 handler; outgoing HTTP is [`send`].

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

pub use wasip3;
pub use wasip3::http::types::ErrorCode;
pub use wasip3::http_compat::{IncomingRequestBody, IncomingResponseBody};

/// An incoming request; its body streams in.
pub type Request = http::Request<IncomingRequestBody>;

/// A response whose body streams out as the handler produces it.
pub struct Streaming<B>(pub http::Response<B>);

/// What an async handler may return.
pub trait IntoServiceResponse {
    /// Converts into a `wasi:http` response.
    fn into_wasi(self) -> Result<wasip3::http::types::Response, ErrorCode>;
}

impl<T: crate::IntoResponse> IntoServiceResponse for T {
    fn into_wasi(self) -> Result<wasip3::http::types::Response, ErrorCode> {
        let mut resp = self.into_response();
        // A whole body has a known length: say so, so that the host can write the answer
        // in one go rather than chunked.
        if !resp.headers().contains_key(http::header::CONTENT_LENGTH) {
            let len = http::HeaderValue::from(resp.body().len());
            resp.headers_mut().insert(http::header::CONTENT_LENGTH, len);
        }
        let resp = resp.map(|b| Full::new(Bytes::from(b)));
        wasip3::http_compat::http_into_wasi_response(resp)
    }
}

impl<B> IntoServiceResponse for Streaming<B>
where
    B: http_body::Body + 'static,
    B::Data: Into<Vec<u8>>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    fn into_wasi(self) -> Result<wasip3::http::types::Response, ErrorCode> {
        wasip3::http_compat::http_into_wasi_response(self.0)
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// More than the limit arrived.
    TooLarge(usize),
    /// The stream failed.
    Failed(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge(limit) => write!(f, "the body is larger than {limit} bytes"),
            BodyError::Failed(e) => write!(f, "cannot read the body: {e}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// Reads `body` whole, at most `limit` bytes.
pub async fn read_body<B>(body: B, limit: usize) -> Result<Vec<u8>, BodyError>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes().to_vec()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge(limit)),
        Err(e) => Err(BodyError::Failed(e.to_string())),
    }
}

/// Sends an outgoing request through `wasi:http/client@0.3`; Skiff allows only the
/// origins in the manifest's `allowed_outbound_hosts` (anything else fails with
/// `ErrorCode::HttpRequestDenied`).
pub async fn send<B>(
    req: http::Request<B>,
) -> Result<http::Response<IncomingResponseBody>, ErrorCode>
where
    B: http_body::Body + 'static,
    B::Data: Into<Vec<u8>>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    let req = wasip3::http_compat::http_into_wasi_request(req)?;
    let resp = wasip3::http::client::send(req).await?;
    wasip3::http_compat::http_from_wasi_response(resp)
}

/// Exports `handler` (an `async fn(Request) -> impl IntoServiceResponse`) as the
/// component's `wasi:http/handler@0.3.0`. Use it once per component.
#[macro_export]
macro_rules! http_service {
    ($handler:path) => {
        struct __SkiffHttpService;

        impl $crate::service::wasip3::exports::http::handler::Guest for __SkiffHttpService {
            async fn handle(
                request: $crate::service::wasip3::http::types::Request,
            ) -> ::std::result::Result<
                $crate::service::wasip3::http::types::Response,
                $crate::service::ErrorCode,
            > {
                let request =
                    $crate::service::wasip3::http_compat::http_from_wasi_request(request)?;
                $crate::service::IntoServiceResponse::into_wasi($handler(request).await)
            }
        }

        $crate::service::wasip3::http::service::export!(__SkiffHttpService);
    };
}
