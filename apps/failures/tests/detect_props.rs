//! Properties of the (sans-I/O) detection on random small fleets: findings are BH
//! discoveries with the floors respected, suggestions lie clearly below, the report is
//! the same whatever order the events came in or how they were split over nodes.

use pipewright_failures::{
    detect, Aggregates, DetectConfig, Event, EventKind, Exposure, EXPOSURE_SCALE,
};
use proptest::prelude::*;

const NOW: i64 = 1_796_000_000;

fn events() -> impl Strategy<Value = Vec<Event>> {
    // (app type, kernel, cpu, hours or failure, hour offset)
    proptest::collection::vec(
        (
            0usize..2,
            0usize..3,
            0usize..3,
            prop::option::of(1u32..50),
            0i64..48,
        ),
        1..300,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(app, k, c, hours, t)| Event {
                kind: match hours {
                    Some(h) => {
                        EventKind::Exposure(Exposure::Hours(u64::from(h) * EXPOSURE_SCALE as u64))
                    }
                    None => EventKind::Failure("crash".into()),
                },
                time: NOW - t * 3600,
                app: "a".into(),
                app_type: ["web", "db"][app].into(),
                resources: vec![
                    ("cpu".into(), format!("c{c}")),
                    ("kernel".into(), format!("k{k}")),
                ],
            })
            .collect()
    })
}

fn aggregate(evs: &[Event]) -> Aggregates {
    let mut a = Aggregates::default();
    for e in evs {
        a.add(e).unwrap();
    }
    a
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn findings_respect_the_floors_and_do_not_depend_on_order(evs in events(), split in 0usize..300) {
        let cfg = DetectConfig { min_exposure: Some(1.0), ..DetectConfig::default() };
        let report = detect(&aggregate(&evs), &cfg);
        prop_assert!(report.findings.len() <= report.discoveries);
        for f in &report.findings {
            prop_assert!(f.q_value <= cfg.q && f.p_value <= f.q_value + 1e-12);
            prop_assert!(f.rate_ratio >= cfg.min_ratio);
            prop_assert!(f.exposure >= 1.0);
            prop_assert!(f.rate_low <= f.rate && f.rate <= f.rate_high);
            if let Some(s) = &f.suggestion {
                prop_assert!(s.rate_high < f.rate_low);
                prop_assert!(s.exposure >= 1.0);
                prop_assert!(!s.changed.is_empty());
            }
        }
        // Reversed order, and split over two nodes then merged: the same report.
        let mut rev = evs.clone();
        rev.reverse();
        prop_assert_eq!(&detect(&aggregate(&rev), &cfg), &report);
        let at = split.min(evs.len());
        let mut merged = aggregate(&evs[..at]);
        merged.merge(&aggregate(&evs[at..]));
        prop_assert_eq!(&detect(&merged, &cfg), &report);
    }
}
