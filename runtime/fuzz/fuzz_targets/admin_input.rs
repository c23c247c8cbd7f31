//! What the admin API takes from the network before it touches any state: deploy
//! payloads, function names, key-value paths and queries, topics, secret keys and
//! values, uploaded artifacts' headers. Nothing panics; whatever is accepted is valid.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use skiff_core::api::DeployRequest;
use skiff_core::record::check_component_header;
use skiff_core::topic::{check_pattern, check_topic, matches};
use skiff_core::manifest::{FunctionName, Manifest};
use skiff_core::record::is_sha256_hex;
use skiff_core::secrets::{SecretKey, check_key, check_value};
use skiff_core::state_keys::parse_target;
use skiff_core::state_keys::function_prefix;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    deploy_body: &'a [u8],
    name: &'a str,
    key_path: Option<&'a str>,
    query: &'a str,
    topic: &'a str,
    pattern: &'a str,
    secret_key: &'a str,
    secret_value: &'a [u8],
    artifact: &'a [u8],
}

fuzz_target!(|input: Input| {
    // PUT /v1/functions/{name}: the JSON body, then its manifest and artifact name.
    if let Ok(req) = serde_json::from_slice::<DeployRequest>(input.deploy_body) {
        let _ = Manifest::parse(&req.manifest, "fuzz");
        if is_sha256_hex(&req.artifact) {
            assert!(req.artifact.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }
    // /v1/functions/{name}/kv/{key}?bucket=...: what is accepted stays in the function.
    if let Ok(t) = parse_target(input.name, input.key_path, input.query) {
        assert!(FunctionName::new(input.name).is_ok());
        let key = t.key.clone().unwrap_or_default();
        assert!(t.ns.key(&key).starts_with(&function_prefix(input.name)));
    }
    // POST /v1/events/{topic}, and trigger patterns.
    let topic_ok = check_topic(input.topic).is_ok();
    if check_pattern(input.pattern).is_ok() && topic_ok {
        let _ = matches(input.pattern, input.topic);
    }
    if topic_ok {
        // A valid topic is a valid pattern that matches itself.
        assert!(check_pattern(input.topic).is_ok());
        assert!(matches(input.topic, input.topic), "{:?}", input.topic);
    }
    // PUT /v1/functions/{name}/secrets/{key}: a value that is accepted seals and opens.
    if check_key(input.secret_key).is_ok()
        && let Ok(value) = check_value(input.secret_value)
        && FunctionName::new(input.name).is_ok()
    {
        let k = SecretKey::from_bytes(&[42; 32]);
        let sealed = k
            .seal(input.name, input.secret_key, value.as_bytes())
            .unwrap();
        assert_eq!(
            k.open(input.name, input.secret_key, &sealed).unwrap(),
            value
        );
    }
    // PUT /v1/artifacts/{sha}: the header check never panics on short or odd input.
    let _ = check_component_header(input.artifact);
});
