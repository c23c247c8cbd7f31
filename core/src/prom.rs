//! Prometheus text shared by the node's and the scheduler's `/metrics`: the build-info
//! gauge, and the conversion from what prometheus-client writes (OpenMetrics) to the
//! Prometheus text format that promtool and older scrapers read.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `version`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: String,
}

/// Encodes `registry` in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    openmetrics_to_prometheus(&out)
}

/// Registers `skiff_build_info{version} 1`: a gauge fixed at 1 rather than an OpenMetrics
/// `info`, which Prometheus-format tools (promtool 2.x) do not parse.
pub fn build_info(registry: &mut Registry) {
    let build: Family<Build, Gauge> = Family::default();
    build
        .get_or_create(&Build {
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .set(1);
    registry.register("skiff_build_info", "Build information", build);
}

/// prometheus-client writes OpenMetrics; Prometheus' own text format (what promtool and
/// older scrapers read) names a counter family by its `_total` series and has no
/// `# UNIT` or `# EOF` lines. Samples are identical in both.
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_total_series() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total{x=\"1\"} 3\n# HELP d_seconds D.\n# TYPE d_seconds histogram\n# UNIT d_seconds seconds\nd_seconds_count 1\n# EOF\n";
        let p = openmetrics_to_prometheus(om);
        assert_eq!(
            p,
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total{x=\"1\"} 3\n# HELP d_seconds D.\n# TYPE d_seconds histogram\nd_seconds_count 1\n"
        );
    }
}
