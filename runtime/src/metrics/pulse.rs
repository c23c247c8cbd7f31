//! The pulse: per-function invocation counts, errors and a latency histogram since the
//! last sample, for the console's live view (requests/s, errors/s, p50/p99 each second).
//! Prometheus's histograms count since start; the console needs the last second, so the
//! pulse keeps its own: atomics bumped on the invocation path, swapped to zero by the
//! sampler ([`Pulse::sample`]) once a second.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Latency buckets: bucket `i` holds durations in `[2^i, 2^(i+1))` µs; the last also
/// holds everything longer (2^31 µs is about 36 minutes).
const BUCKETS: usize = 32;

/// One function's counters since the last sample.
#[derive(Debug)]
pub struct FnPulse {
    requests: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Default for FnPulse {
    fn default() -> Self {
        FnPulse {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl FnPulse {
    /// Counts one finished invocation; `ok` unless it failed (any outcome but `ok`).
    pub fn record(&self, ok: bool, took: Duration) {
        self.requests.fetch_add(1, Relaxed);
        if !ok {
            self.errors.fetch_add(1, Relaxed);
        }
        let us = took.as_micros().max(1);
        let i = (127 - us.leading_zeros() as usize).min(BUCKETS - 1);
        self.buckets[i].fetch_add(1, Relaxed);
    }

    fn take(&self) -> Window {
        Window {
            requests: self.requests.swap(0, Relaxed),
            errors: self.errors.swap(0, Relaxed),
            buckets: std::array::from_fn(|i| self.buckets[i].swap(0, Relaxed)),
        }
    }
}

/// What happened in one sampling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Invocations that ended.
    pub requests: u64,
    /// Of those, the ones that did not end `ok`.
    pub errors: u64,
    buckets: [u64; BUCKETS],
}

impl Default for Window {
    fn default() -> Self {
        Window {
            requests: 0,
            errors: 0,
            buckets: [0; BUCKETS],
        }
    }
}

impl Window {
    /// Adds `other` into this window.
    pub fn merge(&mut self, other: &Window) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
    }

    /// The `q` quantile (0..1) in milliseconds: the geometric middle of the bucket it
    /// falls in (within a factor of √2); `None` with nothing recorded.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let low = (1u64 << i) as f64;
                return Some(low * std::f64::consts::SQRT_2 / 1000.0);
            }
        }
        None
    }

    /// The summary the console shows, over a window of `secs` seconds.
    pub fn rates(&self, secs: f64) -> Rates {
        let secs = secs.max(0.001);
        Rates {
            rps: self.requests as f64 / secs,
            errors: self.errors as f64 / secs,
            p50_ms: self.quantile_ms(0.5),
            p99_ms: self.quantile_ms(0.99),
        }
    }
}

/// Requests/s, errors/s and latency quantiles of one window.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Rates {
    /// Invocations per second.
    pub rps: f64,
    /// Failed invocations per second.
    pub errors: f64,
    /// Median latency, in ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, in ms.
    pub p99_ms: Option<f64>,
}

/// Every function's pulse on a node.
#[derive(Debug, Default)]
pub struct Pulse {
    functions: Mutex<BTreeMap<String, Arc<FnPulse>>>,
}

impl Pulse {
    /// The pulse of `function`, made on first use.
    pub fn of(&self, function: &str) -> Arc<FnPulse> {
        let mut map = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(function.to_string()).or_default().clone()
    }

    /// Takes every function's window (zeroing the counters), by function name.
    pub fn sample(&self) -> BTreeMap<String, Window> {
        let map = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(name, p)| (name.clone(), p.take()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_quantiles_of_a_window() {
        let pulse = Pulse::default();
        let f = pulse.of("f");
        for _ in 0..98 {
            f.record(true, Duration::from_micros(1_000)); // bucket [512, 1024) µs
        }
        f.record(false, Duration::from_millis(100));
        f.record(false, Duration::from_millis(100));
        let w = pulse.sample()["f"];
        assert_eq!((w.requests, w.errors), (100, 2));
        let p50 = w.quantile_ms(0.5).unwrap();
        assert!((0.5..1.5).contains(&p50), "{p50}");
        let p99 = w.quantile_ms(0.99).unwrap();
        assert!((60.0..150.0).contains(&p99), "{p99}");
        let r = w.rates(2.0);
        assert_eq!((r.rps, r.errors), (50.0, 1.0));
        // Sampling zeroes the window.
        assert_eq!(pulse.sample()["f"], Window::default());
        assert_eq!(Window::default().quantile_ms(0.5), None);
    }

    #[test]
    fn windows_merge() {
        let pulse = Pulse::default();
        pulse.of("a").record(true, Duration::from_millis(1));
        pulse.of("b").record(false, Duration::from_millis(1));
        let mut all = Window::default();
        for w in pulse.sample().values() {
            all.merge(w);
        }
        assert_eq!((all.requests, all.errors), (2, 1));
    }
}
