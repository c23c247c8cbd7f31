//! # skiff-sdk
//!
//! Write Skiff functions in plain Rust. A function is a WebAssembly component built for
//! `wasm32-wasip2` that exports the standard `wasi:http/incoming-handler@0.2` (a `fn`
//! with [`http_handler!`]) or `wasi:http/handler@0.3` (an `async fn` with
//! [`http_service!`], see [`service`]), so it runs on Skiff and on any other `wasi:http`
//! host.
//!
//! ```text
//! use skiff_sdk::{Request, Response};
//!
//! fn hello(req: Request) -> String {
//!     format!("Hello! You asked for {}\n", req.uri().path())
//! }
//!
//! skiff_sdk::http_handler!(hello);
//! ```
//!
//! The handler takes an [`http::Request`] with the whole body read into a `Vec<u8>` and
//! returns anything that implements [`IntoResponse`]: a `String` or `&str` (200,
//! text/plain), an [`http::Response`], a `(StatusCode, body)` pair, or a `Result` whose
//! error becomes a 500. Build with `cargo build --release --target wasm32-wasip2`.
//!
//! State: [`kv::Store`] gives the function durable key-value storage of its own.
//!
//! Configuration: [`config::get`] reads the manifest's `[config]` and the secrets an
//! operator set (`skiff secret set`), through the standard `wasi:config/store`.
//!
//! Outgoing HTTP: [`outbound::send`] calls the origins listed in the manifest's
//! `allowed_outbound_hosts`; anything else fails with [`outbound::Error::Denied`].
//!
//! WASI 0.3: [`http_service!`] exports an `async fn` handler on `wasi:http/handler@0.3`
//! (see [`service`]); Skiff reuses its instances, many requests each.
//!
//! Events: [`events::publish`] publishes (once the invocation succeeds), and
//! [`event_handler!`] exports a handler for the function's `[[events]]` triggers:
//!
//! ```text
//! fn on_event(event: skiff_sdk::events::Event) -> Result<(), String> {
//!     let order: Order = event.json().map_err(|e| e.to_string())?;
//!     skiff_sdk::events::publish_json("payments.completed", &order)?;
//!     Ok(())
//! }
//! skiff_sdk::event_handler!(on_event);
//! ```

pub mod config;
pub mod events;
pub mod kv;
pub mod outbound;
pub mod service;

#[doc(hidden)]
pub mod bindings {
    //! Generated from `sdk/wit` (world `skiff:function/sdk`).
    wit_bindgen::generate!({
        path: "wit",
        world: "skiff:function/sdk",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "__export_skiff_guest",
        default_bindings_module: "skiff_sdk::bindings",
    });
}

pub use http;
use http::{HeaderValue, StatusCode};

#[doc(hidden)]
pub use wasip2 as __wasip2;

/// An incoming request with its body read in full.
pub type Request = http::Request<Vec<u8>>;

/// A response with its whole body.
pub type Response = http::Response<Vec<u8>>;

/// Anything a handler may return.
pub trait IntoResponse {
    /// Converts into a response.
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for http::Response<String> {
    fn into_response(self) -> Response {
        self.map(String::into_bytes)
    }
}

impl IntoResponse for http::Response<&'static str> {
    fn into_response(self) -> Response {
        self.map(|s| s.as_bytes().to_vec())
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        text(StatusCode::OK, self)
    }
}

impl IntoResponse for &'static str {
    fn into_response(self) -> Response {
        text(StatusCode::OK, self.to_string())
    }
}

impl IntoResponse for Vec<u8> {
    fn into_response(self) -> Response {
        let mut r = http::Response::new(self);
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        r
    }
}

impl IntoResponse for StatusCode {
    fn into_response(self) -> Response {
        let reason = self.canonical_reason().unwrap_or("").to_string();
        text(self, reason)
    }
}

impl<B: IntoResponse> IntoResponse for (StatusCode, B) {
    fn into_response(self) -> Response {
        let mut r = self.1.into_response();
        *r.status_mut() = self.0;
        r
    }
}

impl<T: IntoResponse, E: std::fmt::Display> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(t) => t.into_response(),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        }
    }
}

/// A text/plain response.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut r = http::Response::new(body.into().into_bytes());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Exports `handler` (a `fn(Request) -> impl IntoResponse`) as the component's
/// `wasi:http/incoming-handler`. Use it once per component.
#[macro_export]
macro_rules! http_handler {
    ($handler:path) => {
        struct __SkiffHttpHandler;

        impl $crate::__wasip2::exports::http::incoming_handler::Guest for __SkiffHttpHandler {
            fn handle(
                request: $crate::__wasip2::http::types::IncomingRequest,
                out: $crate::__wasip2::http::types::ResponseOutparam,
            ) {
                $crate::__private::serve(request, out, |req| {
                    $crate::IntoResponse::into_response($handler(req))
                });
            }
        }

        $crate::__wasip2::http::proxy::export!(__SkiffHttpHandler);
    };
}

#[doc(hidden)]
pub mod __private {
    //! The glue between `wasi:http` resources and `http` types.

    use super::{Request, Response, StatusCode, text};
    use wasip2::http::types::{
        Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
    };
    use wasip2::io::streams::StreamError;

    /// Largest write `blocking-write-and-flush` accepts.
    const WRITE_CHUNK: usize = 4096;
    /// Read size per call.
    const READ_CHUNK: u64 = 64 * 1024;

    /// Reads the request, runs `f`, writes the response.
    pub fn serve(
        request: IncomingRequest,
        out: ResponseOutparam,
        f: impl FnOnce(Request) -> Response,
    ) {
        let response = match read_request(request) {
            Ok(req) => f(req),
            Err(e) => text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request: {e}\n"),
            ),
        };
        write_response(out, response);
    }

    fn method(m: Method) -> Result<http::Method, String> {
        Ok(match m {
            Method::Get => http::Method::GET,
            Method::Head => http::Method::HEAD,
            Method::Post => http::Method::POST,
            Method::Put => http::Method::PUT,
            Method::Delete => http::Method::DELETE,
            Method::Connect => http::Method::CONNECT,
            Method::Options => http::Method::OPTIONS,
            Method::Trace => http::Method::TRACE,
            Method::Patch => http::Method::PATCH,
            Method::Other(s) => {
                http::Method::from_bytes(s.as_bytes()).map_err(|e| format!("method `{s}`: {e}"))?
            }
        })
    }

    fn read_request(r: IncomingRequest) -> Result<Request, String> {
        let path = r.path_with_query().unwrap_or_else(|| "/".to_string());
        // The host gives the authority (the Host the client sent) separately from the
        // headers; keep it in the URI so that handlers can see which host they serve.
        let scheme = match r.scheme() {
            Some(wasip2::http::types::Scheme::Https) => "https",
            _ => "http",
        };
        let uri = match r.authority() {
            Some(authority) if !authority.is_empty() => http::Uri::builder()
                .scheme(scheme)
                .authority(authority.as_str())
                .path_and_query(path.as_str())
                .build()
                .map_err(|e| format!("request URI: {e}"))?,
            _ => path
                .parse()
                .map_err(|e| format!("request path `{path}`: {e}"))?,
        };
        let mut builder = http::Request::builder()
            .method(method(r.method())?)
            .uri(uri);
        for (name, value) in r.headers().entries() {
            builder = builder.header(name, value);
        }
        let mut body = Vec::new();
        let incoming = r.consume().map_err(|()| "body already taken".to_string())?;
        {
            let stream = incoming
                .stream()
                .map_err(|()| "body stream already taken".to_string())?;
            loop {
                match stream.blocking_read(READ_CHUNK) {
                    Ok(chunk) => body.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(format!("reading the body failed: {}", e.to_debug_string()));
                    }
                }
            }
        }
        let _trailers = wasip2::http::types::IncomingBody::finish(incoming);
        builder.body(body).map_err(|e| e.to_string())
    }

    fn write_response(out: ResponseOutparam, response: Response) {
        let (parts, body) = response.into_parts();
        let headers = Fields::new();
        for (name, value) in &parts.headers {
            // The host refuses forbidden headers (e.g. connection-level ones); drop those.
            let _ = headers.append(name.as_str(), value.as_bytes());
        }
        if !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
            let _ = headers.set("content-length", &[body.len().to_string().into_bytes()]);
        }
        let outgoing = OutgoingResponse::new(headers);
        let _ = outgoing.set_status_code(parts.status.as_u16());
        let Ok(outgoing_body) = outgoing.body() else {
            return;
        };
        // Hand the head over first: the body is streamed to the client as it is written.
        ResponseOutparam::set(out, Ok(outgoing));
        if let Ok(stream) = outgoing_body.write() {
            for chunk in body.chunks(WRITE_CHUNK) {
                if stream.blocking_write_and_flush(chunk).is_err() {
                    // The client went away; nothing more to do.
                    return;
                }
            }
        }
        let _ = OutgoingBody::finish(outgoing_body, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_set_status_and_type() {
        let r = "hi".into_response();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.body(), b"hi");
        assert_eq!(
            r.headers()[http::header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        let r = (StatusCode::CREATED, String::from("made")).into_response();
        assert_eq!(r.status(), StatusCode::CREATED);
        let r: Result<String, String> = Err("broken".into());
        let r = r.into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.body(), b"broken\n");
        assert_eq!(StatusCode::NOT_FOUND.into_response().body(), b"Not Found");
    }
}
