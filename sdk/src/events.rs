//! Publishing events and handling them.
//!
//! [`publish_at`] and [`publish_after`] publish for later. A function's `[[schedule]]`
//! tables fire its event handler too, on topic `schedule.<function>.<index>`; see
//! [`Event::scheduled_at_ms`].
//!
//! [`publish`] queues an event that is published when the current invocation succeeds
//! (and dropped if it fails or times out). A handler exported with
//! [`crate::event_handler!`] receives each delivery of the function's `[[events]]`
//! triggers; returning `Err` (or panicking) retries the event with backoff, then moves it
//! to the function's dead letters after `max_attempts`.
//!
//! Effects happen once per event even when a delivery is retried: while handling an
//! event, the n-th key-value write is applied at most once (a retry making the same write
//! gets the first result back), and the n-th event published gets the same id every time
//! (so it is published once). Keep a handler's writes and publications in an order that
//! depends only on the event and on what those writes return.

use crate::bindings::skiff::function::events as wit;
use std::fmt;

/// A delivered event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Stable across redeliveries.
    pub id: String,
    /// The topic it was published to.
    pub topic: String,
    /// The payload.
    pub data: Vec<u8>,
    /// Headers given at publication.
    pub headers: Vec<(String, String)>,
    /// 1 on the first delivery.
    pub attempt: u32,
}

impl Event {
    /// The payload decoded as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.data).map_err(|e| Error(format!("event {}: {e}", self.id)))
    }

    /// For a schedule's fire (topic `schedule.<function>.<index>`): the slot it fires
    /// for, in ms since the Unix epoch. The same on every redelivery and every node; key
    /// what the fire does by it.
    pub fn scheduled_at_ms(&self) -> Option<u64> {
        self.header("skiff-scheduled-at-ms")?.parse().ok()
    }

    /// For a schedule's fire: its index among the function's `[[schedule]]` tables.
    pub fn schedule_index(&self) -> Option<usize> {
        let rest = self.topic.strip_prefix("schedule.")?;
        rest.rsplit('.').next()?.parse().ok()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A refused publication (invalid topic, too large) or an undecodable event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<Error> for String {
    fn from(e: Error) -> String {
        e.0
    }
}

/// Publishes `data` to `topic` once this invocation succeeds; returns the event's id.
pub fn publish(topic: &str, data: impl AsRef<[u8]>) -> Result<String, Error> {
    publish_with_headers(topic, data, &[])
}

/// Publishes with headers.
pub fn publish_with_headers(
    topic: &str,
    data: impl AsRef<[u8]>,
    headers: &[(&str, &str)],
) -> Result<String, Error> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    wit::publish(topic, data.as_ref(), &headers).map_err(Error)
}

/// Publishes with an idempotency key: the event's id derives from this function and
/// `key`, so publishing again with the same key — a retried request, say — is dropped if
/// the first went out and goes out if it did not. Ids are remembered for 24 hours.
pub fn publish_keyed(key: &str, topic: &str, data: impl AsRef<[u8]>) -> Result<String, Error> {
    wit::publish_keyed(key, topic, data.as_ref(), &[]).map_err(Error)
}

/// [`publish_keyed`] with `value` as JSON.
pub fn publish_json_keyed<T: serde::Serialize>(
    key: &str,
    topic: &str,
    value: &T,
) -> Result<String, Error> {
    let data = serde_json::to_vec(value).map_err(|e| Error(format!("JSON: {e}")))?;
    publish_keyed(key, topic, data)
}

/// Publishes `data` to `topic` for delivery no earlier than `at`, once this invocation
/// succeeds. Durable from then on: the event is delivered even if this node goes down.
/// A time in the past or beyond the node's maximum delay (30 days by default) is refused.
pub fn publish_at(
    topic: &str,
    data: impl AsRef<[u8]>,
    at: std::time::SystemTime,
) -> Result<String, Error> {
    wit::publish_at(None, topic, data.as_ref(), &[], millis(at)?).map_err(Error)
}

/// [`publish_at`], `delay` from now.
pub fn publish_after(
    topic: &str,
    data: impl AsRef<[u8]>,
    delay: std::time::Duration,
) -> Result<String, Error> {
    publish_at(topic, data, std::time::SystemTime::now() + delay)
}

/// [`publish_at`] with an idempotency key, as [`publish_keyed`]: publishing the same
/// key again is dropped as a duplicate.
pub fn publish_keyed_at(
    key: &str,
    topic: &str,
    data: impl AsRef<[u8]>,
    at: std::time::SystemTime,
) -> Result<String, Error> {
    wit::publish_at(Some(key), topic, data.as_ref(), &[], millis(at)?).map_err(Error)
}

fn millis(at: std::time::SystemTime) -> Result<u64, Error> {
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|_| Error("the delivery time is before 1970".into()))
}

/// Publishes `value` as JSON.
pub fn publish_json<T: serde::Serialize>(topic: &str, value: &T) -> Result<String, Error> {
    let data = serde_json::to_vec(value).map_err(|e| Error(format!("JSON: {e}")))?;
    publish(topic, data)
}

/// Exports `handler` (a `fn(Event) -> Result<(), E>` with `E: Display`) as the
/// component's event handler. Use it once per component, beside `http_handler!` if the
/// function also serves HTTP.
#[macro_export]
macro_rules! event_handler {
    ($handler:path) => {
        struct __SkiffEventHandler;

        impl $crate::bindings::exports::skiff::function::event_handler::Guest
            for __SkiffEventHandler
        {
            fn handle(
                event: $crate::bindings::skiff::function::events::Event,
            ) -> ::core::result::Result<(), ::std::string::String> {
                $handler($crate::events::__private::convert(event)).map_err(|e| e.to_string())
            }
        }

        $crate::bindings::__export_skiff_guest!(__SkiffEventHandler with_types_in $crate::bindings);
    };
}

#[doc(hidden)]
pub mod __private {
    use super::{Event, wit};

    /// The generated record as the SDK's event.
    pub fn convert(e: wit::Event) -> Event {
        Event {
            id: e.id,
            topic: e.topic,
            data: e.data,
            headers: e.headers,
            attempt: e.attempt,
        }
    }
}
