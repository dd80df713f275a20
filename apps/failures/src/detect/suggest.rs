//! Suggestions: the nearest well-exposed cell whose whole interval lies below a
//! finding's.

use crate::aggregate::{Aggregates, AppAgg, Attr, Counts};
use crate::stats::rate_interval;

use super::model::Test;
use super::{combination, DetectConfig, Suggestion};

pub(super) fn suggest(
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
