//! Property tests: no input makes extraction panic, and what it accepts is always valid.

use proptest::prelude::*;
use routing_core::extract::DEFAULT_HOST_SUFFIX;
use routing_core::{ActorRef, Extractor, RequestMeta};

fn extractor() -> Extractor {
    // The default tries all three forms: header, host, legacy host (atespace "default").
    Extractor::default()
}

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn arbitrary_input_never_panics(header in proptest::option::of(".{0,80}"), host in proptest::option::of(".{0,120}")) {
        let e = extractor();
        if let Ok(t) = e.extract(&RequestMeta { target_actor: header.as_deref(), authority: host.as_deref() }) {
            // Whatever is accepted re-parses as a valid reference.
            prop_assert!(ActorRef::parse(t.actor.as_str()).is_ok());
            prop_assert!(t.port > 0);
        }
    }

    #[test]
    fn hostlike_input_never_panics(host in "[a-zA-Z0-9._:\\[\\]-]{0,40}(\\.actors\\.resources\\.substrate\\.ate\\.dev)?\\.?(:[0-9]{0,6})?") {
        let _ = extractor().extract(&RequestMeta { target_actor: None, authority: Some(&host) });
    }

    #[test]
    fn valid_hosts_round_trip(name in label(), ns in label(), port in 1u16..) {
        let host = format!("{}.{}.{DEFAULT_HOST_SUFFIX}:{port}", name.to_uppercase(), ns);
        let t = extractor().extract(&RequestMeta { target_actor: None, authority: Some(&host) }).unwrap();
        prop_assert_eq!(t.actor.atespace(), ns.as_str());
        prop_assert_eq!(t.actor.name(), name.as_str());
        prop_assert_eq!(t.port, port);
    }

    #[test]
    fn valid_headers_round_trip(name in label(), ns in label()) {
        let v = format!("{ns}/{name}");
        let t = extractor().extract(&RequestMeta { target_actor: Some(&v), authority: None }).unwrap();
        prop_assert_eq!(t.actor.as_str(), v.as_str());
    }
}
