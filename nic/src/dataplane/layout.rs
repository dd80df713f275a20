//! Where the data plane's stages run: the placement decision, sans I/O.
//!
//! The data plane has two sides. The VF side takes frames from the guests (VF
//! receive), encapsulates them (egress) and sends them (underlay transmit); the
//! underlay side receives tunnelled datagrams (underlay receive), decapsulates them
//! (ingress) and hands them to the guests (VF transmit). [`place`] says which worker
//! runs each stage for a [`Workers`] choice:
//!
//! - fixed [`Workers::One`]: everything on worker 0 (run to completion);
//! - fixed [`Workers::Two`]: the VF side on worker 0, the underlay side on worker 1;
//! - switchable (the choice can change while the data plane runs): two workers,
//!   and every async stage (the receive sources, the socket underlay's transmit) on
//!   worker 0 whatever the choice, since an async stage runs as a task of its worker
//!   and cannot move. The sync stages follow the choice: all on worker 0 for
//!   [`Workers::One`], the underlay side's on worker 1 for [`Workers::Two`]. Worker 1
//!   then parks, costing nothing, while the choice is `One`.

use super::Workers;

/// Which side of the data plane a stage belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// VF receive, egress, underlay transmit.
    Vf,
    /// Underlay receive, ingress, VF transmit.
    Underlay,
}

/// A stage as the placement sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StageRole {
    pub(crate) side: Side,
    /// Runs as a task of its worker (a source, an async sink): it cannot move.
    pub(crate) is_async: bool,
}

/// The side of a stage of the data plane's pipeline, by its name.
pub(crate) fn side_of(name: &str) -> Side {
    let vf_side = (name.starts_with("vf") && name.ends_with("-rx"))
        || name.starts_with("egress")
        || name == "underlay-tx";
    if vf_side {
        Side::Vf
    } else {
        Side::Underlay
    }
}

/// How many workers a layout uses.
pub(crate) fn worker_count(workers: Workers, switchable: bool) -> usize {
    match (workers, switchable) {
        (Workers::One, false) => 1,
        _ => 2,
    }
}

/// The worker of every stage (in the order given) for `workers`, in a switchable
/// layout or a fixed one; see the module docs.
pub(crate) fn place(stages: &[StageRole], workers: Workers, switchable: bool) -> Vec<usize> {
    stages
        .iter()
        .map(|s| match (workers, switchable) {
            (Workers::One, _) => 0,
            (Workers::Two, true) if s.is_async => 0,
            (Workers::Two, _) => match s.side {
                Side::Vf => 0,
                Side::Underlay => 1,
            },
        })
        .collect()
}

/// When a switchable data plane changes its [`Workers`] choice, from its packet
/// rate (frames received per second, both directions), as a pure decision: above
/// `two_above_pps` it moves to two workers at once (a worker per side for the load);
/// below `one_below_pps` for `hold` observations in a row it runs to completion on
/// one (sparse traffic: a round trip on one thread). Between the two thresholds it
/// keeps its choice, so a rate near one threshold does not make it flap.
///
/// ```
/// use pipewright_nic::dataplane::{Workers, WorkersPolicy};
///
/// let mut policy = WorkersPolicy::new(Workers::Two);
/// assert_eq!(policy.observe(500.0), None);
/// assert_eq!(policy.observe(500.0), None);
/// assert_eq!(policy.observe(500.0), Some(Workers::One)); // calm for `hold` = 3
/// assert_eq!(policy.observe(1e6), Some(Workers::Two)); // load: at once
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct WorkersPolicy {
    /// Run to completion after `hold` observations below this rate.
    pub one_below_pps: f64,
    /// Two workers as soon as the rate is above this.
    pub two_above_pps: f64,
    /// Observations below `one_below_pps` in a row before running to completion.
    pub hold: u32,
    current: Workers,
    calm: u32,
}

impl WorkersPolicy {
    /// Starting from `current`: one worker below 20,000 frames/s held for three
    /// observations, two above 100,000.
    pub fn new(current: Workers) -> Self {
        Self {
            one_below_pps: 20_000.0,
            two_above_pps: 100_000.0,
            hold: 3,
            current,
            calm: 0,
        }
    }

    /// The choice in force.
    pub fn current(&self) -> Workers {
        self.current
    }

    /// One observation of the rate; the new choice if it changes.
    pub fn observe(&mut self, pps: f64) -> Option<Workers> {
        match self.current {
            Workers::Two if pps < self.one_below_pps => {
                self.calm += 1;
                if self.calm >= self.hold {
                    self.calm = 0;
                    self.current = Workers::One;
                    return Some(Workers::One);
                }
                None
            }
            Workers::Two => {
                self.calm = 0;
                None
            }
            Workers::One if pps > self.two_above_pps => {
                self.current = Workers::Two;
                Some(Workers::Two)
            }
            Workers::One => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A switch to one worker only after `hold` calm observations in a row, to two
        /// only under load; a steady rate switches at most once.
        #[test]
        fn the_policy_switches_only_with_reason_and_never_flaps(
            rates in proptest::collection::vec(prop_oneof![0.0f64..30_000.0, 0.0f64..1e6], 0..60),
            steady in 0.0f64..1e6,
            start_one in any::<bool>(),
        ) {
            let start = if start_one { Workers::One } else { Workers::Two };
            let mut p = WorkersPolicy::new(start);
            let mut history: Vec<f64> = Vec::new();
            for r in &rates {
                let before = p.current();
                history.push(*r);
                match p.observe(*r) {
                    Some(Workers::One) => {
                        prop_assert_eq!(before, Workers::Two);
                        let n = p.hold as usize;
                        prop_assert!(history.len() >= n);
                        prop_assert!(history[history.len() - n..].iter().all(|x| *x < p.one_below_pps));
                    }
                    Some(Workers::Two) => {
                        prop_assert_eq!(before, Workers::One);
                        prop_assert!(*r > p.two_above_pps);
                    }
                    None => prop_assert_eq!(p.current(), before),
                }
            }
            let mut q = WorkersPolicy::new(start);
            let switches = (0..20).filter(|_| q.observe(steady).is_some()).count();
            prop_assert!(switches <= 1);
        }
    }

    fn role() -> impl Strategy<Value = StageRole> {
        (any::<bool>(), any::<bool>()).prop_map(|(vf, is_async)| StageRole {
            side: if vf { Side::Vf } else { Side::Underlay },
            is_async,
        })
    }

    fn workers() -> impl Strategy<Value = Workers> {
        prop_oneof![Just(Workers::One), Just(Workers::Two)]
    }

    proptest! {
        /// Every stage gets a worker that exists; a switch between two choices moves
        /// only sync stages (async ones cannot move); `One` runs everything on one
        /// worker; `Two` keeps each side's sync stages together, apart from the other
        /// side's.
        #[test]
        fn placements_are_valid_and_switches_move_only_sync_stages(
            stages in proptest::collection::vec(role(), 0..12),
            from in workers(),
            to in workers(),
            switchable in any::<bool>(),
        ) {
            let before = place(&stages, from, switchable);
            let after = place(&stages, to, switchable);
            prop_assert_eq!(before.len(), stages.len());
            for w in before.iter().chain(&after) {
                prop_assert!(*w < worker_count(from, switchable).max(worker_count(to, switchable)));
            }
            if switchable {
                prop_assert_eq!(worker_count(from, true), worker_count(to, true));
                for (i, s) in stages.iter().enumerate() {
                    if s.is_async {
                        prop_assert_eq!(before[i], after[i]);
                    }
                }
            }
            if to == Workers::One {
                prop_assert!(after.iter().all(|w| *w == 0));
            } else {
                for (i, s) in stages.iter().enumerate() {
                    if !s.is_async || !switchable {
                        prop_assert_eq!(after[i], usize::from(s.side == Side::Underlay));
                    }
                }
            }
        }
    }

    #[test]
    fn stage_names_map_to_their_side() {
        for vf in [
            "vf0-rx",
            "vf12-rx",
            "egress-classify",
            "egress-encap",
            "underlay-tx",
        ] {
            assert_eq!(side_of(vf), Side::Vf, "{vf}");
        }
        for u in [
            "underlay-rx-4789",
            "underlay-rx-xdp",
            "ingress-match",
            "ingress-decap",
            "vf-tx",
        ] {
            assert_eq!(side_of(u), Side::Underlay, "{u}");
        }
    }
}
