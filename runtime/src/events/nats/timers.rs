//! Schedules in a cluster: NATS message schedules, in the events stream itself.
//!
//! * A schedule is a message on `schedules.fn.<function>.<index>` carrying
//!   `Nats-Schedule` (a cron pattern or `@every`), `Nats-Schedule-Target:
//!   events.schedule.<function>.<index>` and our headers (pattern, zone, version). The
//!   stream's leader fires it: NATS copies it to the target, where the function's
//!   consumer takes it like any event. No election or timer of ours.
//! * A fire carries `Nats-Schedule-Next`, the slot after it; the slot it was for is the
//!   one before that ([`Schedule::slot_before_next`]), and its id is made from the slot.
//! * A delayed event is an `@at` schedule on `schedules.at.<id>` targeting its topic;
//!   NATS removes it once fired.
//! * The stream keeps messages only while some consumer wants them (interest
//!   retention), so a consumer that never fetches, [`KEEPER`], holds `schedules.>`.
//! * Installing compares before it writes (`Nats-Expected-Last-Subject-Sequence`), so
//!   many nodes installing the same version change nothing, and an older version never
//!   overwrites a newer one. A removed schedule is replaced (roll-up) by a marker
//!   without `Nats-Schedule`.
//! * Records (paused, last fire) live in the KV bucket [`RECORDS_BUCKET`], keyed
//!   `<function>.<index>`, changed by compare-and-set.

use super::{NatsBus, backend};
use crate::events::{BusError, Event, RecordEdit, ScheduleRecord, Timers};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use futures::StreamExt;
use futures::future::BoxFuture;
use skiff_core::schedule::{self, Schedule};

/// The KV bucket of schedule records.
pub const RECORDS_BUCKET: &str = "skiff_schedules";
/// The consumer that keeps schedule messages in the interest-retention stream.
pub const KEEPER: &str = "skiff-schedules";
/// Subjects of schedules and delayed events.
pub const SUBJECTS: &str = "schedules.>";

const H_PATTERN: &str = "Skiff-Schedule-Pattern";
const H_TZ: &str = "Skiff-Schedule-Tz";
const H_VERSION: &str = "Skiff-Schedule-Version";
const H_REMOVED: &str = "Skiff-Schedule-Removed";
const H_NEXT: &str = "Nats-Schedule-Next";
const H_SCHEDULER: &str = "Nats-Scheduler";

fn subject(function: &str, index: usize) -> String {
    format!("schedules.fn.{function}.{index}")
}

/// The subject of a delayed event: ids are hex, but nothing may break the subject.
pub(super) fn delayed_subject(id: &str) -> String {
    let token: String = id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("schedules.at.{token}")
}

/// The `Nats-Schedule` header of an event delivered at `at_ms`.
pub(super) fn at_pattern(at_ms: u64) -> String {
    format!("@at {}", schedule::rfc3339(at_ms))
}

/// The event of a message NATS fired for a schedule, or `None` if `msg` is not one.
pub(super) fn fire_of(msg: &jetstream::Message) -> Option<Result<Event, BusError>> {
    let headers = msg.headers.as_ref()?;
    headers.get(H_SCHEDULER)?;
    let pattern = headers.get(H_PATTERN)?.as_str().to_string();
    let get = |k: &str| headers.get(k).map(|v| v.as_str().to_string());
    let (function, index) = match msg
        .subject
        .strip_prefix("events.")
        .and_then(schedule::parse_topic)
    {
        Some((f, i)) => (f.to_string(), i),
        None => return Some(Err(backend("a schedule fired to an unexpected subject"))),
    };
    let Some(schedule) = Schedule::from_nats(&pattern, get(H_TZ).as_deref()) else {
        return Some(Err(backend(format!(
            "schedule {function}#{index} holds a pattern that does not parse: {pattern}"
        ))));
    };
    let fired = msg
        .info()
        .ok()
        .map(|i| (i.published.unix_timestamp_nanos() / 1_000_000) as u64)
        .unwrap_or_else(skiff_core::record::now_ms);
    let slot = get(H_NEXT)
        .and_then(|n| schedule::parse_rfc3339(&n))
        .and_then(|next| schedule.slot_before_next(next))
        .unwrap_or(fired);
    Some(Ok(skiff_core::fire::fire_event(
        &function, index, slot, fired, false,
    )))
}

impl Timers for NatsBus {
    fn install_schedules<'a>(
        &'a self,
        function: &'a str,
        version: u64,
        schedules: &'a [Schedule],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let stream = self.schedules_stream().await?;
            for (i, s) in schedules.iter().enumerate() {
                let pattern = s.nats_pattern();
                let tz = s.nats_time_zone();
                let mut h = HeaderMap::new();
                h.insert("Nats-Schedule", pattern.as_str());
                if let Some(tz) = &tz {
                    h.insert("Nats-Schedule-Time-Zone", tz.as_str());
                    h.insert(H_TZ, tz.as_str());
                }
                h.insert(
                    "Nats-Schedule-Target",
                    format!("events.{}", schedule::topic(function, i)).as_str(),
                );
                h.insert(H_PATTERN, pattern.as_str());
                let same = |p: &str, z: Option<&str>, removed: bool| {
                    !removed && p == pattern && z == tz.as_deref()
                };
                let written = self
                    .put_schedule(&stream, &subject(function, i), Some(version), h, same)
                    .await?;
                if written {
                    // A changed schedule: its slots before now are not this one's to make up.
                    let reset: RecordEdit = std::sync::Arc::new(|r| r.last_slot_ms = 0);
                    self.update_schedule(function, i, reset).await?;
                }
            }
            for i in self.installed_indexes(function).await? {
                if i >= schedules.len() {
                    self.remove_one(&stream, function, i, Some(version)).await?;
                }
            }
            Ok(())
        })
    }

    fn remove_schedules<'a>(&'a self, function: &'a str) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let stream = self.schedules_stream().await?;
            for i in self.installed_indexes(function).await? {
                // As the version installed: the next deploy (a higher version) installs again.
                self.remove_one(&stream, function, i, None).await?;
            }
            Ok(())
        })
    }

    fn schedule_record<'a>(
        &'a self,
        function: &'a str,
        index: usize,
    ) -> BoxFuture<'a, Result<ScheduleRecord, BusError>> {
        Box::pin(async move {
            let key = format!("{function}.{index}");
            match self.remote()?.schedules.get(&key).await.map_err(backend)? {
                Some(v) => serde_json::from_slice(&v).map_err(backend),
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
            let key = format!("{function}.{index}");
            let bucket = &self.remote()?.schedules;
            for _ in 0..20 {
                let entry = bucket.entry(&key).await.map_err(backend)?;
                let (before, revision) = match &entry {
                    Some(e) if e.operation == kv::Operation::Put => (
                        serde_json::from_slice::<ScheduleRecord>(&e.value).map_err(backend)?,
                        e.revision,
                    ),
                    Some(e) => (ScheduleRecord::default(), e.revision),
                    None => (ScheduleRecord::default(), 0),
                };
                let mut after = before.clone();
                edit(&mut after);
                let bytes: bytes::Bytes = serde_json::to_vec(&after).map_err(backend)?.into();
                let written = if revision == 0 {
                    bucket.create(&key, bytes).await.map_err(|e| e.to_string())
                } else {
                    bucket
                        .update(&key, bytes, revision)
                        .await
                        .map_err(|e| e.to_string())
                };
                if written.is_ok() {
                    return Ok((before, after));
                }
            }
            Err(backend(format!(
                "the record of schedule {key} keeps changing under this node; retry"
            )))
        })
    }
}

impl NatsBus {
    async fn schedules_stream(&self) -> Result<stream::Stream, BusError> {
        self.stream().await
    }

    /// The installed message on `subject`: (its sequence, version, pattern, zone, removed).
    async fn installed(
        &self,
        stream: &stream::Stream,
        subject: &str,
    ) -> Result<Option<(u64, u64, String, Option<String>, bool)>, BusError> {
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => {
                let h = &m.headers;
                let get = |k: &str| h.get(k).map(|v| v.as_str().to_string());
                Ok(Some((
                    m.sequence,
                    get(H_VERSION).and_then(|v| v.parse().ok()).unwrap_or(0),
                    get(H_PATTERN).unwrap_or_default(),
                    get(H_TZ),
                    get(H_REMOVED).is_some(),
                )))
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(backend(format!("cannot read schedule {subject}: {e}"))),
        }
    }

    /// Writes `headers` on `subject` as `version` (`None`: the version already there),
    /// unless a newer version is there or the same one already says this (`same`);
    /// answers whether it wrote. Losing the race to another node is fine: it wrote the
    /// same or newer.
    async fn put_schedule(
        &self,
        stream: &stream::Stream,
        subject: &str,
        version: Option<u64>,
        mut headers: HeaderMap,
        same: impl Fn(&str, Option<&str>, bool) -> bool,
    ) -> Result<bool, BusError> {
        let current = self.installed(stream, subject).await?;
        let version = match (&current, version) {
            (_, Some(v)) => v,
            (Some(c), None) => c.1,
            (None, None) => return Ok(false),
        };
        if let Some((_, v, pattern, tz, removed)) = &current
            && (*v > version || (*v == version && same(pattern, tz.as_deref(), *removed)))
        {
            return Ok(false);
        }
        let expected = current.map_or(0, |c| c.0);
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected.to_string().as_str(),
        );
        headers.insert(H_VERSION, version.to_string().as_str());
        headers.insert("Nats-Rollup", "sub");
        let ack = self
            .remote()?
            .js
            .publish_with_headers(subject.to_string(), headers, bytes::Bytes::new())
            .await
            .map_err(backend)?
            .await;
        match ack {
            Ok(_) => Ok(true),
            Err(e) if e.to_string().contains("wrong last sequence") => Ok(false),
            Err(e) => Err(backend(format!("cannot install schedule {subject}: {e}"))),
        }
    }

    /// The indexes of `function`'s schedule subjects in the stream.
    async fn installed_indexes(&self, function: &str) -> Result<Vec<usize>, BusError> {
        let stream = self.schedules_stream().await?;
        let prefix = format!("schedules.fn.{function}.");
        let mut info = stream
            .info_with_subjects(format!("{prefix}*"))
            .await
            .map_err(backend)?;
        let mut out = Vec::new();
        while let Some(entry) = info.next().await {
            let (subject, _) = entry.map_err(backend)?;
            if let Some(i) = subject.strip_prefix(&prefix).and_then(|i| i.parse().ok()) {
                out.push(i);
            }
        }
        Ok(out)
    }

    async fn remove_one(
        &self,
        stream: &stream::Stream,
        function: &str,
        index: usize,
        version: Option<u64>,
    ) -> Result<(), BusError> {
        let mut h = HeaderMap::new();
        h.insert(H_REMOVED, "1");
        let same = |_: &str, _: Option<&str>, removed: bool| removed;
        self.put_schedule(stream, &subject(function, index), version, h, same)
            .await?;
        let key = format!("{function}.{index}");
        match self.remote()?.schedules.purge(&key).await {
            Ok(()) => Ok(()),
            Err(e) => Err(backend(format!("cannot forget the record of {key}: {e}"))),
        }
    }
}
