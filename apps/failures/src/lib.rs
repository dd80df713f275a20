//! **pipewright-failures**: failure-pattern analytics for a fleet. Finds combinations
//! of resources (an attribute, a pair, a full combination) whose failure rate for a
//! type of application is abnormally high, with the false discovery rate controlled,
//! and suggests a better combination or flags the resource.
//!
//! # Method
//!
//! - **Input**: JSON lines (see [`parse_line`]): `failure` events and `exposure`
//!   events (`hours` or `launches`) per application type and resource map.
//! - **Aggregates** ([`Aggregates`]): per application type, failures and exposure of
//!   every attribute=value, every pair and every full combination (with a series over
//!   time buckets). Integer sums: states of several ingesting nodes merge exactly.
//! - **Test** ([`detect`]): each cell with enough exposure against the rest of its
//!   type by the exact conditional-binomial test of two Poisson rates; Benjamini–
//!   Hochberg over every test; a rate-ratio floor; then the smallest combination that
//!   explains the excess (a confounded attribute is reported as the one it rides on).
//! - **Intervals**: exact (Garwood) Poisson intervals, so a 0 % over little exposure
//!   has a wide interval and is never suggested as best.
//! - **Suggestions**: the nearest measured combination (fewest attributes changed)
//!   whose whole interval lies below the finding's; **flags**: a resource abnormal in
//!   several application types.
//!
//! # Assumptions
//!
//! Failures of a cell are a Poisson process in its exposure (independent failures at a
//! constant rate within the window compared); exposure is reported faithfully and in
//! one unit per report; the rest of the application type is the baseline. BH controls
//! the FDR under independence or positive dependence of the tests (overlapping cells
//! are positively dependent); the explanation step only removes discoveries.
//!
//! # Durability
//!
//! In `serve`, a batch is acknowledged only after its accepted lines are in the log
//! (the runtime's io_uring group-commit `FileSink`: one write and one `fdatasync` per
//! burst); aggregates are checkpointed to `redb` with the log offset they include, and
//! recovery replays the log after it. `kill -9` loses nothing acknowledged. After each
//! checkpoint the log's prefix is released with `fallocate(PUNCH_HOLE)` (offsets
//! unchanged), so its disk use is bounded by what came after the last checkpoint.
//!
//! # Bounds
//!
//! [`Limits`]: line length, attributes per event, distinct attribute names, values per
//! attribute and application types (past them a line is refused as
//! `attribute_explosion`, typically an identifier sent as an attribute). Memory is
//! about the number of distinct full combinations times the time buckets they were
//! seen in (one hour by default).
//!
//! ```
//! use pipewright_failures::{detect, generate, ingest_reader, Aggregates, DetectConfig, FleetConfig};
//!
//! let now = 1_796_000_000;
//! let mut lines = Vec::new();
//! let mut fleet = FleetConfig::new(7, 60_000, now);
//! fleet.patterns.truncate(1); // kernel 6.1.12 fails 4x as often for `web`
//! generate(&fleet, &mut lines)?;
//! let aggs = ingest_reader(&lines[..], Aggregates::default(), now)?;
//! let report = detect(&aggs, &DetectConfig::default());
//! let top = &report.findings[0];
//! assert_eq!(top.app_type, "web");
//! assert_eq!(top.combination.get("kernel").map(String::as_str), Some("6.1.12"));
//! assert!(top.q_value < 0.05 && top.suggestion.is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod aggregate;
mod checkpoint;
mod detect;
mod event;
mod generate;
mod html;
mod log;
mod pipeline;
mod punch;
mod report;
mod serve;
mod stats;

pub use aggregate::{
    Aggregates, Canonical, CanonicalApp, CanonicalFull, Counts, DEFAULT_BUCKET_SECS,
};
pub use checkpoint::{CheckpointError, Checkpoints};
pub use detect::{
    detect, AppTypeSummary, DetectConfig, Finding, Flag, Heatmap, Report, SeriesPoint, Suggestion,
    Unit,
};
pub use event::{
    format_time, parse_line, parse_time, Event, EventError, EventKind, Exposure, Limits, Reason,
    EXPOSURE_SCALE,
};
pub use generate::{
    default_patterns, generate, generate_with, FleetConfig, FleetSummary, Planted, APP_TYPES,
    CATALOGUE,
};
pub use html::render as render_html;
pub use log::{
    decode as decode_log, encode as encode_log, replay as replay_log, Record, Replay,
    MAX_RECORD as MAX_LOG_RECORD,
};
pub use pipeline::{
    feed_lines, ingest_reader, ingest_reader_durable, Ack, AdmitStage, AfterApply, ApplyStage,
    Batch, IngestError, LineError, LogStage, ParseStage, Parsed, Shared, FILE_BATCH_BYTES,
    MAX_ERRORS_SHOWN,
};
pub use report::{to_json, to_table};
pub use serve::{run_until_signal, unix_now, Recovered, ServeError, ServeOptions, Server};
pub use stats::{bh_adjust, poisson_excess, rate_interval, rate_test};
