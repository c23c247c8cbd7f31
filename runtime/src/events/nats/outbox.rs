//! This node's outbox: what it publishes goes to its redb first (durable when
//! `publish` returns, even with NATS down) and a forwarder moves it to JetStream. An
//! event for later goes out as an `@at` schedule that NATS fires to its topic.

use super::{BusError, Event, NatsBus, OUTBOX, OUTBOX_META, backend, headers_of, timers};
use redb::ReadableTable;
use skiff_core::record::now_ms;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How long publishing a delayed event waits for JetStream to hold it.
const FORWARD_WAIT: Duration = Duration::from_secs(3);

impl NatsBus {
    /// Takes `events` into this node's outbox (durable on return) and wakes the
    /// forwarder; an event for later waits until JetStream holds it, up to
    /// [`FORWARD_WAIT`].
    pub(super) async fn enqueue(&self, events: Vec<Event>) -> Result<(), BusError> {
        {
            let delayed = events.iter().any(|e| e.deliver_at_ms > 0);
            let seqs = self
                .db
                .run(move |tx: &redb::WriteTransaction| {
                    let e = |x: &dyn std::fmt::Display| x.to_string();
                    let mut meta = tx.open_table(OUTBOX_META).map_err(|x| e(&x))?;
                    let mut seq = meta
                        .get("seq")
                        .map_err(|x| e(&x))?
                        .map(|v| v.value())
                        .unwrap_or(0);
                    let mut t = tx.open_table(OUTBOX).map_err(|x| e(&x))?;
                    let first = seq + 1;
                    for ev in &events {
                        seq += 1;
                        let bytes = serde_json::to_vec(ev).map_err(|x| e(&x))?;
                        t.insert(seq, bytes.as_slice()).map_err(|x| e(&x))?;
                    }
                    meta.insert("seq", seq).map_err(|x| e(&x))?;
                    Ok(first..=seq)
                })
                .await
                .map_err(backend)?;
            self.forward.notify_one();
            if delayed && self.remote.get().is_some() && !self.stalled.load(Ordering::Relaxed) {
                // A delayed event must outlive this node: while NATS answers, return once
                // it holds the event, not just this node's outbox.
                self.until_forwarded(seqs, FORWARD_WAIT).await;
            }
            Ok(())
        }
    }

    /// The outbox entries waiting to go out, oldest first.
    fn pending_outbox(&self, max: usize) -> Result<Vec<(u64, Event)>, BusError> {
        let rtx = self.db.read().map_err(backend)?;
        let t = rtx.open_table(OUTBOX).map_err(backend)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(backend)?.take(max) {
            let (k, v) = entry.map_err(backend)?;
            let ev: Event = serde_json::from_slice(v.value()).map_err(backend)?;
            out.push((k.value(), ev));
        }
        Ok(out)
    }

    /// Sends what waits in the outbox; returns how many went out.
    async fn forward_once(&self) -> Result<usize, BusError> {
        let Some(remote) = self.remote.get() else {
            // Not attached yet: the events wait; attaching wakes the forwarder.
            return Ok(0);
        };
        let batch = self.pending_outbox(256)?;
        if batch.is_empty() {
            return Ok(0);
        }
        let mut acks = Vec::with_capacity(batch.len());
        for (seq, ev) in &batch {
            let mut headers = headers_of(ev, &ev.id);
            // Later: an `@at` schedule that NATS fires to the topic (a time already
            // past goes out at once).
            let subject = if ev.deliver_at_ms > now_ms() {
                headers.insert(
                    "Nats-Schedule",
                    timers::at_pattern(ev.deliver_at_ms).as_str(),
                );
                headers.insert(
                    "Nats-Schedule-Target",
                    format!("events.{}", ev.topic).as_str(),
                );
                timers::delayed_subject(&ev.id)
            } else {
                format!("events.{}", ev.topic)
            };
            let ack = remote
                .js
                .publish_with_headers(subject, headers, ev.data.clone().into())
                .await
                .map_err(backend)?;
            acks.push((*seq, ack));
        }
        let mut sent = Vec::new();
        for (seq, ack) in acks {
            ack.await.map_err(backend)?;
            sent.push(seq);
        }
        let n = sent.len();
        self.db
            .run(move |tx: &redb::WriteTransaction| {
                let mut t = tx.open_table(OUTBOX).map_err(|e| e.to_string())?;
                for &seq in &sent {
                    t.remove(seq).map_err(|e| e.to_string())?;
                }
                Ok(())
            })
            .await
            .map_err(backend)?;
        Ok(n)
    }

    /// Waits up to `wait` until the outbox entries `seqs` went out to JetStream.
    async fn until_forwarded(&self, seqs: std::ops::RangeInclusive<u64>, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            let left = self.db.read().ok().and_then(|rtx| {
                let t = rtx.open_table(OUTBOX).ok()?;
                let mut range = t.range(seqs.clone()).ok()?;
                Some(range.next().is_some())
            });
            if left == Some(false) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Moves outbox entries to JetStream, retrying while NATS is unreachable.
pub(super) async fn forwarder(bus: std::sync::Weak<NatsBus>) {
    let mut failing = false;
    loop {
        let Some(b) = bus.upgrade() else {
            return;
        };
        let woken = b.forward.clone();
        let notified = woken.notified();
        match b.forward_once().await {
            Ok(0) => {
                drop(b);
                let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
            }
            Ok(_) => {
                if failing {
                    tracing::info!("NATS reachable again; outbox forwarding resumed");
                    failing = false;
                    b.stalled.store(false, Ordering::Relaxed);
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot forward events to NATS; they wait in the local outbox");
                    failing = true;
                    b.stalled.store(true, Ordering::Relaxed);
                }
                drop(b);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
