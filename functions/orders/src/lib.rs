//! orders: a three-step workflow on events.
//!
//! * `POST /orders` with `{"id": "...", "amount": N}` stores the order (`created`) and
//!   publishes `orders.created`; `GET /orders/<id>` answers it as JSON.
//! * payment step (on `orders.created`): counts the charge, marks the order `paid`,
//!   publishes `payments.completed`.
//! * notification step (on `payments.completed`): marks the order `notified`.
//!
//! `charges` counts how often payment was applied: 1 when every event took effect once,
//! however often it was delivered.

use serde::{Deserialize, Serialize};
use skiff_sdk::events::{self, Event};
use skiff_sdk::http::{Method, StatusCode};
use skiff_sdk::kv::Store;
use skiff_sdk::{Request, Response, text};

#[derive(Debug, Serialize, Deserialize)]
struct NewOrder {
    id: String,
    amount: u64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Order {
    id: String,
    amount: u64,
    status: String,
    charges: u64,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let mut r = http_response(status, serde_json::to_vec(value).unwrap_or_default());
    r.headers_mut().insert(
        "content-type",
        skiff_sdk::http::HeaderValue::from_static("application/json"),
    );
    r
}

fn http_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r
}

fn load(store: &Store, id: &str) -> Result<Option<Order>, String> {
    let Some(mut order) = store
        .get_json::<Order>(&format!("order:{id}"))
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    order.charges = store
        .get(&format!("charges:{id}"))
        .map_err(|e| e.to_string())?
        .and_then(|v| String::from_utf8_lossy(&v).parse().ok())
        .unwrap_or(0);
    Ok(Some(order))
}

fn api(req: Request) -> Result<Response, String> {
    let store = Store::open_default().map_err(|e| e.to_string())?;
    let path = req.uri().path().trim_end_matches('/');
    match (req.method().clone(), path) {
        (Method::POST, "/orders") => {
            let new: NewOrder = match serde_json::from_slice(req.body()) {
                Ok(o) => o,
                Err(e) => {
                    return Ok(text(
                        StatusCode::BAD_REQUEST,
                        format!("send {{\"id\": \"...\", \"amount\": N}}: {e}\n"),
                    ));
                }
            };
            if !valid_id(&new.id) {
                return Ok(text(
                    StatusCode::BAD_REQUEST,
                    "order ids are 1 to 128 letters, digits, `-` or `_`\n",
                ));
            }
            let order = Order {
                id: new.id.clone(),
                amount: new.amount,
                status: "created".into(),
                charges: 0,
            };
            let bytes = serde_json::to_vec(&order).map_err(|e| e.to_string())?;
            // Create only if absent: a repeated POST never overwrites the order.
            let created = store
                .compare_and_swap(&format!("order:{}", new.id), None, &bytes)
                .map_err(|e| e.to_string())?;
            // Keyed by the order, so a retried POST re-publishes safely: dropped if the
            // first publication went out, published if the first attempt died before it.
            let key = format!("created:{}", new.id);
            if !created {
                let existing = load(&store, &new.id)?;
                if existing.as_ref().is_some_and(|o| o.status == "created") {
                    events::publish_json_keyed(&key, "orders.created", &new)
                        .map_err(String::from)?;
                }
                return Ok(json_response(StatusCode::OK, &existing));
            }
            events::publish_json_keyed(&key, "orders.created", &new).map_err(String::from)?;
            Ok(json_response(StatusCode::CREATED, &order))
        }
        (Method::GET, p) if p.starts_with("/orders/") => {
            let id = &p["/orders/".len()..];
            match load(&store, id)? {
                Some(order) => Ok(json_response(StatusCode::OK, &order)),
                None => Ok(text(StatusCode::NOT_FOUND, format!("no order `{id}`\n"))),
            }
        }
        _ => Ok(text(
            StatusCode::NOT_FOUND,
            "POST /orders or GET /orders/<id>\n",
        )),
    }
}

fn http(req: Request) -> Response {
    match api(req) {
        Ok(r) => r,
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// Moves the order from `from` to `to`; a no-op if it is already past `from`.
fn advance(store: &Store, id: &str, from: &str, to: &str) -> Result<(), String> {
    let key = format!("order:{id}");
    let current = store
        .get(&key)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no order `{id}`"))?;
    let mut order: Order = serde_json::from_slice(&current).map_err(|e| e.to_string())?;
    if order.status != from {
        return Ok(());
    }
    order.status = to.into();
    let next = serde_json::to_vec(&order).map_err(|e| e.to_string())?;
    if !store
        .compare_and_swap(&key, Some(&current), &next)
        .map_err(|e| e.to_string())?
    {
        return Err(format!("order `{id}` changed underneath; retrying"));
    }
    Ok(())
}

fn on_event(event: Event) -> Result<(), String> {
    let store = Store::open_default().map_err(|e| e.to_string())?;
    let order: NewOrder = event.json().map_err(String::from)?;
    match event.topic.as_str() {
        "orders.created" => {
            store
                .increment(&format!("charges:{}", order.id), 1)
                .map_err(|e| e.to_string())?;
            advance(&store, &order.id, "created", "paid")?;
            events::publish_json("payments.completed", &order).map_err(String::from)?;
            Ok(())
        }
        "payments.completed" => advance(&store, &order.id, "paid", "notified"),
        other => Err(format!("orders does not handle `{other}`")),
    }
}

skiff_sdk::http_handler!(http);
skiff_sdk::event_handler!(on_event);
