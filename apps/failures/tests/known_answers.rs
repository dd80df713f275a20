//! Known answers: p-values, q-values and intervals checked against scipy (an
//! independent implementation), run in a python3 subprocess.

use std::process::Command;

use pipewright_failures::{bh_adjust, rate_interval, rate_test};

fn scipy_or_skip() -> bool {
    let ok = Command::new("python3")
        .args([
            "-c",
            "import scipy.stats; scipy.stats.false_discovery_control",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("PIPEWRIGHT_REQUIRE_SCIPY").is_ok_and(|v| v == "1") {
            panic!("python3 with scipy >= 1.11 is required (PIPEWRIGHT_REQUIRE_SCIPY=1)");
        }
        eprintln!("skipped: python3 with scipy >= 1.11 not found (pip install scipy)");
    }
    ok
}

fn close(a: f64, b: f64, rtol: f64) -> bool {
    a == b || (a - b).abs() <= rtol * a.abs().max(b.abs()) || (a - b).abs() < 1e-300
}

#[test]
fn p_values_q_values_and_intervals_match_scipy() {
    if !scipy_or_skip() {
        return;
    }
    // (cell failures, cell exposure, rest failures, rest exposure)
    let cases: &[(u64, f64, u64, f64)] = &[
        (5, 1.0, 5, 9.0),
        (12, 40.0, 100, 1000.0),
        (3, 2.5, 40, 300.0),
        (1, 0.1, 0, 50.0),
        (50, 100.0, 200, 900.0),
        (300, 1200.0, 2000, 20000.0),
        (7, 10.0, 70, 100.0),
        (0, 10.0, 70, 100.0),
        (2000, 10000.0, 5000, 60000.0),
    ];
    let ps: Vec<f64> = cases
        .iter()
        .map(|c| rate_test(c.0, c.1, c.2, c.3))
        .collect();
    let qs = bh_adjust(&ps);
    let intervals: Vec<(f64, f64)> = cases
        .iter()
        .map(|c| rate_interval(c.0, c.1, 0.95))
        .collect();
    let py_cases: Vec<String> = cases
        .iter()
        .map(|c| format!("({}, {:?}, {}, {:?})", c.0, c.1, c.2, c.3))
        .collect();
    let script = format!(
        r#"
from scipy import stats
cases = [{}]
ps = []
for x, e, xr, er in cases:
    n = x + xr
    ps.append(1.0 if x == 0 else float(stats.binom.sf(x - 1, n, e / (e + er))))
qs = stats.false_discovery_control(ps, method='bh')
for (x, e, xr, er), p, q in zip(cases, ps, qs):
    lo = 0.0 if x == 0 else stats.chi2.ppf(0.025, 2 * x) / 2 / e
    hi = stats.chi2.ppf(0.975, 2 * x + 2) / 2 / e
    print(repr(p), repr(float(q)), repr(float(lo)), repr(float(hi)))
"#,
        py_cases.join(", ")
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<f64>> = text
        .lines()
        .map(|l| l.split_whitespace().map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), cases.len());
    for (i, row) in rows.iter().enumerate() {
        assert!(
            close(ps[i], row[0], 1e-7),
            "case {i}: p {} vs scipy {}",
            ps[i],
            row[0]
        );
        assert!(
            close(qs[i], row[1], 1e-7),
            "case {i}: q {} vs scipy {}",
            qs[i],
            row[1]
        );
        assert!(
            close(intervals[i].0, row[2], 1e-6),
            "case {i}: low {} vs scipy {}",
            intervals[i].0,
            row[2]
        );
        assert!(
            close(intervals[i].1, row[3], 1e-6),
            "case {i}: high {} vs scipy {}",
            intervals[i].1,
            row[3]
        );
    }
}
