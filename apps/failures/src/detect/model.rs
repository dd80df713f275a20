//! One test per cell, and the Poisson log-linear model of an application type's full
//! combinations that decides whether a candidate is explained by the findings kept.

use crate::aggregate::{AppAgg, Attr, Interner};
use crate::stats::poisson_excess;

use super::{DetectConfig, Unit};

pub(super) struct Test {
    pub(super) app: usize,
    pub(super) attrs: Vec<Attr>,
    pub(super) x: u64,
    pub(super) e: f64,
    pub(super) p: f64,
    pub(super) ratio: f64,
    pub(super) baseline: f64,
}

/// Whether sorted `sub` is a subset of sorted `sup`.
pub(super) fn subset(sub: &[Attr], sup: &[Attr]) -> bool {
    let mut it = sup.iter();
    sub.iter().all(|a| it.by_ref().any(|b| b == a))
}

pub(super) struct AppModel<'a> {
    pub(super) full: Vec<(&'a [Attr], u64, f64)>,
    pub(super) x: u64,
    pub(super) e: f64,
}

impl<'a> AppModel<'a> {
    pub(super) fn new(agg: &'a AppAgg, unit: Unit, it: &Interner) -> Self {
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

    pub(super) fn members(&self, attrs: &[Attr]) -> Vec<usize> {
        (0..self.full.len())
            .filter(|&i| subset(attrs, self.full[i].0))
            .collect()
    }

    /// The Poisson log-linear model with one factor per kept finding (and a base
    /// rate), fitted by maximum likelihood (iterative proportional fitting: each
    /// finding's observed failures equal its expected failures, and so do the type's):
    /// the expected rate of every full combination.
    pub(super) fn fit(&self, kept: &[&[usize]]) -> Vec<f64> {
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
    pub(super) fn elevated(
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
