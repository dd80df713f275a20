//! Windows: tumbling and sliding, by count, by event time (with a watermark) or by
//! processing time, as ordinary stages — instead of hand-written `flush()`
//! aggregators.
//!
//! Pick the windows ([`Windows::tumbling`], [`Windows::sliding`]), the axis
//! ([`count`], [`event_time`], [`processing_time`]), and the aggregate
//! ([`Spec::aggregate`]: an initial value and a fold). The stage emits a
//! [`Windowed`] (start, end, item count, aggregate) for each window once it closes —
//! in order of the windows' ends — and every window still open when its input ends
//! (nothing is lost at the end of a stream: `drain` flushes them).
//!
//! - **Count**: the n-th item is at position n; a window closes with its last item.
//! - **Event time**: the item's timestamp; items may arrive up to `bound` units out of
//!   order. The watermark is the largest timestamp seen minus `bound`; a window closes
//!   when the watermark reaches its end. An item whose windows have all closed is
//!   **late**: it is the stage's error ([`Late`], carrying the item), so by default it
//!   is dropped and counted (`pipewright_stage_dropped_total{reason="error"}`), and
//!   wrapped in [`RouteErrorsLayer`](crate::layer::RouteErrorsLayer) it goes to a side
//!   output (`split_errors`). With sliding windows an item is folded into those of its
//!   windows still open, and is late only if none is.
//! - **Processing time**: when the item reaches the stage, in a unit you choose. A
//!   window closes when its end passes, whether or not items arrive (the stage asks
//!   its worker to wake it then, through [`Stage::on_idle`](crate::Stage::on_idle)),
//!   or when the input ends.
//!
//! Windows start at multiples of the step from 0 (the epoch, for timestamps).
//!
//! ```
//! use pipewright::{stage, stage::window::{self, Windows}, PipelineBuilder, Plan, Runtime, IterSource};
//!
//! // (timestamp in ms, value), slightly out of order; the last one too late.
//! let events = vec![(1_000u64, 1u64), (900, 3), (1_500, 2), (2_100, 4), (1_200, 5), (3_500, 6), (1_800, 100)];
//! let b = PipelineBuilder::new();
//! let sums = b
//!     .source("events", IterSource(events.into_iter()))
//!     .then(
//!         "per-second",
//!         window::event_time(Windows::tumbling(1_000)?, 500, |e: &(u64, u64)| e.0)
//!             .aggregate(|| 0u64, |sum, e: &(u64, u64)| *sum += e.1),
//!     )
//!     .then("row", stage::map(|w: window::Windowed<u64>| (w.start, w.items, w.value)))
//!     .output("sums");
//! let mut running = Runtime::start(b.build()?, Plan::fused())?;
//! let rx = running.output(&sums).unwrap();
//! let report = running.join()?;
//! // [0, 1000) got 900; [1000, 2000) got 1000, 1500 and 1200 (within the 500 ms
//! // bound); [2000, 3000) got 2100; [3000, 4000) got 3500, flushed at the end.
//! assert_eq!(rx.collect(), vec![(0, 1, 3), (1_000, 3, 8), (2_000, 1, 4), (3_000, 1, 6)]);
//! // 1800 came after the watermark passed 2000: late, dropped and counted.
//! assert_eq!(report.snapshot.stage("per-second").unwrap().dropped_total(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod engine;
mod stage;

use std::time::Duration;

pub use engine::{WindowError, Windowed, Windows};
pub use stage::{ByCount, ByEventTime, ByProcessingTime, Clock, Late, Spec, Window};

/// Windows over item counts: `Windows::tumbling(100)` is every 100 items.
///
/// ```
/// use pipewright::{graph::PipelineBuilder, inline::InlineTransport, stage::window::{self, Windows}};
///
/// let b = PipelineBuilder::<InlineTransport>::new();
/// let (input, numbers) = b.input::<u32>("numbers");
/// let out = numbers
///     .then("pairs", window::count(Windows::sliding(4, 2)?).aggregate(Vec::new, |v, x: &u32| v.push(*x)))
///     .output("windows");
/// let mut run = b.build()?.run_inline();
/// run.send_all(&input, 0..7);
/// run.finish()?;
/// let windows: Vec<Vec<u32>> = run.take_output(&out).into_iter().map(|w| w.value).collect();
/// assert_eq!(windows, vec![vec![0, 1, 2, 3], vec![2, 3, 4, 5], vec![4, 5, 6], vec![6]]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn count(windows: Windows) -> Spec<ByCount> {
    Spec::new(windows, ByCount::default())
}

/// Windows over the items' own timestamps (`timestamp(item)`, in any unit), allowing
/// items up to `bound` units out of order; later ones are [`Late`].
pub fn event_time<F>(windows: Windows, bound: u64, timestamp: F) -> Spec<ByEventTime<F>> {
    Spec::new(windows, stage::event_time(timestamp, bound))
}

/// Windows over arrival time at the stage, counted in `unit`s (e.g.
/// `Duration::from_millis(1)` with `Windows::tumbling(1_000)` for one-second windows).
pub fn processing_time(windows: Windows, unit: Duration) -> Spec<ByProcessingTime> {
    Spec::new(windows, stage::processing_time(unit))
}

#[cfg(test)]
mod tests;
