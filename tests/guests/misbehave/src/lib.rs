//! A guest that does what a broken function would, one path each (below whatever route
//! it is deployed on):
//! `/trap` panics, `/loop` spins forever, `/grow` allocates without bound,
//! `/sleep/<ms>` sleeps, `/size` answers the body's length, `/version` answers `[env] VERSION`.

use skiff_sdk::{Request, Response, http::StatusCode, text};

fn handle(req: Request) -> Response {
    let path = req.uri().path();
    // Skip the route's first segment so that copies can be deployed under other names.
    let rest = match path.get(1..).and_then(|p| p.find('/')) {
        Some(i) => &path[i + 1..],
        None => "/",
    };
    match rest {
        "/trap" => panic!("misbehave: asked to trap"),
        "/loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "/grow" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "/size" => text(StatusCode::OK, req.body().len().to_string()),
        "/version" => text(
            StatusCode::OK,
            std::env::var("VERSION").unwrap_or_else(|_| "unset".into()),
        ),
        _ => {
            if let Some(ms) = rest.strip_prefix("/sleep/") {
                let ms: u64 = ms.parse().unwrap_or(100);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                return text(StatusCode::OK, format!("slept {ms}ms"));
            }
            text(StatusCode::NOT_FOUND, format!("no behaviour at {rest}"))
        }
    }
}

skiff_sdk::http_handler!(handle);
