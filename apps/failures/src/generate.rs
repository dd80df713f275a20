//! A fleet generator with planted failure patterns, for demos, tests and benchmarks.
//!
//! Each application type runs on a few hundred configurations (random combinations of
//! instance type, CPU, kernel, hypervisor and runtime, each with a number of
//! instances). Every tick, each configuration reports its exposure, and failures
//! arrive as a Poisson process at the base rate times the factor of every planted
//! pattern it matches. Seeded: the same [`FleetConfig`] writes the same bytes.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use crate::event::format_time;

/// The attribute catalogue: name and values.
pub const CATALOGUE: &[(&str, &[&str])] = &[
    (
        "instance_type",
        &[
            "m5.large",
            "m5.xlarge",
            "c5.xlarge",
            "c5.2xlarge",
            "r5.large",
            "t3.medium",
        ],
    ),
    ("cpu", &["skylake", "cascadelake", "icelake", "milan"]),
    ("kernel", &["5.10.0", "5.15.0", "6.1.12", "6.6.8", "6.8.1"]),
    ("hypervisor", &["nitro", "xen", "kvm"]),
    ("runtime", &["jvm-17", "jvm-21", "python-3.11", "go-1.22"]),
];

/// The application types generated.
pub const APP_TYPES: &[&str] = &["web", "batch", "db"];

/// A planted pattern: the ground truth a detector should find.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Planted {
    /// The application type it affects.
    pub app_type: String,
    /// The combination whose failure rate is raised.
    pub combination: BTreeMap<String, String>,
    /// By how much.
    pub factor: f64,
    /// The fraction of the run after which it starts (0: from the start).
    pub start_frac: f64,
    /// What it stands for (`single`, `pair`, `confounded`, `mid-stream`).
    pub label: String,
}

fn combo(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The default planted patterns: single attributes (one in two application types, so
/// it is flagged), a pair whose attributes are harmless alone, an instance type on
/// which alone one kernel runs (the kernel is confounded with it), and a hypervisor
/// pattern that starts half-way.
pub fn default_patterns() -> Vec<Planted> {
    vec![
        Planted {
            app_type: "web".into(),
            combination: combo(&[("kernel", "6.1.12")]),
            factor: 4.0,
            start_frac: 0.0,
            label: "single".into(),
        },
        Planted {
            app_type: "batch".into(),
            combination: combo(&[("kernel", "6.1.12")]),
            factor: 4.0,
            start_frac: 0.0,
            label: "single".into(),
        },
        Planted {
            app_type: "batch".into(),
            combination: combo(&[("cpu", "icelake"), ("runtime", "jvm-21")]),
            factor: 6.0,
            start_frac: 0.0,
            label: "pair".into(),
        },
        Planted {
            app_type: "db".into(),
            combination: combo(&[("instance_type", "c5.xlarge")]),
            factor: 4.0,
            start_frac: 0.0,
            label: "confounded".into(),
        },
        Planted {
            app_type: "web".into(),
            combination: combo(&[("hypervisor", "xen")]),
            factor: 5.0,
            start_frac: 0.5,
            label: "mid-stream".into(),
        },
    ]
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// The random seed.
    pub seed: u64,
    /// About how many events (lines) to write.
    pub events: u64,
    /// Configurations per application type.
    pub configs_per_app: usize,
    /// Start time, seconds since the epoch.
    pub start: i64,
    /// Length of the run, seconds.
    pub duration_secs: i64,
    /// Expected failures per configuration per tick at the base rate.
    pub failures_per_tick: f64,
    /// The patterns to plant.
    pub patterns: Vec<Planted>,
    /// Low-exposure decoy configurations per application type (rare attribute values
    /// with tiny exposure, some with a failure: high or zero raw rates, no evidence).
    pub decoys: usize,
    /// In application type `db`, run kernel 5.15.0 only on instance type c5.xlarge.
    pub confound: bool,
}

impl FleetConfig {
    /// A fleet of about `events` events with the default patterns, ending now-ish.
    pub fn new(seed: u64, events: u64, end: i64) -> Self {
        let duration_secs = 14 * 24 * 3600;
        Self {
            seed,
            events,
            configs_per_app: 240,
            start: end - duration_secs,
            duration_secs,
            failures_per_tick: 0.3,
            patterns: default_patterns(),
            decoys: 3,
            confound: true,
        }
    }
}

/// What was generated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetSummary {
    /// Lines written.
    pub events: u64,
    /// Of which failures.
    pub failures: u64,
    /// Ticks.
    pub ticks: u64,
    /// The planted patterns (the ground truth).
    pub planted: Vec<Planted>,
    /// The exposure unit (always hours).
    pub unit: String,
    /// Time the first pattern starting mid-stream starts, if any.
    pub mid_stream_start: Option<i64>,
}

struct Config {
    app_type: usize,
    app: String,
    attrs: Vec<(&'static str, &'static str)>,
    instances: f64,
    /// Factor per pattern index that matches.
    matches: Vec<usize>,
    decoy_failure: bool,
}

fn poisson(rng: &mut fastrand::Rng, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda > 30.0 {
        // Normal approximation for large means (not used by the defaults).
        let u1 = rng.f64().max(1e-12);
        let u2 = rng.f64();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        return (lambda + z * lambda.sqrt()).round().max(0.0) as u64;
    }
    let l = (-lambda).exp();
    let mut k = 0;
    let mut p = 1.0;
    loop {
        p *= rng.f64();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

const DECOY_VALUES: &[(&str, &str)] = &[
    ("runtime", "rust-1.80"),
    ("kernel", "6.9.0-rc1"),
    ("instance_type", "x2idn.large"),
    ("cpu", "sapphirerapids"),
];

fn build_configs(cfg: &FleetConfig, rng: &mut fastrand::Rng) -> Vec<Config> {
    let mut configs = Vec::new();
    for (ai, app_type) in APP_TYPES.iter().enumerate() {
        for c in 0..cfg.configs_per_app + cfg.decoys {
            let decoy = c >= cfg.configs_per_app;
            let mut attrs: Vec<(&'static str, &'static str)> = CATALOGUE
                .iter()
                .map(|(k, vs)| (*k, vs[rng.usize(..vs.len())]))
                .collect();
            if cfg.confound && *app_type == "db" {
                let kernel = attrs.iter().position(|(k, _)| *k == "kernel");
                let inst = attrs.iter().position(|(k, _)| *k == "instance_type");
                if let (Some(ki), Some(ii)) = (kernel, inst) {
                    if attrs[ki].1 == "5.15.0" {
                        attrs[ii].1 = "c5.xlarge";
                    }
                }
            }
            let mut instances = rng.usize(2..=30) as f64;
            if decoy {
                let (k, v) = DECOY_VALUES[(c - cfg.configs_per_app) % DECOY_VALUES.len()];
                if let Some(slot) = attrs.iter_mut().find(|(n, _)| *n == k) {
                    slot.1 = v;
                }
                instances = 0.02;
            }
            let matches = cfg
                .patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    p.app_type == *app_type
                        && p.combination
                            .iter()
                            .all(|(k, v)| attrs.iter().any(|(a, b)| a == k && b == v))
                })
                .map(|(i, _)| i)
                .collect();
            configs.push(Config {
                app_type: ai,
                app: format!("{app_type}-svc{}", rng.usize(..12)),
                attrs,
                instances,
                matches,
                decoy_failure: decoy && c % 2 == 0,
            });
        }
    }
    configs
}

fn write_event(
    out: &mut impl Write,
    buf: &mut String,
    failure: Option<&str>,
    time: i64,
    c: &Config,
    hours: f64,
) -> io::Result<()> {
    use std::fmt::Write as _;
    buf.clear();
    let ty = if failure.is_some() {
        "failure"
    } else {
        "exposure"
    };
    let _ = write!(
        buf,
        "{{\"type\":\"{ty}\",\"time\":\"{}\",\"app\":\"{}\",\"app_type\":\"{}\",",
        format_time(time),
        c.app,
        APP_TYPES[c.app_type]
    );
    if let Some(kind) = failure {
        let _ = write!(buf, "\"kind\":\"{kind}\",");
    }
    buf.push_str("\"resources\":{");
    for (i, (k, v)) in c.attrs.iter().enumerate() {
        if i > 0 {
            buf.push(',');
        }
        let _ = write!(buf, "\"{k}\":\"{v}\"");
    }
    buf.push('}');
    if failure.is_none() {
        let _ = write!(buf, ",\"hours\":{hours}");
    }
    buf.push_str("}\n");
    out.write_all(buf.as_bytes())
}

/// Writes a fleet's events as JSON lines, tick by tick, calling `on_tick(tick, time,
/// events so far)` after each tick (the time-to-detect benchmark streams through it).
pub fn generate_with(
    cfg: &FleetConfig,
    out: &mut impl Write,
    mut on_tick: impl FnMut(u64, i64, u64) -> io::Result<()>,
) -> io::Result<FleetSummary> {
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let configs = build_configs(cfg, &mut rng);
    let per_tick = configs.len() as f64 * (1.0 + cfg.failures_per_tick);
    let ticks = ((cfg.events as f64 / per_tick).ceil() as u64).max(1);
    let tick_secs = (cfg.duration_secs / ticks as i64).max(1);
    let tick_hours = tick_secs as f64 / 3600.0;
    let mean_instances = 16.0;
    let base_rate = cfg.failures_per_tick / (mean_instances * tick_hours);
    let mut events = 0;
    let mut failures = 0;
    let mut buf = String::with_capacity(512);
    let kinds = ["crash", "crash", "crash", "hang", "hang", "malfunction"];
    for tick in 0..ticks {
        let t0 = cfg.start + tick as i64 * tick_secs;
        let frac = tick as f64 / ticks as f64;
        for c in &configs {
            let hours = (c.instances * tick_hours * 1000.0).round() / 1000.0;
            write_event(out, &mut buf, None, t0 + rng.i64(0..tick_secs), c, hours)?;
            events += 1;
            let mut factor = 1.0;
            for &i in &c.matches {
                let p = &cfg.patterns[i];
                if frac >= p.start_frac {
                    factor *= p.factor;
                }
            }
            let mut n = poisson(&mut rng, c.instances * tick_hours * base_rate * factor);
            if c.decoy_failure && tick == ticks / 2 {
                n += 1;
            }
            for _ in 0..n {
                let kind = kinds[rng.usize(..kinds.len())];
                write_event(
                    out,
                    &mut buf,
                    Some(kind),
                    t0 + rng.i64(0..tick_secs),
                    c,
                    0.0,
                )?;
                events += 1;
                failures += 1;
            }
        }
        on_tick(tick, t0 + tick_secs, events)?;
    }
    let mid_stream_start = cfg
        .patterns
        .iter()
        .filter(|p| p.start_frac > 0.0)
        .map(|p| cfg.start + ((p.start_frac * ticks as f64).ceil() as i64) * tick_secs)
        .min();
    Ok(FleetSummary {
        events,
        failures,
        ticks,
        planted: cfg.patterns.clone(),
        unit: "hours".into(),
        mid_stream_start,
    })
}

/// Writes a fleet's events as JSON lines.
pub fn generate(cfg: &FleetConfig, out: &mut impl Write) -> io::Result<FleetSummary> {
    generate_with(cfg, out, |_, _, _| Ok(()))
}

impl FleetSummary {
    /// The summary (with the planted patterns) as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
