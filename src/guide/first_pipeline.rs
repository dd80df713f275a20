//! # Your first pipeline
//!
//! A pipeline is a graph of typed **stages** joined by **streams**. You describe it with
//! a [`PipelineBuilder`](crate::PipelineBuilder); the compiler checks that each stage
//! takes what the one before emits, and [`build`](crate::graph::PipelineBuilder::build)
//! checks the rest (every stream consumed, unique names). A [`Plan`](crate::Plan) then
//! says where the stages run, and [`Runtime::start`](crate::Runtime::start) runs it.
//!
//! A stage is a closure ([`stage::map`](crate::stage::map),
//! [`try_map`](crate::stage::try_map), [`filter`](crate::stage::filter),
//! [`for_each`](crate::stage::for_each)) or your own type implementing
//! [`Stage`](crate::Stage): `process` gets one item and pushes zero or more results
//! into an [`Outbox`](crate::Outbox). Items move in bursts, so a stage call costs no
//! allocation and no future.
//!
//! ```
//! use std::convert::Infallible;
//! use pipewright::{stage, Outbox, PipelineBuilder, Plan, Runtime, Stage};
//!
//! /// Splits a line into words.
//! struct Words;
//!
//! impl Stage for Words {
//!     type In = String;
//!     type Out = String;
//!     type Error = Infallible;
//!
//!     fn process(&mut self, line: String, out: &mut Outbox<'_, String>) -> Result<(), Infallible> {
//!         out.extend(line.split_whitespace().map(str::to_owned));
//!         Ok(())
//!     }
//! }
//!
//! let b = PipelineBuilder::new();
//! let (input, lines) = b.input::<String>("lines");
//! let evens = lines
//!     .then("words", Words)
//!     .then("parse", stage::try_map(|w: String| w.parse::<u64>())) // errors: dropped, counted
//!     .then("even", stage::filter(|n: &u64| n % 2 == 0))
//!     .output("evens");
//! // Two workers joined by a ring; `Plan::fused()` would run all on one.
//! let mut running = Runtime::start(b.build()?, Plan::spread(2))?;
//! let mut tx = running.input(&input).unwrap();
//! let rx = running.output(&evens).unwrap();
//! for line in ["1 2 three 4", "6 x 7"] {
//!     tx.send(line.to_string())?; // blocks while the pipeline is full: backpressure
//! }
//! drop(tx); // the input ends
//! let report = running.drain()?; // returns when every accepted item went through
//! assert_eq!(rx.collect(), vec![2, 4, 6]);
//! let parse = report.snapshot.stage("parse").unwrap();
//! assert_eq!((parse.items_in, parse.dropped_total()), (7, 2)); // "three" and "x"
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Where items come from and go
//!
//! - [`input`](crate::graph::PipelineBuilder::input) → [`Running::input`](crate::Running::input):
//!   you send items from any thread ([`Input`](crate::Input) is `Clone`).
//! - [`source`](crate::graph::PipelineBuilder::source): a [`Source`](crate::Source) the
//!   runtime pulls ([`IterSource`](crate::IterSource) over any iterator, the file, TCP
//!   and UDP sources in [`sources`](crate::sources)); a
//!   [`StopHandle`](crate::StopHandle) ends the sources from outside (Ctrl-C) and the
//!   pipeline drains.
//! - [`output`](crate::graph::Stream::output) → [`Running::output`](crate::Running::output),
//!   or [`for_each`](crate::graph::Stream::for_each) / [`sink`](crate::graph::Stream::sink).
//! - [`route`](crate::graph::Stream::route) splits a stream into typed branches,
//!   [`merge`](crate::graph::Stream::merge) joins them.
//!
//! ## Failures
//!
//! A stage's `Err` for an item, and a panic in a stage, go to its
//! [`ErrorPolicy`](crate::ErrorPolicy): by default the item is dropped and counted
//! (reason `error` or `panic`) and the stage goes on;
//! [`ErrorPolicyLayer`](crate::layer::ErrorPolicyLayer) makes it stop the pipeline
//! instead, and [`RouteErrorsLayer`](crate::layer::RouteErrorsLayer) turns the errors
//! into a typed stream of their own. A failed run is a
//! [`RunError`](crate::RunError) from `drain`, never a panic.
//!
//! ## Testing a graph without threads
//!
//! The same graph runs on the calling thread with the [`inline`](crate::inline)
//! executor — deterministic, for unit tests of your stages and of the graph's shape:
//!
//! ```
//! use pipewright::{graph::PipelineBuilder, inline::InlineTransport, stage};
//!
//! let b = PipelineBuilder::<InlineTransport>::new();
//! let (input, words) = b.input::<&'static str>("words");
//! let [short, long] = words.route("by-length", |w: &&str| usize::from(w.len() > 3));
//! let short = short.output("short");
//! let long = long.then("upper", stage::map(|w: &str| w.to_uppercase())).output("long");
//! let mut run = b.build()?.run_inline();
//! run.send_all(&input, ["a", "pipe", "of", "words"]);
//! run.finish()?;
//! assert_eq!(run.take_output(&short), ["a", "of"]);
//! assert_eq!(run.take_output(&long), ["PIPE", "WORDS"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
