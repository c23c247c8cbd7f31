//! Schedules: `[[schedule]]` in skiff.toml, the times they fire at, and the event a fire
//! becomes.
//!
//! A schedule is a cron pattern with seconds (`"0 */5 * * * *"`, in a time zone) or an
//! interval (`every = "30s"`). Its *slots* are the times it should fire. Each fire is an
//! event on `schedule.<function>.<index>` whose id is made from the function, the index
//! and the slot, so a fire that reaches the function twice takes effect once.
//!
//! The cron grammar is the one NATS message schedules take (robfig/cron's: six fields,
//! numbers, `*`, `?`, ranges, steps, lists, English month and weekday names, weekdays
//! 0–6 from Sunday), checked here and evaluated with `croner`, so that a pattern that
//! deploys fires at the same times in a cluster (NATS) and on one machine (redb).

use crate::units::Timeout;
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The topic prefix of schedule fires; functions may not publish under it.
pub const TOPIC_PREFIX: &str = "schedule";
/// The fastest a schedule may fire unless a node allows faster.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How late a fire may come from its timer and still count as on time; a later one was
/// missed (the cluster or the node was down at its slot) and is handled by the
/// schedule's `catch_up` policy.
pub const ON_TIME: Duration = Duration::from_secs(1);
/// The most missed slots one catch-up (`catch_up = "all"`) makes up for.
pub const MAX_CATCH_UP: usize = 1000;
/// Header: the slot of a fire (ms since the epoch).
pub const H_SCHEDULED: &str = "skiff-scheduled-at-ms";
/// Header: when the timer fired (ms since the epoch).
pub const H_FIRED: &str = "skiff-fired-at-ms";
/// Header: the fire makes up for a missed slot (`catch_up = "all"`).
pub const H_CATCH_UP: &str = "skiff-catch-up";

/// What happens to slots missed while the cluster, or the node, was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Fire the last missed slot once.
    #[default]
    Latest,
    /// Fire every missed slot within `window`.
    All,
    /// Fire none: go on from the next slot.
    None,
}

/// One `[[schedule]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSection {
    /// Cron pattern with seconds: `sec min hour day-of-month month day-of-week`.
    pub cron: Option<String>,
    /// Or an interval, like `"30s"`.
    pub every: Option<Timeout>,
    /// IANA time zone of the cron pattern (default UTC).
    pub timezone: Option<String>,
    /// What happens to missed slots (default `latest`).
    #[serde(default)]
    pub catch_up: CatchUp,
    /// How far back `catch_up = "all"` reaches (default 1h).
    pub window: Option<Timeout>,
    /// Deliveries of one fire before it is dead-lettered (default 5).
    pub max_attempts: Option<u32>,
    /// Delay before the first retry; doubles each retry (default 1s).
    pub backoff: Option<Timeout>,
}

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Cadence {
    /// A cron pattern (normalised to six fields) in a time zone.
    Cron {
        /// The six-field pattern NATS receives.
        pattern: String,
        /// The parsed pattern.
        cron: Box<croner::Cron>,
        /// Its time zone.
        tz: Tz,
    },
    /// A fixed interval.
    Every(Duration),
}

/// A checked schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// When it fires.
    pub cadence: Cadence,
    /// Missed slots.
    pub catch_up: CatchUp,
    /// How far back `catch_up = "all"` reaches.
    pub window: Duration,
    /// Deliveries of one fire before it is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay.
    pub backoff: Duration,
}

/// Why a `[[schedule]]` was refused; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[[schedule]] #{index} {field}: {why}")]
pub struct ScheduleError {
    /// 1-based, as a reader counts the tables.
    pub index: usize,
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong and what to write.
    pub why: String,
}

const NICKNAMES: [(&str, &str); 7] = [
    ("@yearly", "0 0 0 1 1 *"),
    ("@annually", "0 0 0 1 1 *"),
    ("@monthly", "0 0 0 1 * *"),
    ("@weekly", "0 0 0 * * 0"),
    ("@daily", "0 0 0 * * *"),
    ("@midnight", "0 0 0 * * *"),
    ("@hourly", "0 0 * * * *"),
];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const FIELDS: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day of month",
    "month",
    "day of week",
];

/// Holds `pattern` to the grammar NATS message schedules accept (croner accepts more:
/// `L`, `W`, `#`, weekday 7, five fields), so that what deploys fires alike everywhere.
fn check_grammar(pattern: &str) -> Result<String, String> {
    let lower = pattern.trim().to_ascii_lowercase();
    if let Some((_, expanded)) = NICKNAMES.iter().find(|(n, _)| *n == lower) {
        return Ok((*expanded).to_string());
    }
    let fields: Vec<&str> = lower.split_whitespace().collect();
    if fields.len() != 6 {
        return Err(format!(
            "`{pattern}` has {} fields; write six, with seconds first: \"sec min hour day-of-month month day-of-week\", like \"0 */5 * * * *\"",
            fields.len()
        ));
    }
    for (i, field) in fields.iter().enumerate() {
        for word in field.split([',', '-', '/']) {
            let ok = match word {
                "*" | "?" => true,
                w if w.bytes().all(|b| b.is_ascii_digit()) && !w.is_empty() => {
                    i != 5 || w.parse::<u32>().is_ok_and(|d| d <= 6)
                }
                w if i == 4 => MONTHS.contains(&w),
                w if i == 5 => WEEKDAYS.contains(&w),
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "`{word}` is not valid in the {} field of `{pattern}`; use numbers, `*`, ranges `a-b`, steps `/n` and lists `a,b`{}",
                    FIELDS[i],
                    match i {
                        4 => " (or jan–dec)",
                        5 => " (days 0–6 from Sunday, or sun–sat)",
                        _ => "",
                    }
                ));
            }
        }
    }
    Ok(fields.join(" "))
}

fn parse_cron(pattern: &str) -> Result<(String, croner::Cron), String> {
    let normal = check_grammar(pattern)?;
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(&normal)
        .map_err(|e| format!("`{pattern}`: {e}"))?;
    Ok((normal, cron))
}

fn to_ms(t: DateTime<Tz>) -> Option<u64> {
    u64::try_from(t.timestamp_millis()).ok()
}

impl Schedule {
    /// Checks table number `index` (1-based) of a manifest.
    pub fn parse(index: usize, s: &ScheduleSection) -> Result<Schedule, ScheduleError> {
        let err = |field, why: String| ScheduleError { index, field, why };
        let cadence = match (&s.cron, &s.every) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "cron",
                    "give either `cron` or `every`, not both".to_string(),
                ));
            }
            (None, None) => {
                return Err(err(
                    "cron",
                    "give `cron = \"0 */5 * * * *\"` or `every = \"30s\"`".to_string(),
                ));
            }
            (Some(pattern), None) => {
                let (pattern, cron) = parse_cron(pattern).map_err(|why| err("cron", why))?;
                let tz = match &s.timezone {
                    None => Tz::UTC,
                    Some(name) => name.parse::<Tz>().map_err(|_| {
                        err(
                            "timezone",
                            format!(
                                "unknown time zone `{name}`; use an IANA name like \"Europe/Berlin\" or \"UTC\""
                            ),
                        )
                    })?,
                };
                Cadence::Cron {
                    pattern,
                    cron: Box::new(cron),
                    tz,
                }
            }
            (None, Some(every)) => {
                if s.timezone.is_some() {
                    return Err(err(
                        "timezone",
                        "a time zone applies to `cron` only; `every` counts real time".to_string(),
                    ));
                }
                if every.0.is_zero() {
                    return Err(err("every", "the interval must be above zero".to_string()));
                }
                Cadence::Every(every.0)
            }
        };
        let max_attempts = s.max_attempts.unwrap_or(5);
        if max_attempts == 0 {
            return Err(err("max_attempts", "must be at least 1".to_string()));
        }
        let schedule = Schedule {
            cadence,
            catch_up: s.catch_up,
            window: s.window.map_or(Duration::from_secs(3600), |w| w.0),
            max_attempts,
            backoff: s.backoff.map_or(Duration::from_secs(1), |b| b.0),
        };
        if schedule.next_after(0).is_none() {
            return Err(err(
                "cron",
                "the pattern never fires; check the day and month fields".to_string(),
            ));
        }
        Ok(schedule)
    }

    /// The shortest gap between two slots (over the next hundred, from a fixed date).
    pub fn min_interval(&self) -> Duration {
        match &self.cadence {
            Cadence::Every(d) => *d,
            Cadence::Cron { .. } => {
                let mut at = 1_767_225_600_000; // 2026-01-01T00:00:00Z
                let mut min = u64::MAX;
                for _ in 0..100 {
                    let Some(next) = self.next_after(at) else {
                        break;
                    };
                    if at != 1_767_225_600_000 {
                        min = min.min(next - at);
                    }
                    at = next;
                }
                Duration::from_millis(min)
            }
        }
    }

    /// Refuses a schedule that fires more often than `min` (a node's minimum interval).
    pub fn check_interval(&self, index: usize, min: Duration) -> Result<(), ScheduleError> {
        let interval = self.min_interval();
        if interval < min {
            let field = match self.cadence {
                Cadence::Cron { .. } => "cron",
                Cadence::Every(_) => "every",
            };
            return Err(ScheduleError {
                index,
                field,
                why: format!(
                    "fires every {}, more often than this node's minimum of {}; fire less often (the node's `--min-schedule-interval` sets the minimum)",
                    humantime::format_duration(interval),
                    humantime::format_duration(min)
                ),
            });
        }
        Ok(())
    }

    fn zoned(&self, ms: u64, tz: &Tz) -> Option<DateTime<Tz>> {
        let utc = Utc.timestamp_millis_opt(i64::try_from(ms).ok()?).single()?;
        Some(utc.with_timezone(tz))
    }

    /// The first slot after `t` (ms since the epoch).
    pub fn next_after(&self, t: u64) -> Option<u64> {
        match &self.cadence {
            Cadence::Every(d) => {
                let d = d.as_millis().max(1) as u64;
                (t / d).checked_add(1)?.checked_mul(d)
            }
            Cadence::Cron { cron, tz, .. } => {
                to_ms(cron.find_next_occurrence(&self.zoned(t, tz)?, false).ok()?)
            }
        }
    }

    /// The last slot at or before `t`.
    pub fn latest_at_or_before(&self, t: u64) -> Option<u64> {
        match &self.cadence {
            Cadence::Every(d) => {
                let d = d.as_millis().max(1) as u64;
                Some(t / d * d)
            }
            Cadence::Cron { cron, tz, .. } => to_ms(
                cron.find_previous_occurrence(&self.zoned(t, tz)?, true)
                    .ok()?,
            ),
        }
    }

    /// The slot a NATS fire was for, from the time it says comes next
    /// (`Nats-Schedule-Next`): an interval counts from when NATS fired it, a cron
    /// pattern's slot is the one before `next`.
    pub fn slot_before_next(&self, next: u64) -> Option<u64> {
        match &self.cadence {
            Cadence::Every(d) => next.checked_sub(d.as_millis() as u64),
            Cadence::Cron { cron, tz, .. } => to_ms(
                cron.find_previous_occurrence(&self.zoned(next, tz)?, false)
                    .ok()?,
            ),
        }
    }

    /// Slots strictly between `after` and `before`, oldest first, at most `max`. For an
    /// interval they step from `after`, so that they stay on its grid.
    pub fn slots_between(&self, after: u64, before: u64, max: usize) -> Vec<u64> {
        let mut out = Vec::new();
        let mut at = after;
        while out.len() < max {
            let next = match &self.cadence {
                Cadence::Every(d) => at.checked_add(d.as_millis() as u64),
                Cadence::Cron { .. } => self.next_after(at),
            };
            match next {
                Some(n) if n < before => {
                    out.push(n);
                    at = n;
                }
                _ => break,
            }
        }
        out
    }

    /// The `Nats-Schedule` header: the six-field pattern, or `@every <ms>ms`.
    pub fn nats_pattern(&self) -> String {
        match &self.cadence {
            Cadence::Cron { pattern, .. } => pattern.clone(),
            Cadence::Every(d) => format!("@every {}ms", d.as_millis()),
        }
    }

    /// The `Nats-Schedule-Time-Zone` header, for a cron pattern outside UTC.
    pub fn nats_time_zone(&self) -> Option<String> {
        match &self.cadence {
            Cadence::Cron { tz, .. } if *tz != Tz::UTC => Some(tz.name().to_string()),
            _ => None,
        }
    }

    /// The schedule NATS holds (from [`Schedule::nats_pattern`] and
    /// [`Schedule::nats_time_zone`]), for its slots; the policies take their defaults.
    pub fn from_nats(pattern: &str, tz: Option<&str>) -> Option<Schedule> {
        let every = pattern
            .strip_prefix("@every ")
            .and_then(|p| p.strip_suffix("ms"))
            .and_then(|ms| ms.parse::<u64>().ok());
        let section = ScheduleSection {
            cron: every.is_none().then(|| pattern.to_string()),
            every: every.map(|ms| Timeout(Duration::from_millis(ms))),
            timezone: tz.map(str::to_string),
            catch_up: CatchUp::Latest,
            window: None,
            max_attempts: None,
            backoff: None,
        };
        Schedule::parse(1, &section).ok()
    }

    /// How it is written, for listings: `cron 0 */5 * * * * (Europe/Berlin)` or
    /// `every 30s`.
    pub fn describe(&self) -> String {
        match &self.cadence {
            Cadence::Cron { pattern, tz, .. } => format!("cron {pattern} ({})", tz.name()),
            Cadence::Every(d) => format!("every {}", humantime::format_duration(*d)),
        }
    }
}

/// `t` (ms since the epoch) in RFC 3339 with milliseconds, UTC.
pub fn rfc3339(t: u64) -> String {
    i64::try_from(t)
        .ok()
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// An RFC 3339 time (any precision) as ms since the epoch.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let t = DateTime::parse_from_rfc3339(text.trim()).ok()?;
    u64::try_from(t.timestamp_millis()).ok()
}

/// The topic of `function`'s schedule number `index` (0-based).
pub fn topic(function: &str, index: usize) -> String {
    format!("{TOPIC_PREFIX}.{function}.{index}")
}

/// The trigger pattern that takes every schedule of `function`.
pub fn pattern(function: &str) -> String {
    format!("{TOPIC_PREFIX}.{function}.*")
}

/// (function, index) of a schedule topic.
pub fn parse_topic(topic: &str) -> Option<(&str, usize)> {
    let rest = topic.strip_prefix(TOPIC_PREFIX)?.strip_prefix('.')?;
    let (function, index) = rest.split_once('.')?;
    Some((function, index.parse().ok()?))
}

/// The id of the fire of `function`'s schedule `index` for `slot`: the same wherever and
/// however often that slot fires.
pub fn fire_id(function: &str, index: usize, slot: u64) -> String {
    let digest =
        crate::record::sha256_hex(format!("schedule/{function}/{index}/{slot}").as_bytes());
    digest[..32].to_string()
}

/// What to do with a fire that reached its function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Whether the handler runs on this fire.
    pub run: bool,
    /// Missed slots to fire now, oldest first (`catch_up = "all"`).
    pub make_up: Vec<u64>,
    /// Slots the policy drops: those between the last fire and this one that are not
    /// made up, and this one if it does not run.
    pub dropped: u64,
}

/// The most slots a drop is counted up to (a long outage of a fast schedule).
const MAX_COUNTED: usize = 1_000_000;

/// Decides a fire of `slot`, fired at `fired`, given the last slot this schedule fired
/// before it (`last`). Only a fire straight from the timer is decided: a made-up slot
/// (`catch_up`) always runs.
pub fn admit(schedule: &Schedule, slot: u64, fired: u64, last: Option<u64>) -> Admission {
    let late = fired.saturating_sub(slot) > ON_TIME.as_millis() as u64;
    let between = |from: u64| match last {
        Some(_) => schedule.slots_between(from, slot, MAX_COUNTED),
        None => Vec::new(),
    };
    let last_slot = last.unwrap_or(slot);
    match schedule.catch_up {
        CatchUp::Latest => Admission {
            run: true,
            make_up: Vec::new(),
            dropped: between(last_slot).len() as u64,
        },
        CatchUp::None => Admission {
            run: !late,
            make_up: Vec::new(),
            dropped: between(last_slot).len() as u64 + u64::from(late),
        },
        CatchUp::All => {
            let floor = fired.saturating_sub(schedule.window.as_millis() as u64);
            let missed = between(last_slot);
            let (make_up, old): (Vec<u64>, Vec<u64>) = missed
                .into_iter()
                .take(MAX_COUNTED)
                .partition(|s| *s >= floor);
            let run = slot >= floor;
            let mut make_up = make_up;
            make_up.truncate(MAX_CATCH_UP);
            Admission {
                run,
                make_up,
                dropped: old.len() as u64 + u64::from(!run),
            }
        }
    }
}

#[cfg(test)]
mod tests;
