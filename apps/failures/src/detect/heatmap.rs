//! Heatmaps of the findings' attributes.

use std::collections::{BTreeMap, BTreeSet};

use crate::aggregate::Aggregates;

use super::{Finding, Heatmap, Unit};

/// The most values a heatmap shows on each axis.
pub(crate) const MAX_AXIS: usize = 40;

pub(super) fn heatmaps(aggs: &Aggregates, findings: &[Finding], unit: Unit) -> Vec<Heatmap> {
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
        // The most exposed values of an attribute (the finding's own always among
        // them), at most `MAX_AXIS`: an attribute may have thousands of values.
        let values = |name: &str| -> Vec<String> {
            let mut v: Vec<(f64, String)> = agg
                .singles
                .iter()
                .filter(|(a, _)| it.name(**a) == name)
                .map(|(a, c)| (unit.of(c), it.value(*a).to_string()))
                .collect();
            let own = f.combination.get(name);
            v.sort_by(|a, b| {
                let own_first = |x: &(f64, String)| Some(&x.1) != own;
                own_first(a)
                    .cmp(&own_first(b))
                    .then(b.0.total_cmp(&a.0))
                    .then_with(|| a.1.cmp(&b.1))
            });
            v.truncate(MAX_AXIS);
            let mut names: Vec<String> = v.into_iter().map(|(_, n)| n).collect();
            names.sort();
            names
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
