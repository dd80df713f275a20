//! The smallest useful pipeline: typed stages, an input, an output, a drain.
//!
//! `cargo run --example hello_pipeline`

use pipewright::{stage, PipelineBuilder, Plan, Runtime};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let b = PipelineBuilder::new();
    let (input, words) = b.input::<String>("words");
    let lengths = words
        .then("trim", stage::map(|w: String| w.trim().to_lowercase()))
        .then("non-empty", stage::filter(|w: &String| !w.is_empty()))
        .then("measure", stage::map(|w: String| (w.len(), w)))
        .output("lengths");

    let mut running = Runtime::start(b.build()?, Plan::spread(2))?;
    let mut tx = running.input(&input).expect("input is open");
    let rx = running.output(&lengths).expect("first and only reader");
    for w in ["  Pipe", "", "WRIGHT ", "stages"] {
        tx.send(w.to_string())?; // blocks while the input ring is full: backpressure
    }
    drop(tx);
    let report = running.drain()?; // every accepted item is processed
    for (len, word) in rx {
        println!("{word:>8} has {len} letters");
    }
    println!("\n{}", report.snapshot);
    Ok(())
}
