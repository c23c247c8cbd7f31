//! Function logs: what guests print, kept per function in a bounded in-memory store
//! (the newest [`LINES_PER_FUNCTION`] lines) and broadcast to followers
//! (`skiff logs NAME -f`). Every line names its function, version, invocation, node and
//! time.

use skiff_core::api::LogLine;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Lines kept per function.
pub const LINES_PER_FUNCTION: usize = 2000;

/// The node's log store.
pub struct LogStore {
    node: String,
    /// By function, in shards (a function's lines in one), so that functions printing
    /// at once rarely meet on a lock.
    recent: [Mutex<HashMap<String, VecDeque<LogLine>>>; SHARDS],
    live: broadcast::Sender<LogLine>,
}

const SHARDS: usize = 16;

impl LogStore {
    /// An empty store for `node`.
    pub fn new(node: &str) -> LogStore {
        let (live, _) = broadcast::channel(4096);
        LogStore {
            node: node.to_string(),
            recent: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            live,
        }
    }

    /// Records what an invocation printed.
    pub fn record(&self, function: &str, version: u64, invocation: &str, stream: &str, text: &str) {
        let ts_ms = skiff_core::record::now_ms();
        // Sending takes the channel's lock: only when someone follows.
        let followed = self.live.receiver_count() > 0;
        let mut recent = self.shard(function);
        if !recent.contains_key(function) {
            recent.insert(function.to_string(), VecDeque::new());
        }
        let Some(lines) = recent.get_mut(function) else {
            return;
        };
        for line in text.lines() {
            let entry = LogLine {
                ts_ms,
                function: function.to_string(),
                version,
                invocation: invocation.to_string(),
                node: self.node.clone(),
                stream: stream.to_string(),
                line: line.to_string(),
            };
            if lines.len() == LINES_PER_FUNCTION {
                lines.pop_front();
            }
            if followed {
                // A follower that went away meanwhile is fine.
                let _ = self.live.send(entry.clone());
            }
            lines.push_back(entry);
        }
    }

    /// The newest `n` lines of `function`, oldest first.
    pub fn tail(&self, function: &str, n: usize) -> Vec<LogLine> {
        self.shard(function)
            .get(function)
            .map(|l| l.iter().skip(l.len().saturating_sub(n)).cloned().collect())
            .unwrap_or_default()
    }

    fn shard(
        &self,
        function: &str,
    ) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<LogLine>>> {
        let i = function.bytes().fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        }) % SHARDS;
        match self.recent[i].lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Lines recorded from now on (every function; filter by name).
    pub fn follow(&self) -> broadcast::Receiver<LogLine> {
        self.live.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_lines_and_broadcasts() {
        let store = LogStore::new("n1");
        let mut rx = store.follow();
        for i in 0..(LINES_PER_FUNCTION + 10) {
            store.record("f", 1, "inv", "stdout", &format!("line {i}"));
        }
        let tail = store.tail("f", 3);
        assert_eq!(
            tail.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
            [
                format!("line {}", LINES_PER_FUNCTION + 7),
                format!("line {}", LINES_PER_FUNCTION + 8),
                format!("line {}", LINES_PER_FUNCTION + 9)
            ]
        );
        assert_eq!(store.tail("f", usize::MAX).len(), LINES_PER_FUNCTION);
        assert_eq!(rx.try_recv().unwrap().line, "line 0");
        assert_eq!(tail[0].node, "n1");
        assert!(store.tail("other", 10).is_empty());
    }
}
