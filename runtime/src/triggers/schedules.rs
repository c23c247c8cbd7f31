//! Schedule fires on their way to the event handler: a fire reaches its function like
//! any event (through the consumer of `schedule.<function>.<index>`, with that
//! schedule's attempts and backoff); before the handler runs, [`open`] records the fire
//! and applies pause and the `catch_up` policy, and after it [`close`] records how it
//! ended. Both modes share this: the bus only fires slots.

use crate::events::{Bus, BusError, Delivery, RecordEdit, ScheduleRecord};
use crate::metrics::Metrics;
use skiff_core::fire::{fire_event, header_ms};
use skiff_core::record::now_ms;
use skiff_core::schedule::{self, H_CATCH_UP, H_FIRED, H_SCHEDULED, Schedule};
use std::sync::Arc;

/// Whether the handler runs on a fire.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// Run it.
    Run,
    /// Settle the fire without running (paused, or a missed slot the policy drops).
    Skip,
}

/// The fire's slot, when it fired, and whether it makes up for a missed slot.
fn fire_of(d: &Delivery) -> Option<(u64, u64, bool)> {
    let slot = header_ms(&d.event, H_SCHEDULED)?;
    let fired = header_ms(&d.event, H_FIRED).unwrap_or(slot);
    let catch_up = d
        .event
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case(H_CATCH_UP));
    Some((slot, fired, catch_up))
}

fn edit(f: impl Fn(&mut ScheduleRecord) + Send + Sync + 'static) -> RecordEdit {
    Arc::new(f)
}

/// Decides a fire of `function`'s schedule `index` before its handler runs.
pub async fn open(
    bus: &dyn Bus,
    metrics: &Metrics,
    function: &str,
    index: usize,
    schedule: &Schedule,
    d: &Delivery,
) -> Result<Gate, BusError> {
    let Some((slot, fired, catch_up)) = fire_of(d) else {
        // Not a fire (nobody else may publish here): nothing to run it for.
        tracing::warn!(function, event = %d.event.id, "dropping an event without a schedule slot");
        return Ok(Gate::Skip);
    };
    // The record moves on once per fire from the timer; a retry only checks pause.
    let first = d.attempt == 1 && !catch_up;
    let (before, after) = bus
        .update_schedule(
            function,
            index,
            edit(move |r| {
                if first && slot >= r.last_slot_ms {
                    r.last_slot_ms = slot;
                    r.last_fired_ms = fired;
                }
                if !r.paused {
                    r.last_outcome = "running".into();
                }
            }),
        )
        .await?;
    if after.paused {
        close(bus, function, index, Outcome::Paused).await;
        return Ok(Gate::Skip);
    }
    if !first {
        return Ok(Gate::Run);
    }
    let last = (before.last_slot_ms > 0).then_some(before.last_slot_ms);
    let admission = schedule::admit(schedule, slot, fired, last);
    if admission.dropped > 0 {
        Metrics::count(&metrics.schedules.misses, function, admission.dropped);
        tracing::info!(function, index, slot = %schedule::rfc3339(slot), dropped = admission.dropped, "schedule slots missed while down; catch_up drops them");
    }
    if !admission.run {
        close(bus, function, index, Outcome::Missed(admission.dropped)).await;
        return Ok(Gate::Skip);
    }
    if admission.dropped > 0 {
        count_misses(bus, function, index, admission.dropped).await?;
    }
    metrics
        .schedules
        .late(function, now_ms().saturating_sub(slot) as f64 / 1000.0);
    if !admission.make_up.is_empty() {
        tracing::info!(
            function,
            index,
            slots = admission.make_up.len(),
            "making up for missed schedule slots"
        );
        let events = admission
            .make_up
            .iter()
            .map(|s| fire_event(function, index, *s, fired, true))
            .collect();
        bus.publish(events).await?;
    }
    Ok(Gate::Run)
}

async fn count_misses(bus: &dyn Bus, function: &str, index: usize, n: u64) -> Result<(), BusError> {
    bus.update_schedule(function, index, edit(move |r| r.misses += n))
        .await
        .map(|_| ())
}

/// How a fire ended.
pub enum Outcome<'a> {
    /// The handler succeeded.
    Ok,
    /// It failed and will be retried.
    Failed(&'a str),
    /// It failed for the last time.
    DeadLettered(&'a str),
    /// Skipped while paused.
    Paused,
    /// Slots dropped by the catch-up policy.
    Missed(u64),
}

/// Records how a fire ended; a failure to record is logged, not retried (the record is
/// for operators; the fire itself settled).
pub async fn close(bus: &dyn Bus, function: &str, index: usize, outcome: Outcome<'_>) {
    let text = match &outcome {
        Outcome::Ok => "ok".to_string(),
        Outcome::Failed(why) => format!("failed: {why}"),
        Outcome::DeadLettered(why) => format!("dead-lettered: {why}"),
        Outcome::Paused => "paused".to_string(),
        Outcome::Missed(_) => "missed".to_string(),
    };
    let (fires, misses) = match outcome {
        Outcome::Ok | Outcome::DeadLettered(_) => (1, 0),
        Outcome::Missed(n) => (0, n),
        Outcome::Failed(_) | Outcome::Paused => (0, 0),
    };
    let done = now_ms();
    let result = bus
        .update_schedule(
            function,
            index,
            edit(move |r| {
                r.last_outcome = text.clone();
                r.last_done_ms = done;
                r.fires += fires;
                r.misses += misses;
            }),
        )
        .await;
    if let Err(e) = result {
        tracing::warn!(function, index, error = %e, "cannot record a schedule fire's outcome");
    }
}
