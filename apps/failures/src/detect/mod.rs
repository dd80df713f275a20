//! Detection: the sans-I/O decision of which cells are abnormal, at which
//! combination they are reported, and what to suggest instead.
//!
//! 1. **Test every cell** (attribute=value, pair, full combination of three or more)
//!    of every application type with enough exposure against the rest of its type:
//!    the exact conditional-binomial test of two Poisson rates ([`rate_test`]).
//! 2. **Benjamini–Hochberg** over every test of every type: q-values; a cell is a
//!    candidate when `q ≤ q_level` and its rate ratio is at least the floor.
//! 3. **Smallest explaining combination**: candidates are taken smallest first
//!    (singles, then pairs, then full combinations), most significant first; each is
//!    kept only if its failures still exceed, significantly (Bonferroni over the
//!    type's candidates) and by a ratio floor,
//!    what the findings kept so far predict: a Poisson log-linear model of the full
//!    combinations with a base rate and one multiplicative factor per kept finding,
//!    fitted by maximum likelihood (iterative proportional fitting). Then findings
//!    that the others explain are dropped,
//!    least significant first (a kernel that only runs on one instance type is
//!    explained by the instance type, a pair by its attribute), and the two passes
//!    repeat until nothing changes. Only removal follows the FDR step, so the
//!    findings are a subset of the BH discoveries.
//! 4. **Suggestions**: the nearest cell of the same attributes (fewest values
//!    changed) with enough exposure whose whole interval lies below the finding's.
//! 5. **Flags**: an attribute=value in findings of several application types.
//!
//! This file runs the steps; [`report`] holds the report types and settings, [`model`]
//! the log-linear model of step 3, [`suggest`] step 4 and [`heatmap`] the report's
//! heatmaps.

mod heatmap;
mod model;
mod report;
mod suggest;

use std::collections::{BTreeMap, BTreeSet};

use crate::aggregate::{Aggregates, Attr, Counts};
use crate::stats::{bh_adjust, rate_interval, rate_test};

use heatmap::heatmaps;
use model::{AppModel, Test};
use suggest::suggest;

pub use report::{
    AppTypeSummary, DetectConfig, Finding, Flag, Heatmap, Report, SeriesPoint, Suggestion, Unit,
};

/// Runs detection over `aggs`. Deterministic: the same aggregates give the same report.
pub fn detect(aggs: &Aggregates, cfg: &DetectConfig) -> Report {
    let unit = cfg.unit;
    let it = &aggs.interner;
    let mut tests: Vec<Test> = Vec::new();
    let mut summaries = Vec::new();
    let mut min_exposures = vec![f64::INFINITY; aggs.apps.len()];
    // Application types by name, so the report does not depend on arrival order.
    let mut by_name: Vec<usize> = (0..aggs.apps.len()).collect();
    by_name.sort_by(|a, b| it.app_type_names[*a].cmp(&it.app_type_names[*b]));
    for &app in &by_name {
        let agg = &aggs.apps[app];
        let x_all = agg.total.failures;
        let e_all = unit.of(&agg.total);
        let rate_all = if e_all > 0.0 {
            x_all as f64 / e_all
        } else {
            0.0
        };
        let min_e = cfg.min_exposure.unwrap_or(if rate_all > 0.0 {
            cfg.min_expected / rate_all
        } else {
            f64::INFINITY
        });
        let before = tests.len();
        let mut consider = |attrs: Vec<Attr>, c: &Counts| {
            let e = unit.of(c);
            if e < min_e || e <= 0.0 || e_all - e <= 0.0 {
                return;
            }
            let (xr, er) = (x_all - c.failures, e_all - e);
            let baseline = xr as f64 / er;
            let rate = c.failures as f64 / e;
            let ratio = if baseline > 0.0 {
                rate / baseline
            } else if rate > 0.0 {
                f64::INFINITY
            } else {
                1.0
            };
            tests.push(Test {
                app,
                p: rate_test(c.failures, e, xr, er),
                attrs,
                x: c.failures,
                e,
                ratio,
                baseline,
            });
        };
        for (a, c) in &agg.singles {
            consider(vec![*a], c);
        }
        for ((a, b), c) in &agg.pairs {
            consider(vec![*a, *b], c);
        }
        for (k, cell) in &agg.full {
            if k.len() >= 3 {
                consider(k.to_vec(), &cell.counts);
            }
        }
        min_exposures[app] = min_e;
        summaries.push(AppTypeSummary {
            app_type: it.app_type_names[app].to_string(),
            failures: x_all,
            exposure: e_all,
            rate: rate_all,
            tested: tests.len() - before,
            min_exposure: min_e,
            kinds: agg.kinds.clone(),
        });
    }
    // A fixed order (the hash maps' is not) so that ties resolve the same every time.
    let names = |attrs: &[Attr]| -> Vec<(&str, &str)> {
        attrs.iter().map(|a| (it.name(*a), it.value(*a))).collect()
    };
    let app_name = |app: usize| &*it.app_type_names[app];
    tests.sort_by(|a, b| {
        (app_name(a.app), a.attrs.len(), names(&a.attrs)).cmp(&(
            app_name(b.app),
            b.attrs.len(),
            names(&b.attrs),
        ))
    });
    let q = bh_adjust(&tests.iter().map(|t| t.p).collect::<Vec<_>>());
    let candidates: Vec<usize> = (0..tests.len())
        .filter(|&i| q[i] <= cfg.q && tests[i].ratio >= cfg.min_ratio)
        .collect();
    let discoveries = candidates.len();

    let mut findings = Vec::new();
    for &app in &by_name {
        let agg = &aggs.apps[app];
        let mut cands: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| tests[i].app == app)
            .collect();
        if cands.is_empty() {
            continue;
        }
        cands.sort_by(|&a, &b| {
            (tests[a].attrs.len(), tests[a].p)
                .partial_cmp(&(tests[b].attrs.len(), tests[b].p))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let model = AppModel::new(agg, unit, it);
        let members: BTreeMap<usize, Vec<usize>> = cands
            .iter()
            .map(|&i| (i, model.members(&tests[i].attrs)))
            .collect();
        let fit = |kept: &[usize]| {
            let ms: Vec<&[usize]> = kept.iter().map(|k| &members[k][..]).collect();
            model.fit(&ms)
        };
        // Each candidate is tested against the model: Bonferroni over them.
        let alpha = cfg.alpha_explain / cands.len() as f64;
        let mut kept: Vec<usize> = Vec::new();
        for _round in 0..4 {
            let mut changed = false;
            let mut rates = fit(&kept);
            for &c in &cands {
                if kept.contains(&c) {
                    continue;
                }
                if model.elevated(&members[&c], tests[c].x, &rates, alpha, cfg) {
                    kept.push(c);
                    rates = fit(&kept);
                    changed = true;
                }
            }
            loop {
                let mut order = kept.clone();
                order.sort_by(|&a, &b| {
                    tests[b]
                        .p
                        .partial_cmp(&tests[a].p)
                        .unwrap_or(std::cmp::Ordering::Equal)
                        .then(tests[b].attrs.len().cmp(&tests[a].attrs.len()))
                });
                let mut removed = None;
                for &f in &order {
                    let others: Vec<usize> = kept.iter().copied().filter(|&k| k != f).collect();
                    let rates = fit(&others);
                    if !model.elevated(&members[&f], tests[f].x, &rates, alpha, cfg) {
                        removed = Some(f);
                        break;
                    }
                }
                match removed {
                    Some(f) => {
                        kept.retain(|&k| k != f);
                        changed = true;
                    }
                    None => break,
                }
            }
            if !changed {
                break;
            }
        }
        let min_e = min_exposures[app];
        for &k in &kept {
            let t = &tests[k];
            let (lo, hi) = rate_interval(t.x, t.e, cfg.level);
            let mut series: BTreeMap<i64, Counts> = BTreeMap::new();
            for &g in &members[&k] {
                let key = model.full[g].0;
                if let Some(cell) = agg.full.get(key) {
                    for (b, c) in &cell.series {
                        series.entry(*b).or_default().add(c);
                    }
                }
            }
            findings.push(Finding {
                app_type: it.app_type_names[app].to_string(),
                combination: combination(aggs, &t.attrs),
                failures: t.x,
                exposure: t.e,
                rate: t.x as f64 / t.e,
                rate_low: lo,
                rate_high: hi,
                baseline_rate: t.baseline,
                rate_ratio: t.ratio,
                p_value: t.p,
                q_value: q[k],
                suggestion: suggest(aggs, agg, t, lo, min_e, cfg),
                series: series
                    .into_iter()
                    .map(|(t, c)| SeriesPoint {
                        t,
                        failures: c.failures,
                        exposure: unit.of(&c),
                    })
                    .collect(),
            });
        }
    }
    findings.sort_by(|a, b| {
        a.q_value
            .partial_cmp(&b.q_value)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(
                b.rate_ratio
                    .partial_cmp(&a.rate_ratio)
                    .unwrap_or(std::cmp::Ordering::Equal),
            )
            .then(a.app_type.cmp(&b.app_type))
            .then(a.combination.cmp(&b.combination))
    });
    let mut by_attr: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for f in &findings {
        for (k, v) in &f.combination {
            by_attr
                .entry((k.clone(), v.clone()))
                .or_default()
                .insert(f.app_type.clone());
        }
    }
    let flagged = by_attr
        .into_iter()
        .filter(|(_, apps)| apps.len() >= cfg.flag_min_app_types.max(1))
        .map(|((attribute, value), apps)| Flag {
            attribute,
            value,
            app_types: apps.into_iter().collect(),
        })
        .collect();
    let heatmaps = heatmaps(aggs, &findings, unit);
    Report {
        unit,
        q: cfg.q,
        min_ratio: cfg.min_ratio,
        accepted: aggs.accepted,
        bad_lines: aggs
            .bad_lines()
            .into_iter()
            .map(|(r, n)| (r.as_str().to_string(), n))
            .collect(),
        tested: tests.len(),
        discoveries,
        findings,
        flagged,
        app_types: summaries,
        heatmaps,
    }
}

pub(super) fn combination(aggs: &Aggregates, attrs: &[Attr]) -> BTreeMap<String, String> {
    attrs
        .iter()
        .map(|a| {
            (
                aggs.interner.name(*a).to_string(),
                aggs.interner.value(*a).to_string(),
            )
        })
        .collect()
}
