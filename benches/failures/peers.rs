//! The peers of `detect-f1` and `time-to-detect`, fed from the same events:
//! `socorro-style` (Mozilla Socorro's crash_deviations rule, no exposure) and
//! `naive-threshold` (any cell whose rate is over twice its application type's).

use std::collections::{BTreeMap, BTreeSet};

use pipewright::failures::{parse_line, Event, EventKind, Exposure, Limits, EXPOSURE_SCALE};
use statrs::distribution::{ChiSquared, ContinuousCDF};
use statrs::stats_tests::{fishers_exact, Alternative};

pub(crate) type Combo = Vec<(String, String)>;
/// (app_type, combination), combination sorted.
pub(crate) type Key = (String, Combo);

#[derive(Default, Clone, Copy)]
pub(crate) struct Cell {
    pub failures: u64,
    pub reports: u64,
    pub hours: f64,
}

#[derive(Default)]
pub(crate) struct App {
    pub failures: u64,
    pub reports: u64,
    pub hours: f64,
    pub singles: BTreeMap<Combo, Cell>,
    pub pairs: BTreeMap<Combo, Cell>,
    pub full: BTreeMap<Combo, Cell>,
}

/// Per-cell counts of failure events, exposure reports and hours.
#[derive(Default)]
pub(crate) struct PeerCounts {
    pub apps: BTreeMap<String, App>,
}

impl PeerCounts {
    pub(crate) fn add_lines(&mut self, bytes: &[u8], now: i64) {
        for line in bytes.split(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            if let Ok(e) = parse_line(line, &Limits::default(), now) {
                self.add(&e);
            }
        }
    }

    pub(crate) fn add(&mut self, e: &Event) {
        let (f, r, h) = match &e.kind {
            EventKind::Failure(_) => (1, 0, 0.0),
            EventKind::Exposure(Exposure::Hours(h)) => (0, 1, *h as f64 / EXPOSURE_SCALE),
            EventKind::Exposure(Exposure::Launches(_)) => (0, 1, 0.0),
        };
        let app = self.apps.entry(e.app_type.clone()).or_default();
        app.failures += f;
        app.reports += r;
        app.hours += h;
        let bump = |m: &mut BTreeMap<Combo, Cell>, k: Combo| {
            let c = m.entry(k).or_default();
            c.failures += f;
            c.reports += r;
            c.hours += h;
        };
        let res = &e.resources;
        for (i, a) in res.iter().enumerate() {
            bump(&mut app.singles, vec![a.clone()]);
            for b in &res[i + 1..] {
                bump(&mut app.pairs, vec![a.clone(), b.clone()]);
            }
        }
        bump(&mut app.full, res.clone());
    }
}

fn chi2_2x2(a: f64, b: f64, c: f64, d: f64) -> (f64, f64) {
    let n = a + b + c + d;
    let den = (a + b) * (c + d) * (a + c) * (b + d);
    if den <= 0.0 {
        return (0.0, 1.0);
    }
    let chi2 = n * (a * d - b * c).powi(2) / den;
    let p = ChiSquared::new(1.0).map(|x| x.sf(chi2)).unwrap_or(1.0);
    (chi2, p)
}

/// Socorro's crash_deviations rule, as published: per group (here: the failures of
/// one application type, against its exposure reports as the reference set, counted
/// as reports since the rule knows no exposure), groups of at least 5; items with
/// support > 0.15 in the group; at most pairs; |support difference| >= 0.15 (only
/// higher-in-failures deviations are kept, as we look for high failure rates); a χ²
/// test at α = 0.05 / (items tested) for items, Fisher's exact test for pairs; φ >= 0.03.
pub(crate) fn socorro(counts: &PeerCounts) -> BTreeSet<Key> {
    let mut out = BTreeSet::new();
    for (app_type, app) in &counts.apps {
        if app.failures < 5 || app.reports == 0 {
            continue;
        }
        let (ng, nr) = (app.failures as f64, app.reports as f64);
        let frequent: Vec<&Combo> = app
            .singles
            .iter()
            .filter(|(_, c)| c.failures as f64 / ng > 0.15)
            .map(|(k, _)| k)
            .collect();
        let pairs: Vec<(&Combo, &Cell)> = app
            .pairs
            .iter()
            .filter(|(k, c)| {
                c.failures as f64 / ng > 0.15
                    && k.iter().all(|kv| frequent.iter().any(|f| f[0] == *kv))
            })
            .collect();
        let tested = (frequent.len() + pairs.len()).max(1) as f64;
        let alpha = 0.05 / tested;
        for k in &frequent {
            let c = app.singles[*k];
            let (sg, sr) = (c.failures as f64 / ng, c.reports as f64 / nr);
            if sg - sr < 0.15 {
                continue;
            }
            let (a, b) = (c.failures as f64, ng - c.failures as f64);
            let (cc, d) = (c.reports as f64, nr - c.reports as f64);
            let (chi2, p) = chi2_2x2(a, b, cc, d);
            let phi = (chi2 / (ng + nr)).sqrt();
            if p < alpha && phi >= 0.03 {
                out.insert((app_type.clone(), (*k).clone()));
            }
        }
        for (k, c) in pairs {
            let (sg, sr) = (c.failures as f64 / ng, c.reports as f64 / nr);
            if sg - sr < 0.15 {
                continue;
            }
            let table = [
                c.failures,
                app.failures - c.failures,
                c.reports,
                app.reports - c.reports,
            ];
            let p = fishers_exact(&table, Alternative::Greater).unwrap_or(1.0);
            let (chi2, _) = chi2_2x2(
                table[0] as f64,
                table[1] as f64,
                table[2] as f64,
                table[3] as f64,
            );
            let phi = (chi2 / (ng + nr)).sqrt();
            if p < alpha && phi >= 0.03 {
                out.insert((app_type.clone(), k.clone()));
            }
        }
    }
    out
}

/// Any cell (attribute, pair or full combination) with exposure whose rate is over
/// twice the mean rate of its application type.
pub(crate) fn naive(counts: &PeerCounts) -> BTreeSet<Key> {
    let mut out = BTreeSet::new();
    for (app_type, app) in &counts.apps {
        if app.hours <= 0.0 {
            continue;
        }
        let mean = app.failures as f64 / app.hours;
        for m in [&app.singles, &app.pairs, &app.full] {
            for (k, c) in m {
                if c.hours > 0.0 && c.failures as f64 / c.hours > 2.0 * mean {
                    out.insert((app_type.clone(), k.clone()));
                }
            }
        }
    }
    out
}
