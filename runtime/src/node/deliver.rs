//! An event delivery: the deployment's event handler on one event, in a reused or
//! fresh instance (see [`super::event_pool`]), under the same limits as a request.

use super::invoke::observe_instantiation;
use super::sandbox::{Failure, classify, new_store};
use super::{Deployment, Node};
use crate::events::Event;
use crate::host::bindings::skiff::function::events as wit_events;
use crate::metrics::{self, InFlight};
use crate::traces::TraceContext;
use std::sync::Arc;
use std::time::Instant;

/// How long a delivery waits for this node's copy of the state to reach what the event's
/// publisher had applied.
const CAUSAL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Node {
    /// Runs `dep`'s event handler on one delivery; returns the events it published, or
    /// why it failed.
    pub async fn invoke_event(
        &self,
        dep: &Arc<Deployment>,
        event: &Event,
        attempt: u32,
    ) -> Result<Vec<Event>, String> {
        // The handler must see what the publisher wrote before publishing: wait until this
        // node's copy has applied as much (after a partition heals, it may be behind). Only
        // the publisher's own function can read that state.
        let name = dep.record.name.as_str();
        if event.after_of == name
            && !self
                .state
                .wait_position(name, event.after, CAUSAL_WAIT)
                .await
        {
            return Err(format!(
                "this node's copy of `{name}`'s state is behind the event's publisher (applied {} of {}); the event is retried, here or on another node",
                self.state.position(name),
                event.after
            ));
        }
        let linked = self
            .code
            .get(&dep.code)
            .await
            .map_err(|e| format!("cannot load function `{}`: {e}", dep.record.name))?;
        let Some(pre) = linked.handler.clone() else {
            return Err(format!(
                "function `{}` no longer handles events",
                dep.record.name
            ));
        };
        let _permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "the node is stopping".to_string())?;
        let started = Instant::now();
        let invocation = crate::ids::random_id();
        let traceparent = event
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
            .map(|(_, v)| v.as_str());
        let trace = TraceContext::continue_or_start(traceparent, &invocation);
        let finish = self.finish(dep, metrics::EVENT, &event.topic, trace.clone(), started);
        let _in_flight = InFlight::of(&dep.metrics);
        let deadline = started + dep.spec.limits.timeout;
        let wit_event = wit_events::Event {
            id: event.id.clone(),
            topic: event.topic.clone(),
            data: event.data.clone(),
            headers: event.headers.clone(),
            attempt,
        };
        let reused = dep.events.take();
        let served = reused.as_ref().map_or(0, |i| i.served);
        let (mut store, guest) = match reused {
            Some(mut idle) => {
                idle.store
                    .data_mut()
                    .begin_delivery(deadline, &event.id, trace.traceparent());
                dep.metrics.reused.inc();
                (idle.store, Some(idle.guest))
            }
            None => (
                new_store(
                    &linked.engine,
                    &dep.spec,
                    started,
                    Some(&event.id),
                    trace.traceparent(),
                ),
                None,
            ),
        };
        let run = async {
            let guest = match guest {
                Some(g) => g,
                None => {
                    let t = Instant::now();
                    let g = pre.instantiate_async(&mut store).await?;
                    observe_instantiation(&dep.metrics, t);
                    g
                }
            };
            let r = guest
                .skiff_function_event_handler()
                .call_handle(&mut store, &wit_event)
                .await?;
            Ok::<_, wasmtime::Error>((r, guest))
        };
        let outcome = match tokio::time::timeout_at(deadline.into(), run).await {
            Ok(Ok((Ok(()), guest))) => Ok(guest),
            Ok(Ok((Err(msg), _))) => Err(Failure::Handler(msg)),
            Ok(Err(e)) => Err(classify(&e, store.data())),
            Err(_) => Err(Failure::Timeout),
        };
        store.data().logs.emit(
            &self.logs,
            &dep.spec.function,
            dep.spec.version,
            &invocation,
        );
        finish.done(outcome.as_ref().err().map_or("ok", Failure::label));
        match outcome {
            Ok(guest) => {
                let published = store.data().caps.events.outbox.take();
                // Ready for the next delivery (or dropped, past its quota).
                store.data_mut().deadline = Instant::now();
                dep.events
                    .give_back(super::event_pool::Idle::new(store, guest, served + 1));
                Ok(published)
            }
            Err(f) => {
                self.metrics.retired(&dep.record.name, f.label());
                Err(f.describe(&dep.spec))
            }
        }
    }
}
