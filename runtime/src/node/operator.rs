//! What an operator may do to a function besides deploying it (the admin API's kv,
//! purge and publish endpoints): the node owns the checks, and they are the guest's.
//!
//! * Key-value writes apply the function's own limits (a removed function's state stays
//!   repairable under the defaults).
//! * A published event passes the same topic and size checks as one a guest publishes.

use super::Node;
use crate::events::{BusError, Event};
use crate::state::{KvLimits, Namespace, Op, OpResult, StateError};

/// Why an operator's publication was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The topic or size is wrong: the caller's to fix.
    #[error("{0}")]
    Refused(String),
    /// The bus did not take it.
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl Node {
    /// The key-value limits of `function` as deployed, or the defaults if it is not.
    pub fn kv_limits(&self, function: &str) -> KvLimits {
        self.snapshot()
            .get(function)
            .map(|d| d.spec.limits.kv)
            .unwrap_or_default()
    }

    /// Sets `key` in `ns` under its function's limits.
    pub async fn kv_set(
        &self,
        ns: Namespace,
        key: String,
        value: Vec<u8>,
    ) -> Result<OpResult, StateError> {
        let limits = self.kv_limits(&ns.function);
        self.state().write(Op::Set { ns, key, value }, limits).await
    }

    /// Deletes `key` in `ns`.
    pub async fn kv_delete(&self, ns: Namespace, key: String) -> Result<OpResult, StateError> {
        let limits = self.kv_limits(&ns.function);
        self.state().write(Op::Delete { ns, key }, limits).await
    }

    /// Deletes every key `function` holds; answers how many there were.
    pub async fn purge_state(&self, function: &str) -> Result<u64, StateError> {
        let op = Op::Purge {
            function: function.to_string(),
        };
        match self.state().write(op, KvLimits::default()).await? {
            OpResult::Purged(keys) => Ok(keys),
            other => Err(StateError::Log(format!(
                "purging `{function}` answered {other:?}; retry"
            ))),
        }
    }

    /// Publishes an event as an operator, for delivery at `at_ms` (0: at once); answers
    /// its id.
    pub async fn publish(
        &self,
        topic: &str,
        data: Vec<u8>,
        headers: Vec<(String, String)>,
        at_ms: u64,
    ) -> Result<String, PublishError> {
        crate::host::events::check_event(topic, &data, &headers).map_err(PublishError::Refused)?;
        let deliver_at_ms = match at_ms {
            0 => 0,
            at => self
                .limits()
                .timers
                .check_delivery(at, skiff_core::record::now_ms())
                .map_err(PublishError::Refused)?,
        };
        let id = crate::ids::random_id();
        let event = Event {
            id: id.clone(),
            topic: topic.to_string(),
            data,
            headers,
            published_at_ms: skiff_core::record::now_ms(),
            after: 0,
            after_of: String::new(),
            deliver_at_ms,
        };
        self.bus().publish(vec![event]).await?;
        Ok(id)
    }
}
