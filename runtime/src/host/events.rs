//! `skiff:function/events`: publishing. Events a guest publishes wait in the invocation's
//! outbox and reach the bus only if the invocation succeeds; an event handler's events get
//! ids derived from the event it handles, so a redelivery re-publishes the same ids and
//! the bus drops them as duplicates.

use super::InstanceState;
use super::bindings::skiff::function::events;
use super::capability::{Capability, CapabilityError, DeployContext, InstanceContext};
use crate::events::Event;
use crate::ids::{derived_id, random_id};
use skiff_core::limits::TimerLimits;
use skiff_core::record::now_ms;
use skiff_core::topic::check_topic;
use std::sync::{Arc, Mutex, MutexGuard};
use wasmtime::component::{HasData, Linker};

/// Largest event (data + headers), in bytes.
pub const MAX_EVENT_BYTES: usize = 1 << 20;
/// Most events one invocation may publish.
pub const MAX_EVENTS_PER_INVOCATION: usize = 1000;

/// Checks an event before anyone publishes it (a guest, or an operator through the admin
/// API): a valid topic, and data and headers within [`MAX_EVENT_BYTES`].
pub fn check_event(topic: &str, data: &[u8], headers: &[(String, String)]) -> Result<(), String> {
    check_topic(topic).map_err(|e| e.to_string())?;
    if topic.split('.').next() == Some(skiff_core::schedule::TOPIC_PREFIX) {
        return Err(format!(
            "topic `{topic}` is reserved for schedule fires; publish under another first token"
        ));
    }
    let size = data.len()
        + headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if size > MAX_EVENT_BYTES {
        return Err(format!(
            "event is {size} bytes; the limit is {MAX_EVENT_BYTES}"
        ));
    }
    Ok(())
}

/// Events published by an instance and not yet settled: shared between the instance's
/// store and the request that settles them (a reused instance's store is out of reach of
/// the request once it has answered).
#[derive(Clone, Default)]
pub struct Outbox(Arc<Mutex<Vec<Event>>>);

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Vec<Event>> {
        match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Takes every waiting event.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.lock())
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How far the node's state has applied the cluster's log ([`crate::state::StateBackend::position`]).
pub type Position = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The events an instance has published and not yet settled.
pub struct EventCtx {
    function: String,
    /// How far the node's state has applied: what an event is published after (see
    /// [`Event::after`]).
    position: Position,
    cause: Option<String>,
    traceparent: String,
    /// Bounds on delivery times.
    timers: TimerLimits,
    /// Waiting for the invocation to succeed.
    pub outbox: Outbox,
}

impl EventCtx {
    /// The outbox of one invocation of `function`, handling event `cause` if any; its
    /// events carry `traceparent` unless the guest sets one.
    pub fn new(
        function: &str,
        position: Position,
        cause: Option<&str>,
        traceparent: String,
    ) -> Self {
        EventCtx {
            function: function.to_string(),
            position,
            cause: cause.map(String::from),
            traceparent,
            timers: TimerLimits::default(),
            outbox: Outbox::default(),
        }
    }

    /// The same, bounding delivery times by `timers`.
    pub fn with_timers(mut self, timers: TimerLimits) -> Self {
        self.timers = timers;
        self
    }

    /// A reused instance begins a request: what it publishes from now on carries
    /// `traceparent`.
    pub fn begin(&mut self, traceparent: String) {
        self.traceparent = traceparent;
    }

    /// A reused instance begins handling event `cause`: the ids of what it publishes
    /// derive from it.
    pub fn begin_delivery(&mut self, cause: &str, traceparent: String) {
        self.cause = Some(cause.to_string());
        self.traceparent = traceparent;
    }

    /// Queues an event; the error is the guest's to read. With `key`, the id derives from
    /// (function, key); else from the handled event, or is random.
    pub fn publish(
        &mut self,
        key: Option<&str>,
        topic: String,
        data: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<String, String> {
        self.publish_at(key, topic, data, headers, 0)
    }

    /// [`EventCtx::publish`], delivered no earlier than `at_ms` (0: at once); a time
    /// in the past or beyond the node's maximum delay is refused.
    pub fn publish_at(
        &mut self,
        key: Option<&str>,
        topic: String,
        data: Vec<u8>,
        headers: Vec<(String, String)>,
        at_ms: u64,
    ) -> Result<String, String> {
        check_event(&topic, &data, &headers)?;
        let deliver_at_ms = match at_ms {
            0 => 0,
            at => self.timers.check_delivery(at, now_ms())?,
        };
        let mut outbox = self.outbox.lock();
        if outbox.len() >= MAX_EVENTS_PER_INVOCATION {
            return Err(format!(
                "an invocation may publish at most {MAX_EVENTS_PER_INVOCATION} events"
            ));
        }
        let n = outbox.len() as u32;
        let id = match (key, &self.cause) {
            (Some(key), _) => derived_id(&format!("key:{key}"), &self.function, 0),
            (None, Some(cause)) => derived_id(cause, &self.function, n),
            (None, None) => random_id(),
        };
        let mut headers = headers;
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
        {
            headers.push(("traceparent".to_string(), self.traceparent.clone()));
        }
        outbox.push(Event {
            id: id.clone(),
            topic,
            data,
            headers,
            published_at_ms: now_ms(),
            // Every write this invocation made so far is applied here: its handlers wait
            // until their node has applied as much.
            after: (self.position)(),
            after_of: self.function.clone(),
            deliver_at_ms,
        });
        Ok(id)
    }
}

struct HasEvents;

impl HasData for HasEvents {
    type Data<'a> = &'a mut EventCtx;
}

/// `skiff:function/events`.
pub struct Events;

impl Capability for Events {
    /// The function's name, the node's state position and its bounds on delays.
    type Deployed = (String, Position, TimerLimits);
    type Instance = EventCtx;

    fn link(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
        events::add_to_linker::<_, HasEvents>(linker, |s| &mut s.caps.events)
    }

    fn configure(cx: &DeployContext<'_>) -> Result<Self::Deployed, CapabilityError> {
        let state = cx.node.state.clone();
        let function = cx.function.to_string();
        let of = function.clone();
        let position: Position = Arc::new(move || state.position(&of));
        Ok((function, position, cx.node.timers))
    }

    fn instantiate(
        (function, position, timers): &Self::Deployed,
        cx: &InstanceContext<'_>,
    ) -> EventCtx {
        EventCtx::new(
            function,
            position.clone(),
            cx.cause,
            cx.traceparent.to_string(),
        )
        .with_timers(*timers)
    }
}

impl events::Host for &mut EventCtx {
    async fn publish(
        &mut self,
        topic: String,
        data: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> wasmtime::Result<Result<String, String>> {
        Ok(EventCtx::publish(self, None, topic, data, headers))
    }

    async fn publish_keyed(
        &mut self,
        key: String,
        topic: String,
        data: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> wasmtime::Result<Result<String, String>> {
        Ok(EventCtx::publish(self, Some(&key), topic, data, headers))
    }

    async fn publish_at(
        &mut self,
        key: Option<String>,
        topic: String,
        data: Vec<u8>,
        headers: Vec<(String, String)>,
        at_ms: u64,
    ) -> wasmtime::Result<Result<String, String>> {
        // 0 would mean "at once"; a guest asking for the epoch asks for the past.
        let at_ms = at_ms.max(1);
        Ok(EventCtx::publish_at(
            self,
            key.as_deref(),
            topic,
            data,
            headers,
            at_ms,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_derive_from_the_cause_and_limits_hold() {
        let mut a = EventCtx::new("pay", Arc::new(|| 0), Some("evt-1"), String::new());
        let mut b = EventCtx::new("pay", Arc::new(|| 0), Some("evt-1"), String::new());
        let id_a = a.publish(None, "x.y".into(), vec![1], vec![]).unwrap();
        let id_b = b.publish(None, "x.y".into(), vec![2], vec![]).unwrap();
        assert_eq!(id_a, id_b, "a redelivery must re-publish the same id");
        let mut c = EventCtx::new("pay", Arc::new(|| 0), None, String::new());
        let mut d = EventCtx::new("pay", Arc::new(|| 0), None, String::new());
        assert_ne!(
            c.publish(None, "x".into(), vec![], vec![]).unwrap(),
            d.publish(None, "x".into(), vec![], vec![]).unwrap()
        );
        assert!(
            a.publish(None, "x.*".into(), vec![], vec![])
                .unwrap_err()
                .contains("wildcards")
        );
        let err = a
            .publish(None, "x".into(), vec![0; MAX_EVENT_BYTES + 1], vec![])
            .unwrap_err();
        assert!(err.contains("the limit is"), "{err}");
        assert_eq!(a.outbox.len(), 1);
        // Keyed ids depend on the function and the key only.
        let k1 = c.publish(Some("o-1"), "x".into(), vec![], vec![]).unwrap();
        let k2 = d.publish(Some("o-1"), "x".into(), vec![], vec![]).unwrap();
        let other = EventCtx::new("other", Arc::new(|| 0), None, String::new())
            .publish(Some("o-1"), "x".into(), vec![], vec![])
            .unwrap();
        assert_eq!(k1, k2);
        assert_ne!(k1, other);
    }
}
