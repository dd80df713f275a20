//! tower both ways: a `tower::Service` lifted into a pipeline stage, and a whole
//! pipeline served as a `tower::Service`, each request answered through the pipeline.
//!
//! `cargo run --example tower_interop`

use pipewright::{stage, PipelineBuilder, PipelineService, Plan, Runtime, ServiceStage, Tagged};
use tower::{Service, ServiceExt};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. A tower service (here a fake async lookup) as an async stage.
    let lookup = tower::service_fn(|id: u32| async move {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        Ok::<_, std::convert::Infallible>(format!("user-{id}"))
    });
    let b = PipelineBuilder::new();
    let (ids, stream) = b.input::<u32>("ids");
    let names = stream
        .then_async("lookup", ServiceStage::new(lookup))
        .then("shout", stage::map(|s: String| s.to_uppercase()))
        .output("names");
    let mut running = Runtime::start(b.build()?, Plan::fused())?;
    let rx = running.output(&names).unwrap();
    let mut tx = running.input(&ids).unwrap();
    for id in 1..=3 {
        tx.send(id)?;
    }
    drop(tx);
    running.drain()?;
    println!("lifted service produced: {:?}", rx.collect());

    // 2. A pipeline as a tower service: requests carry their own completion.
    let b = PipelineBuilder::new();
    let (requests, stream) = b.input::<Tagged<String, usize>>("requests");
    stream
        .then_tagged("trim", stage::map(|s: String| s.trim().to_string()))
        .then_tagged(
            "count",
            stage::map(|s: String| s.split_whitespace().count()),
        )
        .respond("reply");
    let running = Runtime::start(b.build()?, Plan::spread(2))?;
    let service = PipelineService::new(running.input(&requests).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        for text in ["one two three", "  pipelines compose  "] {
            let words = service
                .clone()
                .ready()
                .await?
                .call(text.to_string())
                .await?;
            println!("{text:?} has {words} words");
        }
        Ok::<_, pipewright::RequestError>(())
    })?;
    drop(service);
    running.drain()?;
    Ok(())
}
