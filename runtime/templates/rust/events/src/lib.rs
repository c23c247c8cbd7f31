//! {{name}}: publishes an event and handles it.
//! `POST /{{name}}` publishes the body to `{{name}}.greeted` (answers 202 with the event's
//! id); the event handler stores what it received; `GET /{{name}}` answers the last one
//! (404 before the first).

use skiff_sdk::events::{self, Event};
use skiff_sdk::http::{Method, StatusCode};
use skiff_sdk::kv::Store;
use skiff_sdk::{IntoResponse, Request, Response, text};

fn handle(req: Request) -> Result<Response, String> {
    let store = Store::open_default().map_err(|e| e.to_string())?;
    Ok(match *req.method() {
        Method::POST => {
            let id = events::publish("{{name}}.greeted", req.body()).map_err(|e| e.to_string())?;
            text(StatusCode::ACCEPTED, format!("published {id}\n"))
        }
        Method::GET => match store.get("last").map_err(|e| e.to_string())? {
            Some(value) => skiff_sdk::http::Response::new(value),
            None => text(StatusCode::NOT_FOUND, "no event yet: POST something first\n"),
        },
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    })
}

fn on_event(event: Event) -> Result<(), String> {
    let store = Store::open_default().map_err(|e| e.to_string())?;
    println!("received {} on {}", event.id, event.topic);
    store.set("last", &event.data).map_err(|e| e.to_string())
}

skiff_sdk::http_handler!(handle);
skiff_sdk::event_handler!(on_event);
