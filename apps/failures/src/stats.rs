//! The statistics: exact tests for Poisson rates, exact rate intervals, and the
//! Benjamini–Hochberg adjustment (the `adjustp` crate). Distributions are `statrs`.

use statrs::distribution::{Binomial, ChiSquared, ContinuousCDF, DiscreteCDF, Poisson};

/// One-sided exact test that a cell's failure rate is higher than the rest's.
///
/// `x` failures in exposure `e` against `x_rest` in `e_rest`. Under equal rates and
/// conditional on the total `n = x + x_rest`, `x` is Binomial(n, e / (e + e_rest)); the
/// p-value is P(X ≥ x). Returns 1 when there is nothing to test (no failures in the
/// cell, or no exposure on either side).
pub fn rate_test(x: u64, e: f64, x_rest: u64, e_rest: f64) -> f64 {
    if x == 0 || e <= 0.0 || e_rest <= 0.0 {
        return 1.0;
    }
    let n = x + x_rest;
    let p0 = e / (e + e_rest);
    match Binomial::new(p0, n) {
        // P(X >= x) = P(X > x - 1)
        Ok(b) => b.sf(x - 1).clamp(0.0, 1.0),
        Err(_) => 1.0,
    }
}

/// One-sided exact test that `x` observed failures exceed a Poisson mean `expected`:
/// P(X ≥ x | mean). Returns 1 for `x == 0`; 0 when `expected` is 0 and `x > 0`.
pub fn poisson_excess(x: u64, expected: f64) -> f64 {
    if x == 0 {
        return 1.0;
    }
    if expected <= 0.0 {
        return 0.0;
    }
    match Poisson::new(expected) {
        Ok(p) => p.sf(x - 1).clamp(0.0, 1.0),
        Err(_) => 1.0,
    }
}

/// The exact (Garwood) two-sided interval of a Poisson rate with `x` events in
/// exposure `e`, at confidence `level` (e.g. 0.95). With `x == 0` the lower end is
/// 0 and the upper end is finite and shrinks only as exposure grows, so a
/// low-exposure 0 % never looks better than a well-measured low rate.
pub fn rate_interval(x: u64, e: f64, level: f64) -> (f64, f64) {
    if e <= 0.0 {
        return (0.0, f64::INFINITY);
    }
    let alpha = 1.0 - level;
    let lower = if x == 0 {
        0.0
    } else {
        ChiSquared::new(2.0 * x as f64)
            .map(|c| c.inverse_cdf(alpha / 2.0) / 2.0)
            .unwrap_or(0.0)
    };
    let upper = ChiSquared::new(2.0 * x as f64 + 2.0)
        .map(|c| c.inverse_cdf(1.0 - alpha / 2.0) / 2.0)
        .unwrap_or(f64::INFINITY);
    (lower / e, upper / e)
}

/// Benjamini–Hochberg adjusted p-values (q-values), in the input order.
pub fn bh_adjust(p: &[f64]) -> Vec<f64> {
    if p.is_empty() {
        return Vec::new();
    }
    adjustp::adjust(p, adjustp::Procedure::BenjaminiHochberg)
        .into_iter()
        .map(|q| q.clamp(0.0, 1.0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rate_test_small_cases() {
        // 5 failures in 1 unit vs 5 in 9 units: P(Bin(10, 0.1) >= 5).
        let p = rate_test(5, 1.0, 5, 9.0);
        assert!((p - 0.001_634_937_4).abs() < 1e-9, "{p}");
        assert_eq!(rate_test(0, 1.0, 5, 9.0), 1.0);
    }

    #[test]
    fn zero_failures_interval_shrinks_with_exposure() {
        let (lo1, hi1) = rate_interval(0, 1.0, 0.95);
        let (lo2, hi2) = rate_interval(0, 100.0, 0.95);
        assert_eq!(lo1, 0.0);
        assert_eq!(lo2, 0.0);
        assert!((hi1 - 3.688_879_454).abs() < 1e-6, "{hi1}");
        assert!(hi2 < hi1 / 50.0);
    }

    #[test]
    fn bh_matches_r() {
        let q = bh_adjust(&[0.1, 0.2, 0.3, 0.4, 0.1]);
        let want = [0.25, 1.0 / 3.0, 0.375, 0.4, 0.25];
        for (a, b) in q.iter().zip(want) {
            assert!((a - b).abs() < 1e-12);
        }
    }

    proptest! {
        #[test]
        fn p_values_are_probabilities(x in 0u64..200, xr in 0u64..2000, e in 0.01f64..1e4, er in 0.01f64..1e5) {
            let p = rate_test(x, e, xr, er);
            prop_assert!((0.0..=1.0).contains(&p));
            // More failures in the cell never makes the p-value larger.
            prop_assert!(rate_test(x + 1, e, xr, er) <= p + 1e-12);
        }

        #[test]
        fn intervals_contain_the_estimate(x in 0u64..500, e in 0.01f64..1e4) {
            let (lo, hi) = rate_interval(x, e, 0.95);
            let r = x as f64 / e;
            prop_assert!(lo <= r * (1.0 + 1e-9) && r <= hi * (1.0 + 1e-9), "{lo} {r} {hi}");
        }

        #[test]
        fn q_values_are_monotone_in_p(ps in proptest::collection::vec(0.0f64..1.0, 1..50)) {
            let q = bh_adjust(&ps);
            for i in 0..ps.len() {
                prop_assert!(q[i] >= ps[i] - 1e-12);
                for j in 0..ps.len() {
                    if ps[i] <= ps[j] {
                        prop_assert!(q[i] <= q[j] + 1e-12);
                    }
                }
            }
        }
    }
}
