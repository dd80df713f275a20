//! Rendering a [`Report`] as a table or JSON.

use std::fmt::Write as _;

use crate::detect::Report;

fn combo(c: &std::collections::BTreeMap<String, String>) -> String {
    c.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The report as pretty JSON.
pub fn to_json(report: &Report) -> String {
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// The report as a human-readable table.
pub fn to_table(report: &Report) -> String {
    let mut s = String::new();
    let unit = report.unit.as_str();
    let _ = writeln!(
        s,
        "{} events accepted; {} cells tested; {} BH discoveries at q={}; {} findings (rate ratio >= {}); rates are failures per {}",
        report.accepted,
        report.tested,
        report.discoveries,
        report.q,
        report.findings.len(),
        report.min_ratio,
        unit
    );
    if report.bad_lines.is_empty() {
        let _ = writeln!(s, "bad lines: none");
    } else {
        let parts: Vec<String> = report
            .bad_lines
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        let _ = writeln!(s, "bad lines: {}", parts.join(" "));
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<8} {:<44} {:>8} {:>12} {:>10} {:>21} {:>10} {:>7} {:>9} {:>9}",
        "app_type",
        "combination",
        "failures",
        "exposure",
        "rate",
        "95% interval",
        "baseline",
        "ratio",
        "p",
        "q"
    );
    for f in &report.findings {
        let _ = writeln!(
            s,
            "{:<8} {:<44} {:>8} {:>12.1} {:>10.5} [{:>9.5},{:>9.5}] {:>10.5} {:>7.2} {:>9.2e} {:>9.2e}",
            f.app_type,
            combo(&f.combination),
            f.failures,
            f.exposure,
            f.rate,
            f.rate_low,
            f.rate_high,
            f.baseline_rate,
            f.rate_ratio,
            f.p_value,
            f.q_value
        );
        match &f.suggestion {
            Some(sg) => {
                let _ = writeln!(
                    s,
                    "         -> run on {} instead: rate {:.5} [{:.5},{:.5}] over {:.1} {unit} (changes {})",
                    combo(&sg.combination),
                    sg.rate,
                    sg.rate_low,
                    sg.rate_high,
                    sg.exposure,
                    sg.changed.join(",")
                );
            }
            None => {
                let _ = writeln!(s, "         -> no measured combination is clearly better");
            }
        }
    }
    if !report.flagged.is_empty() {
        let _ = writeln!(s);
        for fl in &report.flagged {
            let _ = writeln!(
                s,
                "FLAG {}={}: abnormal in {} application types ({}): fix the resource",
                fl.attribute,
                fl.value,
                fl.app_types.len(),
                fl.app_types.join(",")
            );
        }
    }
    s
}
