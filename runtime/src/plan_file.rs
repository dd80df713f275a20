//! Plans as TOML files: loaded with typed errors, written back for review and diffs.
//!
//! ```toml
//! ring_capacity = 1024
//! adaptive = true
//! busy_poll_us = 200      # workers poll 200 µs before parking (default 0)
//!
//! [bursts]
//! "*" = 32        # every stage
//! parse = 64
//!
//! [rings]
//! sink = 4096     # the ring in front of `sink`
//!
//! [activation.checksum]   # per activation: up to 256 items, at most 50 µs
//! items = 256
//! time_us = 50
//!
//! [uring.log]             # the io_uring share of an I/O stage
//! sq_entries = 64
//! fixed_buffers = 16
//!
//! [[worker]]
//! stages = ["parse", "checksum"]
//! cpu = 0
//!
//! [[worker]]
//! stages = ["route", "sink"]
//! cpu = "auto"    # or a number, or "float"
//! ```
//!
//! Instead of `[[worker]]` tables, `layout = "fused"`, `"per-stage"` or
//! `layout = { spread = 2 }` pick a generated layout.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::budget::{ActivationBudget, UringBudget};
use crate::plan::{Pin, Plan, PlanError};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ring_capacity: Option<usize>,
    #[serde(default)]
    adaptive: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    busy_poll_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layout: Option<LayoutFile>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    bursts: BTreeMap<String, usize>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    rings: BTreeMap<String, usize>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    activation: BTreeMap<String, ActivationFile>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    uring: BTreeMap<String, UringFile>,
    #[serde(default, rename = "worker", skip_serializing_if = "Vec::is_empty")]
    workers: Vec<WorkerFile>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ActivationFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    items: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time_us: Option<u64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct UringFile {
    sq_entries: u32,
    #[serde(default)]
    fixed_buffers: u32,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
enum LayoutFile {
    Fused,
    PerStage,
    Spread(usize),
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct WorkerFile {
    stages: Vec<String>,
    #[serde(default = "auto")]
    cpu: CpuFile,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum CpuFile {
    Id(usize),
    Named(String),
}

fn auto() -> CpuFile {
    CpuFile::Named("auto".into())
}

impl Plan {
    /// Parses a plan file (see the [module docs](crate::plan_file) for the format).
    /// Names are checked against the pipeline when the plan is started.
    pub fn from_toml(text: &str) -> Result<Plan, PlanError> {
        let file: PlanFile =
            toml::from_str(text).map_err(|e| PlanError::File(e.message().to_string()))?;
        let mut plan = match (&file.layout, file.workers.is_empty()) {
            (Some(_), false) => {
                return Err(PlanError::File(
                    "give either `layout` or `[[worker]]` tables, not both".into(),
                ))
            }
            (Some(LayoutFile::Fused), true) => Plan::fused(),
            (Some(LayoutFile::PerStage), true) => Plan::per_stage(),
            (Some(LayoutFile::Spread(n)), true) => Plan::spread(*n),
            (None, true) => Plan::default(),
            (None, false) => {
                let mut plan = Plan::explicit();
                for w in &file.workers {
                    let pin = match &w.cpu {
                        CpuFile::Id(id) => Pin::Core(*id),
                        CpuFile::Named(n) if n == "auto" => Pin::Auto,
                        CpuFile::Named(n) if n == "float" => Pin::Float,
                        CpuFile::Named(other) => {
                            return Err(PlanError::File(format!(
                                "cpu = \"{other}\": use a CPU number, \"auto\" or \"float\""
                            )))
                        }
                    };
                    plan = plan.worker(w.stages.iter().cloned(), pin);
                }
                plan
            }
        };
        if let Some(c) = file.ring_capacity {
            plan = plan.ring_capacity(c);
        }
        for (stage, burst) in &file.bursts {
            plan = if stage == "*" {
                plan.burst_all(*burst)
            } else {
                plan.burst(stage, *burst)
            };
        }
        for (stage, capacity) in &file.rings {
            plan = plan.ring_capacity_for(stage, *capacity);
        }
        for (stage, u) in &file.uring {
            plan = plan.uring(
                stage,
                UringBudget {
                    sq_entries: u.sq_entries,
                    fixed_buffers: u.fixed_buffers,
                },
            );
        }
        for (stage, a) in &file.activation {
            plan = plan.activation(
                stage,
                ActivationBudget {
                    items: a.items,
                    time: a.time_us.map(std::time::Duration::from_micros),
                },
            );
        }
        if file.adaptive {
            plan = plan.adaptive();
        }
        if let Some(us) = file.busy_poll_us {
            plan = plan.busy_poll(std::time::Duration::from_micros(us));
        }
        Ok(plan)
    }

    /// Writes the plan as a plan file (stable order, so plans diff cleanly).
    pub fn to_toml(&self) -> String {
        let (layout, workers) = self.layout_parts();
        let file = PlanFile {
            ring_capacity: Some(self.ring_capacity_default()),
            adaptive: self.is_adaptive(),
            busy_poll_us: Some(self.busy_poll_window().as_micros() as u64).filter(|&us| us > 0),
            layout: layout.map(|l| match l {
                crate::plan::LayoutKind::Fused => LayoutFile::Fused,
                crate::plan::LayoutKind::PerStage => LayoutFile::PerStage,
                crate::plan::LayoutKind::Spread(n) => LayoutFile::Spread(n),
            }),
            bursts: self.bursts_map().into_iter().collect(),
            rings: self.rings_map().into_iter().collect(),
            uring: self
                .urings_map()
                .into_iter()
                .map(|(stage, u)| {
                    let file = UringFile {
                        sq_entries: u.sq_entries,
                        fixed_buffers: u.fixed_buffers,
                    };
                    (stage, file)
                })
                .collect(),
            activation: self
                .activations_map()
                .into_iter()
                .map(|(stage, a)| {
                    let file = ActivationFile {
                        items: a.items,
                        time_us: a.time.map(|t| t.as_micros() as u64),
                    };
                    (stage, file)
                })
                .collect(),
            workers: workers
                .into_iter()
                .map(|w| WorkerFile {
                    stages: w.stages,
                    cpu: match w.pin {
                        Pin::Core(c) => CpuFile::Id(c),
                        Pin::Auto => auto(),
                        Pin::Float => CpuFile::Named("float".into()),
                    },
                })
                .collect(),
        };
        toml::to_string(&file).expect("a plan always serialises")
    }
}
