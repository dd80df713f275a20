//! The ingest path as pipewright stages.
//!
//! ```text
//!  Batch ─▶ parse ──Parsed──▶ admit ──▶ [log: io_uring FileSink, ──▶ apply ─▶ Ack
//!  (lines)  (JSON,            (bounds    one write + fdatasync      (aggregates,
//!            validation)       of the     per burst of batches]      checkpoints,
//!                              state)                                reply)
//! ```
//!
//! `parse` is stateless, so it can run on its own worker; `admit` checks new names and
//! values against the state's bounds (and interns them) before anything is logged, so
//! everything logged is applied on replay; `log` is only in the durable (serve) path:
//! a batch's reply is sent by `apply`, after its record is durable.

use std::collections::VecDeque;
use std::io::{self, BufRead};
use std::sync::{Arc, Mutex, MutexGuard};

use pipewright_runtime::uring::{Durable, FileSink};
use pipewright_runtime::{
    AsyncStage, Burst, ErrorPolicy, Failures, Outbox, Pin, PipelineBuilder, Plan, Runtime, Stage,
};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::aggregate::Aggregates;
use crate::event::{parse_line, Event, EventError, Limits};
use crate::log;

/// Lines to ingest, and where to send the answer.
#[derive(Debug)]
pub struct Batch {
    /// Whole lines, separated by `\n`.
    pub bytes: Vec<u8>,
    /// The number of the first line (for error messages), from 1.
    pub first_line: u64,
    /// The ingesting clock (seconds since the epoch) that clock skew is judged by.
    pub now: i64,
    /// Where [`Ack`] goes once the batch's accepted events are applied (and durable,
    /// in the durable path). Dropped unanswered when they could not be made durable.
    pub reply: Option<oneshot::Sender<Ack>>,
}

/// A refused line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LineError {
    /// Its number in the batch or file, from 1.
    pub line: u64,
    /// The counter it is counted under.
    pub reason: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

/// The answer to a batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Ack {
    /// Events accepted (durable, in the durable path).
    pub accepted: u64,
    /// Lines refused.
    pub rejected: u64,
    /// The first refused lines (at most [`MAX_ERRORS_SHOWN`]).
    pub errors: Vec<LineError>,
}

/// How many refused lines an [`Ack`] lists.
pub const MAX_ERRORS_SHOWN: usize = 100;

/// A parsed batch.
#[derive(Debug)]
pub struct Parsed {
    events: Vec<Event>,
    /// The line number of each event.
    lines: Vec<u64>,
    /// The accepted lines, as they arrived (what the log stores).
    raw: Vec<u8>,
    errors: Vec<(u64, EventError)>,
    now: i64,
    reply: Option<oneshot::Sender<Ack>>,
    /// Where its log record ends (durable path only).
    log_end: Option<u64>,
}

/// The shared state: aggregates, and the hook that checkpoints them.
pub type Shared = Arc<Mutex<Aggregates>>;

pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, Aggregates> {
    // A panic while holding the lock cannot leave the aggregates half-updated in a
    // way we can repair; carrying on with them is what every other reader would do.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Splits a batch into lines and parses each.
#[derive(Debug, Clone)]
pub struct ParseStage {
    limits: Limits,
}

impl ParseStage {
    /// A parse stage with these limits.
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }

    /// Parses every line of `batch`.
    pub fn parse(&self, batch: Batch) -> Parsed {
        let mut events = Vec::new();
        let mut lines = Vec::new();
        let mut errors = Vec::new();
        let mut raw = Vec::with_capacity(batch.bytes.len());
        for (i, line) in batch.bytes.split(|b| *b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse_line(line, &self.limits, batch.now) {
                Ok(e) => {
                    events.push(e);
                    lines.push(batch.first_line + i as u64);
                    raw.extend_from_slice(line);
                    raw.push(b'\n');
                }
                Err(e) => {
                    metrics::counter!("failures_bad_lines_total", "reason" => e.reason().as_str())
                        .increment(1);
                    errors.push((batch.first_line + i as u64, e));
                }
            }
        }
        Parsed {
            events,
            lines,
            raw,
            errors,
            now: batch.now,
            reply: batch.reply,
            log_end: None,
        }
    }
}

impl Stage for ParseStage {
    type In = Batch;
    type Out = Parsed;
    type Error = std::convert::Infallible;

    fn process(&mut self, batch: Batch, out: &mut Outbox<'_, Parsed>) -> Result<(), Self::Error> {
        out.push(self.parse(batch));
        Ok(())
    }
}

/// Checks each event against the state's bounds (attribute explosion) and interns
/// its names and values, so that whatever is logged is applied on replay.
#[derive(Debug)]
pub struct AdmitStage {
    shared: Shared,
}

impl AdmitStage {
    /// Admits into `shared`.
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }
}

impl Stage for AdmitStage {
    type In = Parsed;
    type Out = Parsed;
    type Error = std::convert::Infallible;

    fn process(&mut self, mut p: Parsed, out: &mut Outbox<'_, Parsed>) -> Result<(), Self::Error> {
        let mut aggs = lock(&self.shared);
        let mut refused = Vec::new();
        for (i, e) in p.events.iter().enumerate() {
            if let Err(err) = aggs.admit(e) {
                refused.push((i, err));
            }
        }
        drop(aggs);
        if !refused.is_empty() {
            // Rebuild the accepted lines without the refused events.
            let mut keep = vec![true; p.events.len()];
            for (i, err) in refused {
                metrics::counter!("failures_bad_lines_total", "reason" => err.reason().as_str())
                    .increment(1);
                keep[i] = false;
                p.errors.push((p.lines[i], err));
            }
            let mut raw = Vec::with_capacity(p.raw.len());
            for (line, k) in p.raw.split(|b| *b == b'\n').zip(&keep) {
                if *k {
                    raw.extend_from_slice(line);
                    raw.push(b'\n');
                }
            }
            let mut k = keep.iter();
            p.events.retain(|_| *k.next().expect("one flag per event"));
            let mut k = keep.iter();
            p.lines.retain(|_| *k.next().expect("one flag per line"));
            p.errors.sort_by_key(|e| e.0);
            p.raw = raw;
        }
        out.push(p);
        Ok(())
    }
}

/// The log: each burst of batches becomes one record each, written with one write
/// and one `fdatasync` by the runtime's io_uring [`FileSink`] (group commit).
#[derive(Debug)]
pub struct LogStage {
    sink: FileSink,
    records: VecDeque<Vec<u8>>,
    durable: VecDeque<Durable>,
    errors: Vec<io::Error>,
}

impl LogStage {
    /// Appends to `sink`.
    pub fn new(sink: FileSink) -> Self {
        Self {
            sink,
            records: VecDeque::new(),
            durable: VecDeque::new(),
            errors: Vec::new(),
        }
    }
}

impl AsyncStage for LogStage {
    type In = Parsed;
    type Out = Parsed;
    type Error = io::Error;

    async fn process_burst(
        &mut self,
        burst: &mut Burst<'_, Parsed>,
        out: &mut Outbox<'_, Parsed>,
        failures: &mut Failures<'_, io::Error>,
    ) {
        let mut items = Vec::with_capacity(burst.len());
        while let Some(p) = burst.pop() {
            self.records.push_back(log::encode(p.now, &p.raw));
            items.push(p);
        }
        self.durable.clear();
        self.errors.clear();
        self.sink
            .process_burst(
                &mut Burst::new(&mut self.records),
                &mut Outbox::new(&mut self.durable),
                &mut Failures::new(&mut self.errors),
            )
            .await;
        self.records.clear();
        if let Some(e) = self.errors.pop() {
            // Nothing of this burst is known durable: no batch of it is answered
            // (their replies are dropped: the clients see a failure and retry).
            metrics::counter!("failures_log_errors_total").increment(1);
            failures.push(e);
            return;
        }
        for (mut p, d) in items.into_iter().zip(self.durable.drain(..)) {
            p.log_end = Some(d.offset + d.len as u64);
            out.push(p);
        }
    }

    fn error_policy(&self) -> ErrorPolicy {
        // The node stops rather than acknowledge anything it cannot prove durable.
        ErrorPolicy::FailPipeline
    }
}

/// What [`ApplyStage`] does after applying a batch (checkpointing).
pub trait AfterApply: Send + 'static {
    /// Called with the state after a batch whose log record ends at `log_end` (durable
    /// path) was applied.
    fn applied(&mut self, aggs: &Aggregates, log_end: Option<u64>, events: u64);
}

impl AfterApply for () {
    fn applied(&mut self, _: &Aggregates, _: Option<u64>, _: u64) {}
}

/// Adds each batch's accepted events to the aggregates and answers the batch.
#[derive(Debug)]
pub struct ApplyStage<A> {
    shared: Shared,
    after: A,
}

impl<A: AfterApply> ApplyStage<A> {
    /// Applies into `shared`, calling `after` after each batch.
    pub fn new(shared: Shared, after: A) -> Self {
        Self { shared, after }
    }
}

impl<A: AfterApply> Stage for ApplyStage<A> {
    type In = Parsed;
    type Out = ();
    type Error = std::convert::Infallible;

    fn process(&mut self, p: Parsed, _out: &mut Outbox<'_, ()>) -> Result<(), Self::Error> {
        let mut aggs = lock(&self.shared);
        for (_, e) in &p.errors {
            aggs.count_bad(e.reason());
        }
        for e in &p.events {
            aggs.add_unchecked(e);
        }
        metrics::counter!("failures_events_accepted_total").increment(p.events.len() as u64);
        self.after.applied(&aggs, p.log_end, p.events.len() as u64);
        drop(aggs);
        if let Some(reply) = p.reply {
            let ack = Ack {
                accepted: p.events.len() as u64,
                rejected: p.errors.len() as u64,
                errors: p
                    .errors
                    .iter()
                    .take(MAX_ERRORS_SHOWN)
                    .map(|(line, e)| LineError {
                        line: *line,
                        reason: e.reason().as_str(),
                        message: e.to_string(),
                    })
                    .collect(),
            };
            // A client that went away is not an error of the pipeline.
            let _answered = reply.send(ack);
        }
        Ok(())
    }
}

/// Errors of file ingestion.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Reading the input failed.
    #[error("reading the input: {0}")]
    Read(#[from] io::Error),
    /// The pipeline did not start or failed.
    #[error("the ingest pipeline failed: {0}; see the stage named in it")]
    Pipeline(String),
}

/// Lines per batch when reading a file.
pub const FILE_BATCH_BYTES: usize = 256 * 1024;

/// Ingests JSON lines from `input` into `aggs` through the pipeline parse → admit →
/// apply (two workers: parsing beside aggregation). `now` judges clock skew.
pub fn ingest_reader(
    input: impl BufRead,
    aggs: Aggregates,
    now: i64,
) -> Result<Aggregates, IngestError> {
    ingest(input, aggs, now, None)
}

/// Like [`ingest_reader`], with every accepted line made durable in a log at
/// `log_path` (created or truncated) before it is applied: parse → admit → log
/// (io_uring group commit) → apply, on three workers.
pub fn ingest_reader_durable(
    input: impl BufRead,
    aggs: Aggregates,
    now: i64,
    log_path: &std::path::Path,
) -> Result<Aggregates, IngestError> {
    ingest(input, aggs, now, Some(log_path))
}

fn ingest(
    input: impl BufRead,
    aggs: Aggregates,
    now: i64,
    log_path: Option<&std::path::Path>,
) -> Result<Aggregates, IngestError> {
    let limits = aggs.limits().clone();
    let shared: Shared = Arc::new(Mutex::new(aggs));
    let b = PipelineBuilder::new();
    let (input_id, batches) = b.input::<Batch>("lines");
    let admitted = batches
        .then("parse", ParseStage::new(limits))
        .then("admit", AdmitStage::new(shared.clone()));
    let plan = match log_path {
        Some(path) => {
            let sink = FileSink::create(path)?;
            admitted
                .then_async("log", LogStage::new(sink))
                .sink("apply", ApplyStage::new(shared.clone(), ()));
            Plan::explicit()
                .worker(["parse"], Pin::Float)
                .worker(["admit", "apply"], Pin::Float)
                .worker(["log"], Pin::Float)
                .burst_all(8)
        }
        None => {
            admitted.sink("apply", ApplyStage::new(shared.clone(), ()));
            Plan::explicit()
                .worker(["parse"], Pin::Float)
                .worker(["admit", "apply"], Pin::Float)
                .burst_all(8)
        }
    };
    let pipeline = b
        .build()
        .map_err(|e| IngestError::Pipeline(e.to_string()))?;
    let running =
        Runtime::start(pipeline, plan).map_err(|e| IngestError::Pipeline(e.to_string()))?;
    let mut tx = running
        .input(&input_id)
        .ok_or_else(|| IngestError::Pipeline("the input is closed".into()))?;
    let read = feed_lines(input, now, |batch| {
        tx.send(batch)
            .map_err(|_| io::Error::other("the ingest pipeline stopped"))
    });
    drop(tx);
    let report = running
        .drain()
        .map_err(|e| IngestError::Pipeline(e.to_string()))?;
    read?;
    if !report.completed {
        return Err(IngestError::Pipeline("the pipeline did not drain".into()));
    }
    let aggs = match Arc::try_unwrap(shared) {
        Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(shared) => lock(&shared).clone(),
    };
    Ok(aggs)
}

/// Reads `input` in batches of whole lines of about [`FILE_BATCH_BYTES`].
pub fn feed_lines(
    mut input: impl BufRead,
    now: i64,
    mut send: impl FnMut(Batch) -> io::Result<()>,
) -> io::Result<()> {
    let mut line_no = 1u64;
    let mut buf = Vec::with_capacity(FILE_BATCH_BYTES + 4096);
    loop {
        let start_lines = line_no;
        buf.clear();
        let mut eof = false;
        while buf.len() < FILE_BATCH_BYTES {
            let n = input.read_until(b'\n', &mut buf)?;
            if n == 0 {
                eof = true;
                break;
            }
            line_no += 1;
        }
        if !buf.is_empty() {
            send(Batch {
                bytes: std::mem::replace(&mut buf, Vec::with_capacity(FILE_BATCH_BYTES + 4096)),
                first_line: start_lines,
                now,
                reply: None,
            })?;
        }
        if eof {
            return Ok(());
        }
    }
}
