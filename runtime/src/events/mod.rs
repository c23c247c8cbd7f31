//! Events: functions publish them; triggers (`[[events]]` in skiff.toml) deliver them to
//! other functions.
//!
//! The [`Bus`] trait is the seam between the node and the engine that carries events:
//! [`embedded::EmbeddedBus`] (redb, `skiff up`'s default) and, in cluster mode, NATS
//! JetStream. Delivery is at least once: a delivery is acked after its handler succeeds,
//! retried with backoff when it fails, and dead-lettered after the trigger's last
//! attempt. Effects apply once because a handler's writes and publications are keyed by
//! the event's id (see `crate::triggers::events`).
//!
//! Time is the bus's too: an event may be published for later (`deliver_at_ms`), and a
//! function's `[[schedule]]` tables are installed in the bus, which fires each slot as an
//! event on `schedule.<function>.<index>` (redb timers on one machine, NATS message
//! schedules in a cluster) and keeps each schedule's record (paused, last fire).

#[cfg(test)]
mod conformance;
pub mod embedded;
pub mod nats;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
pub use skiff_core::api::{DeadLetter, Event, ScheduleRecord};
use skiff_core::schedule::Schedule;
use std::time::Duration;

/// A change to a schedule's record (see [`Bus::update_schedule`]).
pub type RecordEdit = std::sync::Arc<dyn Fn(&mut ScheduleRecord) + Send + Sync>;

/// A durable consumer: one per function and trigger, shared by every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerSpec {
    /// Durable name.
    pub name: String,
    /// The function it delivers to.
    pub function: String,
    /// Topic pattern.
    pub pattern: String,
    /// How long a delivery may stay unacknowledged before it is delivered again.
    pub ack_wait_ms: u64,
}

impl ConsumerSpec {
    /// The consumer of `function` for trigger `pattern`; its name is stable across
    /// redeploys that keep the pattern.
    pub fn new(function: &str, pattern: &str, ack_wait: Duration) -> Self {
        let digest = skiff_core::record::sha256_hex(pattern.as_bytes());
        ConsumerSpec {
            name: format!("fn-{function}-{}", &digest[..12]),
            function: function.to_string(),
            pattern: pattern.to_string(),
            ack_wait_ms: ack_wait.as_millis() as u64,
        }
    }
}

/// One delivery of an event to a consumer.
#[derive(Debug)]
pub struct Delivery {
    /// The event.
    pub event: Event,
    /// 1 on the first delivery.
    pub attempt: u32,
    /// The consumer it came through.
    pub consumer: String,
    /// Backend bookkeeping.
    pub token: DeliveryToken,
}

/// What a backend needs to settle a delivery, opaque to everyone but the bus that made
/// it (the embedded bus keeps the event's sequence; JetStream, the message itself).
pub struct DeliveryToken(Box<dyn std::any::Any + Send + Sync>);

impl DeliveryToken {
    /// Wraps a backend's own bookkeeping.
    pub fn new<T: std::any::Any + Send + Sync>(inner: T) -> Self {
        DeliveryToken(Box::new(inner))
    }

    /// The bookkeeping, if this token was made by the backend that keeps a `T`.
    pub fn get<T: std::any::Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl std::fmt::Debug for DeliveryToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeliveryToken")
    }
}

/// A failure of the bus.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The backend failed; nothing was acknowledged.
    #[error("event bus: {0}")]
    Backend(String),
    /// No such consumer.
    #[error("event bus: no consumer `{0}`")]
    NoConsumer(String),
}

/// Time on the bus: installed schedules and their records. (An event for later is an
/// event with `deliver_at_ms`, published like any other.)
pub trait Timers: Send + Sync {
    /// Makes `function`'s schedules these, as of its version `version`: each fires its
    /// slots as events on `schedule.<function>.<index>`; schedules past the end stop.
    /// Installing what is installed changes nothing, and an older version never
    /// replaces a newer one (nodes roll a deploy out one by one).
    fn install_schedules<'a>(
        &'a self,
        function: &'a str,
        version: u64,
        schedules: &'a [Schedule],
    ) -> BoxFuture<'a, Result<(), BusError>>;
    /// Stops every schedule of `function` and forgets their records.
    fn remove_schedules<'a>(&'a self, function: &'a str) -> BoxFuture<'a, Result<(), BusError>>;
    /// The record of `function`'s schedule `index` (the default if it never fired).
    fn schedule_record<'a>(
        &'a self,
        function: &'a str,
        index: usize,
    ) -> BoxFuture<'a, Result<ScheduleRecord, BusError>>;
    /// Changes one schedule's record atomically (`edit` may run more than once);
    /// returns the record before and after.
    fn update_schedule<'a>(
        &'a self,
        function: &'a str,
        index: usize,
        edit: RecordEdit,
    ) -> BoxFuture<'a, Result<(ScheduleRecord, ScheduleRecord), BusError>>;
}

/// The engine that carries events. Every method's success is durable.
pub trait Bus: Timers {
    /// Publishes events (an id already published is dropped as a duplicate).
    fn publish<'a>(&'a self, events: Vec<Event>) -> BoxFuture<'a, Result<(), BusError>>;
    /// Creates the consumer if it does not exist; it receives events published from now on.
    fn ensure_consumer<'a>(&'a self, spec: &'a ConsumerSpec)
    -> BoxFuture<'a, Result<(), BusError>>;
    /// Deletes a consumer and its pending deliveries.
    fn delete_consumer<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BusError>>;
    /// Up to `max` deliveries, waiting up to `wait` for the first.
    fn fetch<'a>(
        &'a self,
        consumer: &'a str,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, BusError>>;
    /// The delivery succeeded.
    fn ack<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<(), BusError>>;
    /// The delivery failed; deliver it again after `delay`.
    fn nak<'a>(&'a self, d: &'a Delivery, delay: Duration) -> BoxFuture<'a, Result<(), BusError>>;
    /// The delivery failed for the last time: move it to the function's dead letters.
    fn dead_letter<'a>(
        &'a self,
        d: &'a Delivery,
        function: &'a str,
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), BusError>>;
    /// A function's dead letters, oldest first.
    fn dead_letters<'a>(
        &'a self,
        function: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, BusError>>;
    /// Events waiting for `consumer`: not yet settled, whether or not delivered.
    fn pending<'a>(&'a self, consumer: &'a str) -> BoxFuture<'a, Result<u64, BusError>>;
    /// Delivers a dead letter to its function again (and removes it); false if unknown.
    fn replay<'a>(
        &'a self,
        function: &'a str,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, BusError>>;
}
