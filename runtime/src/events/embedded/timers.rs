//! Schedules on one machine: each installed schedule is a row in the node's redb with the
//! next slot it fires; one timer task sleeps until the earliest and publishes the fire
//! into the bus in the same transaction that moves the row on, so a fire is published
//! once per slot even across a crash (and its id is per slot besides).
//!
//! After downtime a row's next slot lies in the past: the timer fires once, for the
//! latest slot that passed, late, as NATS does in a cluster. The schedule's `catch_up`
//! policy decides what that late fire does (`crate::triggers::schedules`).

use super::{BusError, EmbeddedBus, e, json, publish_in};
use crate::events::{RecordEdit, ScheduleRecord, Timers};
use futures::future::BoxFuture;
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use skiff_core::fire::fire_event;
use skiff_core::record::now_ms;
use skiff_core::schedule::Schedule;
use std::sync::Weak;
use std::time::Duration;

/// (function, index) → [`Timer`] as JSON.
const TIMERS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("sched_timers");
/// (function, index) → [`ScheduleRecord`] as JSON.
const RECORDS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("sched_records");

/// The longest the timer sleeps without looking again.
const IDLE: Duration = Duration::from_secs(60);

/// An installed schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Timer {
    /// [`Schedule::nats_pattern`].
    pattern: String,
    /// [`Schedule::nats_time_zone`].
    tz: Option<String>,
    /// The function version that installed it.
    version: u64,
    /// The next slot to fire (ms).
    next_ms: u64,
}

pub(super) fn open_tables(tx: &WriteTransaction) -> Result<(), String> {
    tx.open_table(TIMERS).map_err(e)?;
    tx.open_table(RECORDS).map_err(e)?;
    Ok(())
}

fn rows_of(tx: &WriteTransaction, function: &str) -> Result<Vec<(u64, Timer)>, String> {
    let t = tx.open_table(TIMERS).map_err(e)?;
    let mut out = Vec::new();
    for r in t.range((function, 0)..=(function, u64::MAX)).map_err(e)? {
        let (k, v) = r.map_err(e)?;
        out.push((k.value().1, serde_json::from_slice(v.value()).map_err(e)?));
    }
    Ok(out)
}

fn read_record(
    tx: &WriteTransaction,
    function: &str,
    index: u64,
) -> Result<ScheduleRecord, String> {
    let t = tx.open_table(RECORDS).map_err(e)?;
    let v = t.get((function, index)).map_err(e)?;
    match v {
        Some(v) => serde_json::from_slice(v.value()).map_err(e),
        None => Ok(ScheduleRecord::default()),
    }
}

/// The job that changes one record. Built outside the async caller: a closure over a
/// `dyn Fn(&mut _)` inside an `async fn` trips rustc's `Send` inference.
fn edit_job(
    function: String,
    index: u64,
    edit: RecordEdit,
) -> impl FnMut(&WriteTransaction) -> Result<(ScheduleRecord, ScheduleRecord), String> + Send + 'static
{
    move |tx| {
        let before = read_record(tx, &function, index)?;
        let mut after = before.clone();
        edit(&mut after);
        tx.open_table(RECORDS)
            .map_err(e)?
            .insert((function.as_str(), index), json(&after)?.as_slice())
            .map_err(e)?;
        Ok((before, after))
    }
}

impl Timers for EmbeddedBus {
    fn install_schedules<'a>(
        &'a self,
        function: &'a str,
        version: u64,
        schedules: &'a [Schedule],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let function = function.to_string();
            let now = now_ms();
            let wanted: Vec<(String, Option<String>, Option<u64>)> = schedules
                .iter()
                .map(|s| (s.nats_pattern(), s.nats_time_zone(), s.next_after(now)))
                .collect();
            self.job(move |tx| {
                let rows = rows_of(tx, &function)?;
                if rows.iter().any(|(_, t)| t.version > version) {
                    // A newer version installed its own.
                    return Ok(());
                }
                let mut t = tx.open_table(TIMERS).map_err(e)?;
                for (i, (pattern, tz, first)) in wanted.iter().enumerate() {
                    let i = i as u64;
                    // The same schedule keeps its next slot (a slot missed while the node
                    // was down stays due).
                    let kept = rows
                        .iter()
                        .find(|(at, row)| *at == i && row.pattern == *pattern && row.tz == *tz)
                        .map(|(_, row)| row.next_ms);
                    let Some(next_ms) = kept.or(*first) else {
                        continue;
                    };
                    if kept.is_none() {
                        // A new or changed schedule: earlier slots are not its to make up.
                        let mut records = tx.open_table(RECORDS).map_err(e)?;
                        let old = records
                            .get((function.as_str(), i))
                            .map_err(e)?
                            .map(|v| v.value().to_vec());
                        if let Some(old) = old {
                            let mut r: ScheduleRecord = serde_json::from_slice(&old).map_err(e)?;
                            r.last_slot_ms = 0;
                            records
                                .insert((function.as_str(), i), json(&r)?.as_slice())
                                .map_err(e)?;
                        }
                    }
                    let row = Timer {
                        pattern: pattern.clone(),
                        tz: tz.clone(),
                        version,
                        next_ms,
                    };
                    t.insert((function.as_str(), i), json(&row)?.as_slice())
                        .map_err(e)?;
                }
                let mut records = tx.open_table(RECORDS).map_err(e)?;
                for (i, _) in rows.iter().filter(|(i, _)| *i >= wanted.len() as u64) {
                    t.remove((function.as_str(), *i)).map_err(e)?;
                    records.remove((function.as_str(), *i)).map_err(e)?;
                }
                Ok(())
            })
            .await?;
            self.timers.notify_one();
            Ok(())
        })
    }

    fn remove_schedules<'a>(&'a self, function: &'a str) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let function = function.to_string();
            self.job(move |tx| {
                let rows = rows_of(tx, &function)?;
                let mut t = tx.open_table(TIMERS).map_err(e)?;
                let mut records = tx.open_table(RECORDS).map_err(e)?;
                for (i, _) in rows {
                    t.remove((function.as_str(), i)).map_err(e)?;
                    records.remove((function.as_str(), i)).map_err(e)?;
                }
                Ok(())
            })
            .await
        })
    }

    fn schedule_record<'a>(
        &'a self,
        function: &'a str,
        index: usize,
    ) -> BoxFuture<'a, Result<ScheduleRecord, BusError>> {
        Box::pin(async move {
            let backend = |x: &dyn std::fmt::Display| BusError::Backend(x.to_string());
            let rtx = self.db.read().map_err(|x| backend(&x))?;
            let t = rtx.open_table(RECORDS).map_err(|x| backend(&x))?;
            let v = t.get((function, index as u64)).map_err(|x| backend(&x))?;
            match v {
                Some(v) => serde_json::from_slice(v.value()).map_err(|x| backend(&x)),
                None => Ok(ScheduleRecord::default()),
            }
        })
    }

    fn update_schedule<'a>(
        &'a self,
        function: &'a str,
        index: usize,
        edit: RecordEdit,
    ) -> BoxFuture<'a, Result<(ScheduleRecord, ScheduleRecord), BusError>> {
        Box::pin(async move {
            self.job(edit_job(function.to_string(), index as u64, edit))
                .await
        })
    }
}

impl EmbeddedBus {
    /// Publishes the fire of every schedule whose slot has come, and moves each on;
    /// returns when the next slot comes.
    async fn fire_due(&self) -> Result<Option<u64>, BusError> {
        let window = self.window;
        let (earliest, fired) = self
            .job(move |tx| {
                let now = now_ms();
                let rows: Vec<((String, u64), Timer)> = {
                    let t = tx.open_table(TIMERS).map_err(e)?;
                    let mut out = Vec::new();
                    for r in t.iter().map_err(e)? {
                        let (k, v) = r.map_err(e)?;
                        let (f, i) = k.value();
                        let row = serde_json::from_slice(v.value()).map_err(e)?;
                        out.push(((f.to_string(), i), row));
                    }
                    out
                };
                let mut fires = Vec::new();
                let mut earliest: Option<u64> = None;
                let mut t = tx.open_table(TIMERS).map_err(e)?;
                for ((function, index), mut row) in rows {
                    if row.next_ms <= now {
                        let parsed = Schedule::from_nats(&row.pattern, row.tz.as_deref());
                        let Some(schedule) = parsed else {
                            tracing::warn!(function, index, pattern = %row.pattern, "dropping a schedule that no longer parses");
                            t.remove((function.as_str(), index)).map_err(e)?;
                            continue;
                        };
                        // After downtime: once, for the latest slot that passed.
                        let slot = schedule
                            .latest_at_or_before(now)
                            .unwrap_or(row.next_ms)
                            .max(row.next_ms);
                        fires.push(fire_event(&function, index as usize, slot, now, false));
                        let Some(next) = schedule.next_after(now) else {
                            t.remove((function.as_str(), index)).map_err(e)?;
                            continue;
                        };
                        row.next_ms = next;
                        t.insert((function.as_str(), index), json(&row)?.as_slice())
                            .map_err(e)?;
                    }
                    earliest = Some(earliest.map_or(row.next_ms, |n| n.min(row.next_ms)));
                }
                drop(t);
                publish_in(tx, &fires, now, window)?;
                Ok((earliest, !fires.is_empty()))
            })
            .await?;
        if fired {
            self.wake.notify_waiters();
        }
        Ok(earliest)
    }
}

/// The timer task of an embedded bus: runs until the bus is dropped.
pub async fn run_timers(bus: Weak<EmbeddedBus>) {
    loop {
        let Some(b) = bus.upgrade() else {
            return;
        };
        let woken = b.timers.clone();
        let notified = woken.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let wait = match b.fire_due().await {
            Ok(Some(next)) => Duration::from_millis(next.saturating_sub(now_ms())).min(IDLE),
            Ok(None) => IDLE,
            Err(err) => {
                tracing::warn!(error = %err, "schedule timer failed; retrying in 1s");
                Duration::from_secs(1)
            }
        };
        drop(b);
        let _ = tokio::time::timeout(wait, notified).await;
    }
}
