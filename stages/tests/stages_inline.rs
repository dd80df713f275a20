//! Stages, layers and graphs run on the deterministic inline executor.

use std::collections::VecDeque;
use std::convert::Infallible;

use pipewright_stages::inline::{InlineError, InlineTransport};
use pipewright_stages::layer::ErrorPolicyLayer;
use pipewright_stages::{
    stage, AsyncStage, Burst, Failures, Layer, Outbox, PipelineBuilder, Stage, StageFailure,
};
use proptest::prelude::*;

type Builder = PipelineBuilder<InlineTransport>;

/// Emits sums of consecutive pairs; an odd item out is emitted by `flush`.
struct PairSums(Option<u32>);

impl Stage for PairSums {
    type In = u32;
    type Out = u32;
    type Error = Infallible;

    fn process(&mut self, x: u32, out: &mut Outbox<'_, u32>) -> Result<(), Infallible> {
        match self.0.take() {
            Some(first) => out.push(first + x),
            None => self.0 = Some(x),
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut Outbox<'_, u32>) -> Result<(), Infallible> {
        if let Some(last) = self.0.take() {
            out.push(last);
        }
        Ok(())
    }
}

#[test]
fn flush_emits_what_a_batching_stage_holds() {
    let b = Builder::new();
    let (input, numbers) = b.input::<u32>("numbers");
    let out = numbers.then("pairs", PairSums(None)).output("out");
    let mut run = b.build().unwrap().run_inline();
    run.send_all(&input, [1, 2, 3, 4, 5]);
    run.finish().unwrap();
    assert_eq!(run.take_output(&out), vec![3, 7, 5]);
}

#[test]
fn one_input_many_outputs_and_zero_outputs_per_item() {
    let b = Builder::new();
    let (input, lines) = b.input::<&'static str>("lines");
    let words = lines
        .then(
            "split",
            stage::try_map(|l: &str| {
                Ok::<_, Infallible>(l.split(' ').map(str::to_string).collect::<Vec<_>>())
            }),
        )
        .then("flatten", Flatten)
        .output("words");
    let mut run = b.build().unwrap().run_inline();
    run.send_all(&input, ["a b", "", "c"]);
    run.finish().unwrap();
    assert_eq!(run.take_output(&words), vec!["a", "b", "", "c"]);
}

struct Flatten;

impl Stage for Flatten {
    type In = Vec<String>;
    type Out = String;
    type Error = Infallible;
    fn process(&mut self, v: Vec<String>, out: &mut Outbox<'_, String>) -> Result<(), Infallible> {
        out.extend(v);
        Ok(())
    }
}

#[test]
fn unrouted_items_are_dropped_not_misdelivered() {
    let b = Builder::new();
    let (input, numbers) = b.input::<u32>("numbers");
    // Key 2 and above have no route.
    let [zero, one] = numbers.route("mod3", |x: &u32| (*x % 3) as usize);
    let (zero, one) = (zero.output("zero"), one.output("one"));
    let mut run = b.build().unwrap().run_inline();
    run.send_all(&input, 0..9);
    run.finish().unwrap();
    assert_eq!(run.take_output(&zero), vec![0, 3, 6]);
    assert_eq!(run.take_output(&one), vec![1, 4, 7]);
}

#[test]
fn fail_pipeline_policy_stops_the_run_with_the_stage_name() {
    let b = Builder::new();
    let (input, text) = b.input::<&'static str>("text");
    text.then(
        "parse",
        ErrorPolicyLayer::fail_pipeline().layer(stage::try_map(|s: &str| s.parse::<u8>())),
    )
    .for_each("sink", |_| {});
    let mut run = b.build().unwrap().run_inline();
    run.send_all(&input, ["1", "300"]);
    match run.finish() {
        Err(InlineError::Failed(StageFailure { stage, message })) => {
            assert_eq!(stage, "parse");
            assert!(message.contains("too large"), "{message}");
        }
        other => panic!("expected failure, got {other:?}"),
    }
}

#[test]
fn a_panic_drops_one_item_and_the_stage_carries_on() {
    let b = Builder::new();
    let (input, numbers) = b.input::<u32>("numbers");
    let out = numbers
        .then(
            "fragile",
            stage::map(|x: u32| {
                assert!(x != 3, "three is not allowed");
                x
            }),
        )
        .output("out");
    let mut run = b.build().unwrap().run_inline();
    run.send_all(&input, 1..=5);
    run.finish().unwrap();
    assert_eq!(run.take_output(&out), vec![1, 2, 4, 5]);
}

struct Nop;

impl AsyncStage for Nop {
    type In = u32;
    type Out = u32;
    type Error = Infallible;
    async fn process_burst(
        &mut self,
        b: &mut Burst<'_, u32>,
        o: &mut Outbox<'_, u32>,
        _: &mut Failures<'_, Infallible>,
    ) {
        o.extend(b.drain());
    }
}

#[test]
fn inline_runs_refuse_async_stages_with_a_clear_error() {
    let b = Builder::new();
    let (input, numbers) = b.input::<u32>("numbers");
    numbers.then_async("nop", Nop).for_each("sink", |_| {});
    let mut run = b.build().unwrap().run_inline();
    run.send_all(&input, [1]);
    assert_eq!(
        run.finish().unwrap_err(),
        InlineError::AsyncStage("nop".into())
    );
}

#[test]
fn burst_view_keeps_unread_items() {
    let mut buf: VecDeque<u32> = (0..4).collect();
    let mut burst = Burst::new(&mut buf);
    assert_eq!(burst.peek(), Some(&0));
    assert_eq!(burst.pop(), Some(0));
    assert_eq!(burst.len(), 3);
    assert_eq!(buf, [1, 2, 3]);
}

/// An application input merged straight into a stage's output is refused at build
/// time, with the fix in the message (draining closes an input by closing its edge,
/// which would cut off the stage too).
#[test]
fn an_input_merged_with_a_stage_output_is_refused_with_the_fix() {
    let b = Builder::new();
    let (_input, commands) = b.input::<u32>("commands");
    let (_other, numbers) = b.input::<u32>("numbers");
    let doubled = numbers.then("double", stage::map(|x: u32| x * 2));
    doubled.merge(commands).for_each("sink", |_| {});
    let err = b.build().unwrap_err();
    assert_eq!(
        err,
        pipewright_stages::BuildError::InputMergedWithStage {
            input: "commands".into(),
            stage: "double".into()
        }
    );
    assert!(err.to_string().contains("commands-in"), "{err}");
    // Through a stage of its own, the same merge builds.
    let b = Builder::new();
    let (_input, commands) = b.input::<u32>("commands");
    let (_other, numbers) = b.input::<u32>("numbers");
    let doubled = numbers.then("double", stage::map(|x: u32| x * 2));
    let commands = commands.then("commands-in", stage::map(|x: u32| x));
    doubled.merge(commands).for_each("sink", |_| {});
    assert!(b.build().is_ok());
}

proptest! {
    /// Route by key, transform per branch, merge: every item arrives exactly once, each
    /// branch keeps its order, and bursts of any size give the same result.
    #[test]
    fn route_and_merge_preserve_items_and_per_key_order(items in prop::collection::vec(any::<u16>(), 0..600), burst in 1usize..70) {
        let b = Builder::new().default_burst(burst);
        let (input, numbers) = b.input::<u16>("numbers");
        let [low, high] = numbers.route("split", |x: &u16| usize::from(*x >= 0x8000));
        let low = low.then("low", stage::map(|x: u16| (0u8, u32::from(x) * 3)));
        let high = high.then("high", stage::map(|x: u16| (1u8, u32::from(x) + 1)));
        let out = low.merge(high).output("out");
        let mut run = b.build().unwrap().run_inline();
        run.send_all(&input, items.clone());
        run.finish().unwrap();
        let got = run.take_output(&out);
        let want_low: Vec<u32> = items.iter().filter(|x| **x < 0x8000).map(|x| u32::from(*x) * 3).collect();
        let want_high: Vec<u32> = items.iter().filter(|x| **x >= 0x8000).map(|x| u32::from(*x) + 1).collect();
        let got_low: Vec<u32> = got.iter().filter(|(k, _)| *k == 0).map(|(_, v)| *v).collect();
        let got_high: Vec<u32> = got.iter().filter(|(k, _)| *k == 1).map(|(_, v)| *v).collect();
        prop_assert_eq!(got.len(), items.len());
        prop_assert_eq!(got_low, want_low);
        prop_assert_eq!(got_high, want_high);
    }
}

#[test]
#[should_panic(expected = "send_all after finish")]
fn items_sent_after_finish_are_refused_loudly_not_lost() {
    let b = Builder::new();
    let (input, numbers) = b.input::<u32>("numbers");
    numbers.for_each("sink", |_| {});
    let mut run = b.build().unwrap().run_inline();
    run.send_all(&input, [1]);
    run.finish().unwrap();
    run.send_all(&input, [2]);
}

/// A stream of another builder merged into this one is refused at build time (its
/// stage ids mean nothing here), never a panic or a silent mis-wiring.
#[test]
fn a_stream_of_another_builder_is_refused() {
    let a = Builder::new();
    let other = Builder::new();
    let (_ia, sa) = a.input::<u32>("a");
    let (_ib, sb) = other.input::<u32>("b");
    let sb = sb.then("b-stage", stage::map(|x: u32| x + 1));
    sa.merge(sb)
        .then("after", stage::map(|x: u32| x))
        .for_each("sink", |_| {});
    assert_eq!(
        a.build().unwrap_err(),
        pipewright_stages::BuildError::ForeignStream
    );
}
