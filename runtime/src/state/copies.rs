//! A cluster node's copies of the functions it hosts: for each, how far this node has
//! applied that function's part of the replicated log (in the same redb transaction as
//! the data), so that it resumes where it stopped, and so that a write or an event
//! delivery can wait until its function's copy is far enough.
//!
//! Positions are per function: a function's keys all live in one shard's stream, and a
//! node follows each function it hosts on its own, so that a function it starts hosting
//! is caught up from the stream without touching the others, and one it stops hosting is
//! dropped without a trace (after a grace period, [`super::ReplicatedState::release`]).

use super::local::LogEntry;
use super::ops::{APPLIED, DATA, JOURNAL, KEY_SEQ, Tables, USAGE, apply};
use super::{KvLimits, Op, OpError};
use redb::{ReadableTable, WriteTransaction};
use skiff_core::record::now_ms;
use skiff_core::state_keys::{function_prefix, prefix_end};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;

/// The APPLIED-table key of `function`'s position, and of when it last moved.
fn position_key(function: &str) -> (String, String) {
    (format!("log/{function}"), format!("log/{function}@ms"))
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Each hosted function's applied position, for waiters.
#[derive(Default)]
pub(super) struct Positions(Mutex<HashMap<String, watch::Sender<u64>>>);

impl Positions {
    fn sender(&self, function: &str) -> watch::Sender<u64> {
        let mut map = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        map.entry(function.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    /// Starts from what the disk says.
    pub(super) fn load(&self, applied: HashMap<String, u64>) {
        for (function, seq) in applied {
            self.sender(&function).send_replace(seq);
        }
    }

    /// `function`'s applied position.
    pub(super) fn get(&self, function: &str) -> u64 {
        *self.sender(function).borrow()
    }

    /// Moves `function`'s position forward to `seq` (never back).
    pub(super) fn advance(&self, function: &str, seq: u64) {
        self.sender(function).send_if_modified(|at| {
            let newer = seq > *at;
            if newer {
                *at = seq;
            }
            newer
        });
    }

    /// Sets `function`'s position back to 0 (its copy was dropped).
    pub(super) fn reset(&self, function: &str) {
        self.sender(function).send_replace(0);
    }

    /// Waits until `function` is applied up to `seq`; false on timeout.
    pub(super) async fn wait(&self, function: &str, seq: u64, max: std::time::Duration) -> bool {
        let mut rx = self.sender(function).subscribe();
        tokio::time::timeout(max, rx.wait_for(|applied| *applied >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Reads every function's position; drops the copy of any function last applied longer
/// ago than a tombstone lives (it may have missed deletes whose tombstones expired since),
/// so that it is rebuilt from the whole stream.
pub(super) fn init(tx: &WriteTransaction) -> Result<HashMap<String, u64>, String> {
    let mut found = HashMap::new();
    {
        let t = tx.open_table(APPLIED).map_err(err)?;
        for entry in t.range("log/".."log0").map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            if let Some(function) = k.value().strip_prefix("log/")
                && !function.ends_with("@ms")
            {
                found.insert(function.to_string(), v.value());
            }
        }
    }
    let ttl = super::replica::TOMBSTONE_TTL.as_millis() as u64;
    let mut positions = HashMap::new();
    for (function, seq) in found {
        let at = {
            let t = tx.open_table(APPLIED).map_err(err)?;
            t.get(position_key(&function).1.as_str())
                .map_err(err)?
                .map(|v| v.value())
                .unwrap_or(0)
        };
        let away = now_ms().saturating_sub(at);
        if seq > 0 && away > ttl {
            tracing::warn!(
                function,
                away_hours = away / 3_600_000,
                "this node last applied the function's state longer ago than deletes are remembered; rebuilding its copy from the stream"
            );
            forget(tx, &function)?;
            positions.insert(function, 0);
        } else {
            positions.insert(function, seq);
        }
    }
    Ok(positions)
}

/// Applies `function`'s entries after its recorded position; answers the new position.
pub(super) fn apply_log(
    tx: &WriteTransaction,
    function: &str,
    entries: &[LogEntry],
) -> Result<u64, String> {
    let (pos_key, at_key) = position_key(function);
    let mut applied = tx.open_table(APPLIED).map_err(err)?;
    let before = applied
        .get(pos_key.as_str())
        .map_err(err)?
        .map(|v| v.value())
        .unwrap_or(0);
    let mut log_seq = before;
    let mut tables = Tables {
        data: tx.open_table(DATA).map_err(err)?,
        usage: tx.open_table(USAGE).map_err(err)?,
    };
    let mut key_seq = tx.open_table(KEY_SEQ).map_err(err)?;
    let mut journal = tx.open_table(JOURNAL).map_err(err)?;
    for entry in entries.iter().filter(|e| e.seq > before) {
        // The log holds only checked writes: every node applies all of it.
        match apply(&mut tables, &entry.op, &KvLimits::UNLIMITED) {
            Err(OpError::Storage(detail)) => return Err(detail),
            Err(e) => {
                tracing::error!(seq = entry.seq, error = %e, "replicated write refused; skipped")
            }
            Ok(_) => {}
        }
        if let Op::Set { ns, key, .. } | Op::Delete { ns, key } = &entry.op {
            key_seq
                .insert(ns.key(key).as_slice(), entry.seq)
                .map_err(err)?;
        }
        if let Some((idem, answer)) = &entry.answered {
            let recorded = serde_json::to_vec(&(now_ms(), answer)).map_err(err)?;
            journal
                .insert(idem.as_str(), recorded.as_slice())
                .map_err(err)?;
        }
        log_seq = entry.seq;
    }
    if log_seq != before {
        applied.insert(pos_key.as_str(), log_seq).map_err(err)?;
        applied.insert(at_key.as_str(), now_ms()).map_err(err)?;
    }
    Ok(log_seq)
}

/// Drops this node's copy of `function`: its keys, their sequences, its usage and its
/// position. Answers the keys dropped.
pub(super) fn forget(tx: &WriteTransaction, function: &str) -> Result<u64, String> {
    let prefix = function_prefix(function);
    let mut dropped = 0;
    {
        let mut data = tx.open_table(DATA).map_err(err)?;
        let mut seqs = tx.open_table(KEY_SEQ).map_err(err)?;
        match prefix_end(&prefix) {
            Some(end) => {
                dropped += data
                    .extract_from_if(prefix.as_slice()..end.as_slice(), |_, _| true)
                    .map_err(err)?
                    .count() as u64;
                seqs.extract_from_if(prefix.as_slice()..end.as_slice(), |_, _| true)
                    .map_err(err)?
                    .count();
            }
            None => {
                dropped += data
                    .extract_from_if(prefix.as_slice().., |_, _| true)
                    .map_err(err)?
                    .count() as u64;
                seqs.extract_from_if(prefix.as_slice().., |_, _| true)
                    .map_err(err)?
                    .count();
            }
        }
    }
    tx.open_table(USAGE)
        .map_err(err)?
        .remove(function)
        .map_err(err)?;
    let (pos_key, at_key) = position_key(function);
    let mut applied = tx.open_table(APPLIED).map_err(err)?;
    applied.remove(pos_key.as_str()).map_err(err)?;
    applied.remove(at_key.as_str()).map_err(err)?;
    Ok(dropped)
}
