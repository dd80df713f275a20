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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
