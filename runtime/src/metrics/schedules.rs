//! Schedule metrics: fires, missed slots, and lateness (slot → handler start).

use super::labels::Function;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

type Lateness = Family<Function, Histogram, fn() -> Histogram>;

fn lateness_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The schedule metrics of a node.
#[derive(Clone)]
pub struct ScheduleMetrics {
    /// `skiff_schedule_fires_total`: fires whose handler ran.
    pub fires: Family<Function, Counter>,
    /// `skiff_schedule_misses_total`: slots the catch-up policy dropped.
    pub misses: Family<Function, Counter>,
    /// `skiff_schedule_lateness_seconds`: from a slot to its handler's start (first
    /// attempts of fires straight from the timer).
    pub lateness: Lateness,
}

impl Default for ScheduleMetrics {
    fn default() -> Self {
        ScheduleMetrics {
            fires: Family::default(),
            misses: Family::default(),
            lateness: Family::new_with_constructor(lateness_histogram),
        }
    }
}

impl ScheduleMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "skiff_schedule_fires",
            "Schedule fires whose handler ran",
            self.fires.clone(),
        );
        registry.register(
            "skiff_schedule_misses",
            "Schedule slots dropped by the catch-up policy",
            self.misses.clone(),
        );
        registry.register_with_unit(
            "skiff_schedule_lateness",
            "From a schedule's slot to its handler's start",
            Unit::Seconds,
            self.lateness.clone(),
        );
    }

    /// Creates `function`'s series at zero, so dashboards see them before the first fire.
    pub fn prepare(&self, function: &str) {
        let f = Function {
            function: function.into(),
        };
        let _ = self.fires.get_or_create(&f);
        let _ = self.misses.get_or_create(&f);
        let _ = self.lateness.get_or_create(&f);
    }

    /// A fire of `function` started `seconds` after its slot.
    pub fn late(&self, function: &str, seconds: f64) {
        self.lateness
            .get_or_create(&Function {
                function: function.into(),
            })
            .observe(seconds);
    }
}
