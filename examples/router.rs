//! Split a stream by key into typed branches, give each branch its own stages, merge
//! them back, and route failures to a typed error output.
//!
//! `cargo run --example router`

use pipewright::layer::RouteErrorsLayer;
use pipewright::{stage, Layer, PipelineBuilder, Plan, Runtime};

#[derive(Debug)]
enum Event {
    Click { x: u32, y: u32 },
    Key(char),
}

fn parse(line: &str) -> Result<Event, String> {
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["click", x, y] => Ok(Event::Click {
            x: x.parse().map_err(|e| format!("{e}"))?,
            y: y.parse().map_err(|e| format!("{e}"))?,
        }),
        ["key", k] if k.chars().count() == 1 => Ok(Event::Key(k.chars().next().unwrap())),
        _ => Err(format!("cannot parse {line:?}")),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let b = PipelineBuilder::new();
    let (input, lines) = b.input::<&'static str>("lines");
    let (events, errors) = lines
        .then("parse", RouteErrorsLayer.layer(stage::try_map(parse)))
        .split_errors("ok-or-err");
    let [clicks, keys] = events.route("by-kind", |e: &Event| match e {
        Event::Click { .. } => 0,
        Event::Key(_) => 1,
    });
    let clicks = clicks.then(
        "clicks",
        stage::map(|e: Event| format!("{e:?} in quadrant {}", quadrant(&e))),
    );
    let keys = keys.then(
        "keys",
        stage::map(|e: Event| match e {
            Event::Key(c) => format!("key {c:?} typed"),
            other => format!("{other:?} misrouted"),
        }),
    );
    let described = clicks.merge(keys).output("described");
    let errors = errors.output("errors");

    let mut running = Runtime::start(b.build()?, Plan::spread(2))?;
    let (described, errors) = (
        running.output(&described).unwrap(),
        running.output(&errors).unwrap(),
    );
    let mut tx = running.input(&input).unwrap();
    for line in ["click 10 20", "key q", "click -1 2", "key w", "scroll 3"] {
        tx.send(line)?;
    }
    drop(tx);
    running.drain()?;
    described.for_each(|d| println!("ok:    {d}"));
    errors.for_each(|e| println!("error: {e}"));
    Ok(())
}

fn quadrant(e: &Event) -> u8 {
    match e {
        Event::Click { x, y } => 1 + u8::from(*x >= 50) + 2 * u8::from(*y >= 50),
        Event::Key(_) => 0,
    }
}
