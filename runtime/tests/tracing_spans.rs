//! With the feature `tracing-spans`, every stage activation runs in a span naming the
//! stage, with its outcome recorded. Run with
//! `cargo test -p pipewright-runtime --features tracing-spans --test tracing_spans`.
#![cfg(feature = "tracing-spans")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pipewright_runtime::{stage, IterSource, PipelineBuilder, Plan, Runtime, ServiceStage};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

#[derive(Default)]
struct Seen {
    /// Span id -> (span name, stage).
    spans: HashMap<u64, (String, String)>,
    /// (span name, stage) -> how many were created.
    created: HashMap<(String, String), u64>,
    /// (stage, outcome) -> how many were recorded.
    outcomes: HashMap<(String, String), u64>,
    entered: u64,
}

/// A minimal subscriber that keeps what the test checks.
struct Collect {
    next: AtomicU64,
    seen: Arc<Mutex<Seen>>,
}

struct Fields(Vec<(String, String)>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .push((field.name().to_string(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }
}

impl Subscriber for Collect {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == "pipewright"
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = Fields(Vec::new());
        span.record(&mut fields);
        let stage = fields
            .0
            .iter()
            .find(|(k, _)| k == "stage")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let name = span.metadata().name().to_string();
        let mut seen = self.seen.lock().unwrap();
        *seen
            .created
            .entry((name.clone(), stage.clone()))
            .or_default() += 1;
        seen.spans.insert(id, (name, stage));
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut fields = Fields(Vec::new());
        values.record(&mut fields);
        let mut seen = self.seen.lock().unwrap();
        let stage = seen.spans.get(&span.into_u64()).map(|s| s.1.clone());
        for (k, v) in fields.0 {
            if k == "outcome" {
                *seen
                    .outcomes
                    .entry((stage.clone().unwrap_or_default(), v))
                    .or_default() += 1;
            }
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {
        self.seen.lock().unwrap().entered += 1;
    }
    fn exit(&self, _: &Id) {}
}

#[test]
fn every_stage_activation_has_a_span_with_its_outcome() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    tracing::subscriber::set_global_default(Collect {
        next: AtomicU64::new(0),
        seen: seen.clone(),
    })
    .unwrap();
    let b = PipelineBuilder::new();
    b.source("numbers", IterSource(0..10_000u64))
        .then("double", stage::map(|x: u64| x * 2))
        .then_async(
            "echo",
            ServiceStage::new(tower::service_fn(|x: u64| async move {
                Ok::<_, std::convert::Infallible>(x)
            })),
        )
        .for_each("sink", |_| {});
    let report = Runtime::start(b.build().unwrap(), Plan::spread(2))
        .unwrap()
        .join()
        .unwrap();
    assert!(report.completed);
    let seen = seen.lock().unwrap();
    for stage in ["numbers", "double", "sink"] {
        let activations = seen.created[&("activation".to_string(), stage.to_string())];
        let bursts = report.snapshot.stage(stage).unwrap().bursts;
        assert!(
            activations >= bursts,
            "{stage}: {activations} spans for {bursts} bursts"
        );
        assert_eq!(
            seen.outcomes[&(stage.to_string(), "finished".to_string())],
            1
        );
        assert!(seen.outcomes[&(stage.to_string(), "progress".to_string())] >= 1);
    }
    assert_eq!(seen.created[&("task".to_string(), "echo".to_string())], 1);
    assert!(seen.entered > 0);
}
