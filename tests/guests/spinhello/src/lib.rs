//! The hello-world of Spin's Rust SDK 7, unchanged: a `wasi:http/handler@0.3` component.

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

#[http_service]
async fn hello_world(_req: Request) -> impl IntoResponse {
    "Hello, Spin"
}
