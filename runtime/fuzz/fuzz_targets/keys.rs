//! Key encoding: no (function, bucket, key) of one function lands on another's redb key,
//! and replicated-state subjects round-trip and never panic on foreign input.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use skiff_core::manifest::FunctionName;
use skiff_core::state_keys::{MAX_BUCKET_BYTES, Namespace, function_prefix};
use skiff_core::state_keys::{StateShards, parse_subject};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    a: (&'a str, &'a str, &'a str),
    b: (&'a str, &'a str, &'a str),
    raw_subject: &'a str,
}

fn valid(t: &(&str, &str, &str)) -> bool {
    FunctionName::new(t.0).is_ok() && t.1.len() <= MAX_BUCKET_BYTES
}

fuzz_target!(|input: Input| {
    let _ = parse_subject(input.raw_subject);
    for t in [&input.a, &input.b] {
        if !valid(t) {
            continue;
        }
        let ns = Namespace::new(t.0, t.1);
        let k = ns.key(t.2);
        assert!(k.starts_with(&function_prefix(t.0)));
        assert!(k.starts_with(&ns.prefix()));
        assert_eq!(
            parse_subject(&StateShards::new(3).expect("3 shards").subject(&ns, t.2)),
            Some((ns.clone(), t.2.to_string()))
        );
    }
    if valid(&input.a) && valid(&input.b) {
        let ka = Namespace::new(input.a.0, input.a.1).key(input.a.2);
        let kb = Namespace::new(input.b.0, input.b.1).key(input.b.2);
        assert_eq!(
            ka == kb,
            input.a == input.b,
            "{:?} vs {:?}",
            input.a,
            input.b
        );
    }
});
