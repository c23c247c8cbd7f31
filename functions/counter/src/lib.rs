//! counter: durable counters in the function's key-value store.
//! `POST /counter/<key>` adds one and answers the new value; `GET /counter/<key>` answers
//! the current value (0 when unset). Both as a decimal number. In a cluster,
//! `GET /counter/<key>?consistent` reads the value as last written on any node.

use skiff_sdk::http::{Method, StatusCode};
use skiff_sdk::kv::{Error, Store};
use skiff_sdk::{IntoResponse, Request, Response, text};

fn counter(req: Request) -> Result<Response, Error> {
    let key = req
        .uri()
        .path()
        .trim_start_matches("/counter")
        .trim_start_matches('/');
    if key.is_empty() {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "name a counter: /counter/<key>\n",
        ));
    }
    let store = Store::open_default()?;
    let value = match *req.method() {
        Method::POST => store.increment(key, 1)?,
        Method::GET => match if req.uri().query().is_some_and(|q| q.contains("consistent")) {
            store.get_consistent(key)?
        } else {
            store.get(key)?
        } {
            Some(bytes) => String::from_utf8_lossy(&bytes).parse().unwrap_or(0),
            None => 0,
        },
        _ => return Ok(StatusCode::METHOD_NOT_ALLOWED.into_response()),
    };
    Ok(text(StatusCode::OK, value.to_string()))
}

skiff_sdk::http_handler!(counter);
