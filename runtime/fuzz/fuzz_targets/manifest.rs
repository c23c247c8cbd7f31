//! skiff.toml from anyone: parsing never panics, and a manifest that parses is one the
//! node can act on (its route, limits and outbound origins resolve or fail cleanly).
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
});
