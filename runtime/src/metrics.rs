//! Prometheus metrics of a node, served at `/metrics` on the admin port in the text
//! format (prometheus-client). Names follow Prometheus conventions: `_total` counters,
//! `_seconds` histograms, one `skiff_` prefix.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

mod labels;
pub mod pulse;
mod schedules;

pub use labels::*;
pub use schedules::ScheduleMetrics;

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// Every metric of a node.
pub struct Metrics {
    registry: Registry,
    /// `skiff_invocations_total`.
    pub invocations: Family<Outcome, Counter>,
    /// `skiff_invocation_duration_seconds`.
    pub duration: HistogramFamily<FnTrigger>,
    /// `skiff_instantiation_duration_seconds`.
    pub instantiation: HistogramFamily<Function>,
    /// `skiff_in_flight_invocations`.
    pub in_flight: Family<Function, Gauge>,
    /// `skiff_limit_rejections_total`.
    pub rejections: Family<Rejection, Counter>,
    /// `skiff_instances_created_total`.
    pub instances_created: Family<Function, Counter>,
    /// `skiff_instances_reused_total`: requests served by an instance that had served
    /// one before.
    pub instances_reused: Family<Function, Counter>,
    /// `skiff_instances_retired_total`.
    pub instances_retired: Family<Retired, Counter>,
    /// `skiff_events_published_total`.
    pub published: Family<Function, Counter>,
    /// `skiff_events_acked_total`.
    pub acked: Family<Function, Counter>,
    /// `skiff_events_retried_total`.
    pub retried: Family<Function, Counter>,
    /// `skiff_events_dead_lettered_total`.
    pub dead_lettered: Family<Function, Counter>,
    /// `skiff_event_consumer_lag` (set at scrape time).
    pub lag: Family<Consumer, Gauge>,
    /// `skiff_node_capacity` (set at scrape time).
    pub node_capacity: Gauge,
    /// `skiff_node_in_flight` (set at scrape time).
    pub node_in_flight: Gauge,
    /// `skiff_code_cache_components` (set at scrape time).
    pub code_loaded: Gauge,
    /// `skiff_data_dir_bytes` (set at scrape time).
    pub data_dir_bytes: Gauge,
    /// `skiff_kv_operations_total`.
    pub kv_ops: Family<KvOp, Counter>,
    /// `skiff_outbound_requests_total`.
    pub outbound: Family<Outbound, Counter>,
    /// `skiff_kv_operation_duration_seconds`.
    pub kv_duration: HistogramFamily<KvOp>,
    /// `skiff_untrusted_records_total`: registry records refused because their signature
    /// is missing or does not verify with `--trust`.
    pub untrusted: Family<Function, Counter>,
    /// `skiff_functions_taken_total`: functions this node started hosting after start
    /// (assigned or moved to it).
    pub moves_in: Counter,
    /// `skiff_functions_released_total`: functions moved off this node.
    pub moves_out: Counter,
    /// Schedule fires, misses and lateness.
    pub schedules: ScheduleMetrics,
    /// Moving average of invocation durations (µs), for load reports.
    pub recent_latency_us: std::sync::atomic::AtomicU64,
    /// Invocations ended since start, for load reports.
    pub ended: std::sync::atomic::AtomicU64,
    /// The last second's invocations per function, for the console.
    pub pulse: pulse::Pulse,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set, registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            invocations: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            instantiation: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
            rejections: Family::default(),
            instances_created: Family::default(),
            instances_reused: Family::default(),
            instances_retired: Family::default(),
            published: Family::default(),
            acked: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            lag: Family::default(),
            node_capacity: Gauge::default(),
            node_in_flight: Gauge::default(),
            code_loaded: Gauge::default(),
            data_dir_bytes: Gauge::default(),
            kv_ops: Family::default(),
            outbound: Family::default(),
            kv_duration: Family::new_with_constructor(latency_histogram),
            untrusted: Family::default(),
            moves_in: Counter::default(),
            moves_out: Counter::default(),
            schedules: ScheduleMetrics::default(),
            recent_latency_us: std::sync::atomic::AtomicU64::new(0),
            ended: std::sync::atomic::AtomicU64::new(0),
            pulse: pulse::Pulse::default(),
            registry: Registry::default(),
        };
        m.register_invocations(&mut registry);
        m.register_events(&mut registry);
        m.register_node_and_host(&mut registry);
        m.schedules.register(&mut registry);
        skiff_core::prom::build_info(&mut registry);
        Metrics { registry, ..m }
    }

    /// Invocations: counts, durations, instantiation, in flight, rejections.
    fn register_invocations(&self, registry: &mut Registry) {
        registry.register(
            "skiff_invocations",
            "Invocations by function, trigger and outcome",
            self.invocations.clone(),
        );
        registry.register_with_unit(
            "skiff_invocation_duration",
            "Wall-clock time of an invocation",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register_with_unit(
            "skiff_instantiation_duration",
            "Time to instantiate a function's sandbox",
            Unit::Seconds,
            self.instantiation.clone(),
        );
        registry.register(
            "skiff_in_flight_invocations",
            "Invocations running now",
            self.in_flight.clone(),
        );
        registry.register(
            "skiff_limit_rejections",
            "Requests refused by a limit before running, by kind",
            self.rejections.clone(),
        );
        registry.register(
            "skiff_instances_created",
            "Sandboxes (store + instance) created, by function",
            self.instances_created.clone(),
        );
        registry.register(
            "skiff_instances_reused",
            "Requests served by an instance that had served one before",
            self.instances_reused.clone(),
        );
        registry.register(
            "skiff_instances_retired",
            "Reused instances dropped, by reason (reuse, idle, trap, timeout, memory, error)",
            self.instances_retired.clone(),
        );
    }

    /// Events: published, acked, retried, dead-lettered, consumer lag.
    fn register_events(&self, registry: &mut Registry) {
        registry.register(
            "skiff_events_published",
            "Events published by a function's successful invocations",
            self.published.clone(),
        );
        registry.register(
            "skiff_events_acked",
            "Event deliveries handled successfully",
            self.acked.clone(),
        );
        registry.register(
            "skiff_events_retried",
            "Event deliveries that failed and will be retried",
            self.retried.clone(),
        );
        registry.register(
            "skiff_events_dead_lettered",
            "Events that ran out of attempts",
            self.dead_lettered.clone(),
        );
        registry.register(
            "skiff_event_consumer_lag",
            "Events waiting for a consumer (not yet settled)",
            self.lag.clone(),
        );
    }

    /// The node (capacity, in flight, loaded code) and host calls (kv, outbound HTTP).
    fn register_node_and_host(&self, registry: &mut Registry) {
        registry.register(
            "skiff_node_capacity",
            "Invocations this node runs at once at most",
            self.node_capacity.clone(),
        );
        registry.register(
            "skiff_node_in_flight",
            "Invocations running on this node now",
            self.node_in_flight.clone(),
        );
        registry.register(
            "skiff_code_cache_components",
            "Components loaded and linked in memory now (the rest load when called)",
            self.code_loaded.clone(),
        );
        registry.register(
            "skiff_data_dir_bytes",
            "Bytes of the files under the node's data dir (state, artifacts, compiled code, logs of the stores)",
            self.data_dir_bytes.clone(),
        );
        registry.register(
            "skiff_kv_operations",
            "Key-value operations by function and op",
            self.kv_ops.clone(),
        );
        registry.register_with_unit(
            "skiff_kv_operation_duration",
            "Time of a key-value operation as the guest sees it",
            Unit::Seconds,
            self.kv_duration.clone(),
        );
        registry.register(
            "skiff_outbound_requests",
            "Outgoing HTTP requests by function and outcome (sent, denied, failed)",
            self.outbound.clone(),
        );
        registry.register(
            "skiff_untrusted_records",
            "Cluster registry records refused: unsigned, or signed with a key other than --trust",
            self.untrusted.clone(),
        );
        registry.register(
            "skiff_functions_taken",
            "Functions this node started hosting from the cluster's assignment",
            self.moves_in.clone(),
        );
        registry.register(
            "skiff_functions_released",
            "Functions the cluster's assignment moved off this node",
            self.moves_out.clone(),
        );
    }

    /// Creates a newly deployed function's series at zero, so that `rate()` and
    /// dashboards see them before the first invocation, rejection or event.
    pub fn prepare(&self, function: &str, http: bool, events: bool) {
        let f = Function {
            function: function.into(),
        };
        // Creating a series is all that is wanted; the guards drop at once.
        let _ = self.in_flight.get_or_create(&f);
        let _ = self.instantiation.get_or_create(&f);
        let _ = self.published.get_or_create(&f);
        let _ = self.instances_created.get_or_create(&f);
        let _ = self.instances_reused.get_or_create(&f);
        if events {
            for family in [&self.acked, &self.retried, &self.dead_lettered] {
                let _ = family.get_or_create(&f);
            }
        }
        for (on, trigger) in [(http, HTTP), (events, EVENT)] {
            if !on {
                continue;
            }
            let _ = self.invocations.get_or_create(&Outcome {
                function: function.into(),
                trigger: trigger.into(),
                outcome: "ok".into(),
            });
            let _ = self.duration.get_or_create(&FnTrigger {
                function: function.into(),
                trigger: trigger.into(),
            });
        }
        if http {
            for kind in ["body", "concurrency", "capacity"] {
                let _ = self.rejections.get_or_create(&Rejection {
                    function: function.into(),
                    kind: kind.into(),
                });
            }
        }
        for op in ["get", "set"] {
            let labels = KvOp {
                function: function.into(),
                op: op.into(),
            };
            let _ = self.kv_ops.get_or_create(&labels);
            let _ = self.kv_duration.get_or_create(&labels);
        }
    }

    /// Counts one finished invocation.
    pub fn invocation(&self, function: &str, trigger: &str, outcome: &str, took: Duration) {
        self.invocations
            .get_or_create(&Outcome {
                function: function.into(),
                trigger: trigger.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.duration
            .get_or_create(&FnTrigger {
                function: function.into(),
                trigger: trigger.into(),
            })
            .observe(took.as_secs_f64());
        self.pulse.of(function).record(outcome == "ok", took);
        self.ended_one(took);
    }

    /// Feeds the load report: invocations ended, and their recent latency.
    fn ended_one(&self, took: Duration) {
        // An exponential moving average over roughly the last eight invocations; the
        // read-modify-write may lose an update under contention, which only blurs it.
        use std::sync::atomic::Ordering::Relaxed;
        self.ended.fetch_add(1, Relaxed);
        let old = self.recent_latency_us.load(Relaxed);
        let now = took.as_micros().min(u128::from(u64::MAX / 8)) as u64;
        self.recent_latency_us
            .store(if old == 0 { now } else { (old * 7 + now) / 8 }, Relaxed);
    }

    /// Counts a reused instance dropped for `reason`.
    pub fn retired(&self, function: &str, reason: &str) {
        self.instances_retired
            .get_or_create(&Retired {
                function: function.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a request refused by a limit.
    pub fn rejected(&self, function: &str, kind: &str) {
        self.rejections
            .get_or_create(&Rejection {
                function: function.into(),
                kind: kind.into(),
            })
            .inc();
    }

    /// Counts one key-value operation.
    pub fn kv(&self, function: &str, op: &str, took: Duration) {
        let labels = KvOp {
            function: function.into(),
            op: op.into(),
        };
        self.kv_ops.get_or_create(&labels).inc();
        self.kv_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Counts one outgoing request: `sent`, `denied` or `failed`.
    pub fn outbound(&self, function: &str, outcome: &str) {
        self.outbound
            .get_or_create(&Outbound {
                function: function.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// A per-function counter, by family.
    pub fn count(family: &Family<Function, Counter>, function: &str, n: u64) {
        family
            .get_or_create(&Function {
                function: function.into(),
            })
            .inc_by(n);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn encode(&self) -> String {
        skiff_core::prom::encode(&self.registry)
    }
}

/// Outcomes an invocation can end in (the `outcome` label).
const OUTCOMES: [&str; 5] = ["ok", "error", "trap", "timeout", "memory"];

/// One trigger's invocation handles.
#[derive(Clone)]
struct TriggerHandles {
    duration: Histogram,
    outcomes: [Counter; 5],
}

/// One deployed function's metric handles, made once at deploy: an invocation counts
/// through them without building a label or taking a family's lock.
#[derive(Clone)]
pub struct FnMetrics {
    node: std::sync::Arc<Metrics>,
    function: std::sync::Arc<str>,
    pulse: std::sync::Arc<pulse::FnPulse>,
    /// `skiff_in_flight_invocations`.
    pub in_flight: Gauge,
    /// `skiff_instantiation_duration_seconds`.
    pub instantiation: Histogram,
    /// `skiff_instances_created_total`.
    pub created: Counter,
    /// `skiff_instances_reused_total`.
    pub reused: Counter,
    /// `skiff_events_published_total`.
    pub published: Counter,
    http: TriggerHandles,
    event: TriggerHandles,
}

impl FnMetrics {
    /// The handles of `function` in `node`'s metrics (its series created at zero).
    pub fn new(
        node: &std::sync::Arc<Metrics>,
        function: &str,
        http: bool,
        events: bool,
    ) -> FnMetrics {
        node.prepare(function, http, events);
        let f = Function {
            function: function.into(),
        };
        let trigger = |trigger: &str| TriggerHandles {
            duration: node
                .duration
                .get_or_create(&FnTrigger {
                    function: function.into(),
                    trigger: trigger.into(),
                })
                .clone(),
            outcomes: OUTCOMES.map(|outcome| {
                node.invocations
                    .get_or_create(&Outcome {
                        function: function.into(),
                        trigger: trigger.into(),
                        outcome: outcome.into(),
                    })
                    .clone()
            }),
        };
        FnMetrics {
            in_flight: node.in_flight.get_or_create(&f).clone(),
            instantiation: node.instantiation.get_or_create(&f).clone(),
            created: node.instances_created.get_or_create(&f).clone(),
            reused: node.instances_reused.get_or_create(&f).clone(),
            published: node.published.get_or_create(&f).clone(),
            http: trigger(HTTP),
            event: trigger(EVENT),
            pulse: node.pulse.of(function),
            node: node.clone(),
            function: function.into(),
        }
    }

    /// Counts one finished invocation by `trigger` that ended in `outcome`.
    pub fn invocation(&self, trigger: &str, outcome: &str, took: Duration) {
        let handles = if trigger == EVENT {
            &self.event
        } else {
            &self.http
        };
        match OUTCOMES.iter().position(|o| *o == outcome) {
            Some(i) => {
                handles.outcomes[i].inc();
            }
            None => {
                // An outcome outside the usual five: counted through the family.
                self.node
                    .invocations
                    .get_or_create(&Outcome {
                        function: self.function.to_string(),
                        trigger: trigger.into(),
                        outcome: outcome.into(),
                    })
                    .inc();
            }
        };
        handles.duration.observe(took.as_secs_f64());
        self.pulse.record(outcome == "ok", took);
        self.node.ended_one(took);
    }

    /// The node's metrics.
    pub fn node(&self) -> &Metrics {
        &self.node
    }
}

/// Keeps the in-flight gauge of a function up while alive.
pub struct InFlight(Gauge);

impl InFlight {
    /// Counts one more invocation in flight, through a deployment's handles.
    pub fn of(m: &FnMetrics) -> InFlight {
        m.in_flight.inc();
        InFlight(m.in_flight.clone())
    }

    /// Counts one more invocation of `function` in flight.
    pub fn start(m: &Metrics, function: &str) -> InFlight {
        let g = m
            .in_flight
            .get_or_create(&Function {
                function: function.into(),
            })
            .clone();
        g.inc();
        InFlight(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_names_follow_conventions() {
        let m = Metrics::new();
        for _ in 0..3 {
            m.invocation("hello", HTTP, "ok", Duration::from_millis(2));
        }
        m.rejected("hello", "body");
        let text = m.encode();
        assert!(
            text.contains(
                "skiff_invocations_total{function=\"hello\",trigger=\"http\",outcome=\"ok\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains("skiff_invocation_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("skiff_limit_rejections_total{function=\"hello\",kind=\"body\"} 1"));
        assert!(text.contains("skiff_build_info{version="), "{text}");
        {
            let _a = InFlight::start(&m, "hello");
            assert!(
                m.encode()
                    .contains("skiff_in_flight_invocations{function=\"hello\"} 1")
            );
        }
        assert!(
            m.encode()
                .contains("skiff_in_flight_invocations{function=\"hello\"} 0")
        );
    }
}
