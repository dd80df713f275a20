//! Ingest: every bad-input reason is a typed, counted error and the rest of the batch
//! is kept; aggregates merge exactly; the parser survives arbitrary input.

use std::collections::BTreeMap;

use pipewright_failures::{
    generate, ingest_reader, parse_line, Aggregates, Event, EventKind, Exposure, FleetConfig,
    Limits, Reason, EXPOSURE_SCALE,
};
use proptest::prelude::*;

const NOW: i64 = 1_796_000_000; // 2026-11-29

fn line(extra: &str) -> String {
    format!(
        r#"{{"type":"exposure","time":"2026-11-29T10:00:00Z","app":"billing","app_type":"web","resources":{{"kernel":"6.1.12","cpu":"skylake"}}{extra}}}"#
    )
}

#[test]
fn every_bad_input_has_its_reason_and_the_rest_is_kept() {
    let limits = Limits {
        max_attributes: 3,
        max_values_per_attribute: 2,
        max_line_bytes: 600,
        ..Limits::default()
    };
    let huge = format!(
        r#"{{"type":"failure","time":"2026-11-29T10:00:00Z","app":"{}","app_type":"web","kind":"crash","resources":{{}}}}"#,
        "a".repeat(1000)
    );
    let cases: Vec<(String, Option<Reason>)> = vec![
        (line(r#","hours":2.5"#), None),
        (r#"{"type":"failure","time":"2026-11-29T10:00:00Z","app":"b","app_type":"web","kind":"hang","resources":{"kernel":"6.1.12"}}"#.into(), None),
        (line(r#","launches":3"#), None),
        ("{not json".into(), Some(Reason::MalformedJson)),
        ("[1,2,3]".into(), Some(Reason::MalformedJson)),
        (line(r#","hours":NaN"#), Some(Reason::MalformedJson)),
        (line(r#","hours":"2""#), Some(Reason::WrongType)),
        (r#"{"type":"exposure","time":"2026-11-29T10:00:00Z","app":"b","app_type":7,"resources":{},"hours":1}"#.into(), Some(Reason::WrongType)),
        (r#"{"type":"exposure","time":"2026-11-29T10:00:00Z","app":"b","app_type":"web","resources":{"kernel":5},"hours":1}"#.into(), Some(Reason::WrongType)),
        (r#"{"type":"exposure","time":"2026-11-29T10:00:00Z","app":"b","resources":{},"hours":1}"#.into(), Some(Reason::MissingField)),
        (r#"{"type":"failure","time":"2026-11-29T10:00:00Z","app":"b","app_type":"web","resources":{}}"#.into(), Some(Reason::MissingField)),
        (line(""), Some(Reason::MissingField)),
        (line(r#","hours":-1"#), Some(Reason::BadExposure)),
        (line(r#","hours":1,"launches":2"#), Some(Reason::BadExposure)),
        (line(r#","launches":2.5"#), Some(Reason::BadExposure)),
        (line(r#","hours":1e300"#), Some(Reason::BadExposure)),
        (huge, Some(Reason::LineTooLong)),
        (r#"{"type":"crash","time":"2026-11-29T10:00:00Z","app":"b","app_type":"web","resources":{}}"#.into(), Some(Reason::UnknownType)),
        (r#"{"type":"exposure","time":"yesterday","app":"b","app_type":"web","resources":{},"hours":1}"#.into(), Some(Reason::BadTime)),
        (r#"{"type":"exposure","time":"2027-06-01T00:00:00Z","app":"b","app_type":"web","resources":{},"hours":1}"#.into(), Some(Reason::ClockSkew)),
        (r#"{"type":"exposure","time":"2020-01-01T00:00:00Z","app":"b","app_type":"web","resources":{},"hours":1}"#.into(), Some(Reason::ClockSkew)),
        (r#"{"type":"exposure","time":"2026-11-29T10:00:00Z","app":"b","app_type":"web","resources":{"a":"1","b":"2","c":"3","d":"4"},"hours":1}"#.into(), Some(Reason::TooManyAttributes)),
        (format!(r#"{{"type":"exposure","time":"2026-11-29T10:00:00Z","app":"b","app_type":"web","resources":{{"a":"{}"}},"hours":1}}"#, "v".repeat(300)), Some(Reason::ValueTooLong)),
        // Distinct values of `kernel`: 6.1.12 and 5.10 fit, the third explodes.
        (r#"{"type":"exposure","time":"2026-11-29T10:00:00Z","app":"b","app_type":"web","resources":{"kernel":"5.10"},"hours":1}"#.into(), None),
        (r#"{"type":"exposure","time":"2026-11-29T10:00:00Z","app":"b","app_type":"web","resources":{"kernel":"req-81723"},"hours":1}"#.into(), Some(Reason::AttributeExplosion)),
    ];
    let input: String = cases.iter().map(|(l, _)| format!("{l}\n")).collect();
    let aggs = ingest_reader(input.as_bytes(), Aggregates::new(limits, 3600), NOW).unwrap();
    let mut want: BTreeMap<Reason, u64> = BTreeMap::new();
    for (_, r) in &cases {
        if let Some(r) = r {
            *want.entry(*r).or_default() += 1;
        }
    }
    assert_eq!(aggs.bad_lines(), want);
    let good = cases.iter().filter(|(_, r)| r.is_none()).count() as u64;
    assert_eq!(aggs.accepted(), good);
    // Every reason is exercised.
    assert_eq!(want.len(), Reason::ALL.len(), "{want:?}");
    let c = aggs.canonical();
    let web = &c.apps["web"];
    assert_eq!(web.total.failures, 1);
    assert_eq!(web.total.hours, (3.5 * EXPOSURE_SCALE) as u64);
    assert_eq!(web.total.launches, 3 * EXPOSURE_SCALE as u64);
    assert_eq!(web.kinds.get("hang"), Some(&1));
}

#[test]
fn two_nodes_merged_equal_one_node_fed_everything() {
    let mut bytes = Vec::new();
    generate(&FleetConfig::new(3, 20_000, NOW), &mut bytes).unwrap();
    // Garbage lines on both sides: their counts merge too.
    let text = String::from_utf8(bytes).unwrap();
    let mut a = String::new();
    let mut b = String::new();
    for (i, l) in text.lines().enumerate() {
        let side = if (i * 7919) % 3 == 0 { &mut a } else { &mut b };
        side.push_str(l);
        side.push('\n');
        if i % 1000 == 0 {
            side.push_str("{garbage\n");
        }
    }
    let all = ingest_reader(
        format!("{text}{{garbage\n").as_bytes(),
        Aggregates::default(),
        NOW,
    );
    let mut all = all.unwrap();
    // The same garbage count on the single node.
    for _ in 1..(text.lines().count().div_ceil(1000)) {
        all.count_bad(Reason::MalformedJson);
    }
    let na = ingest_reader(a.as_bytes(), Aggregates::default(), NOW).unwrap();
    let nb = ingest_reader(b.as_bytes(), Aggregates::default(), NOW).unwrap();
    let mut merged = nb.clone();
    merged.merge(&na);
    assert_eq!(merged.canonical(), all.canonical());
    let mut other_order = na.clone();
    other_order.merge(&nb);
    assert_eq!(other_order.canonical(), all.canonical());
    // A checkpoint round trip keeps it all.
    let back = Aggregates::from_canonical(&all.canonical(), Limits::default());
    assert_eq!(back.canonical(), all.canonical());
    assert!(all.accepted() > 19_000);
}

fn arb_event() -> impl Strategy<Value = Event> {
    let name = "[a-z_]{1,12}";
    let value = "[ -~]{0,20}";
    (
        prop_oneof![
            "[a-z]{1,8}".prop_map(EventKind::Failure),
            (0u64..1_000_000u64).prop_map(|h| EventKind::Exposure(Exposure::Hours(h * 1000))),
            (0u64..1_000_000u64)
                .prop_map(|l| EventKind::Exposure(Exposure::Launches(l * 1_000_000))),
        ],
        NOW - 100_000..NOW + 100,
        "[ -~]{1,20}",
        "[a-z]{1,8}",
        proptest::collection::btree_map(name, value, 0..8),
    )
        .prop_map(|(kind, time, app, app_type, res)| Event {
            kind,
            time,
            app,
            app_type,
            resources: res.into_iter().collect(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_line(&bytes, &Limits::default(), NOW);
    }

    #[test]
    fn valid_events_round_trip(e in arb_event()) {
        let line = e.to_json_line();
        prop_assert_eq!(parse_line(line.as_bytes(), &Limits::default(), NOW), Ok(e.clone()));
        // Pretty-printed (whitespace, key order) parses to the same event.
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let pretty = serde_json::to_string_pretty(&v).unwrap().replace('\n', " ");
        prop_assert_eq!(parse_line(pretty.as_bytes(), &Limits::default(), NOW), Ok(e));
    }

    #[test]
    fn mutated_lines_are_refused_or_valid(e in arb_event(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut line = e.to_json_line().into_bytes();
        let i = at.index(line.len());
        line[i] = byte;
        let limits = Limits::default();
        if let Ok(ev) = parse_line(&line, &limits, NOW) {
            prop_assert!(ev.resources.len() <= limits.max_attributes);
            prop_assert!(!ev.app.is_empty() && !ev.app_type.is_empty());
            prop_assert!(ev.resources.windows(2).all(|w| w[0].0 < w[1].0));
            prop_assert!(ev.time - NOW <= limits.max_future_secs);
        }
    }
}
