//! Runs event triggers: one loop per deployed trigger pulls deliveries only while the
//! trigger and the node have free capacity, invokes the function's event handler, and
//! settles each delivery: ack on success (after publishing what the handler published),
//! nak with exponential backoff on failure, dead letter after `max_attempts`.

use super::schedules::{self, Gate, Outcome};
use crate::events::{Bus, BusError, ConsumerSpec, Delivery, Event};
use crate::metrics::Metrics;
use crate::node::{Deployment, DeploymentHook, Node};
use futures::future::BoxFuture;
use skiff_core::manifest::EventTrigger;
use skiff_core::schedule::Schedule;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

/// Longest wait between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long one fetch waits for work before checking for a stop.
const FETCH_WAIT: Duration = Duration::from_secs(1);

/// What the trigger loops need of a node: room, a way to run a function's event handler,
/// and somewhere to count.
pub trait EventInvoker: Send + Sync + 'static {
    /// Invocations that could start now.
    fn free_slots(&self) -> usize;
    /// Runs `function`'s event handler on one delivery; the events it published, or why
    /// it failed.
    fn invoke_event<'a>(
        &'a self,
        function: &'a str,
        event: &'a Event,
        attempt: u32,
    ) -> BoxFuture<'a, Result<Vec<Event>, String>>;
    /// Where settled deliveries are counted.
    fn metrics(&self) -> &Metrics;
}

impl EventInvoker for Node {
    fn free_slots(&self) -> usize {
        Node::free_slots(self)
    }

    fn invoke_event<'a>(
        &'a self,
        function: &'a str,
        event: &'a Event,
        attempt: u32,
    ) -> BoxFuture<'a, Result<Vec<Event>, String>> {
        Box::pin(async move {
            let dep = self.snapshot().get(function).cloned();
            match dep {
                Some(dep) => Node::invoke_event(self, &dep, event, attempt).await,
                None => Err(format!("function `{function}` was removed")),
            }
        })
    }

    fn metrics(&self) -> &Metrics {
        Node::metrics(self)
    }
}

/// The running loops of one function's triggers.
struct TriggerLoops {
    stop: watch::Sender<bool>,
    consumers: Vec<String>,
}

/// The delay before retry number `attempt` (1 = after the first failure).
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Every function's event-consumer loops on one node. The node tells it what it serves
/// through [`DeploymentHook`].
pub struct EventTriggers {
    /// Weak: the node holds this as its hook, and loops end when the node is gone.
    invoker: Weak<dyn EventInvoker>,
    bus: Arc<dyn Bus>,
    loops: Mutex<BTreeMap<String, TriggerLoops>>,
}

impl EventTriggers {
    /// Trigger loops that run `invoker`'s handlers on deliveries from `bus`.
    pub fn new(invoker: Weak<dyn EventInvoker>, bus: Arc<dyn Bus>) -> Arc<EventTriggers> {
        Arc::new(EventTriggers {
            invoker,
            bus,
            loops: Mutex::new(BTreeMap::new()),
        })
    }

    /// Starts (or restarts, after a redeploy) the trigger loops of `d`, creating its
    /// consumers; consumers of triggers the new version dropped are deleted.
    async fn start(&self, d: &Arc<Deployment>) -> Result<(), BusError> {
        let name = d.record.name.clone();
        let old = self.take_loops(&name);
        let wanted: Vec<String> = d.triggers.iter().map(|(_, c)| c.name.clone()).collect();
        if let Some(old) = old {
            let _ = old.stop.send(true);
            for c in old.consumers.iter().filter(|c| !wanted.contains(c)) {
                self.bus.delete_consumer(c).await?;
            }
        }
        if d.triggers.is_empty() {
            // An earlier version's schedules stop. Best effort: an HTTP-only function must
            // not wait for the bus, and until this succeeds (the next deploy or start)
            // their fires find no consumer and are dropped.
            let version = d.record.version;
            if let Err(e) = self.bus.install_schedules(&name, version, &[]).await {
                tracing::debug!(function = %name, error = %e, "cannot stop earlier schedules yet");
            }
            return Ok(());
        }
        for (_, spec) in &d.triggers {
            self.bus.ensure_consumer(spec).await?;
        }
        // Once its consumers exist, so that no fire finds nobody to take it.
        self.bus
            .install_schedules(&name, d.record.version, &d.schedules)
            .await?;
        let (stop, rx) = watch::channel(false);
        for (trigger, spec) in &d.triggers {
            let concurrency = trigger
                .concurrency
                .unwrap_or(d.spec.limits.concurrency)
                .max(1) as usize;
            tokio::spawn(run_trigger(
                Loop {
                    invoker: self.invoker.clone(),
                    bus: self.bus.clone(),
                    function: name.clone(),
                    trigger: trigger.clone(),
                    consumer: spec.clone(),
                    schedule: schedule_of(d, &trigger.topic),
                },
                concurrency,
                rx.clone(),
            ));
        }
        if let Ok(mut loops) = self.loops.lock() {
            loops.insert(
                name,
                TriggerLoops {
                    stop,
                    consumers: wanted,
                },
            );
        }
        Ok(())
    }

    /// Stops `name`'s trigger loops; when it is `gone` (removed, not moved to other
    /// nodes), also deletes its consumers and their pending deliveries. A function moved
    /// away keeps them: its consumers are shared, and its new nodes fetch from them.
    async fn stop(&self, name: &str, gone: bool) {
        let Some(old) = self.take_loops(name) else {
            return;
        };
        let _ = old.stop.send(true);
        if !gone {
            return;
        }
        if let Err(e) = self.bus.remove_schedules(name).await {
            tracing::warn!(function = name, error = %e, "cannot remove the function's schedules");
        }
        for c in &old.consumers {
            if let Err(e) = self.bus.delete_consumer(c).await {
                tracing::warn!(function = name, consumer = %c, error = %e, "cannot delete consumer");
            }
        }
    }

    fn take_loops(&self, name: &str) -> Option<TriggerLoops> {
        match self.loops.lock() {
            Ok(mut loops) => loops.remove(name),
            Err(poisoned) => poisoned.into_inner().remove(name),
        }
    }
}

impl DeploymentHook for EventTriggers {
    fn deployed<'a>(&'a self, d: &'a Arc<Deployment>) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(self.start(d))
    }

    fn removed<'a>(&'a self, name: &'a str, gone: bool) -> BoxFuture<'a, ()> {
        Box::pin(self.stop(name, gone))
    }
}

/// What one trigger loop works with.
struct Loop {
    invoker: Weak<dyn EventInvoker>,
    bus: Arc<dyn Bus>,
    function: String,
    trigger: EventTrigger,
    consumer: ConsumerSpec,
    /// The schedule whose fires this trigger takes, with its index.
    schedule: Option<(usize, Schedule)>,
}

/// The schedule behind trigger `topic` of `d`, if it is one of its schedules'.
fn schedule_of(d: &Deployment, topic: &str) -> Option<(usize, Schedule)> {
    let (function, index) = skiff_core::schedule::parse_topic(topic)?;
    if function != d.record.name {
        return None;
    }
    Some((index, d.schedules.get(index)?.clone()))
}

async fn run_trigger(l: Loop, concurrency: usize, mut stop: watch::Receiver<bool>) {
    let l = Arc::new(l);
    let slots = Arc::new(Semaphore::new(concurrency));
    loop {
        if *stop.borrow() {
            return;
        }
        // Pull only while this trigger has a free slot...
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        // ...and the node has room for more invocations.
        let Some(invoker) = l.invoker.upgrade() else {
            return;
        };
        let free = invoker.free_slots();
        drop(invoker);
        if free == 0 {
            drop(permits);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        permits.truncate(free);
        let fetched = tokio::select! {
            r = l.bus.fetch(&l.consumer.name, permits.len(), FETCH_WAIT) => r,
            _ = stop.changed() => return,
        };
        let deliveries = match fetched {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(function = %l.function, consumer = %l.consumer.name, error = %e, "fetch failed; retrying");
                tokio::time::sleep(FETCH_WAIT).await;
                // The shared consumer may be gone (deleted by a node that saw a removal
                // this node has not seen yet): make sure it exists.
                if let Err(e) = l.bus.ensure_consumer(&l.consumer).await {
                    tracing::debug!(function = %l.function, error = %e, "cannot ensure the consumer");
                }
                continue;
            }
        };
        for (delivery, permit) in deliveries.into_iter().zip(permits.drain(..)) {
            let l = l.clone();
            tokio::spawn(async move {
                let _permit = permit;
                settle(&l, delivery).await;
            });
        }
    }
}

/// Runs the handler on one delivery and settles it: ack after publishing what the
/// handler published, nak with backoff, or dead letter after the last attempt.
async fn settle(l: &Loop, d: Delivery) {
    let Some(invoker) = l.invoker.upgrade() else {
        // The node is gone: the lease runs out and the event comes again elsewhere.
        return;
    };
    let (function, trigger, bus) = (l.function.as_str(), &l.trigger, &l.bus);
    let m = invoker.metrics();
    if let Some((index, schedule)) = &l.schedule {
        match schedules::open(bus.as_ref(), m, function, *index, schedule, &d).await {
            Ok(Gate::Run) => Metrics::count(&m.schedules.fires, function, 1),
            Ok(Gate::Skip) => {
                if let Err(e) = bus.ack(&d).await {
                    tracing::warn!(function, event = %d.event.id, error = %e, "cannot settle a skipped fire");
                }
                return;
            }
            Err(e) => {
                tracing::warn!(function, event = %d.event.id, error = %e, "cannot record a schedule fire; will retry");
                let _ = bus.nak(&d, backoff(trigger.backoff.0, 1)).await;
                return;
            }
        }
    }
    let result = invoker.invoke_event(function, &d.event, d.attempt).await;
    if let Some((index, _)) = &l.schedule {
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(why) if d.attempt >= trigger.max_attempts => Outcome::DeadLettered(why),
            Err(why) => Outcome::Failed(why),
        };
        schedules::close(bus.as_ref(), function, *index, outcome).await;
    }
    let settled = match result {
        Ok(outbox) => {
            let n = outbox.len() as u64;
            // Publish before the ack: a crash in between redelivers the event, and the
            // re-published ids are dropped as duplicates.
            match if outbox.is_empty() {
                Ok(())
            } else {
                bus.publish(outbox).await
            } {
                Ok(()) => {
                    Metrics::count(&m.published, function, n);
                    Metrics::count(&m.acked, function, 1);
                    bus.ack(&d).await
                }
                Err(e) => {
                    tracing::warn!(function, event = %d.event.id, error = %e, "cannot publish the handler's events; will retry");
                    bus.nak(&d, backoff(trigger.backoff.0, d.attempt)).await
                }
            }
        }
        Err(error) if d.attempt >= trigger.max_attempts => {
            tracing::warn!(function, event = %d.event.id, attempts = d.attempt, %error, "event dead-lettered");
            Metrics::count(&m.dead_lettered, function, 1);
            match bus.dead_letter(&d, function, &error).await {
                // Also announce it on `deadletters.<function>`, for functions that alert or
                // compensate. Its id derives from the event, so a repeat is dropped.
                Ok(()) => {
                    bus.publish(vec![dead_letter_event(function, &d, &error)])
                        .await
                }
                Err(e) => Err(e),
            }
        }
        Err(error) => {
            let delay = backoff(trigger.backoff.0, d.attempt);
            tracing::info!(function, event = %d.event.id, attempt = d.attempt, %error, retry_in = ?delay, "event handler failed");
            Metrics::count(&m.retried, function, 1);
            bus.nak(&d, delay).await
        }
    };
    if let Err(e) = settled {
        // The lease runs out and the event comes again; effects stay once.
        tracing::warn!(function, event = %d.event.id, error = %e, "cannot settle a delivery");
    }
}

/// The event that announces a dead letter on `deadletters.<function>`.
fn dead_letter_event(function: &str, d: &Delivery, error: &str) -> Event {
    let data = serde_json::json!({
        "function": function,
        "event": d.event.id,
        "topic": d.event.topic,
        "attempts": d.attempt,
        "error": error,
    });
    Event {
        id: crate::ids::derived_id(&d.event.id, &format!("{function}/dead-letter"), 0),
        topic: format!("deadletters.{function}"),
        data: data.to_string().into_bytes(),
        headers: Vec::new(),
        published_at_ms: skiff_core::record::now_ms(),
        after: 0,
        after_of: String::new(),
        deliver_at_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Duration::from_millis(100);
        assert_eq!(backoff(b, 1), Duration::from_millis(100));
        assert_eq!(backoff(b, 2), Duration::from_millis(200));
        assert_eq!(backoff(b, 4), Duration::from_millis(800));
        assert_eq!(backoff(b, 60), MAX_BACKOFF);
    }
}
