//! skiff.toml from anyone: parsing never panics, and a manifest that parses is one the
//! node can act on (its route, limits and outbound origins resolve or fail cleanly, and
//! its schedules give slots in order, before and after any time).
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_core::limits::NodeLimits;
use skiff_core::outbound::Origin;
use skiff_core::manifest::{FunctionName, Manifest};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = Manifest::parse(text, "fuzz") else {
        return;
    };
    assert!(FunctionName::new(m.name.as_str()).is_ok());
    let route = m.route().expect("a parsed manifest has a valid route");
    let _ = route.to_string();
    let _ = NodeLimits::default().resolve(&m.limits);
    for entry in &m.allowed_outbound_hosts {
        // An origin that parses matches a request to itself on its default port or none.
        if let Ok(o) = Origin::parse(entry) {
            let _ = o.allows("https", "example.com", 443);
        }
    }
    for t in &m.events {
        assert!(t.max_attempts >= 1);
    }
    let schedules = m.schedules().expect("a parsed manifest's schedules are valid");
    // A time from the input, within the years a schedule may reach.
    let t = data.iter().fold(1_767_225_600_000u64, |t, b| {
        t.wrapping_mul(31).wrapping_add(u64::from(*b)) % 4_102_444_800_000
    });
    for s in &schedules {
        let _ = s.check_interval(1, std::time::Duration::from_secs(1));
        if let Some(next) = s.next_after(t) {
            assert!(next > t, "next slot {next} not after {t}");
            assert!(s.slots_between(t, next, 10).is_empty());
        }
        if let Some(latest) = s.latest_at_or_before(t) {
            assert!(latest <= t, "latest slot {latest} after {t}");
        }
        let _ = skiff_core::schedule::admit(s, t, t + 5_000, Some(t.saturating_sub(60_000)));
        let _ = (s.nats_pattern(), s.nats_time_zone(), s.describe());
    }
});
