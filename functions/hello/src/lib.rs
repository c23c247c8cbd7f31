//! hello: answers a greeting that names the path it was called on. A WASI 0.3 function
//! (`wasi:http/handler@0.3`): an async handler, whose instances Skiff reuses.
//! The greeting comes from `GREETING` in skiff.toml's `[env]`.

use skiff_sdk::service::Request;

async fn hello(req: Request) -> String {
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_string());
    println!("hello called on {}", req.uri().path());
    format!(
        "{greeting} from Skiff! You asked for {}\n",
        req.uri().path()
    )
}

skiff_sdk::http_service!(hello);
