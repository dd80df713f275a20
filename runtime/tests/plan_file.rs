//! Plans load from TOML with typed errors and write back to the same plan.
#![cfg(not(loom))]

use pipewright_runtime::{Pin, Plan, PlanError};

#[test]
fn explicit_plans_round_trip() {
    let text = r#"
        ring_capacity = 2048
        adaptive = true
        busy_poll_us = 150

        [bursts]
        "*" = 16
        parse = 64

        [rings]
        sink = 4096

        [[worker]]
        stages = ["parse", "checksum"]
        cpu = 0

        [[worker]]
        stages = ["route", "sink"]
    "#;
    let plan = Plan::from_toml(text).unwrap();
    let want = Plan::explicit()
        .worker(["parse", "checksum"], Pin::Core(0))
        .worker(["route", "sink"], Pin::Auto)
        .ring_capacity(2048)
        .burst_all(16)
        .burst("parse", 64)
        .ring_capacity_for("sink", 4096)
        .adaptive()
        .busy_poll(std::time::Duration::from_micros(150));
    assert_eq!(plan, want);
    assert_eq!(
        Plan::from_toml(&plan.to_toml()).unwrap(),
        plan,
        "written plans read back the same"
    );
    let resolved = plan
        .resolve(&["parse", "checksum", "route", "sink"])
        .unwrap();
    assert_eq!(resolved.workers[0].nodes, vec![0, 1]);
}

#[test]
fn generated_layouts_load() {
    assert_eq!(
        Plan::from_toml("layout = \"fused\"").unwrap(),
        Plan::fused()
    );
    assert_eq!(
        Plan::from_toml("layout = { spread = 2 }").unwrap(),
        Plan::spread(2)
    );
    assert_eq!(
        Plan::from_toml("layout = \"per-stage\"").unwrap(),
        Plan::per_stage()
    );
}

#[test]
fn bad_plan_files_say_what_is_wrong() {
    for (text, needle) in [
        ("ring_capacty = 3", "unknown field"),
        (
            "[[worker]]\nstages = [\"a\"]\ncpu = \"fast\"",
            "use a CPU number",
        ),
        (
            "layout = \"fused\"\n[[worker]]\nstages = [\"a\"]",
            "not both",
        ),
        ("layout = \"diagonal\"", "unknown variant"),
    ] {
        match Plan::from_toml(text) {
            Err(PlanError::File(message)) => {
                assert!(message.contains(needle), "{text:?}: {message}")
            }
            other => panic!("{text:?}: expected a file error, got {other:?}"),
        }
    }
    // Values that parse but cannot run are rejected when resolved, with the same
    // typed errors as plans built in code.
    let zero = Plan::from_toml("ring_capacity = 0\nlayout = \"fused\"").unwrap();
    assert_eq!(zero.resolve(&["a"]), Err(PlanError::ZeroRing));
    // Sizes no machine could allocate are refused with the limit, not an abort.
    let huge = Plan::from_toml("ring_capacity = 1099511627776\nlayout = \"fused\"").unwrap();
    assert!(matches!(
        huge.resolve(&["a"]),
        Err(PlanError::RingTooLarge {
            capacity: 1099511627776,
            ..
        })
    ));
    let wide = Plan::fused().burst_all(usize::MAX);
    assert!(matches!(
        wide.resolve(&["a"]),
        Err(PlanError::BurstTooLarge { .. })
    ));
}
