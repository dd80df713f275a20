//! Unit tests of the controller's decisions, on synthetic observations.

use super::*;

fn stage(name: &str, worker: usize, busy_share: f64) -> StageLoad {
    StageLoad {
        name: name.into(),
        worker,
        busy_ns: busy_share * 1e8,
        items: 1000,
        ns_per_item: Some(100.0),
        queue_depth: 0,
        queue_capacity: 1024,
        burst: 32,
        movable: true,
    }
}

fn obs(stages: Vec<StageLoad>) -> Observation {
    Observation {
        interval_ns: 1e8,
        workers: 2,
        stages,
        replicated: Vec::new(),
    }
}

/// Applies moves to the next observation, as the runtime would.
fn apply(mut o: Observation, decisions: &[Decision]) -> Observation {
    for d in decisions {
        if let Decision::Move { stage, to, .. } = d {
            o.stages
                .iter_mut()
                .filter(|s| &s.name == stage)
                .for_each(|s| s.worker = *to);
        }
    }
    o
}

#[test]
fn the_bottleneck_gets_a_core_after_patience_then_rests() {
    let mut c = Controller::new(ControllerConfig::default());
    // Worker 0 runs a (0.9) and b (0.5); worker 1 runs c and d (0.1 each).
    let o = obs(vec![
        stage("a", 0, 0.9),
        stage("b", 0, 0.5),
        stage("c", 1, 0.1),
        stage("d", 1, 0.1),
    ]);
    assert!(c.observe(&o).is_empty());
    assert!(c.observe(&o).is_empty());
    let d = c.observe(&o);
    assert_eq!(
        d,
        vec![Decision::Move {
            stage: "b".into(),
            from: 0,
            to: 1,
            why: Reason::Balance
        }]
    );
    let o = apply(o, &d);
    for _ in 0..10 {
        assert!(c.observe(&o).is_empty(), "balanced now: no further moves");
    }
}

#[test]
fn no_oscillation_under_steady_load() {
    let mut c = Controller::new(ControllerConfig::default());
    let mut o = obs(vec![
        stage("a", 0, 0.6),
        stage("b", 0, 0.6),
        stage("c", 0, 0.3),
        stage("d", 1, 0.05),
    ]);
    let mut moves = 0;
    for _ in 0..200 {
        let d = c.observe(&o);
        moves += d
            .iter()
            .filter(|d| matches!(d, Decision::Move { .. }))
            .count();
        o = apply(o, &d);
    }
    assert!(moves <= 2, "{moves} moves under constant load");
}

#[test]
fn a_noisy_interval_does_not_trigger_a_move() {
    let mut c = Controller::new(ControllerConfig::default());
    let calm = obs(vec![stage("a", 0, 0.4), stage("b", 1, 0.4)]);
    let spike = obs(vec![stage("a", 0, 0.95), stage("b", 1, 0.1)]);
    for i in 0..30 {
        let o = if i % 3 == 0 { &spike } else { &calm };
        assert!(c
            .observe(o)
            .iter()
            .all(|d| !matches!(d, Decision::Move { .. })));
    }
}

#[test]
fn idle_pipelines_fuse_onto_one_worker() {
    let mut c = Controller::new(ControllerConfig::default());
    let o = obs(vec![
        stage("a", 0, 0.05),
        stage("b", 1, 0.05),
        stage("c", 1, 0.02),
    ]);
    c.observe(&o);
    c.observe(&o);
    let d = c.observe(&o);
    assert_eq!(d.len(), 1);
    assert!(matches!(
        &d[0],
        Decision::Move {
            why: Reason::Fuse,
            ..
        }
    ));
}

#[test]
fn bursts_follow_backlog_and_latency() {
    let c = Controller::new(ControllerConfig::default());
    let mut s = stage("a", 0, 0.5);
    s.queue_depth = 900;
    assert_eq!(
        c.bursts(&obs(vec![s.clone()])),
        vec![Decision::Burst {
            stage: "a".into(),
            from: 32,
            to: 64
        }]
    );
    s.ns_per_item = Some(5_000.0); // 32 * 5 us = 160 us > 50 us target
    assert_eq!(
        c.bursts(&obs(vec![s.clone()])),
        vec![Decision::Burst {
            stage: "a".into(),
            from: 32,
            to: 16
        }]
    );
    s.queue_depth = 0;
    s.ns_per_item = Some(100.0);
    assert!(c.bursts(&obs(vec![s])).is_empty());
}

#[test]
fn pinned_stages_are_never_moved() {
    let mut c = Controller::new(ControllerConfig::default());
    let mut a = stage("a", 0, 0.9);
    let mut b = stage("b", 0, 0.5);
    a.movable = false;
    b.movable = false;
    let o = obs(vec![a, b, stage("c", 1, 0.0)]);
    for _ in 0..10 {
        assert!(c
            .observe(&o)
            .iter()
            .all(|d| !matches!(d, Decision::Move { .. })));
    }
}

#[test]
fn async_stages_get_no_burst_proposals_the_runtime_would_refuse() {
    let c = Controller::new(ControllerConfig::default());
    let mut s = stage("enrich", 0, 0.5);
    s.movable = false;
    s.ns_per_item = Some(5_000.0); // would shrink if it could
    assert!(c.bursts(&obs(vec![s.clone()])).is_empty());
    s.ns_per_item = Some(100.0);
    s.queue_depth = 900; // would grow if it could
    assert!(c.bursts(&obs(vec![s])).is_empty());
}

/// `parse` declared with two replicas on workers 0 and 1, `active` of them used;
/// the active ones each busy `share` of a core; `other` on worker 1.
fn replicated(active: usize, share: f64, other: f64) -> Observation {
    let mut o = obs(vec![
        stage("read", 0, 0.05),
        stage("parse/split", 0, 0.05),
        stage("parse#0", 0, share),
        stage("parse#1", 1, if active > 1 { share } else { 0.0 }),
        stage("parse/order", 1, 0.02),
        stage("sum", 1, other),
    ]);
    o.replicated.push(ReplicatedStage {
        name: "parse".into(),
        active,
        max: 2,
    });
    o
}

/// Applies replica changes to a stage whose total work is `work` cores' worth.
fn apply_replicas(o: &Observation, decisions: &[Decision], work: f64, other: f64) -> Observation {
    let mut active = o.replicated[0].active;
    for d in decisions {
        if let Decision::Replicas { to, .. } = d {
            active = *to;
        }
    }
    // Saturated replicas cannot be busier than one core each.
    replicated(active, (work / active as f64).min(1.0), other)
}

#[test]
fn a_saturated_replicated_stage_gets_its_next_replica_after_patience() {
    let mut c = Controller::new(ControllerConfig::default());
    let o = replicated(1, 0.95, 0.1);
    assert!(c.observe(&o).is_empty());
    assert!(c.observe(&o).is_empty());
    assert_eq!(
        c.observe(&o),
        vec![Decision::Replicas {
            stage: "parse".into(),
            from: 1,
            to: 2
        }]
    );
}

#[test]
fn no_replica_is_added_where_its_worker_has_no_room() {
    let mut c = Controller::new(ControllerConfig::default());
    let o = replicated(1, 0.95, 0.9);
    for _ in 0..20 {
        assert!(c
            .observe(&o)
            .iter()
            .all(|d| !matches!(d, Decision::Replicas { .. })));
    }
}

#[test]
fn replicas_are_given_back_when_the_load_fits_in_fewer() {
    let mut c = Controller::new(ControllerConfig::default());
    let o = replicated(2, 0.15, 0.1);
    let mut decisions = Vec::new();
    for _ in 0..3 {
        decisions.extend(c.observe(&o));
    }
    assert!(decisions.contains(&Decision::Replicas {
        stage: "parse".into(),
        from: 2,
        to: 1
    }));
}

#[test]
fn replica_counts_settle_under_steady_load() {
    for work in [0.3f64, 0.6, 0.8, 1.2, 1.9] {
        let mut c = Controller::new(ControllerConfig::default());
        let mut o = replicated(1, work.min(1.0), 0.1);
        let mut changes = 0;
        for _ in 0..300 {
            let d = c.observe(&o);
            changes += d
                .iter()
                .filter(|d| matches!(d, Decision::Replicas { .. }))
                .count();
            o = apply_replicas(&o, &d, work, 0.1);
        }
        assert!(changes <= 1, "work {work}: {changes} replica changes");
    }
}

#[test]
fn replicas_are_never_moved_onto_a_siblings_worker() {
    let mut c = Controller::new(ControllerConfig::default());
    // Worker 0 is far busier, but its only movable candidates are replicas.
    let o = replicated(2, 0.9, 0.0);
    for _ in 0..20 {
        for d in c.observe(&o) {
            if let Decision::Move { stage, .. } = &d {
                assert!(!stage.contains('#'), "{d}");
            }
        }
    }
}
