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

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregates, AppAgg, Attr, Counts, Interner};
use crate::event::EXPOSURE_SCALE;
use crate::stats::{bh_adjust, poisson_excess, rate_interval, rate_test};

/// Which exposure unit a report uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Instance-hours.
    #[default]
    Hours,
    /// Launches.
    Launches,
}

impl Unit {
    /// `hours` or `launches`.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Hours => "hours",
            Unit::Launches => "launches",
        }
    }

    fn of(self, c: &Counts) -> f64 {
        let raw = match self {
            Unit::Hours => c.hours,
            Unit::Launches => c.launches,
        };
        raw as f64 / EXPOSURE_SCALE
    }
}

/// Detection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectConfig {
    /// The false discovery rate controlled by Benjamini–Hochberg.
    pub q: f64,
    /// The smallest rate ratio (cell vs rest) worth reporting.
    pub min_ratio: f64,
    /// The smallest exposure a cell needs to be tested; `None`: the exposure in which
    /// the type's overall rate predicts [`DetectConfig::min_expected`] failures.
    pub min_exposure: Option<f64>,
    /// See [`DetectConfig::min_exposure`].
    pub min_expected: f64,
    /// The exposure unit.
    pub unit: Unit,
    /// Confidence of the rate intervals.
    pub level: f64,
    /// Significance of the "not explained by the other findings" test (family-wise,
    /// over the candidates of an application type: Bonferroni).
    pub alpha_explain: f64,
    /// How far (observed over expected) a cell must exceed what the other findings
    /// explain to be reported on its own.
    pub explain_ratio: f64,
    /// A resource is flagged when abnormal in at least this many application types.
    pub flag_min_app_types: usize,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            q: 0.05,
            min_ratio: 1.5,
            min_exposure: None,
            min_expected: 5.0,
            unit: Unit::Hours,
            level: 0.95,
            alpha_explain: 0.05,
            explain_ratio: 1.25,
            flag_min_app_types: 2,
        }
    }
}

/// A better combination for a finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suggestion {
    /// The combination to run on instead.
    pub combination: BTreeMap<String, String>,
    /// Which attributes change.
    pub changed: Vec<String>,
    /// Its failures.
    pub failures: u64,
    /// Its exposure.
    pub exposure: f64,
    /// Its rate.
    pub rate: f64,
    /// Its rate interval, lower end.
    pub rate_low: f64,
    /// Its rate interval, upper end.
    pub rate_high: f64,
}

/// A point of a rate-over-time series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Bucket start, seconds since the epoch.
    pub t: i64,
    /// Failures in the bucket.
    pub failures: u64,
    /// Exposure in the bucket.
    pub exposure: f64,
}

/// An abnormally high failure pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The application type.
    pub app_type: String,
    /// The combination (one attribute, a pair, or a full combination).
    pub combination: BTreeMap<String, String>,
    /// Its failures.
    pub failures: u64,
    /// Its exposure, in the report's unit.
    pub exposure: f64,
    /// failures / exposure.
    pub rate: f64,
    /// Rate interval, lower end.
    pub rate_low: f64,
    /// Rate interval, upper end.
    pub rate_high: f64,
    /// The rate of the rest of the application type.
    pub baseline_rate: f64,
    /// rate / baseline_rate.
    pub rate_ratio: f64,
    /// The exact test's one-sided p-value.
    pub p_value: f64,
    /// Benjamini–Hochberg q-value over every test in the report.
    pub q_value: f64,
    /// A better combination, if one is measured well enough.
    pub suggestion: Option<Suggestion>,
    /// The finding's rate over time.
    pub series: Vec<SeriesPoint>,
}

/// A resource abnormal in several application types: fix it, rather than move away.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flag {
    /// Attribute name.
    pub attribute: String,
    /// Its value.
    pub value: String,
    /// The application types where it is (part of) a finding.
    pub app_types: Vec<String>,
}

/// One application type's totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppTypeSummary {
    /// The type.
    pub app_type: String,
    /// Its failures.
    pub failures: u64,
    /// Its exposure.
    pub exposure: f64,
    /// Its overall rate.
    pub rate: f64,
    /// Cells tested.
    pub tested: usize,
    /// The smallest exposure a tested cell had to have.
    pub min_exposure: f64,
    /// Failures by kind.
    pub kinds: BTreeMap<String, u64>,
}

/// Rate ratios of the cells of two attributes of one application type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heatmap {
    /// The type.
    pub app_type: String,
    /// Rows are values of this attribute.
    pub row_attribute: String,
    /// Columns are values of this one.
    pub col_attribute: String,
    /// Row values.
    pub rows: Vec<String>,
    /// Column values.
    pub cols: Vec<String>,
    /// Rate of each (row, column) cell over the type's rate; `None` without exposure.
    pub ratio: Vec<Vec<Option<f64>>>,
}

/// Everything a report shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The exposure unit of every rate.
    pub unit: Unit,
    /// The FDR level.
    pub q: f64,
    /// The rate-ratio floor.
    pub min_ratio: f64,
    /// Events accepted.
    pub accepted: u64,
    /// Refused lines by reason.
    pub bad_lines: BTreeMap<String, u64>,
    /// Cells tested, over every type.
    pub tested: usize,
    /// BH discoveries before the explanation step.
    pub discoveries: usize,
    /// The findings, most significant first.
    pub findings: Vec<Finding>,
    /// Resources abnormal in several types.
    pub flagged: Vec<Flag>,
    /// Per application type.
    pub app_types: Vec<AppTypeSummary>,
    /// Heat maps of attribute pairs (one per type with findings).
    pub heatmaps: Vec<Heatmap>,
}

struct Test {
    app: usize,
    attrs: Vec<Attr>,
    x: u64,
    e: f64,
    p: f64,
    ratio: f64,
    baseline: f64,
}

/// Whether sorted `sub` is a subset of sorted `sup`.
fn subset(sub: &[Attr], sup: &[Attr]) -> bool {
    let mut it = sup.iter();
    sub.iter().all(|a| it.by_ref().any(|b| b == a))
}

struct AppModel<'a> {
    full: Vec<(&'a [Attr], u64, f64)>,
    x: u64,
    e: f64,
}

impl<'a> AppModel<'a> {
    fn new(agg: &'a AppAgg, unit: Unit, it: &Interner) -> Self {
        let mut full: Vec<(&[Attr], u64, f64)> = agg
            .full
            .iter()
            .map(|(k, c)| (&k[..], c.counts.failures, unit.of(&c.counts)))
            .collect();
        // By names, not ids: sums run in the same order whatever the arrival order.
        let names = |k: &[Attr]| -> Vec<(&str, &str)> {
            let mut v: Vec<(&str, &str)> = k.iter().map(|a| (it.name(*a), it.value(*a))).collect();
            v.sort_unstable();
            v
        };
        full.sort_by_cached_key(|f| names(f.0));
        Self {
            full,
            x: agg.total.failures,
            e: unit.of(&agg.total),
        }
    }

    fn members(&self, attrs: &[Attr]) -> Vec<usize> {
        (0..self.full.len())
            .filter(|&i| subset(attrs, self.full[i].0))
            .collect()
    }

    /// The Poisson log-linear model with one factor per kept finding (and a base
    /// rate), fitted by maximum likelihood (iterative proportional fitting: each
    /// finding's observed failures equal its expected failures, and so do the type's):
    /// the expected rate of every full combination.
    fn fit(&self, kept: &[&[usize]]) -> Vec<f64> {
        let base = if self.e > 0.0 {
            self.x as f64 / self.e
        } else {
            0.0
        };
        let mut rates = vec![base; self.full.len()];
        if kept.is_empty() {
            return rates;
        }
        let observed: Vec<f64> = kept
            .iter()
            .map(|m| {
                m.iter()
                    .map(|&g| self.full[g].1 as f64)
                    .sum::<f64>()
                    .max(1e-9)
            })
            .collect();
        for _ in 0..200 {
            let mut worst: f64 = 0.0;
            for (j, members) in kept.iter().enumerate() {
                let exp: f64 = members.iter().map(|&g| self.full[g].2 * rates[g]).sum();
                if exp <= 0.0 {
                    continue;
                }
                let f = observed[j] / exp;
                worst = worst.max((f.ln()).abs());
                for &g in members.iter() {
                    rates[g] *= f;
                }
            }
            let total: f64 = (0..self.full.len())
                .map(|g| self.full[g].2 * rates[g])
                .sum();
            if total > 0.0 {
                let f = self.x as f64 / total;
                worst = worst.max(f.ln().abs());
                for r in &mut rates {
                    *r *= f;
                }
            }
            if worst < 1e-7 {
                break;
            }
        }
        rates
    }

    /// Whether a cell (members `mc`, `x` failures) exceeds what the fitted `rates`
    /// predict, significantly and by the ratio floor.
    fn elevated(
        &self,
        mc: &[usize],
        x: u64,
        rates: &[f64],
        alpha: f64,
        cfg: &DetectConfig,
    ) -> bool {
        let expected: f64 = mc.iter().map(|&g| self.full[g].2 * rates[g]).sum();
        poisson_excess(x, expected) <= alpha && x as f64 >= cfg.explain_ratio * expected
    }
}

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

fn combination(aggs: &Aggregates, attrs: &[Attr]) -> BTreeMap<String, String> {
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

fn suggest(
    aggs: &Aggregates,
    agg: &AppAgg,
    t: &Test,
    finding_low: f64,
    min_e: f64,
    cfg: &DetectConfig,
) -> Option<Suggestion> {
    let names: Vec<u64> = t.attrs.iter().map(|a| a >> 32).collect();
    let same_names =
        |k: &[Attr]| k.len() == names.len() && k.iter().zip(&names).all(|(a, n)| a >> 32 == *n);
    let mut cands: Vec<(Vec<Attr>, Counts)> = Vec::new();
    match t.attrs.len() {
        1 => cands.extend(
            agg.singles
                .iter()
                .filter(|(a, _)| same_names(&[**a]))
                .map(|(a, c)| (vec![*a], *c)),
        ),
        2 => cands.extend(
            agg.pairs
                .iter()
                .filter(|((a, b), _)| same_names(&[*a, *b]))
                .map(|((a, b), c)| (vec![*a, *b], *c)),
        ),
        _ => cands.extend(
            agg.full
                .iter()
                .filter(|(k, _)| same_names(k))
                .map(|(k, c)| (k.to_vec(), c.counts)),
        ),
    }
    let mut best: Option<(usize, f64, Vec<String>, Suggestion)> = None;
    for (attrs, c) in cands {
        let e = cfg.unit.of(&c);
        if attrs == t.attrs || e < min_e || e <= 0.0 {
            continue;
        }
        let (lo, hi) = rate_interval(c.failures, e, cfg.level);
        if hi >= finding_low {
            continue;
        }
        let changed: Vec<String> = attrs
            .iter()
            .zip(&t.attrs)
            .filter(|(a, b)| a != b)
            .map(|(a, _)| aggs.interner.name(*a).to_string())
            .collect();
        let combo = combination(aggs, &attrs);
        let key: Vec<String> = combo.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let better = match &best {
            None => true,
            Some((n, h, k, _)) => (changed.len(), hi, &key) < (*n, *h, k),
        };
        if better {
            best = Some((
                changed.len(),
                hi,
                key,
                Suggestion {
                    combination: combo,
                    changed: changed.clone(),
                    failures: c.failures,
                    exposure: e,
                    rate: c.failures as f64 / e,
                    rate_low: lo,
                    rate_high: hi,
                },
            ));
        }
    }
    best.map(|b| b.3)
}

fn heatmaps(aggs: &Aggregates, findings: &[Finding], unit: Unit) -> Vec<Heatmap> {
    let it = &aggs.interner;
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    for f in findings {
        if !done.insert(f.app_type.clone()) {
            continue;
        }
        let Some(app) = it.app_type_names.iter().position(|n| **n == *f.app_type) else {
            continue;
        };
        let agg = &aggs.apps[app];
        let mut keys = f.combination.keys();
        let row = keys.next().cloned();
        let col = keys.next().cloned().or_else(|| {
            // A single-attribute finding: pair it with the attribute of most values.
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for a in agg.singles.keys() {
                *counts.entry(it.name(*a)).or_default() += 1;
            }
            counts
                .into_iter()
                .filter(|(n, _)| Some(*n) != row.as_deref())
                .max_by_key(|(n, c)| (*c, std::cmp::Reverse(*n)))
                .map(|(n, _)| n.to_string())
        });
        let (Some(row), Some(col)) = (row, col) else {
            continue;
        };
        let base = unit.of(&agg.total);
        let base_rate = if base > 0.0 {
            agg.total.failures as f64 / base
        } else {
            0.0
        };
        let values = |name: &str| -> Vec<String> {
            let mut v: Vec<String> = agg
                .singles
                .keys()
                .filter(|a| it.name(**a) == name)
                .map(|a| it.value(*a).to_string())
                .collect();
            v.sort();
            v
        };
        let rows = values(&row);
        let cols = values(&col);
        let mut ratio = vec![vec![None; cols.len()]; rows.len()];
        for ((a, b), c) in &agg.pairs {
            let (ra, rb) = if it.name(*a) == row && it.name(*b) == col {
                (*a, *b)
            } else if it.name(*b) == row && it.name(*a) == col {
                (*b, *a)
            } else {
                continue;
            };
            let e = unit.of(c);
            if e <= 0.0 || base_rate <= 0.0 {
                continue;
            }
            let (Some(i), Some(j)) = (
                rows.iter().position(|v| v == it.value(ra)),
                cols.iter().position(|v| v == it.value(rb)),
            ) else {
                continue;
            };
            ratio[i][j] = Some(c.failures as f64 / e / base_rate);
        }
        out.push(Heatmap {
            app_type: f.app_type.clone(),
            row_attribute: row,
            col_attribute: col,
            rows,
            cols,
            ratio,
        });
    }
    out
}
