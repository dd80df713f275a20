use pipewright::{stage, PipelineBuilder, Plan, Runtime};

fn main() {
    let b = PipelineBuilder::new();
    let (_input, numbers) = b.input::<u32>("numbers");
    let out = numbers.then("double", stage::map(|x: u32| x * 2)).output("out");
    let mut running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    // The output carries `u32`, not `String`.
    let rx: pipewright::Output<String> = running.output(&out).unwrap();
    drop(rx);
}
