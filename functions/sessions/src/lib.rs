//! sessions: keys that expire, with both kinds of timer a function has.
//!
//! * `PUT /sessions/<id>` (body: seconds to live, default 60) stores the session and
//!   publishes `sessions.expire` for delivery when it expires (`publish_at`).
//! * `GET /sessions/<id>` answers the session as JSON, or 404 once it expired.
//! * On `sessions.expire`: deletes the session if its time has come (one renewed since
//!   expires later and stays).
//! * Every minute, the `[[schedule]]` sweeps: deletes whatever expired and was missed, and
//!   records the sweep in `sweep:last`; `GET /sessions` answers the last sweep.
//!
//! Copy it for reminders, time-outs or nightly reports: the handler of a schedule is the
//! event handler, and a fire's slot (`Event::scheduled_at_ms`) is the same on every
//! delivery and every node.

use serde::{Deserialize, Serialize};
use skiff_sdk::events::{self, Event};
use skiff_sdk::http::{Method, StatusCode};
use skiff_sdk::kv::Store;
use skiff_sdk::{Request, Response, text};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Serialize, Deserialize)]
struct Session {
    id: String,
    expires_at_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Sweep {
    /// The slot of the sweep (ms since the epoch).
    slot_ms: u64,
    /// Sessions it deleted.
    deleted: u64,
    /// Sessions it left alive.
    alive: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let mut r = Response::new(serde_json::to_vec(value).unwrap_or_default());
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        skiff_sdk::http::HeaderValue::from_static("application/json"),
    );
    r
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn api(req: Request) -> Result<Response, String> {
    let store = Store::open_default().map_err(|e| e.to_string())?;
    let path = req.uri().path().trim_end_matches('/');
    let id = path.strip_prefix("/sessions/").unwrap_or("");
    match (req.method().clone(), id) {
        (Method::GET, "") => match store.get_json::<Sweep>("sweep:last") {
            Ok(Some(sweep)) => Ok(json(StatusCode::OK, &sweep)),
            Ok(None) => Ok(text(StatusCode::OK, "no sweep yet\n")),
            Err(e) => Err(e.to_string()),
        },
        (_, id) if !valid_id(id) => Ok(text(
            StatusCode::BAD_REQUEST,
            "session ids are 1 to 128 letters, digits, `-` or `_`\n",
        )),
        (Method::PUT, id) => {
            let body = String::from_utf8_lossy(req.body());
            let ttl: u64 = match body.trim() {
                "" => 60,
                s => match s.parse() {
                    Ok(n) if n > 0 => n,
                    _ => {
                        return Ok(text(
                            StatusCode::BAD_REQUEST,
                            "send the seconds the session lives, like 60\n",
                        ));
                    }
                },
            };
            let session = Session {
                id: id.to_string(),
                expires_at_ms: now_ms() + ttl * 1000,
            };
            store
                .set_json(&format!("session:{id}"), &session)
                .map_err(|e| e.to_string())?;
            let at = UNIX_EPOCH + Duration::from_millis(session.expires_at_ms);
            events::publish_at("sessions.expire", id, at).map_err(String::from)?;
            Ok(json(StatusCode::OK, &session))
        }
        (Method::GET, id) => match store.get_json::<Session>(&format!("session:{id}")) {
            Ok(Some(s)) if s.expires_at_ms > now_ms() => Ok(json(StatusCode::OK, &s)),
            Ok(_) => Ok(text(StatusCode::NOT_FOUND, format!("no session `{id}`\n"))),
            Err(e) => Err(e.to_string()),
        },
        _ => Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "PUT or GET /sessions/<id>; GET /sessions for the last sweep\n",
        )),
    }
}

fn http(req: Request) -> Response {
    api(req).unwrap_or_else(|e| text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))
}

/// Deletes session `id` if it has expired by `now`; whether it did.
fn expire(store: &Store, id: &str, now: u64) -> Result<bool, String> {
    let key = format!("session:{id}");
    match store.get_json::<Session>(&key).map_err(|e| e.to_string())? {
        Some(s) if s.expires_at_ms <= now => {
            store.delete(&key).map_err(|e| e.to_string())?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn sweep(store: &Store, slot_ms: u64) -> Result<(), String> {
    let now = now_ms();
    let (mut deleted, mut alive) = (0, 0);
    for key in store.keys_with_prefix("session:") {
        let key = key.map_err(|e| e.to_string())?;
        let id = key.trim_start_matches("session:");
        if expire(store, id, now)? {
            deleted += 1;
        } else {
            alive += 1;
        }
    }
    let last = Sweep {
        slot_ms,
        deleted,
        alive,
    };
    store
        .set_json("sweep:last", &last)
        .map_err(|e| e.to_string())
}

fn on_event(event: Event) -> Result<(), String> {
    let store = Store::open_default().map_err(|e| e.to_string())?;
    if let Some(slot) = event.scheduled_at_ms() {
        return sweep(&store, slot);
    }
    match event.topic.as_str() {
        "sessions.expire" => {
            let id = String::from_utf8_lossy(&event.data).to_string();
            expire(&store, &id, now_ms()).map(|_| ())
        }
        other => Err(format!("sessions does not handle `{other}`")),
    }
}

skiff_sdk::http_handler!(http);
skiff_sdk::event_handler!(on_event);
