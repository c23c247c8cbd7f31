//! Streams the request body back as it arrives, with the request's content type.

use skiff_sdk::service::{IncomingRequestBody, Request, Streaming};

async fn echo(req: Request) -> Streaming<IncomingRequestBody> {
    let mut resp = http::Response::new(req.into_body());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    Streaming(resp)
}

skiff_sdk::http_service!(echo);
