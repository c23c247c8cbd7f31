//! functions/hello on wasi:http 0.2: the same greeting from a synchronous handler.

use skiff_sdk::Request;

fn hello(req: Request) -> String {
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_string());
    println!("hello called on {}", req.uri().path());
    format!(
        "{greeting} from Skiff! You asked for {}\n",
        req.uri().path()
    )
}

skiff_sdk::http_handler!(hello);
