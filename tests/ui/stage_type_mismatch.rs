use pipewright::{stage, PipelineBuilder};

fn main() {
    let b = PipelineBuilder::new();
    let (_input, numbers) = b.input::<u32>("numbers");
    // A stage that takes `String` cannot follow one that emits `u32`.
    numbers
        .then("double", stage::map(|x: u32| x * 2))
        .then("shout", stage::map(|s: String| s.to_uppercase()))
        .for_each("sink", |_| {});
}
