//! {{name}}: a key-value store over HTTP, on the function's own durable store.
//! `PUT /{{name}}/<key>` stores the body, `GET /{{name}}/<key>` answers it (404 when
//! unset), `DELETE /{{name}}/<key>` removes it.

use skiff_sdk::http::{Method, StatusCode};
use skiff_sdk::kv::{Error, Store};
use skiff_sdk::{IntoResponse, Request, Response, text};

fn handle(req: Request) -> Result<Response, Error> {
    let key = req.uri().path().trim_start_matches("/{{name}}").trim_start_matches('/');
    if key.is_empty() {
        return Ok(text(StatusCode::BAD_REQUEST, "name a key: /{{name}}/<key>\n"));
    }
    let store = Store::open_default()?;
    Ok(match *req.method() {
        Method::PUT => {
            store.set(key, req.body())?;
            text(StatusCode::OK, format!("stored {key}\n"))
        }
        Method::GET => match store.get(key)? {
            Some(value) => skiff_sdk::http::Response::new(value),
            None => text(StatusCode::NOT_FOUND, format!("no value for {key}\n")),
        },
        Method::DELETE => {
            store.delete(key)?;
            text(StatusCode::OK, format!("deleted {key}\n"))
        }
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    })
}

skiff_sdk::http_handler!(handle);
