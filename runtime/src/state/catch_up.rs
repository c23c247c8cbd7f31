//! Catching up without a consumer: reading a shard's missing writes one by one from its
//! stream's leader.
//!
//! The follower ([`super::apply`]) normally pulls through an ordered consumer. Creating
//! one goes through the NATS cluster's meta leader, while a write needs only the
//! stream's own leader; after a partition heals, the stream can take writes seconds
//! before consumers can be created again. A write is acknowledged to its caller only once
//! this node applied it, so until a consumer is back the follower reads what it misses
//! with `STREAM.MSG.GET` (`next_by_subj`), which the stream leader answers alone.

use super::local::LogEntry;
use super::replica::{H_ANSWER, H_IDEM, H_OP, Replica, log_err, parse_subject};
use super::{LocalState, Op, OpResult, StateError};
use async_nats::HeaderMap;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use std::time::Duration;

/// Writes read one by one per catch-up at most (the consumer takes the bulk).
const CATCH_UP_MAX: usize = 4096;
/// Writes applied per transaction while catching up.
const CATCH_UP_BATCH: usize = 64;
/// How long one read may take (the stream has no leader yet if it takes longer).
const READ_WAIT: Duration = Duration::from_secs(2);

/// Decodes one message of a state stream into the entry to apply, or `None` (with a
/// warning) when its subject is not a key of one of `functions`.
pub(super) fn log_entry(
    functions: &[String],
    subject: &str,
    seq: u64,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Option<(String, LogEntry)> {
    let Some((ns, key)) = parse_subject(subject).filter(|(ns, _)| functions.contains(&ns.function))
    else {
        tracing::warn!(%subject, "foreign subject in the state stream; skipped");
        return None;
    };
    let header = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    let deleted = header(H_OP).is_some_and(|v| v == "del");
    let answered = header(H_IDEM)
        .zip(header(H_ANSWER).and_then(|a| serde_json::from_str::<OpResult>(&a).ok()));
    let function = ns.function.clone();
    let op = if deleted {
        Op::Delete { ns, key }
    } else {
        Op::Set {
            ns,
            key,
            value: payload.to_vec(),
        }
    };
    Some((function, LogEntry { seq, op, answered }))
}

/// What one batch of reads found.
struct Batch {
    entries: Vec<(String, LogEntry)>,
    /// The sequence to read from next.
    next: u64,
    /// Nothing is left to read.
    end: bool,
    /// A read failed (what was read before it is in `entries`).
    failed: Option<StateError>,
}

/// Reads up to [`CATCH_UP_BATCH`] writes on `subject` from sequence `next` on.
async fn read_batch(stream: &Stream, subject: &str, functions: &[String], next: u64) -> Batch {
    let mut batch = Batch {
        entries: Vec::new(),
        next,
        end: false,
        failed: None,
    };
    while batch.entries.len() < CATCH_UP_BATCH {
        let read = stream
            .raw_message_builder()
            .sequence(batch.next)
            .next_by_subject(subject.to_string())
            .send();
        let m = match tokio::time::timeout(READ_WAIT, read).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                batch.end = true;
                break;
            }
            Ok(Err(e)) => {
                batch.failed = Some(log_err("read the state stream", e));
                break;
            }
            Err(_) => {
                let why = format!("no answer within {READ_WAIT:?}");
                batch.failed = Some(log_err("read the state stream", why));
                break;
            }
        };
        batch.next = m.sequence + 1;
        batch.entries.extend(log_entry(
            functions,
            &m.subject,
            m.sequence,
            Some(&m.headers),
            &m.payload,
        ));
    }
    batch
}

impl Replica {
    /// Applies `functions`' writes that `store` lacks, read one by one from the stream's
    /// leader; answers how many it applied.
    pub(super) async fn catch_up_by_reads(
        &self,
        store: &LocalState,
        functions: &[String],
    ) -> Result<usize, StateError> {
        let mut applied = 0;
        for f in functions {
            let subject = self.shards.function_subjects(f);
            let mut next = store.log_applied(f) + 1;
            while applied < CATCH_UP_MAX {
                let batch = read_batch(self.stream_of(f), &subject, functions, next).await;
                next = batch.next;
                applied += batch.entries.len();
                if !batch.entries.is_empty() {
                    store.apply_logs(batch.entries).await?;
                }
                if let Some(e) = batch.failed {
                    return Err(e);
                }
                if batch.end {
                    break;
                }
            }
        }
        Ok(applied)
    }
}
