//! Bad pipelines and bad plans are typed errors, not panics.

use pipewright::{stage, BuildError, Pin, PipelineBuilder, Plan, PlanError, Runtime, StartError};

#[test]
fn unconnected_output_is_reported() {
    let b = PipelineBuilder::new();
    let (_input, numbers) = b.input::<u32>("numbers");
    let _dangling = numbers.then("double", stage::map(|x: u32| x * 2));
    let err = b.build().unwrap_err();
    assert_eq!(
        err,
        BuildError::UnconnectedOutput {
            stage: "double".into(),
            port: 0
        }
    );
    assert!(err.to_string().contains("not connected"));
}

#[test]
fn unconnected_route_is_reported() {
    let b = PipelineBuilder::new();
    let (_input, numbers) = b.input::<u32>("numbers");
    let [a, _b] = numbers.route("split", |x: &u32| (*x % 2) as usize);
    a.for_each("sink", |_| {});
    assert_eq!(
        b.build().unwrap_err(),
        BuildError::UnconnectedOutput {
            stage: "split".into(),
            port: 1
        }
    );
}

#[test]
fn duplicate_names_and_empty_pipelines_are_rejected() {
    let b = PipelineBuilder::new();
    let (_i, numbers) = b.input::<u32>("x");
    numbers.for_each("x", |_| {});
    assert_eq!(
        b.build().unwrap_err(),
        BuildError::DuplicateName("x".into())
    );
    assert_eq!(
        PipelineBuilder::new().build().unwrap_err(),
        BuildError::Empty
    );
    let b = PipelineBuilder::new();
    let (_i, numbers) = b.input::<u32>("in");
    numbers
        .then("zero", stage::map(|x: u32| x))
        .burst(0)
        .for_each("sink", |_| {});
    assert_eq!(b.build().unwrap_err(), BuildError::ZeroBurst("zero".into()));
    let b = PipelineBuilder::new().default_burst(0);
    let (_i, numbers) = b.input::<u32>("in");
    numbers.for_each("sink", |_| {});
    assert_eq!(
        b.build().unwrap_err(),
        BuildError::ZeroBurst("(default burst)".into())
    );
}

fn two_stage() -> pipewright::RuntimePipeline {
    let b = PipelineBuilder::new();
    let (_i, numbers) = b.input::<u32>("in");
    numbers
        .then("a", stage::map(|x: u32| x))
        .for_each("b", |_| {});
    b.build().unwrap()
}

#[test]
fn plans_that_do_not_fit_are_rejected_with_a_reason() {
    let cases = [
        (
            Plan::explicit().worker(["a", "c"], Pin::Auto),
            PlanError::UnknownStage("c".into()),
        ),
        (
            Plan::explicit().worker(["a"], Pin::Auto),
            PlanError::StageMissing("b".into()),
        ),
        (
            Plan::explicit()
                .worker(["a", "b"], Pin::Auto)
                .worker(["a"], Pin::Auto),
            PlanError::StageTwice("a".into()),
        ),
        (Plan::fused().ring_capacity(0), PlanError::ZeroRing),
        (
            Plan::fused().burst("a", 0),
            PlanError::ZeroBurst("a".into()),
        ),
        (Plan::spread(0), PlanError::NoWorkers),
        (
            Plan::explicit().worker(["a", "b"], Pin::Core(4096)),
            PlanError::NoSuchCore {
                core: 4096,
                cpus: pipewright::available_cpus(),
            },
        ),
    ];
    for (plan, want) in cases {
        match Runtime::start(two_stage(), plan) {
            Err(StartError::Plan(got)) => assert_eq!(got, want),
            other => panic!("expected {want:?}, got {other:?}"),
        }
    }
}

#[test]
fn type_mismatches_do_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
