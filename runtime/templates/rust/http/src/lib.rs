//! {{name}}: an HTTP function. Every request under `/{{name}}/` lands here.

use skiff_sdk::http::StatusCode;
use skiff_sdk::{Request, Response, text};

fn handle(req: Request) -> Response {
    text(
        StatusCode::OK,
        format!("Hello from {{name}} (Rust)! You asked for {}\n", req.uri().path()),
    )
}

skiff_sdk::http_handler!(handle);
