//! Sending one write to the replicated log: the same message (same id) is sent again
//! while the cluster cannot answer — JetStream's de-duplication makes that safe — and a
//! write whose fate stays unknown is reported as in doubt, never as not applied.

use super::replica::{H_ANSWER, H_IDEM, H_OP, Replica, TOMBSTONE_TTL, log_err};
use super::{Namespace, OpResult, StateError};
use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use bytes::Bytes;
use std::time::{Duration, Instant};

/// How long a write keeps sending itself again while the cluster cannot confirm it.
pub(super) const PUBLISH_BUDGET: Duration = Duration::from_secs(10);
/// How long one try waits for the cluster's acknowledgement before sending the write
/// again (same message id): a write sent to a stream leader that just died is sent to
/// the new one moments after it is elected, not after a client-wide timeout.
const ACK_WAIT: Duration = Duration::from_secs(1);

/// Whether a JetStream error is one a leader election causes, gone in moments: the
/// request was not carried out and may be repeated.
pub(super) fn transient(error: &str) -> bool {
    [
        "10008",
        "temporarily unavailable",
        "no responders",
        "Leadership",
        "timed out",
    ]
    .iter()
    .any(|s| error.contains(s))
}

/// A write JetStream took.
pub(super) struct Published {
    /// Its sequence (the original's, for a duplicate).
    pub(super) seq: u64,
    /// JetStream had it already (same message id, within the de-duplication window).
    pub(super) duplicate: bool,
}

/// Why a publish did not go through.
pub(super) enum Publish {
    /// Another write to the key came first (expected sequence mismatch) — or this one,
    /// if an earlier try of it may have been stored (`maybe_sent`).
    Conflict {
        /// An earlier try went unanswered.
        maybe_sent: bool,
    },
    /// NATS refused or could not be reached.
    Failed(StateError),
}

impl Replica {
    pub(super) async fn publish(
        &self,
        ns: &Namespace,
        key: &str,
        value: Option<&[u8]>,
        expected: Option<u64>,
        msg_id: &str,
        answered: Option<(&str, &OpResult)>,
    ) -> Result<Published, Publish> {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        if let Some((idem, answer)) = answered
            && let Ok(json) = serde_json::to_string(answer)
        {
            headers.insert(H_IDEM, idem);
            headers.insert(H_ANSWER, json.as_str());
        }
        if let Some(seq) = expected {
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                seq.to_string().as_str(),
            );
        }
        let payload = match value {
            Some(v) => {
                headers.insert(H_OP, "set");
                Bytes::copy_from_slice(v)
            }
            None => {
                headers.insert(H_OP, "del");
                headers.insert(
                    async_nats::header::NATS_MESSAGE_TTL,
                    TOMBSTONE_TTL.as_secs().to_string().as_str(),
                );
                Bytes::new()
            }
        };
        // The same message (same id) is sent again while the cluster cannot answer: its
        // de-duplication makes that safe, and the first answer that comes is the truth. A
        // write whose fate stays unknown is reported as in doubt, never as not applied.
        let deadline = Instant::now() + PUBLISH_BUDGET;
        let mut wait = Duration::from_millis(50);
        let mut maybe_sent = false;
        loop {
            let ack = match self
                .js
                .publish_with_headers(self.subject(ns, key), headers.clone(), payload.clone())
                .await
            {
                Ok(ack) => match tokio::time::timeout(ACK_WAIT, ack).await {
                    Ok(answer) => answer,
                    Err(_) => Err(PublishErrorKind::TimedOut.into()),
                },
                Err(e) => {
                    return Err(Publish::Failed(log_err("send the write to the cluster", e)));
                }
            };
            let e = match ack {
                Ok(a) => {
                    return Ok(Published {
                        seq: a.sequence,
                        duplicate: a.duplicate,
                    });
                }
                Err(e) => e,
            };
            let text = e.to_string();
            // JetStream answers a failed expected-sequence check with error code 10071 or,
            // from servers ≥ 2.11 in some paths, 10164; async-nats names only the first.
            if e.kind() == PublishErrorKind::WrongLastSequence
                || text.contains("wrong last sequence")
            {
                return Err(Publish::Conflict { maybe_sent });
            }
            let unknown = matches!(
                e.kind(),
                PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
            ) || text.contains("10158"); // "duplicate message id is in process"
            // No stream leader answered ("no responders"), or JetStream is electing one:
            // nothing was stored.
            let retry = unknown || e.kind() == PublishErrorKind::StreamNotFound || transient(&text);
            maybe_sent |= unknown;
            if !retry || Instant::now() + wait >= deadline {
                let cause = if self.js.client().connection_state()
                    == async_nats::connection::State::Connected
                {
                    "the NATS cluster may have lost its quorum"
                } else {
                    "this node has lost its connection to NATS"
                };
                return Err(Publish::Failed(if maybe_sent {
                    StateError::InDoubt(format!(
                        "the cluster did not confirm the write within {PUBLISH_BUDGET:?} ({e}); it may or may not be applied — {cause}; retry only if the write is idempotent"
                    ))
                } else {
                    log_err("store the write in the cluster", e)
                }));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }
}
