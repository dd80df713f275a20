//! The wire parsers: arbitrary bytes never panic and are refused or decoded; every
//! message round-trips; service-time specs parse or are refused with a message.

use std::time::Duration;

use pipewright_balance::{
    decode, encode, AgentRequest, AgentResponse, ClusterKey, ConsumerId, ConsumerReport,
    LeaseClaims, LeaseRequest, LeaseToken, ProducerFrame, ProducerId, Request, ServiceTime,
};
use proptest::prelude::*;

fn token() -> impl Strategy<Value = LeaseToken> {
    (
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(id, agent, c, p, exp)| {
            LeaseToken::sign(
                &ClusterKey::from_passphrase("k"),
                LeaseClaims {
                    id,
                    agent,
                    consumer: ConsumerId(c),
                    producer: ProducerId(p),
                    expires_ms: exp,
                },
            )
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<AgentRequest>(&bytes);
        let _ = decode::<AgentResponse>(&bytes);
        let _ = decode::<ProducerFrame>(&bytes);
        let _ = decode::<Request>(&bytes);
    }

    #[test]
    fn lease_requests_round_trip(
        consumer in any::<u64>(), want in any::<u16>(),
        renew in proptest::collection::vec(token(), 0..4),
        reports in proptest::collection::vec((token(), any::<u32>(), 0.0..1e9f64), 0..4),
        avoid in proptest::collection::vec(any::<u64>(), 0..4),
    ) {
        let req = AgentRequest::Lease(LeaseRequest {
            consumer: ConsumerId(consumer),
            want,
            renew: renew.clone(),
            release: renew,
            reports: reports
                .into_iter()
                .map(|(t, n, l)| (t, ConsumerReport { requests: n, mean_latency_us: l, errors: n / 2, timeouts: 1 }))
                .collect(),
            avoid: avoid.into_iter().map(ProducerId).collect(),
        });
        let bytes = encode(&req);
        prop_assert_eq!(decode::<AgentRequest>(&bytes).unwrap(), req);
        // Any truncation is refused, not misread.
        for cut in 0..bytes.len() {
            prop_assert!(decode::<AgentRequest>(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn tokens_do_not_survive_edits(t in token(), flip in any::<usize>()) {
        let key = ClusterKey::from_passphrase("k");
        prop_assert!(t.verify(&key));
        let mut bad = t;
        bad.tag[flip % bad.tag.len()] ^= 1;
        prop_assert!(!bad.verify(&key));
        let mut bad = t;
        bad.claims.expires_ms = bad.claims.expires_ms.wrapping_add(1);
        prop_assert!(!bad.verify(&key));
        prop_assert!(!t.verify(&ClusterKey::from_passphrase("other")));
    }

    #[test]
    fn service_time_specs_never_panic(s in ".{0,24}") {
        let _ = s.parse::<ServiceTime>();
    }
}

#[test]
fn service_time_specs() {
    assert_eq!(
        "fixed:5ms".parse::<ServiceTime>().unwrap(),
        ServiceTime::Fixed(Duration::from_millis(5))
    );
    assert_eq!(
        "uniform:1.5s".parse::<ServiceTime>().unwrap(),
        ServiceTime::Uniform(Duration::from_millis(1500))
    );
    assert_eq!(
        "exp:200us".parse::<ServiceTime>().unwrap(),
        ServiceTime::Exp(Duration::from_micros(200))
    );
    for bad in [
        "",
        "fixed",
        "fixed:",
        "fixed:-1ms",
        "gauss:1ms",
        "exp:1h",
        "exp:nanms",
    ] {
        let e = bad.parse::<ServiceTime>().unwrap_err();
        assert!(!e.is_empty(), "{bad}");
    }
}
