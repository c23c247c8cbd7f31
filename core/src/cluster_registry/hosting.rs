//! The assignment of functions to nodes, and the cluster's state shard count, in the
//! registry's KV bucket next to the function records:
//!
//! * `place.<function>` → the JSON [`Hosting`], written with compare-and-set so that two
//!   schedulers never overwrite each other's move unseen;
//! * `drain.<node>` → present while the node is drained;
//! * `cluster.state-shards` → how many streams the replicated state is split across,
//!   fixed by the first scheduler that joins (`--state-shards`).
//!
//! Nodes may read these and never write them (deploy/nats/permissions.conf).

use super::{ClusterRegistry, nats};
use crate::control::{Change, ControlError};
use crate::hosting::{Hosting, HostingChange, HostingTable};
use crate::state_keys::{DEFAULT_STATE_SHARDS, StateShards};
use async_nats::jetstream::kv;
use bytes::Bytes;

/// The key that holds the state shard count.
const SHARDS_KEY: &str = "cluster.state-shards";

impl ClusterRegistry {
    pub(crate) async fn read_hosting(&self) -> Result<HostingTable, ControlError> {
        let mut table = HostingTable::default();
        for key in self.keys().await? {
            if let Some(node) = key.strip_prefix("drain.") {
                table.drained.insert(node.to_string());
            } else if let Some(function) = key.strip_prefix("place.")
                && let Some(entry) = self
                    .kv
                    .entry(key.as_str())
                    .await
                    .map_err(|e| nats(format!("read {key}"))(&e))?
                && entry.operation == kv::Operation::Put
            {
                let hosting = decode_hosting(&key, &entry.value)?;
                table
                    .functions
                    .insert(function.to_string(), (hosting, entry.revision));
            }
        }
        Ok(table)
    }

    pub(crate) async fn write_hosting(
        &self,
        function: &str,
        hosting: &Hosting,
        revision: u64,
    ) -> Result<u64, ControlError> {
        let key = format!("place.{function}");
        let json = serde_json::to_vec(hosting)
            .map_err(|e| ControlError::Unavailable(format!("cannot encode `{key}`: {e}")))?;
        let written = if revision == 0 {
            self.kv
                .create(key.as_str(), Bytes::from(json))
                .await
                .map_err(|e| e.to_string())
        } else {
            self.kv
                .update(key.as_str(), Bytes::from(json), revision)
                .await
                .map_err(|e| e.to_string())
        };
        match written {
            Ok(rev) => Ok(rev),
            Err(e) if e.contains("wrong last sequence") || e.contains("already exists") => {
                Err(ControlError::Conflict(format!(
                    "`{function}`'s placement changed meanwhile (another scheduler or a move); read it again"
                )))
            }
            Err(e) => Err(nats(format!("write {key}"))(&e)),
        }
    }

    pub(crate) async fn delete_hosting(&self, function: &str) -> Result<(), ControlError> {
        let key = format!("place.{function}");
        self.kv
            .delete(key.as_str())
            .await
            .map_err(|e| nats(format!("delete {key}"))(&e))
    }

    pub(crate) async fn write_drained(
        &self,
        node: &str,
        drained: bool,
    ) -> Result<(), ControlError> {
        let key = format!("drain.{node}");
        let done = if drained {
            self.kv
                .put(key.as_str(), Bytes::from_static(b"1"))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            self.kv
                .delete(key.as_str())
                .await
                .map_err(|e| e.to_string())
        };
        done.map_err(|e| nats(format!("write {key}"))(&e))
    }

    /// The cluster's state shard count: the one recorded, or — when none is — `want`
    /// (default [`DEFAULT_STATE_SHARDS`]), recorded now. A `want` that differs from the
    /// recorded count is refused: the count is fixed when the cluster is created.
    pub async fn fix_state_shards(&self, want: Option<u32>) -> Result<StateShards, ControlError> {
        let wanted = StateShards::new(want.unwrap_or(DEFAULT_STATE_SHARDS))
            .map_err(ControlError::Unavailable)?;
        loop {
            if let Some(held) = self.state_shards().await? {
                if want.is_some_and(|w| w != held.count()) {
                    return Err(ControlError::Conflict(format!(
                        "this cluster's state is split across {} shards, fixed when it was created; --state-shards {} cannot change it (leave the flag out, or start a new cluster)",
                        held.count(),
                        wanted.count()
                    )));
                }
                return Ok(held);
            }
            let created = self
                .kv
                .create(SHARDS_KEY, Bytes::from(wanted.count().to_string()))
                .await;
            match created {
                Ok(_) => return Ok(wanted),
                // Another scheduler fixed it first: take what it fixed.
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                Err(e) => return Err(nats(format!("write {SHARDS_KEY}"))(&e)),
            }
        }
    }

    /// The cluster's state shard count, once a scheduler has fixed it.
    pub async fn state_shards(&self) -> Result<Option<StateShards>, ControlError> {
        let Some(v) = self
            .kv
            .get(SHARDS_KEY)
            .await
            .map_err(|e| nats(format!("read {SHARDS_KEY}"))(&e))?
        else {
            return Ok(None);
        };
        let n = std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .ok_or_else(|| {
                ControlError::Unavailable(format!(
                    "the registry's `{SHARDS_KEY}` is unreadable ({:?}); it must hold a number",
                    String::from_utf8_lossy(&v)
                ))
            })?;
        StateShards::new(n)
            .map(Some)
            .map_err(ControlError::Unavailable)
    }
}

/// The change a watched `place.` or `drain.` entry makes, if it is one.
pub(crate) fn hosting_change(entry: &kv::Entry) -> Option<Result<Change, ControlError>> {
    let put = entry.operation == kv::Operation::Put;
    if let Some(node) = entry.key.strip_prefix("drain.") {
        return Some(Ok(Change::Hosting(HostingChange::Drained(
            node.to_string(),
            put,
        ))));
    }
    let function = entry.key.strip_prefix("place.")?;
    Some(if put {
        decode_hosting(&entry.key, &entry.value)
            .map(|h| Change::Hosting(HostingChange::Placed(function.to_string(), Some(h))))
    } else {
        Ok(Change::Hosting(HostingChange::Placed(
            function.to_string(),
            None,
        )))
    })
}

fn decode_hosting(key: &str, bytes: &[u8]) -> Result<Hosting, ControlError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ControlError::Unavailable(format!(
            "cluster registry entry `{key}` is unreadable: {e}; move the function again (`skiff move`)"
        ))
    })
}
