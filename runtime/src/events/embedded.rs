//! The embedded event bus: a durable log and per-consumer queues in the node's redb,
//! written through the local database's group-committing writer ([`crate::localdb`]), so
//! publications from many invocations share fsyncs with each other and with state writes,
//! and each publication, lease or settlement is all-or-nothing.
//!
//! Tables: the event log (sequence → event), per-event reference counts (consumers yet to
//! settle it; the event is deleted at zero), pending deliveries per consumer with their
//! attempt count, retry time and lease, consumers, dead letters, and published ids for
//! de-duplication (kept for the node's events window, `--dedup-window-events`; swept
//! every ten minutes).

mod timers;

pub use timers::run_timers;

use super::{Bus, BusError, ConsumerSpec, DeadLetter, Delivery, DeliveryToken, Event};
use crate::localdb::LocalDb;
use futures::future::BoxFuture;
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use skiff_core::record::now_ms;
use skiff_core::topic::matches;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("ev_log");
const REFS: TableDefinition<u64, u32> = TableDefinition::new("ev_refs");
const META: TableDefinition<&str, u64> = TableDefinition::new("ev_meta");
const DEDUP: TableDefinition<&str, u64> = TableDefinition::new("ev_dedup");
const CONSUMERS: TableDefinition<&str, &[u8]> = TableDefinition::new("ev_consumers");
/// (consumer, seq) → (attempts so far, not before ms, leased until ms).
const PENDING: TableDefinition<(&str, u64), (u32, u64, u64)> = TableDefinition::new("ev_pending");
const DEAD: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("ev_dead");

type PendingKey = (String, u64);
type PendingValue = (u32, u64, u64);

/// How often the de-duplication table is swept.
const SWEEP_EVERY_MS: u64 = 10 * 60 * 1000;

/// The embedded bus.
pub struct EmbeddedBus {
    db: Arc<LocalDb>,
    wake: Arc<Notify>,
    /// How long a published id is remembered for de-duplication.
    window: Duration,
    /// Wakes the schedule timer (a schedule was installed).
    timers: Arc<Notify>,
}

fn e(err: impl std::fmt::Display) -> String {
    err.to_string()
}

fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(v).map_err(e)
}

impl EmbeddedBus {
    /// Opens the bus in the node's local database. Leases from a previous run are cleared so
    /// that deliveries in flight at a crash are delivered again at once.
    /// `window`: how long a published id is remembered (see [`DedupWindows`]).
    ///
    /// [`DedupWindows`]: skiff_core::limits::DedupWindows
    pub async fn open(db: Arc<LocalDb>, window: Duration) -> Result<EmbeddedBus, BusError> {
        let bus = EmbeddedBus {
            db,
            wake: Arc::new(Notify::new()),
            window,
            timers: Arc::new(Notify::new()),
        };
        bus.job(|tx| {
            tx.open_table(LOG).map_err(e)?;
            tx.open_table(REFS).map_err(e)?;
            tx.open_table(META).map_err(e)?;
            tx.open_table(DEDUP).map_err(e)?;
            tx.open_table(CONSUMERS).map_err(e)?;
            tx.open_table(DEAD).map_err(e)?;
            timers::open_tables(tx)?;
            let mut pending = tx.open_table(PENDING).map_err(e)?;
            let leased: Vec<(PendingKey, PendingValue)> = pending
                .iter()
                .map_err(e)?
                .filter_map(|r| r.ok())
                .map(|(k, v)| {
                    let (c, s) = k.value();
                    ((c.to_string(), s), v.value())
                })
                .filter(|(_, v)| v.2 != 0)
                .collect();
            for ((c, s), (attempts, not_before, _)) in leased {
                pending
                    .insert((c.as_str(), s), (attempts, not_before, 0))
                    .map_err(e)?;
            }
            Ok(())
        })
        .await?;
        Ok(bus)
    }

    /// Runs `f` in the local database's next commit: all of it or none of it.
    async fn job<R: Send + 'static>(
        &self,
        f: impl FnMut(&WriteTransaction) -> Result<R, String> + Send + 'static,
    ) -> Result<R, BusError> {
        self.db
            .run(f)
            .await
            .map_err(|err| BusError::Backend(err.to_string()))
    }

    /// Due entries of `consumer` (not leased, retry time reached), and when the next
    /// not-yet-due one becomes due.
    fn due(&self, consumer: &str, max: usize) -> Result<(Vec<u64>, Option<u64>), BusError> {
        let now = now_ms();
        let rtx = self.db.read().map_err(|err| BusError::Backend(e(err)))?;
        let pending = rtx
            .open_table(PENDING)
            .map_err(|err| BusError::Backend(e(err)))?;
        let mut due = Vec::new();
        let mut next: Option<u64> = None;
        let range = pending
            .range((consumer, 0)..=(consumer, u64::MAX))
            .map_err(|err| BusError::Backend(e(err)))?;
        for entry in range {
            let (k, v) = entry.map_err(|err| BusError::Backend(e(err)))?;
            let (_, not_before, lease) = v.value();
            let at = not_before.max(lease);
            if at <= now {
                if due.len() < max {
                    due.push(k.value().1);
                }
            } else {
                next = Some(next.map_or(at, |n: u64| n.min(at)));
            }
        }
        Ok((due, next))
    }
}

fn settle(tx: &WriteTransaction, consumer: &str, seq: u64) -> Result<(), String> {
    let mut pending = tx.open_table(PENDING).map_err(e)?;
    if pending.remove((consumer, seq)).map_err(e)?.is_none() {
        return Ok(());
    }
    let mut refs = tx.open_table(REFS).map_err(e)?;
    let left = refs.get(seq).map_err(e)?.map(|v| v.value()).unwrap_or(1);
    if left <= 1 {
        refs.remove(seq).map_err(e)?;
        tx.open_table(LOG).map_err(e)?.remove(seq).map_err(e)?;
    } else {
        refs.insert(seq, left - 1).map_err(e)?;
    }
    Ok(())
}

fn next_seq(tx: &WriteTransaction) -> Result<u64, String> {
    let mut meta = tx.open_table(META).map_err(e)?;
    let seq = meta.get("seq").map_err(e)?.map(|v| v.value()).unwrap_or(0) + 1;
    meta.insert("seq", seq).map_err(e)?;
    Ok(seq)
}

fn sweep_dedup(tx: &WriteTransaction, now: u64, window: Duration) -> Result<(), String> {
    let mut meta = tx.open_table(META).map_err(e)?;
    let last = meta
        .get("swept")
        .map_err(e)?
        .map(|v| v.value())
        .unwrap_or(0);
    if now.saturating_sub(last) < SWEEP_EVERY_MS {
        return Ok(());
    }
    meta.insert("swept", now).map_err(e)?;
    let cutoff = now.saturating_sub(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
    let mut dedup = tx.open_table(DEDUP).map_err(e)?;
    dedup.retain(|_, at| at >= cutoff).map_err(e)?;
    Ok(())
}

/// Publishes `events` in `tx`: each id not seen within `window` goes to the log and to
/// every consumer whose pattern matches, due at its `deliver_at_ms` (0: at once).
fn publish_in(
    tx: &WriteTransaction,
    events: &[Event],
    now: u64,
    window: Duration,
) -> Result<(), String> {
    sweep_dedup(tx, now, window)?;
    let consumers: Vec<ConsumerSpec> = {
        let t = tx.open_table(CONSUMERS).map_err(e)?;
        let mut out = Vec::new();
        for r in t.iter().map_err(e)? {
            let (_, v) = r.map_err(e)?;
            out.push(serde_json::from_slice(v.value()).map_err(e)?);
        }
        out
    };
    let mut dedup = tx.open_table(DEDUP).map_err(e)?;
    let mut log = tx.open_table(LOG).map_err(e)?;
    let mut refs = tx.open_table(REFS).map_err(e)?;
    let mut pending = tx.open_table(PENDING).map_err(e)?;
    for ev in events {
        if dedup.get(ev.id.as_str()).map_err(e)?.is_some() {
            continue;
        }
        dedup.insert(ev.id.as_str(), now).map_err(e)?;
        #[cfg(test)]
        failpoint::after_dedup(&ev.topic)?;
        let targets: Vec<&ConsumerSpec> = consumers
            .iter()
            .filter(|c| matches(&c.pattern, &ev.topic))
            .collect();
        if targets.is_empty() {
            continue;
        }
        let seq = next_seq(tx)?;
        log.insert(seq, json(ev)?.as_slice()).map_err(e)?;
        refs.insert(seq, targets.len() as u32).map_err(e)?;
        for c in targets {
            pending
                .insert((c.name.as_str(), seq), (0, ev.deliver_at_ms, 0))
                .map_err(e)?;
        }
    }
    Ok(())
}

/// This bus's delivery token: the event's sequence in the log.
struct EmbeddedSeq(u64);

fn embedded_seq(d: &Delivery) -> Result<u64, BusError> {
    d.token
        .get::<EmbeddedSeq>()
        .map(|s| s.0)
        .ok_or_else(|| BusError::Backend("delivery of another bus".into()))
}

impl Bus for EmbeddedBus {
    fn pending<'a>(&'a self, consumer: &'a str) -> BoxFuture<'a, Result<u64, BusError>> {
        Box::pin(async move {
            let b = |err: &dyn std::fmt::Display| BusError::Backend(err.to_string());
            let rtx = self.db.read().map_err(|x| b(&x))?;
            let pending = rtx.open_table(PENDING).map_err(|x| b(&x))?;
            let range = pending
                .range((consumer, 0)..=(consumer, u64::MAX))
                .map_err(|x| b(&x))?;
            Ok(range.count() as u64)
        })
    }

    fn publish<'a>(&'a self, events: Vec<Event>) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let window = self.window;
            self.job(move |tx| publish_in(tx, &events, now_ms(), window))
                .await?;
            self.wake.notify_waiters();
            Ok(())
        })
    }

    fn ensure_consumer<'a>(
        &'a self,
        spec: &'a ConsumerSpec,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        let spec = spec.clone();
        Box::pin(async move {
            self.job(move |tx| {
                let mut t = tx.open_table(CONSUMERS).map_err(e)?;
                let bytes = json(&spec)?;
                t.insert(spec.name.as_str(), bytes.as_slice()).map_err(e)?;
                Ok(())
            })
            .await
        })
    }

    fn delete_consumer<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BusError>> {
        let name = name.to_string();
        Box::pin(async move {
            self.job(move |tx| {
                tx.open_table(CONSUMERS)
                    .map_err(e)?
                    .remove(name.as_str())
                    .map_err(e)?;
                let seqs: Vec<u64> = {
                    let pending = tx.open_table(PENDING).map_err(e)?;
                    let range = pending
                        .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
                        .map_err(e)?;
                    range
                        .map(|r| r.map(|(k, _)| k.value().1))
                        .collect::<Result<_, _>>()
                        .map_err(e)?
                };
                for seq in seqs {
                    settle(tx, &name, seq)?;
                }
                Ok(())
            })
            .await
        })
    }

    fn fetch<'a>(
        &'a self,
        consumer: &'a str,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, BusError>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                // Register for wake-ups before looking, so a publish in between is not missed.
                let woken = self.wake.notified();
                let (due, next) = self.due(consumer, max)?;
                if !due.is_empty() {
                    let name = consumer.to_string();
                    let leased = self
                        .job(move |tx| {
                            let now = now_ms();
                            let ack_wait = {
                                let t = tx.open_table(CONSUMERS).map_err(e)?;
                                let v = t.get(name.as_str()).map_err(e)?;
                                match v {
                                    Some(v) => {
                                        serde_json::from_slice::<ConsumerSpec>(v.value())
                                            .map_err(e)?
                                            .ack_wait_ms
                                    }
                                    None => return Ok(Vec::new()),
                                }
                            };
                            let mut pending = tx.open_table(PENDING).map_err(e)?;
                            let log = tx.open_table(LOG).map_err(e)?;
                            let mut out = Vec::new();
                            for &seq in &due {
                                let Some((attempts, not_before, lease)) = pending
                                    .get((name.as_str(), seq))
                                    .map_err(e)?
                                    .map(|v| v.value())
                                else {
                                    continue;
                                };
                                // Someone else may have taken it since the read above.
                                if not_before.max(lease) > now {
                                    continue;
                                }
                                let Some(bytes) =
                                    log.get(seq).map_err(e)?.map(|v| v.value().to_vec())
                                else {
                                    continue;
                                };
                                let event: Event = serde_json::from_slice(&bytes).map_err(e)?;
                                pending
                                    .insert(
                                        (name.as_str(), seq),
                                        (attempts + 1, not_before, now + ack_wait),
                                    )
                                    .map_err(e)?;
                                out.push((seq, attempts + 1, event));
                            }
                            Ok(out)
                        })
                        .await?;
                    if !leased.is_empty() {
                        return Ok(leased
                            .into_iter()
                            .map(|(seq, attempt, event)| Delivery {
                                event,
                                attempt,
                                consumer: consumer.to_string(),
                                token: DeliveryToken::new(EmbeddedSeq(seq)),
                            })
                            .collect());
                    }
                    continue;
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Ok(Vec::new());
                }
                let mut until = deadline;
                if let Some(at) = next {
                    let in_ms = at.saturating_sub(now_ms());
                    until = until.min(now + Duration::from_millis(in_ms));
                }
                let _ = tokio::time::timeout_at(until, woken).await;
            }
        })
    }

    fn ack<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<(), BusError>> {
        let seq = match embedded_seq(d) {
            Ok(s) => s,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let consumer = d.consumer.clone();
        Box::pin(async move { self.job(move |tx| settle(tx, &consumer, seq)).await })
    }

    fn nak<'a>(&'a self, d: &'a Delivery, delay: Duration) -> BoxFuture<'a, Result<(), BusError>> {
        let seq = match embedded_seq(d) {
            Ok(s) => s,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let consumer = d.consumer.clone();
        Box::pin(async move {
            self.job(move |tx| {
                let mut pending = tx.open_table(PENDING).map_err(e)?;
                let current = pending
                    .get((consumer.as_str(), seq))
                    .map_err(e)?
                    .map(|v| v.value());
                if let Some((attempts, _, _)) = current {
                    let at = now_ms() + delay.as_millis() as u64;
                    pending
                        .insert((consumer.as_str(), seq), (attempts, at, 0))
                        .map_err(e)?;
                }
                Ok(())
            })
            .await?;
            self.wake.notify_waiters();
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a self,
        d: &'a Delivery,
        function: &'a str,
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        let seq = match embedded_seq(d) {
            Ok(s) => s,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let letter = DeadLetter {
            function: function.to_string(),
            consumer: d.consumer.clone(),
            event: d.event.clone(),
            attempts: d.attempt,
            error: error.to_string(),
            at_ms: now_ms(),
        };
        Box::pin(async move {
            self.job(move |tx| {
                let bytes = json(&letter)?;
                tx.open_table(DEAD)
                    .map_err(e)?
                    .insert(
                        (letter.function.as_str(), letter.event.id.as_str()),
                        bytes.as_slice(),
                    )
                    .map_err(e)?;
                settle(tx, &letter.consumer, seq)
            })
            .await
        })
    }

    fn dead_letters<'a>(
        &'a self,
        function: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, BusError>> {
        Box::pin(async move {
            let backend = |err: &dyn std::fmt::Display| BusError::Backend(err.to_string());
            let rtx = self.db.read().map_err(|x| backend(&x))?;
            let dead = rtx.open_table(DEAD).map_err(|x| backend(&x))?;
            let mut out: Vec<DeadLetter> = Vec::new();
            for entry in dead.range((function, "")..).map_err(|x| backend(&x))? {
                let (k, v) = entry.map_err(|x| backend(&x))?;
                if k.value().0 != function {
                    break;
                }
                out.push(serde_json::from_slice(v.value()).map_err(|x| backend(&x))?);
            }
            out.sort_by_key(|d| d.at_ms);
            Ok(out)
        })
    }

    fn replay<'a>(
        &'a self,
        function: &'a str,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, BusError>> {
        let (function, event_id) = (function.to_string(), event_id.to_string());
        Box::pin(async move {
            let replayed = self
                .job(move |tx| {
                    let letter: DeadLetter = {
                        let mut dead = tx.open_table(DEAD).map_err(e)?;
                        let Some(v) = dead
                            .remove((function.as_str(), event_id.as_str()))
                            .map_err(e)?
                        else {
                            return Ok(false);
                        };
                        serde_json::from_slice(v.value()).map_err(e)?
                    };
                    if tx
                        .open_table(CONSUMERS)
                        .map_err(e)?
                        .get(letter.consumer.as_str())
                        .map_err(e)?
                        .is_none()
                    {
                        return Err(format!(
                            "function `{function}` no longer has the trigger this event came through; redeploy it first"
                        ));
                    }
                    let seq = next_seq(tx)?;
                    tx.open_table(LOG)
                        .map_err(e)?
                        .insert(seq, json(&letter.event)?.as_slice())
                        .map_err(e)?;
                    tx.open_table(REFS).map_err(e)?.insert(seq, 1).map_err(e)?;
                    tx.open_table(PENDING)
                        .map_err(e)?
                        .insert((letter.consumer.as_str(), seq), (0, 0, 0))
                        .map_err(e)?;
                    Ok(true)
                })
                .await?;
            self.wake.notify_waiters();
            Ok(replayed)
        })
    }
}

/// Test-only fault injection: make one publication fail half-way through its job.
#[cfg(test)]
pub(crate) mod failpoint {
    use std::sync::Mutex;

    static AFTER_DEDUP: Mutex<Option<String>> = Mutex::new(None);

    /// Fails (once) when an event on `topic` has just been recorded as seen.
    pub fn after_dedup(topic: &str) -> Result<(), String> {
        let mut armed = AFTER_DEDUP.lock().unwrap_or_else(|p| p.into_inner());
        if armed.as_deref() == Some(topic) {
            *armed = None;
            return Err(format!(
                "failpoint: publication on `{topic}` fails after dedup"
            ));
        }
        Ok(())
    }

    /// Makes the next publication of an event on `topic` fail right after it recorded
    /// the event's id as seen.
    pub fn arm(topic: &str) {
        *AFTER_DEDUP.lock().unwrap_or_else(|p| p.into_inner()) = Some(topic.to_string());
    }
}
