//! The HTML report: a table of findings and inline SVG charts (rates with intervals
//! per finding, a heat map of attribute pairs, rate over time). No scripts, no
//! external resources.

use std::fmt::Write as _;

use crate::detect::{Finding, Heatmap, Report};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn combo(f: &std::collections::BTreeMap<String, String>) -> String {
    f.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Renders the report as a self-contained HTML page.
pub fn render(report: &Report) -> String {
    let unit = report.unit.as_str();
    let mut s = String::with_capacity(64 * 1024);
    let _ = write!(
        s,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>pipewright failures report</title>\
<style>body{{font-family:sans-serif;margin:24px;background:#fff;color:#222}}table{{border-collapse:collapse}}\
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}th{{background:#eef}}h2{{margin-top:32px}}\
.finding{{background:#fee}}</style></head><body>\
<h1>Failure patterns</h1><p>{} events accepted, {} cells tested, {} discoveries at q = {}, \
<b id=\"finding-count\">{}</b> findings (rate ratio &ge; {}). Rates are failures per {}.</p>",
        report.accepted,
        report.tested,
        report.discoveries,
        report.q,
        report.findings.len(),
        report.min_ratio,
        unit
    );
    if !report.bad_lines.is_empty() {
        s.push_str("<p>Refused lines: ");
        for (r, n) in &report.bad_lines {
            let _ = write!(s, "<code>{}</code>={} ", esc(r), n);
        }
        s.push_str("</p>");
    }
    s.push_str("<h2>Findings</h2><table><tr><th>app type</th><th>combination</th><th>failures</th><th>exposure</th><th>rate [95%]</th><th>baseline</th><th>ratio</th><th>q</th><th>suggestion</th></tr>");
    for f in &report.findings {
        let sug = match &f.suggestion {
            Some(sg) => format!(
                "{} ({:.4} [{:.4}, {:.4}])",
                esc(&combo(&sg.combination)),
                sg.rate,
                sg.rate_low,
                sg.rate_high
            ),
            None => "none clearly better".into(),
        };
        let _ = write!(
            s,
            "<tr class=\"finding\"><td>{}</td><td class=\"combination\">{}</td><td>{}</td><td>{:.1}</td><td>{:.4} [{:.4}, {:.4}]</td><td>{:.4}</td><td>{:.2}</td><td>{:.2e}</td><td>{}</td></tr>",
            esc(&f.app_type),
            esc(&combo(&f.combination)),
            f.failures,
            f.exposure,
            f.rate,
            f.rate_low,
            f.rate_high,
            f.baseline_rate,
            f.rate_ratio,
            f.q_value,
            sug
        );
    }
    s.push_str("</table>");
    if !report.flagged.is_empty() {
        s.push_str("<h2>Flagged resources</h2><ul>");
        for fl in &report.flagged {
            let _ = write!(
                s,
                "<li><b>{}={}</b>: abnormal in {}</li>",
                esc(&fl.attribute),
                esc(&fl.value),
                esc(&fl.app_types.join(", "))
            );
        }
        s.push_str("</ul>");
    }
    if !report.findings.is_empty() {
        s.push_str("<h2>Rates with 95% intervals</h2>");
        rates_chart(&mut s, &report.findings);
    }
    for h in &report.heatmaps {
        let _ = write!(
            s,
            "<h2>{}: rate ratio by {} &times; {}</h2>",
            esc(&h.app_type),
            esc(&h.row_attribute),
            esc(&h.col_attribute)
        );
        heatmap(&mut s, h);
    }
    for f in report.findings.iter().take(6) {
        let _ = write!(
            s,
            "<h2>Rate over time: {} {}</h2>",
            esc(&f.app_type),
            esc(&combo(&f.combination))
        );
        series_chart(&mut s, f);
    }
    s.push_str("</body></html>");
    s
}

fn rates_chart(s: &mut String, findings: &[Finding]) {
    let row_h = 26.0;
    let left = 330.0;
    let width = 900.0;
    let plot_w = width - left - 20.0;
    let height = 30.0 + row_h * findings.len() as f64;
    let max = findings
        .iter()
        .map(|f| f.rate_high.max(f.baseline_rate))
        .filter(|x| x.is_finite())
        .fold(0.0, f64::max)
        .max(1e-12);
    let x = |r: f64| left + plot_w * (r / max).min(1.0);
    let _ = write!(
        s,
        "<svg id=\"rates\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" style=\"background:#fafafa\">"
    );
    for (i, f) in findings.iter().enumerate() {
        let y = 20.0 + row_h * i as f64;
        let _ = write!(
            s,
            "<text x=\"4\" y=\"{:.1}\" font-size=\"12\">{} {}</text>\
<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#c00\" stroke-width=\"3\"/>\
<circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"#900\"/>\
<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#08c\" stroke-width=\"2\"/>",
            y + 4.0,
            esc(&f.app_type),
            esc(&combo(&f.combination)),
            x(f.rate_low),
            x(f.rate_high),
            x(f.rate),
            x(f.baseline_rate),
            x(f.baseline_rate),
            y - 9.0,
            y + 9.0,
        );
    }
    let _ = write!(
        s,
        "<text x=\"{left}\" y=\"{:.1}\" font-size=\"11\">0</text><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{max:.4} (blue: baseline)</text></svg>",
        height - 2.0,
        width - 20.0,
        height - 2.0
    );
}

fn color(ratio: Option<f64>) -> String {
    match ratio {
        None => "#ddd".into(),
        Some(r) => {
            // log2 ratio in [-2, 3] → blue..white..red
            let l = r.max(1e-3).log2().clamp(-2.0, 3.0);
            if l >= 0.0 {
                let t = l / 3.0;
                let g = (255.0 * (1.0 - t)) as u8;
                format!("rgb(255,{g},{g})")
            } else {
                let t = -l / 2.0;
                let g = (255.0 * (1.0 - t)) as u8;
                format!("rgb({g},{g},255)")
            }
        }
    }
}

fn heatmap(s: &mut String, h: &Heatmap) {
    let cell_w = 90.0;
    let cell_h = 28.0;
    let left = 130.0;
    let top = 30.0;
    let width = left + cell_w * h.cols.len() as f64 + 10.0;
    let height = top + cell_h * h.rows.len() as f64 + 10.0;
    let _ = write!(
        s,
        "<svg class=\"heatmap\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\">"
    );
    for (j, c) in h.cols.iter().enumerate() {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"20\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            left + cell_w * (j as f64 + 0.5),
            esc(c)
        );
    }
    for (i, r) in h.rows.iter().enumerate() {
        let y = top + cell_h * i as f64;
        let _ = write!(
            s,
            "<text x=\"4\" y=\"{:.1}\" font-size=\"11\">{}</text>",
            y + cell_h * 0.65,
            esc(r)
        );
        for (j, v) in h.ratio[i].iter().enumerate() {
            let x = left + cell_w * j as f64;
            let label = v.map_or("-".to_string(), |v| format!("{v:.2}"));
            let _ = write!(
                s,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{cell_w}\" height=\"{cell_h}\" fill=\"{}\" stroke=\"#fff\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{label}</text>",
                color(*v),
                x + cell_w / 2.0,
                y + cell_h * 0.65
            );
        }
    }
    s.push_str("</svg>");
}

fn series_chart(s: &mut String, f: &Finding) {
    let width = 900.0;
    let height = 180.0;
    let pts: Vec<(i64, f64)> = f
        .series
        .iter()
        .filter(|p| p.exposure > 0.0)
        .map(|p| (p.t, p.failures as f64 / p.exposure))
        .collect();
    let _ = write!(
        s,
        "<svg class=\"series\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" style=\"background:#fafafa\">"
    );
    if let (Some(first), Some(last)) = (pts.first(), pts.last()) {
        let t0 = first.0 as f64;
        let span = ((last.0 - first.0) as f64).max(1.0);
        let max = pts
            .iter()
            .map(|p| p.1)
            .fold(f.baseline_rate, f64::max)
            .max(1e-12);
        let x = |t: i64| 40.0 + (width - 60.0) * ((t as f64 - t0) / span);
        let y = |r: f64| height - 20.0 - (height - 40.0) * (r / max);
        let path: Vec<String> = pts
            .iter()
            .map(|(t, r)| format!("{:.1},{:.1}", x(*t), y(*r)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"#c00\" stroke-width=\"1.5\" points=\"{}\"/>\
<line x1=\"40\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#08c\" stroke-dasharray=\"4\"/>\
<text x=\"42\" y=\"14\" font-size=\"11\">max {max:.4} per unit; blue: baseline; {} to {}</text>",
            path.join(" "),
            width - 20.0,
            y(f.baseline_rate),
            y(f.baseline_rate),
            crate::event::format_time(first.0),
            crate::event::format_time(last.0),
        );
    }
    s.push_str("</svg>");
}
