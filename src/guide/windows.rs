//! # Windows
//!
//! Aggregating over windows is a stage like any other: [`stage::window`](crate::stage::window)
//! builds tumbling and sliding windows ([`Windows`](crate::stage::window::Windows)) by
//! item count, by event time (the items' own timestamps, with a bounded
//! out-of-orderness watermark; late items are the stage's typed error) or by
//! processing time, with an aggregate given as an initial value and a fold. Each
//! window is emitted once it closes, and the windows still open are emitted when the
//! input ends, so `drain` loses nothing. The module's page has the event-time example.
//!
//! ```
//! use pipewright::{stage::window::{self, Windows}, IterSource, PipelineBuilder, Plan, Runtime};
//!
//! let b = PipelineBuilder::new();
//! let sums = b
//!     .source("numbers", IterSource(1..=10u64))
//!     .then("per-4", window::count(Windows::tumbling(4)?).aggregate(|| 0u64, |s, x: &u64| *s += x))
//!     .output("sums");
//! let mut running = Runtime::start(b.build()?, Plan::fused())?;
//! let rx = running.output(&sums).unwrap();
//! running.join()?;
//! let sums: Vec<u64> = rx.collect().into_iter().map(|w| w.value).collect();
//! assert_eq!(sums, [1 + 2 + 3 + 4, 5 + 6 + 7 + 8, 9 + 10]); // the last one at the end
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Your own: `flush`
//!
//! Any stage can hold items back and emit at the end: [`Stage::flush`](crate::Stage::flush)
//! is called once when its input has ended, before its output closes (and
//! [`Stage::on_idle`](crate::Stage::on_idle) gives a stage with timers its turn while
//! its input is empty). A top-k, a session window, a batcher are a few lines:
//!
//! ```
//! use std::convert::Infallible;
//! use pipewright::{graph::PipelineBuilder, inline::InlineTransport, Outbox, Stage};
//!
//! /// Groups items into batches of `n`; the last batch may be shorter.
//! struct Batch { n: usize, held: Vec<u32> }
//!
//! impl Stage for Batch {
//!     type In = u32;
//!     type Out = Vec<u32>;
//!     type Error = Infallible;
//!
//!     fn process(&mut self, x: u32, out: &mut Outbox<'_, Vec<u32>>) -> Result<(), Infallible> {
//!         self.held.push(x);
//!         if self.held.len() == self.n {
//!             out.push(std::mem::take(&mut self.held));
//!         }
//!         Ok(())
//!     }
//!
//!     fn flush(&mut self, out: &mut Outbox<'_, Vec<u32>>) -> Result<(), Infallible> {
//!         if !self.held.is_empty() {
//!             out.push(std::mem::take(&mut self.held));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let b = PipelineBuilder::<InlineTransport>::new();
//! let (input, numbers) = b.input::<u32>("numbers");
//! let batches = numbers.then("batch", Batch { n: 3, held: Vec::new() }).output("batches");
//! let mut run = b.build()?.run_inline();
//! run.send_all(&input, 1..=7);
//! run.finish()?;
//! assert_eq!(run.take_output(&batches), [vec![1, 2, 3], vec![4, 5, 6], vec![7]]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
