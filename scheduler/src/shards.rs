//! Spreading the state shards' stream leaders over the NATS servers. JetStream elects
//! each stream's leader on its own, and nothing keeps it from electing one server for
//! every shard — which would put every write through one server again. Every 5 s the
//! scheduler reads the shards' leaders and, when one server leads at least two more than
//! another that holds a current replica, asks JetStream to step that stream's leader down
//! in favour of the emptier server (`$JS.API.STREAM.LEADER.STEPDOWN` with a preferred
//! placement). The election stays JetStream's; a write caught in it is retried like in
//! any election.

use crate::shared::Scheduler;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How often the leaders are checked.
const EVERY: Duration = Duration::from_secs(5);

/// One shard's stream as the spreading sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLeader {
    /// The stream.
    pub stream: String,
    /// The server leading it (`None`: electing).
    pub leader: Option<String>,
    /// Servers holding a current replica (the leader excluded).
    pub current: Vec<String>,
}

/// The stream to step down and the server to prefer, if the leaders are uneven: a server
/// leading at least two more streams than another server that could take one.
pub fn rebalance(shards: &[ShardLeader]) -> Option<(String, String)> {
    let mut led: BTreeMap<&str, usize> = BTreeMap::new();
    for s in shards {
        if let Some(l) = &s.leader {
            *led.entry(l).or_default() += 1;
        }
        for r in &s.current {
            led.entry(r).or_default();
        }
    }
    let (busiest, most) = led
        .iter()
        .max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n)))?;
    for s in shards
        .iter()
        .filter(|s| s.leader.as_deref() == Some(*busiest))
    {
        let emptiest = s
            .current
            .iter()
            .map(|r| (led.get(r.as_str()).copied().unwrap_or(0), r))
            .min();
        if let Some((fewest, to)) = emptiest
            && fewest + 2 <= *most
        {
            return Some((s.stream.clone(), to.clone()));
        }
    }
    None
}

/// Each state shard's stream, its leader and its current replicas, as JetStream says
/// now (a stream it cannot read is left out).
pub(crate) async fn read(
    js: &async_nats::jetstream::Context,
    shards: skiff_core::state_keys::StateShards,
) -> Vec<ShardLeader> {
    let mut seen = Vec::new();
    for k in 0..shards.count() {
        let stream = skiff_core::state_keys::stream_name(k);
        let Ok(mut handle) = js.get_stream(&stream).await else {
            continue;
        };
        let Ok(info) = handle.info().await else {
            continue;
        };
        let Some(cluster) = info.cluster.clone() else {
            continue;
        };
        seen.push(ShardLeader {
            stream,
            leader: cluster.leader,
            current: cluster
                .replicas
                .iter()
                .filter(|r| r.current && !r.offline)
                .map(|r| r.name.clone())
                .collect(),
        });
    }
    seen
}

/// Checks and spreads the leaders for as long as the scheduler runs.
pub(crate) async fn run(s: Arc<Scheduler>) {
    loop {
        tokio::time::sleep(EVERY).await;
        let (Some(client), Some(shards)) = (s.nats.get(), s.shards.get()) else {
            continue;
        };
        let js = async_nats::jetstream::new(client.clone());
        let seen = read(&js, *shards).await;
        let Some((stream, to)) = rebalance(&seen) else {
            continue;
        };
        let ask = serde_json::json!({ "placement": { "preferred": to } });
        let answer: Result<serde_json::Value, _> = js
            .request(format!("STREAM.LEADER.STEPDOWN.{stream}"), &ask)
            .await;
        match answer {
            Ok(v) if v["success"] == true => {
                tracing::info!(
                    stream,
                    to,
                    "asked JetStream to move a state shard's leader, to spread writes over the NATS servers"
                )
            }
            Ok(v) => {
                tracing::warn!(stream, to, answer = %v, "JetStream did not move a state shard's leader")
            }
            Err(e) => {
                tracing::warn!(stream, to, error = %e, "cannot ask JetStream to move a state shard's leader")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(stream: &str, leader: &str, current: &[&str]) -> ShardLeader {
        ShardLeader {
            stream: stream.into(),
            leader: Some(leader.into()),
            current: current.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn one_server_leading_everything_hands_a_stream_to_an_idle_replica() {
        let all_on_a = [
            shard("S0", "a", &["b", "c"]),
            shard("S1", "a", &["b", "c"]),
            shard("S2", "a", &["b", "c"]),
        ];
        assert_eq!(rebalance(&all_on_a), Some(("S0".into(), "b".into())));
        // Spread: nothing to do.
        let spread = [
            shard("S0", "a", &["b", "c"]),
            shard("S1", "b", &["a", "c"]),
            shard("S2", "c", &["a", "b"]),
        ];
        assert_eq!(rebalance(&spread), None);
        // Two on one, one on another, none on the third: the third takes one.
        let uneven = [
            shard("S0", "a", &["b", "c"]),
            shard("S1", "a", &["b", "c"]),
            shard("S2", "b", &["a", "c"]),
        ];
        assert_eq!(rebalance(&uneven), Some(("S0".into(), "c".into())));
        // Within one of each other: left alone.
        let nearly = [
            shard("S0", "a", &["b"]),
            shard("S1", "a", &["b"]),
            shard("S2", "b", &["a"]),
        ];
        assert_eq!(rebalance(&nearly), None);
        // Only current replicas can take a leader: a server that is behind is not asked.
        let behind = [shard("S0", "a", &[]), shard("S1", "a", &["b"])];
        assert_eq!(rebalance(&behind), Some(("S1".into(), "b".into())));
        assert_eq!(rebalance(&[shard("S0", "a", &[])]), None);
        assert_eq!(rebalance(&[]), None);
    }
}
