//! ticker: a test function for schedules and delayed events.
//!
//! * A fire of schedule `i` for slot `S` records `late/i/S` (ms from the slot to the
//!   handler's start), sleeps `SLEEP_MS` (env) if set, then counts `fires/i/S` and sets
//!   `attempt/i/S`. Its writes are keyed by the fire, so a slot handled twice still
//!   counts 1; a fire killed in its sleep and retried elsewhere leaves `attempt` 2.
//! * `POST /ticker/delay/<id>?ms=N` publishes `<id>` on `delayed.ticker` for N ms from
//!   now and answers the time it published (ms since the epoch).
//! * An event on `delayed.ticker` sets `got/<id>` to the time it arrived and counts
//!   `gotcount/<id>`.

use skiff_sdk::events::{self, Event};
use skiff_sdk::http::StatusCode;
use skiff_sdk::kv::Store;
use skiff_sdk::{Request, Response, text};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn http(req: Request) -> Response {
    let path = req.uri().path().to_string();
    let Some(id) = path.strip_prefix("/ticker/delay/") else {
        return text(StatusCode::NOT_FOUND, "POST /ticker/delay/<id>?ms=N\n");
    };
    let ms: u64 = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let published = now_ms();
    match events::publish_after("delayed.ticker", id, Duration::from_millis(ms)) {
        Ok(_) => text(StatusCode::OK, format!("{published}")),
        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

fn on_event(event: Event) -> Result<(), String> {
    let started = now_ms();
    let store = Store::open_default().map_err(|e| e.to_string())?;
    if event.topic == "delayed.ticker" {
        let id = String::from_utf8_lossy(&event.data).to_string();
        store
            .set(&format!("got/{id}"), started.to_string())
            .map_err(|e| e.to_string())?;
        store
            .increment(&format!("gotcount/{id}"), 1)
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    let (Some(slot), Some(i)) = (event.scheduled_at_ms(), event.schedule_index()) else {
        return Err(format!("ticker does not handle `{}`", event.topic));
    };
    store
        .set(
            &format!("late/{i}/{slot}"),
            started.saturating_sub(slot).to_string(),
        )
        .map_err(|e| e.to_string())?;
    if let Some(ms) = std::env::var("SLEEP_MS").ok().and_then(|v| v.parse().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    store
        .increment(&format!("fires/{i}/{slot}"), 1)
        .map_err(|e| e.to_string())?;
    store
        .set(&format!("attempt/{i}/{slot}"), event.attempt.to_string())
        .map_err(|e| e.to_string())?;
    Ok(())
}

skiff_sdk::http_handler!(http);
skiff_sdk::event_handler!(on_event);
