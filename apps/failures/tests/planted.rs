//! Planted-pattern fleets: the report finds the planted patterns at their smallest
//! combination (a pair as the pair, the confounded kernel as the instance type it
//! rides on), nothing else beyond the FDR, never a low-exposure decoy, and nothing
//! in a fleet without patterns.

use std::collections::BTreeSet;

use pipewright_failures::{
    detect, generate, ingest_reader, Aggregates, DetectConfig, FleetConfig, Report,
};

const NOW: i64 = 1_796_000_000;

fn run(cfg: &FleetConfig) -> (Report, BTreeSet<(String, String)>) {
    let mut bytes = Vec::new();
    let summary = generate(cfg, &mut bytes).unwrap();
    let aggs = ingest_reader(&bytes[..], Aggregates::default(), NOW).unwrap();
    assert_eq!(aggs.accepted(), summary.events);
    let truth = summary
        .planted
        .iter()
        .map(|p| (p.app_type.clone(), format!("{:?}", p.combination)))
        .collect();
    (detect(&aggs, &DetectConfig::default()), truth)
}

#[test]
fn planted_patterns_are_found_at_their_smallest_combination() {
    let mut false_discoveries = 0;
    let mut reported = 0;
    for seed in [1, 2, 3] {
        let (report, truth) = run(&FleetConfig::new(seed, 80_000, NOW));
        let found: BTreeSet<(String, String)> = report
            .findings
            .iter()
            .map(|f| (f.app_type.clone(), format!("{:?}", f.combination)))
            .collect();
        for t in &truth {
            assert!(
                found.contains(t),
                "seed {seed}: planted {t:?} not found in {found:?}"
            );
        }
        false_discoveries += found.difference(&truth).count();
        reported += found.len();
        for f in &report.findings {
            // The confounded kernel is explained by its instance type.
            assert!(
                !(f.app_type == "db"
                    && f.combination.get("kernel").map(String::as_str) == Some("5.15.0")),
                "seed {seed}: confounded kernel reported: {f:?}"
            );
            assert!(f.q_value <= 0.05 && f.rate_ratio >= 1.5);
            assert!(f.rate_low <= f.rate && f.rate <= f.rate_high);
            let min_e = report
                .app_types
                .iter()
                .find(|a| a.app_type == f.app_type)
                .unwrap()
                .min_exposure;
            // Decoys (tiny exposure, 0 % or huge raw rates) are never findings nor suggestions.
            assert!(f.exposure >= min_e);
            let s = f
                .suggestion
                .as_ref()
                .unwrap_or_else(|| panic!("seed {seed}: no suggestion for {f:?}"));
            assert!(
                s.exposure >= min_e,
                "suggested a low-exposure combination: {s:?}"
            );
            assert!(s.rate_high < f.rate_low);
            assert_eq!(
                s.changed.len(),
                1,
                "nearest combination changes one attribute: {s:?}"
            );
        }
        // The mid-stream pattern's series rises half-way.
        let xen = report
            .findings
            .iter()
            .find(|f| {
                f.app_type == "web"
                    && f.combination.get("hypervisor").map(String::as_str) == Some("xen")
            })
            .unwrap();
        let n = xen.series.len();
        let rate = |pts: &[pipewright_failures::SeriesPoint]| {
            let (x, e) = pts
                .iter()
                .fold((0u64, 0.0), |a, p| (a.0 + p.failures, a.1 + p.exposure));
            x as f64 / e
        };
        let (early, late) = (rate(&xen.series[..n / 3]), rate(&xen.series[2 * n / 3..]));
        assert!(
            late > 3.0 * early,
            "seed {seed}: xen early {early} late {late}"
        );
        // A resource abnormal in two application types is flagged.
        assert!(report.flagged.iter().any(|f| f.attribute == "kernel"
            && f.value == "6.1.12"
            && f.app_types == ["batch", "web"]));
    }
    eprintln!("{false_discoveries} false discoveries among {reported} findings over 3 fleets");
    assert!(
        false_discoveries as f64 <= 0.05 * reported as f64 + 1.0,
        "{false_discoveries} false of {reported}"
    );
}

#[test]
fn a_fleet_without_patterns_has_no_findings() {
    let mut total = 0;
    for seed in [4, 5, 6] {
        let mut cfg = FleetConfig::new(seed, 60_000, NOW);
        cfg.patterns.clear();
        let (report, _) = run(&cfg);
        assert!(report.tested > 100, "{} cells tested", report.tested);
        total += report.findings.len();
    }
    assert!(total <= 1, "{total} findings in fleets without patterns");
}

/// Attributes with hundreds of values (hosts, zones): a finding's heatmap shows the
/// most exposed values, at most 40 per axis, the finding's own among them, instead of a
/// matrix as large as the fleet.
#[test]
fn heatmaps_of_attributes_with_many_values_stay_small() {
    let mut lines = String::new();
    for h in 0..300 {
        for z in 0..3 {
            lines.push_str(&format!(
                r#"{{"type":"exposure","time":"2026-11-29T10:00:00Z","app":"a","app_type":"web","resources":{{"host":"h{h}","zone":"z{z}"}},"hours":{}}}"#,
                100
            ));
            lines.push('\n');
        }
        // A background rate, so that every host is exposed enough to be tested.
        for i in 0..10 {
            lines.push_str(&format!(
                r#"{{"type":"failure","time":"2026-11-29T10:00:00Z","app":"a","app_type":"web","kind":"crash","resources":{{"host":"h{h}","zone":"z{}"}}}}"#,
                i % 3
            ));
            lines.push('\n');
        }
    }
    // Host h250 fails far more than its exposure says.
    for i in 0..60 {
        lines.push_str(&format!(
            r#"{{"type":"failure","time":"2026-11-29T10:00:00Z","app":"a","app_type":"web","kind":"crash","resources":{{"host":"h250","zone":"z{}"}}}}"#,
            i % 3
        ));
        lines.push('\n');
    }
    let aggs = ingest_reader(lines.as_bytes(), Aggregates::default(), NOW).unwrap();
    let report = detect(&aggs, &DetectConfig::default());
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.combination.get("host").map(String::as_str) == Some("h250")),
        "{:?}",
        report.findings
    );
    assert!(!report.heatmaps.is_empty());
    for h in &report.heatmaps {
        assert!(
            h.rows.len() <= 40 && h.cols.len() <= 40,
            "{} x {}",
            h.rows.len(),
            h.cols.len()
        );
        assert_eq!(h.ratio.len(), h.rows.len());
        let axis = if h.row_attribute == "host" {
            &h.rows
        } else {
            &h.cols
        };
        assert!(
            axis.iter().any(|v| v == "h250"),
            "the finding's host is shown"
        );
    }
}
