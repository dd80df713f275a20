//! The allocator: from what each stage declares it needs and the CPUs this machine
//! has, a [`Plan`] — which stages get a worker (and a CPU) of their own, which are
//! fused onto shared workers, and their ring sizes and bursts.

use std::fmt;

use crate::budget::{ActivationBudget, UringBudget};
use crate::plan::{available_cpus, Pin, Plan, PlanError};

/// What one stage needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    /// Cores for the stage.
    pub cores: Cores,
    /// Slots of its input ring, if it cares.
    pub ring: Option<usize>,
    /// Its burst size, if it cares.
    pub burst: Option<usize>,
    /// Items and time per activation, if more than one burst.
    pub activation: Option<ActivationBudget>,
    /// What it needs of its worker's io_uring, if it does I/O.
    pub uring: Option<UringBudget>,
}

/// A stage's claim on CPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cores {
    /// A worker pinned to a CPU of its own.
    Dedicated,
    /// A worker pinned to this CPU id, of its own.
    Cpu(usize),
    /// A share of a worker other stages also run on, by weight (expected relative
    /// cost per item; 1.0 is typical).
    Share(f64),
}

impl Default for Need {
    fn default() -> Self {
        Self {
            cores: Cores::Share(1.0),
            ring: None,
            burst: None,
            activation: None,
            uring: None,
        }
    }
}

impl fmt::Display for Cores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cores::Dedicated => f.write_str("dedicated"),
            Cores::Cpu(c) => write!(f, "cpu {c}"),
            Cores::Share(w) => write!(f, "share {w}"),
        }
    }
}

/// Builds plans from declared needs.
///
/// ```
/// use pipewright_runtime::allocator::{Allocator, Cores, Need};
///
/// let stages = ["parse", "crypto", "route", "sink"];
/// let plan = Allocator::with_cpus(2)
///     .need("crypto", Need { cores: Cores::Dedicated, ..Need::default() })
///     .allocate(&stages)?;
/// // crypto alone on one CPU; parse, route and sink fused on the other.
/// println!("{plan}");
/// # Ok::<(), pipewright_runtime::PlanError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Allocator {
    cpus: usize,
    needs: Vec<(String, Need)>,
}

impl Default for Allocator {
    fn default() -> Self {
        Self::with_cpus(available_cpus())
    }
}

impl Allocator {
    /// An allocator for a machine with `cpus` CPUs (ids `0..cpus`).
    pub fn with_cpus(cpus: usize) -> Self {
        Self {
            cpus: cpus.max(1),
            needs: Vec::new(),
        }
    }

    /// Declares what `stage` needs (stages not declared get a share of weight 1).
    pub fn need(mut self, stage: &str, need: Need) -> Self {
        self.needs.retain(|(s, _)| s != stage);
        self.needs.push((stage.to_string(), need));
        self
    }

    fn need_of(&self, stage: &str) -> Need {
        self.needs
            .iter()
            .find(|(s, _)| s == stage)
            .map(|(_, n)| n.clone())
            .unwrap_or_default()
    }

    /// The plan for `stages` (in pipeline order), or why the needs cannot be met.
    pub fn allocate(&self, stages: &[&str]) -> Result<Plan, PlanError> {
        for (name, need) in &self.needs {
            if !stages.contains(&name.as_str()) {
                return Err(PlanError::UnknownStage(name.clone()));
            }
            if let Cores::Share(w) = need.cores {
                if !(w > 0.0 && w.is_finite()) {
                    return Err(PlanError::BadShare {
                        stage: name.clone(),
                        weight: w,
                    });
                }
            }
        }
        // Stages with a CPU of their own.
        let mut taken = vec![false; self.cpus];
        let mut own: Vec<(&str, usize)> = Vec::new();
        for s in stages {
            if let Cores::Cpu(c) = self.need_of(s).cores {
                if c >= self.cpus {
                    return Err(PlanError::NoSuchCore {
                        core: c,
                        cpus: self.cpus,
                    });
                }
                if std::mem::replace(&mut taken[c], true) {
                    return Err(PlanError::CoreTwice { core: c });
                }
                own.push((s, c));
            }
        }
        for s in stages {
            if self.need_of(s).cores == Cores::Dedicated {
                let free =
                    taken
                        .iter()
                        .position(|t| !t)
                        .ok_or_else(|| PlanError::NotEnoughCores {
                            wanted: stages
                                .iter()
                                .filter(|s| !matches!(self.need_of(s).cores, Cores::Share(_)))
                                .count()
                                + usize::from(
                                    stages
                                        .iter()
                                        .any(|s| matches!(self.need_of(s).cores, Cores::Share(_))),
                                ),
                            cpus: self.cpus,
                        })?;
                taken[free] = true;
                own.push((s, free));
            }
        }
        // Sharing stages: split into contiguous runs of about equal weight, one per
        // remaining CPU (contiguous runs keep neighbours fused).
        let sharing: Vec<(&str, f64)> = stages
            .iter()
            .filter_map(|s| match self.need_of(s).cores {
                Cores::Share(w) => Some((*s, w)),
                _ => None,
            })
            .collect();
        let free: Vec<usize> = (0..self.cpus).filter(|c| !taken[*c]).collect();
        if !sharing.is_empty() && free.is_empty() {
            return Err(PlanError::NotEnoughCores {
                wanted: own.len() + 1,
                cpus: self.cpus,
            });
        }
        let mut plan = Plan::explicit();
        for (stage, cpu) in &own {
            plan = plan.worker([*stage], Pin::Core(*cpu));
        }
        if !sharing.is_empty() {
            let groups = free.len().min(sharing.len());
            let total: f64 = sharing.iter().map(|(_, w)| w).sum();
            let target = total / groups as f64;
            let mut runs: Vec<Vec<&str>> = vec![Vec::new()];
            let mut acc = 0.0;
            for (i, (s, w)) in sharing.iter().enumerate() {
                let open = !runs.last().expect("one run").is_empty() && runs.len() < groups;
                // Start the next run when this one has its share, or when every stage
                // left is needed to give each remaining CPU at least one stage.
                let stages_left = sharing.len() - i;
                let runs_to_open = groups - runs.len();
                if open && (acc + w / 2.0 > target || stages_left == runs_to_open) {
                    runs.push(Vec::new());
                    acc = 0.0;
                }
                runs.last_mut().expect("one run").push(s);
                acc += w;
            }
            for (run, cpu) in runs.into_iter().zip(free) {
                plan = plan.worker(run, Pin::Core(cpu));
            }
        }
        for s in stages {
            let need = self.need_of(s);
            if let Some(r) = need.ring {
                plan = plan.ring_capacity_for(s, r);
            }
            if let Some(u) = need.uring {
                plan = plan.uring(s, u);
            }
            if let Some(a) = need.activation {
                plan = plan.activation(s, a);
            }
            if let Some(b) = need.burst {
                plan = plan.burst(s, b);
            }
        }
        plan.resolve_for(stages, self.cpus)?;
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dedicated() -> Need {
        Need {
            cores: Cores::Dedicated,
            ..Need::default()
        }
    }

    #[test]
    fn dedicated_stages_get_a_cpu_and_the_rest_share() {
        let stages = ["a", "b", "c", "d"];
        let plan = Allocator::with_cpus(2)
            .need("b", dedicated())
            .allocate(&stages)
            .unwrap();
        let r = plan.resolve(&stages).unwrap();
        assert_eq!(r.workers.len(), 2);
        assert_eq!(r.workers[0].nodes, vec![1]);
        assert_eq!(r.workers[1].nodes, vec![0, 2, 3]);
        assert_ne!(r.workers[0].core, r.workers[1].core);
    }

    #[test]
    fn shares_split_by_weight_into_contiguous_runs() {
        let stages = ["a", "b", "c", "d"];
        let heavy = Need {
            cores: Cores::Share(3.0),
            ..Need::default()
        };
        let plan = Allocator::with_cpus(2)
            .need("a", heavy)
            .allocate(&stages)
            .unwrap();
        let r = plan.resolve(&stages).unwrap();
        assert_eq!(r.workers[0].nodes, vec![0], "the heavy stage alone");
        assert_eq!(r.workers[1].nodes, vec![1, 2, 3]);
        let even = Allocator::with_cpus(2)
            .allocate(&stages)
            .unwrap()
            .resolve(&stages)
            .unwrap();
        assert_eq!(even.workers[0].nodes, vec![0, 1]);
        assert_eq!(even.workers[1].nodes, vec![2, 3]);
    }

    #[test]
    fn impossible_needs_are_typed_errors() {
        let stages = ["a", "b", "c"];
        let e = Allocator::with_cpus(2)
            .need("a", dedicated())
            .need("b", dedicated())
            .allocate(&stages)
            .unwrap_err();
        assert!(
            matches!(e, PlanError::NotEnoughCores { cpus: 2, .. }),
            "{e}"
        );
        let e = Allocator::with_cpus(2)
            .need(
                "a",
                Need {
                    cores: Cores::Cpu(5),
                    ..Need::default()
                },
            )
            .allocate(&stages);
        assert_eq!(e.unwrap_err(), PlanError::NoSuchCore { core: 5, cpus: 2 });
        let e = Allocator::with_cpus(2)
            .need(
                "a",
                Need {
                    cores: Cores::Cpu(1),
                    ..Need::default()
                },
            )
            .need(
                "b",
                Need {
                    cores: Cores::Cpu(1),
                    ..Need::default()
                },
            )
            .allocate(&stages);
        assert_eq!(e.unwrap_err(), PlanError::CoreTwice { core: 1 });
        let e = Allocator::with_cpus(2)
            .need(
                "a",
                Need {
                    cores: Cores::Share(0.0),
                    ..Need::default()
                },
            )
            .allocate(&stages);
        assert!(matches!(e.unwrap_err(), PlanError::BadShare { .. }));
        let e = Allocator::with_cpus(2)
            .need(
                "a",
                Need {
                    ring: Some(0),
                    ..Need::default()
                },
            )
            .allocate(&stages);
        assert_eq!(e.unwrap_err(), PlanError::ZeroRing);
        let e = Allocator::with_cpus(2)
            .need("zz", Need::default())
            .allocate(&stages);
        assert_eq!(e.unwrap_err(), PlanError::UnknownStage("zz".into()));
    }

    #[test]
    fn more_sharing_stages_than_cpus_fuse() {
        let stages = ["a", "b", "c", "d", "e", "f"];
        let r = Allocator::with_cpus(4)
            .allocate(&stages)
            .unwrap()
            .resolve_for(&stages, 4)
            .unwrap();
        let mut all: Vec<usize> = r.workers.iter().flat_map(|w| w.nodes.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5]);
        assert!(r.workers.len() <= 4);
    }
}
