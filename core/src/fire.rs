//! The event a schedule's fire becomes (see [`crate::schedule`]): on topic
//! `schedule.<function>.<index>`, with an id made from function, index and slot.

use crate::api::Event;
use crate::schedule::{H_CATCH_UP, H_FIRED, H_SCHEDULED, fire_id, rfc3339, topic};

/// The event of one fire. Its data is JSON: function, schedule (index), scheduled_at
/// (RFC 3339) and scheduled_at_ms; the slot and firing time are headers too.
pub fn fire_event(function: &str, index: usize, slot: u64, fired: u64, catch_up: bool) -> Event {
    let scheduled_at = rfc3339(slot);
    let data = serde_json::json!({
        "function": function,
        "schedule": index,
        "scheduled_at": scheduled_at,
        "scheduled_at_ms": slot,
    });
    let mut headers = vec![
        (H_SCHEDULED.to_string(), slot.to_string()),
        (H_FIRED.to_string(), fired.to_string()),
    ];
    if catch_up {
        headers.push((H_CATCH_UP.to_string(), "1".to_string()));
    }
    Event {
        id: fire_id(function, index, slot),
        topic: topic(function, index),
        data: data.to_string().into_bytes(),
        headers,
        published_at_ms: fired,
        after: 0,
        after_of: String::new(),
        deliver_at_ms: 0,
    }
}

/// A header of `event` as a number.
pub fn header_ms(event: &Event, name: &str) -> Option<u64> {
    event
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    #[test]
    fn fires_have_stable_ids_and_topics() {
        let a = fire_event("nightly", 0, T0, T0 + 5, false);
        let b = fire_event("nightly", 0, T0, T0 + 900, true);
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, fire_event("nightly", 1, T0, T0, false).id);
        assert_ne!(a.id, fire_event("nightly", 0, T0 + 1000, T0, false).id);
        assert_eq!(a.topic, "schedule.nightly.0");
        assert_eq!(crate::schedule::parse_topic(&a.topic), Some(("nightly", 0)));
        assert_eq!(header_ms(&a, H_SCHEDULED), Some(T0));
        assert_eq!(header_ms(&b, H_FIRED), Some(T0 + 900));
        let data: serde_json::Value = serde_json::from_slice(&a.data).unwrap();
        assert_eq!(data["scheduled_at"], "2026-01-01T00:00:00.000Z");
        assert!(crate::topic::check_pattern(&crate::schedule::pattern("nightly")).is_ok());
    }
}
