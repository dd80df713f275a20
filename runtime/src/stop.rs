//! Stopping a running pipeline's sources from outside (Ctrl-C, SIGTERM, an admin
//! command): the sources end, everything they emitted drains.

use std::sync::Arc;

use pipewright_stages::exec::StopFlag;

use crate::signal::Signal;

/// Ends every source of a running pipeline; get one with
/// [`Running::stop_handle`](crate::Running::stop_handle).
///
/// [`stop`](StopHandle::stop) makes each source end at its next safe point: a sync
/// [`Source`](crate::Source) is not pulled again, a pending
/// [`AsyncSource`](crate::AsyncSource) pull is dropped at the await it is parked in
/// (the items it had already pushed are kept). Each source then flushes what it
/// emitted and closes its output, so the pipeline drains normally: every item a
/// source emitted is processed and counted, and [`Running::drain`](crate::Running::drain)
/// returns a completed report. Application inputs are not closed by a stop; `drain`
/// closes them.
///
/// The handle is cheap to clone, `Send + Sync`, and stays valid (and harmless) after
/// the pipeline has ended. Stopping twice is the same as stopping once.
///
/// Wiring Ctrl-C and SIGTERM to it, with the [`ctrlc`](https://docs.rs/ctrlc) crate
/// (feature `termination` for SIGTERM) — the library itself installs no signal handler:
///
/// ```
/// use pipewright::{stage, IterSource, PipelineBuilder, Plan, Runtime};
///
/// let b = PipelineBuilder::new();
/// // A source that never ends by itself.
/// b.source("ticks", IterSource(0u64..))
///     .then("double", stage::map(|x: u64| x * 2))
///     .for_each("sink", |_| {});
/// let running = Runtime::start(b.build()?, Plan::fused())?;
/// let stop = running.stop_handle();
/// ctrlc::set_handler({
///     let stop = stop.clone();
///     move || stop.stop()
/// })?;
/// # stop.stop(); // the doc test stands in for the user's Ctrl-C
/// // ... until Ctrl-C or SIGTERM: the sources end, everything emitted drains.
/// let report = running.drain()?;
/// assert!(report.completed);
/// assert_eq!(
///     report.snapshot.stage("ticks").unwrap().items_out,
///     report.snapshot.stage("sink").unwrap().items_in,
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct StopHandle {
    flag: StopFlag,
    wake: Arc<Vec<Arc<Signal>>>,
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopHandle")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl StopHandle {
    pub(crate) fn new(wake: Vec<Arc<Signal>>) -> Self {
        Self {
            flag: StopFlag::new(),
            wake: Arc::new(wake),
        }
    }

    /// The flag bound into the pipeline's source nodes.
    pub(crate) fn flag(&self) -> StopFlag {
        self.flag.clone()
    }

    /// Ends every source; returns at once (wait with `drain` or `join`). Safe to call
    /// from a signal-handling thread and from any number of threads.
    pub fn stop(&self) {
        if !self.flag.is_raised() {
            tracing::info!(target: "pipewright", "stop requested: ending every source");
        }
        self.flag.raise();
        // Wake every worker loop and async task so parked sources see the flag.
        for signal in self.wake.iter() {
            signal.notify();
        }
    }

    /// True once [`stop`](StopHandle::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.flag.is_raised()
    }
}
