//! Helpers shared verbatim by the bench suites (`hop`, `nic_path`): the environment
//! switches every suite reads, the median of a side's rounds and the load average.
//! Each suite includes this file with `#[path = "../common/mod.rs"] mod common;`.

/// The side `PIPEWRIGHT_BENCH_ONLY` runs alone.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Ours,
    Peer,
}

/// Whether the environment variable `name` is set to something other than empty or `0`.
pub(crate) fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `PIPEWRIGHT_BENCH_QUICK`: fewer items and rounds.
pub(crate) fn quick() -> bool {
    flag("PIPEWRIGHT_BENCH_QUICK")
}

/// `PIPEWRIGHT_BENCH_CASE=<text>`: run only the cases whose name contains `<text>`.
pub(crate) fn case_filter() -> Option<String> {
    std::env::var("PIPEWRIGHT_BENCH_CASE")
        .ok()
        .filter(|f| !f.is_empty())
}

/// `PIPEWRIGHT_BENCH_ONLY=ours|peer`: run one side only (and print no RESULT line).
pub(crate) fn only() -> Option<Side> {
    match std::env::var("PIPEWRIGHT_BENCH_ONLY").as_deref() {
        Ok("ours") => Some(Side::Ours),
        Ok("peer") => Some(Side::Peer),
        _ => None,
    }
}

/// Whether `case` passes the `PIPEWRIGHT_BENCH_CASE` filter (everything does without one).
pub(crate) fn wants(filter: Option<&str>, case: &str) -> bool {
    filter.is_none_or(|f| case.contains(f))
}

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len() % 2 == 0 {
        (xs[mid - 1] + xs[mid]) / 2.0
    } else {
        xs[mid]
    }
}

/// The 1, 5 and 15 minute load averages (Linux), or `?`.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
