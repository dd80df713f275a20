//! The stages of a node's request path.
//!
//! ```text
//!  inbound (connections) ─┐
//!                         ├─▶ node ──LogBatch──▶ log (FileSink: one write +  ──LogDurable──▶ after-log
//!  ticker (retry timer) ──┘   handle/tick         one fdatasync per burst)                   persisted(id)
//! ```

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pipewright_runtime::uring::{fdatasync, Durable, FileSink};
use pipewright_runtime::{AsyncStage, Burst, ErrorPolicy, Failures, Input, Outbox, Stage};

#[cfg(feature = "faults")]
use super::faults::Step;
use super::state::{lock, Effects, LogBatch, NodeFault, Shared};
use crate::log::segments;
use crate::protocol::{Message, Prepare, RecordId};

/// What enters a node's pipeline.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A protocol message from a peer.
    Peer(Message),
    /// A client's `Prepare`, already admitted against the in-flight budget.
    Client(Prepare),
    /// The retry timer fired.
    Tick,
    /// A client asked to settle the in-doubt transactions now.
    Resolve,
}

/// New log records are pending in the node's state: the log stage takes them (and
/// whatever joins them while it lingers) itself, so they reach the log in id order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogDoorbell;

/// Records up to `last` are durable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogDurable {
    pub(crate) last: RecordId,
}

/// Calls [`Node::handle`](crate::protocol::Node::handle) /
/// [`tick`](crate::protocol::Node::tick) for each inbound item, carries out the
/// actions, and rings the log stage ([`LogDoorbell`]) when the burst left new log
/// records pending.
pub(crate) struct NodeStage {
    pub(crate) shared: Shared,
    pub(crate) fx: Arc<Effects>,
}

impl Stage for NodeStage {
    type In = Inbound;
    type Out = LogDoorbell;
    type Error = NodeFault;

    fn process(
        &mut self,
        item: Inbound,
        out: &mut Outbox<'_, LogDoorbell>,
    ) -> Result<(), NodeFault> {
        let mut burst = VecDeque::from([item]);
        let mut failures = Vec::new();
        self.process_burst(
            &mut Burst::new(&mut burst),
            out,
            &mut Failures::new(&mut failures),
        );
        failures.pop().map_or(Ok(()), Err)
    }

    fn process_burst(
        &mut self,
        burst: &mut Burst<'_, Inbound>,
        out: &mut Outbox<'_, LogDoorbell>,
        failures: &mut Failures<'_, NodeFault>,
    ) {
        let mut state = lock(&self.shared);
        let fx = &*self.fx;
        while let Some(item) = burst.pop() {
            let done = match item {
                Inbound::Peer(msg) => {
                    let actions = state.node.handle(msg);
                    state.execute(fx, actions)
                }
                Inbound::Client(prepare) => state.client_prepare(fx, prepare),
                Inbound::Tick => state.tick(fx),
                Inbound::Resolve => {
                    let actions = state.node.resolve_now();
                    state.execute(fx, actions)
                }
            };
            if let Err(fault) = done {
                failures.push(fault);
                return;
            }
        }
        state.sweep_admitted(fx);
        if let Err(fault) = state.maybe_checkpoint(fx) {
            failures.push(fault);
            return;
        }
        if state.has_pending() {
            out.push(LogDoorbell);
        }
    }

    fn error_policy(&self) -> ErrorPolicy {
        ErrorPolicy::FailPipeline
    }
}

/// The log: [`FileSink`] (io_uring group commit) carrying the record ids through.
///
/// Each burst of batches is one write and one `fdatasync` in the sink; only once it
/// returned is the burst's last record id emitted. A failed write or sync fails the
/// pipeline: the node stops rather than acknowledge anything it cannot prove durable.
///
/// A batch holding a checkpoint rotates the log (see [`segments`]): the bytes before
/// the checkpoint are synced to the current segment, the page file is synced, the
/// checkpoint and what follows go to a new segment, which is synced with its
/// directory entry, and only then is the old segment deleted and the burst
/// acknowledged.
pub(crate) struct LogStage {
    shared: Shared,
    /// The longest a burst waits for more records before its `fdatasync`.
    linger_max: Duration,
    /// Smoothed duration of a write + `fdatasync`, in seconds.
    sync_secs: f64,
    /// Smoothed time between two records reaching the log, in seconds (records
    /// taken over the time since the previous take).
    arrival_gap_secs: f64,
    /// When the log last took pending records.
    last_take: Option<std::time::Instant>,
    /// The last record id written.
    written: Option<RecordId>,
    sink: FileSink,
    fx: Arc<Effects>,
    dir: PathBuf,
    seq: u64,
    /// The page file (a second handle), synced before a checkpoint is written.
    pages: File,
    bytes: VecDeque<Vec<u8>>,
    durable: VecDeque<Durable>,
    errors: Vec<std::io::Error>,
}

impl LogStage {
    pub(crate) fn new(
        shared: Shared,
        linger_max: Duration,
        sink: FileSink,
        fx: Arc<Effects>,
        dir: PathBuf,
        seq: u64,
        pages: File,
    ) -> Self {
        Self {
            shared,
            linger_max,
            sync_secs: 0.0,
            arrival_gap_secs: 0.0,
            last_take: None,
            written: None,
            sink,
            fx,
            dir,
            seq,
            pages,
            bytes: VecDeque::new(),
            durable: VecDeque::new(),
            errors: Vec::new(),
        }
    }

    /// Write and sync the queued bytes to the current segment.
    async fn flush(&mut self) -> Result<(), NodeFault> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        self.durable.clear();
        self.errors.clear();
        self.sink
            .process_burst(
                &mut Burst::new(&mut self.bytes),
                &mut Outbox::new(&mut self.durable),
                &mut Failures::new(&mut self.errors),
            )
            .await;
        self.bytes.clear();
        match self.errors.pop() {
            Some(e) => Err(NodeFault::Log(e)),
            None => Ok(()),
        }
    }

    /// Sync the page file and start the next segment.
    async fn rotate(&mut self) -> Result<(), NodeFault> {
        fdatasync(self.pages.as_raw_fd()).await?;
        self.seq += 1;
        self.sink = FileSink::create(segments::segment_path(&self.dir, self.seq))?;
        self.fx.stats.log_disk_bytes.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// The new segment is durable: make its directory entry durable, then delete the
    /// older segments.
    fn retire_old_segments(&mut self) -> Result<(), NodeFault> {
        segments::sync_dir(&self.dir)?;
        #[cfg(feature = "faults")]
        if let Some(crash) = &self.fx.crash {
            crash.reached(Step::AfterCheckpoint);
        }
        for seq in segments::segments(&self.dir)? {
            if seq < self.seq {
                std::fs::remove_file(segments::segment_path(&self.dir, seq))?;
            }
        }
        segments::sync_dir(&self.dir)?;
        self.fx.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("storage_checkpoints_total").increment(1);
        Ok(())
    }

    async fn write(&mut self, batches: Vec<LogBatch>) -> Result<(), NodeFault> {
        let mut rotated = false;
        for mut batch in batches {
            if let Some(at) = batch.rotate_at {
                let tail = batch.bytes.split_off(at);
                self.push(batch.bytes);
                self.flush().await?;
                self.rotate().await?;
                #[cfg(feature = "faults")]
                if let Some(crash) = &self.fx.clone().crash {
                    if crash.armed_at(Step::CheckpointTorn) {
                        // Half of the checkpoint reaches the new segment, then the crash.
                        let half = tail[..tail.len() / 2].to_vec();
                        self.push(half);
                        self.flush().await?;
                    }
                    crash.reached(Step::CheckpointTorn);
                }
                self.push(tail);
                rotated = true;
            } else {
                self.push(batch.bytes);
            }
        }
        self.flush().await?;
        if rotated {
            self.retire_old_segments()?;
        }
        Ok(())
    }

    /// Records in `batches` (ids are consecutive from the last one written).
    fn records(&self, batches: &[LogBatch]) -> u64 {
        let last = batches.last().map_or(0, |b| b.last.0 + 1);
        last - self.written.map_or(0, |w| w.0 + 1)
    }

    /// The pending records, and — when the burst would be tiny while more
    /// transactions are open on the node than records in it — those that join within
    /// a bounded linger: at most `linger_max`, and at most half a recent
    /// write + `fdatasync` (waiting longer than a sync costs more than a second sync).
    ///
    /// The linger adapts to the load: it starts only if at least four more records
    /// are expected within it (the recent gap between records is at most a quarter of
    /// the cap),
    /// and ends as soon as the burst holds a record per open transaction (at most
    /// 64), or when no record arrived for twice that gap. On a device whose sync is
    /// short against those gaps (a fast SSD: 0.16 ms syncs here, ~0.13 ms between a
    /// node's records at 2,900 transactions/s) the open transactions' next records
    /// are mostly still on other nodes, and waiting only delays the chain (measured:
    /// lingering up to half a sync there cost 10% of the throughput): the log syncs
    /// what it has, and batches fill by themselves while each sync runs. On slower
    /// syncs (a network disk, a spinning one) the linger fills bursts. Without
    /// concurrent transactions there is no linger.
    fn take_batches(&mut self) -> Vec<LogBatch> {
        let (first, open) = {
            let mut state = lock(&self.shared);
            (state.take_pending(), state.node.unfinished() as u64)
        };
        let Some(first) = first else {
            return Vec::new();
        };
        let mut batches = vec![first];
        let now = std::time::Instant::now();
        if let Some(previous) = self.last_take.replace(now) {
            // Clamped: after an idle stretch the average must come back within a few
            // takes (gaps beyond the longest linger all mean "do not linger").
            let gap = ((now - previous).as_secs_f64() / self.records(&batches).max(1) as f64)
                .min(self.linger_max.as_secs_f64());
            self.arrival_gap_secs = if self.arrival_gap_secs == 0.0 {
                gap
            } else {
                0.8 * self.arrival_gap_secs + 0.2 * gap
            };
        }
        let target = open.min(64);
        let quiet_limit = Duration::from_secs_f64(2.0 * self.arrival_gap_secs);
        let Some(cap) = linger_cap(self.linger_max, self.sync_secs, self.arrival_gap_secs) else {
            return batches;
        };
        if self.records(&batches) >= target || batches[0].rotate_at.is_some() {
            return batches;
        }
        let start = std::time::Instant::now();
        let mut last_arrival = start;
        while start.elapsed() < cap && last_arrival.elapsed() < quiet_limit {
            // The log has its own worker: a short sleep blocks nothing else.
            std::thread::sleep(Duration::from_micros(20));
            let more = lock(&self.shared).take_pending();
            if let Some(more) = more {
                last_arrival = std::time::Instant::now();
                let rotates = more.rotate_at.is_some();
                batches.push(more);
                if rotates || self.records(&batches) >= target {
                    break;
                }
            }
        }
        // Records that joined during the linger count toward this take: the next gap
        // is measured from its end.
        self.last_take = Some(std::time::Instant::now());
        let waited = start.elapsed();
        self.fx
            .stats
            .linger_us
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        metrics::histogram!("storage_log_linger_seconds").record(waited.as_secs_f64());
        batches
    }

    fn push(&mut self, bytes: Vec<u8>) {
        let stats = &self.fx.stats;
        stats
            .log_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        stats
            .log_disk_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.bytes.push_back(bytes);
    }
}

/// Records that must be expected to join within a linger for it to start.
const LINGER_MIN_JOINERS: f64 = 4.0;

/// How long a tiny burst may wait for more records (see `LogStage::take_batches`):
/// at most `linger_max` and half a sync, and only if [`LINGER_MIN_JOINERS`] records or
/// more are expected meanwhile; `None`: do not wait.
fn linger_cap(linger_max: Duration, sync_secs: f64, arrival_gap_secs: f64) -> Option<Duration> {
    let cap = linger_max.min(Duration::from_secs_f64(sync_secs / 2.0));
    (!cap.is_zero() && cap.as_secs_f64() >= LINGER_MIN_JOINERS * arrival_gap_secs).then_some(cap)
}

impl AsyncStage for LogStage {
    type In = LogDoorbell;
    type Out = LogDurable;
    type Error = NodeFault;

    async fn process_burst(
        &mut self,
        burst: &mut Burst<'_, LogDoorbell>,
        out: &mut Outbox<'_, LogDurable>,
        failures: &mut Failures<'_, NodeFault>,
    ) {
        burst.drain().for_each(drop);
        let batches = self.take_batches();
        let Some(last) = batches.last().map(|b| b.last) else {
            return;
        };
        let records = self.records(&batches);
        let start = std::time::Instant::now();
        if let Err(fault) = self.write(batches).await {
            failures.push(fault);
            return;
        }
        let took = start.elapsed().as_secs_f64();
        self.sync_secs = if self.sync_secs == 0.0 {
            took
        } else {
            0.8 * self.sync_secs + 0.2 * took
        };
        self.written = Some(last);
        let stats = &self.fx.stats;
        stats.log_records.fetch_add(records, Ordering::Relaxed);
        stats.log_syncs.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("storage_log_syncs_total").increment(1);
        out.push(LogDurable { last });
    }

    fn error_policy(&self) -> ErrorPolicy {
        ErrorPolicy::FailPipeline
    }
}

/// Feeds durability back into the node ([`Node::persisted`]) and carries out what
/// became possible: forwarding a `Prepare`, the decider's reply and `Commit`, `Ack`s.
///
/// Records it asks to persist (a decider's `Forget`) join the pending log bytes and
/// go out with the node stage's next batch (at the latest on the next tick).
///
/// [`Node::persisted`]: crate::protocol::Node::persisted
pub(crate) struct AfterLog {
    pub(crate) shared: Shared,
    pub(crate) fx: Arc<Effects>,
}

impl Stage for AfterLog {
    type In = LogDurable;
    type Out = ();
    type Error = NodeFault;

    fn process(&mut self, durable: LogDurable, _out: &mut Outbox<'_, ()>) -> Result<(), NodeFault> {
        let mut state = lock(&self.shared);
        let actions = state.node.persisted(durable.last);
        state.execute(&self.fx, actions)?;
        state.sweep_admitted(&self.fx);
        Ok(())
    }

    fn error_policy(&self) -> ErrorPolicy {
        ErrorPolicy::FailPipeline
    }
}

/// The retry timer: one [`Inbound::Tick`] every `every` into the node's input, from a
/// tokio task rather than an async source of the pipeline: a worker running an async
/// source polls its tokio driver (an `epoll_wait`) on every idle pass, which the
/// profile showed as a quarter of the node worker's CPU; without one the node worker
/// only spins briefly and parks.
pub(crate) async fn ticker(every: Duration, mut input: Input<Inbound>) {
    // A zero period would panic the interval (and silently end the ticks).
    let mut interval = tokio::time::interval(every.max(Duration::from_millis(1)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        if input.send_async(Inbound::Tick).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::linger_cap;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn slow_syncs_under_load_linger_up_to_the_bound() {
        // A 4 ms sync (a network disk), a record every 100 µs: the full 1 ms.
        assert_eq!(linger_cap(MS, 0.004, 0.000_1), Some(MS));
        // A 1 ms sync: half of it.
        assert_eq!(linger_cap(MS, 0.001, 0.000_1), Some(MS / 2));
    }

    #[test]
    fn fast_syncs_or_sparse_records_do_not_linger() {
        // The fast SSD of the benchmark: 0.16 ms syncs, a record every 130 µs.
        assert_eq!(linger_cap(MS, 0.000_16, 0.000_13), None);
        // A slow sync but records 2 ms apart: nothing would join.
        assert_eq!(linger_cap(MS, 0.004, 0.002), None);
        // Lingering turned off, or no sync measured yet.
        assert_eq!(linger_cap(Duration::ZERO, 0.004, 0.000_1), None);
        assert_eq!(linger_cap(MS, 0.0, 0.000_1), None);
    }
}
