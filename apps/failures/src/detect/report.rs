//! The detection report and its settings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::aggregate::Counts;
use crate::event::EXPOSURE_SCALE;

/// Which exposure unit a report uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Instance-hours.
    #[default]
    Hours,
    /// Launches.
    Launches,
}

impl Unit {
    /// `hours` or `launches`.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Hours => "hours",
            Unit::Launches => "launches",
        }
    }

    pub(super) fn of(self, c: &Counts) -> f64 {
        let raw = match self {
            Unit::Hours => c.hours,
            Unit::Launches => c.launches,
        };
        raw as f64 / EXPOSURE_SCALE
    }
}

/// Detection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectConfig {
    /// The false discovery rate controlled by Benjamini–Hochberg.
    pub q: f64,
    /// The smallest rate ratio (cell vs rest) worth reporting.
    pub min_ratio: f64,
    /// The smallest exposure a cell needs to be tested; `None`: the exposure in which
    /// the type's overall rate predicts [`DetectConfig::min_expected`] failures.
    pub min_exposure: Option<f64>,
    /// See [`DetectConfig::min_exposure`].
    pub min_expected: f64,
    /// The exposure unit.
    pub unit: Unit,
    /// Confidence of the rate intervals.
    pub level: f64,
    /// Significance of the "not explained by the other findings" test (family-wise,
    /// over the candidates of an application type: Bonferroni).
    pub alpha_explain: f64,
    /// How far (observed over expected) a cell must exceed what the other findings
    /// explain to be reported on its own.
    pub explain_ratio: f64,
    /// A resource is flagged when abnormal in at least this many application types.
    pub flag_min_app_types: usize,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            q: 0.05,
            min_ratio: 1.5,
            min_exposure: None,
            min_expected: 5.0,
            unit: Unit::Hours,
            level: 0.95,
            alpha_explain: 0.05,
            explain_ratio: 1.25,
            flag_min_app_types: 2,
        }
    }
}

/// A better combination for a finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suggestion {
    /// The combination to run on instead.
    pub combination: BTreeMap<String, String>,
    /// Which attributes change.
    pub changed: Vec<String>,
    /// Its failures.
    pub failures: u64,
    /// Its exposure.
    pub exposure: f64,
    /// Its rate.
    pub rate: f64,
    /// Its rate interval, lower end.
    pub rate_low: f64,
    /// Its rate interval, upper end.
    pub rate_high: f64,
}

/// A point of a rate-over-time series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Bucket start, seconds since the epoch.
    pub t: i64,
    /// Failures in the bucket.
    pub failures: u64,
    /// Exposure in the bucket.
    pub exposure: f64,
}

/// An abnormally high failure pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The application type.
    pub app_type: String,
    /// The combination (one attribute, a pair, or a full combination).
    pub combination: BTreeMap<String, String>,
    /// Its failures.
    pub failures: u64,
    /// Its exposure, in the report's unit.
    pub exposure: f64,
    /// failures / exposure.
    pub rate: f64,
    /// Rate interval, lower end.
    pub rate_low: f64,
    /// Rate interval, upper end.
    pub rate_high: f64,
    /// The rate of the rest of the application type.
    pub baseline_rate: f64,
    /// rate / baseline_rate.
    pub rate_ratio: f64,
    /// The exact test's one-sided p-value.
    pub p_value: f64,
    /// Benjamini–Hochberg q-value over every test in the report.
    pub q_value: f64,
    /// A better combination, if one is measured well enough.
    pub suggestion: Option<Suggestion>,
    /// The finding's rate over time.
    pub series: Vec<SeriesPoint>,
}

/// A resource abnormal in several application types: fix it, rather than move away.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flag {
    /// Attribute name.
    pub attribute: String,
    /// Its value.
    pub value: String,
    /// The application types where it is (part of) a finding.
    pub app_types: Vec<String>,
}

/// One application type's totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppTypeSummary {
    /// The type.
    pub app_type: String,
    /// Its failures.
    pub failures: u64,
    /// Its exposure.
    pub exposure: f64,
    /// Its overall rate.
    pub rate: f64,
    /// Cells tested.
    pub tested: usize,
    /// The smallest exposure a tested cell had to have.
    pub min_exposure: f64,
    /// Failures by kind.
    pub kinds: BTreeMap<String, u64>,
}

/// Rate ratios of the cells of two attributes of one application type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heatmap {
    /// The type.
    pub app_type: String,
    /// Rows are values of this attribute.
    pub row_attribute: String,
    /// Columns are values of this one.
    pub col_attribute: String,
    /// Row values.
    pub rows: Vec<String>,
    /// Column values.
    pub cols: Vec<String>,
    /// Rate of each (row, column) cell over the type's rate; `None` without exposure.
    pub ratio: Vec<Vec<Option<f64>>>,
}

/// Everything a report shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The exposure unit of every rate.
    pub unit: Unit,
    /// The FDR level.
    pub q: f64,
    /// The rate-ratio floor.
    pub min_ratio: f64,
    /// Events accepted.
    pub accepted: u64,
    /// Refused lines by reason.
    pub bad_lines: BTreeMap<String, u64>,
    /// Cells tested, over every type.
    pub tested: usize,
    /// BH discoveries before the explanation step.
    pub discoveries: usize,
    /// The findings, most significant first.
    pub findings: Vec<Finding>,
    /// Resources abnormal in several types.
    pub flagged: Vec<Flag>,
    /// Per application type.
    pub app_types: Vec<AppTypeSummary>,
    /// Heat maps of attribute pairs (one per type with findings).
    pub heatmaps: Vec<Heatmap>,
}
