//! The merged view of a directory at one instant (its encoding: `read::encode`).
//!
//! [`Snapshot`] implements prometheus-client's
//! [`Collector`](prometheus_client::collector::Collector): register it in a fresh
//! [`Registry`](prometheus_client::registry::Registry) next to your own metrics and encode
//! the registry as usual (see [`Store::scrape_into`](crate::Store::scrape_into)).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::format::{GaugeMode, MetricType};

/// The merged value of one series.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// Integer counter: sum over all processes.
    Counter(u64),
    /// Float counter: sum over all processes.
    CounterF64(f64),
    /// Gauge, combined by the family's mode.
    Gauge(f64),
    /// Histogram: buckets and sum added over all processes.
    Histogram(HistogramValue),
    /// Summary (Python files only): count and sum added over all processes.
    Summary {
        /// Number of observations.
        count: f64,
        /// Sum of the observations.
        sum: f64,
    },
}

/// A merged histogram.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HistogramValue {
    /// Count per classic bucket (not cumulative), in the order of the bounds (the series'
    /// own [`bounds`](HistogramValue::bounds), or the family's), +Inf last; empty for a
    /// histogram with native buckets only.
    pub buckets: Vec<u64>,
    /// Sum of all observations.
    pub sum: f64,
    /// The series' own bucket bounds, when they are not the family's: processes of two
    /// releases that declare other buckets each keep theirs, as Python's collector does.
    pub bounds: Option<Arc<[f64]>>,
    /// The native buckets of a histogram declared with them.
    pub native: Option<NativeBuckets>,
}

impl HistogramValue {
    /// Number of observations: the sum of the classic buckets, or of the native ones for
    /// a histogram without classic buckets.
    pub fn count(&self) -> u64 {
        match &self.native {
            Some(n) if self.buckets.is_empty() => n.count(),
            _ => self.buckets.iter().sum(),
        }
    }
}

/// The merged native buckets of one histogram series: every process's buckets brought to
/// one schema (the coarsest any of them used) and one zero bucket, and to at most the
/// family's bucket limit. Counts are per bucket, not cumulative.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct NativeBuckets {
    /// The resolution: bucket `i` holds `2^((i−1)·2^−schema) < |v| ≤ 2^(i·2^−schema)`.
    pub schema: i8,
    /// Observations with `|v|` at most this are in the zero bucket.
    pub zero_threshold: f64,
    /// Observations in the zero bucket.
    pub zero_count: u64,
    /// (bucket index, count) of the positive observations, by index, no empty bucket.
    pub positive: Vec<(i32, u64)>,
    /// (bucket index, count) of the negative observations (by magnitude), by index.
    pub negative: Vec<(i32, u64)>,
}

impl NativeBuckets {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.positive
            .iter()
            .chain(&self.negative)
            .fold(self.zero_count, |a, (_, n)| a.saturating_add(*n))
    }

    /// The magnitudes bucket `index` holds: (lower bound, excluded; upper bound, included).
    pub fn bounds(&self, index: i32) -> (f64, f64) {
        (
            crate::format::native::upper_bound(self.schema, index - 1),
            crate::format::native::upper_bound(self.schema, index),
        )
    }
}

impl From<crate::format::native::Sparse> for NativeBuckets {
    fn from(s: crate::format::native::Sparse) -> Self {
        NativeBuckets {
            schema: s.schema,
            zero_threshold: s.zero_threshold,
            zero_count: s.zero_count,
            positive: s.positive,
            negative: s.negative,
        }
    }
}

/// One merged series.
#[derive(Clone, Debug, PartialEq)]
pub struct MergedSeries {
    /// Label values, in the order of the series' label names ([`MergedSeries::names`],
    /// or the family's [`MergedFamily::label_names`]).
    pub labels: Arc<[Box<str>]>,
    /// The series' own label names, when they are not the family's: processes of two
    /// releases that declare other labels (a label added in a rolling deploy) each keep
    /// their series, as Python's collector does.
    pub names: Option<Arc<[String]>>,
    /// The merged value.
    pub value: Value,
    /// The series' exemplars: (bucket, exemplar), the newest of each bucket across all
    /// processes; bucket 0 for a counter, the classic bucket's index for a histogram (0,
    /// its `+Inf` bucket, for one with native buckets only).
    pub exemplars: Vec<(usize, Exemplar)>,
}

/// An exemplar: the labels (a trace id, say) of one observation or increment, its value
/// and its time.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Exemplar {
    /// Label names and values.
    pub labels: Vec<(String, String)>,
    /// The observed value (the increment, for a counter).
    pub value: f64,
    /// When it was recorded.
    pub timestamp: std::time::SystemTime,
}

impl From<crate::format::exemplar::ExemplarData> for Exemplar {
    fn from(e: crate::format::exemplar::ExemplarData) -> Self {
        Exemplar {
            labels: e.labels,
            value: e.value,
            timestamp: std::time::UNIX_EPOCH + Duration::from_nanos(e.time),
        }
    }
}

impl MergedSeries {
    /// This series' label names.
    pub fn label_names<'a>(&'a self, family: &'a MergedFamily) -> &'a [String] {
        self.names.as_deref().unwrap_or(&family.label_names)
    }
}

/// One merged family.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct MergedFamily {
    /// Name (without `_total` for counters).
    pub name: String,
    /// Help text (unescaped).
    pub help: String,
    /// Type.
    pub metric_type: MetricType,
    /// Gauge mode (`All` for other types).
    pub mode: GaugeMode,
    /// Label names; per-process gauge modes end with `pid`. A series may have its own
    /// ([`MergedSeries::names`]).
    pub label_names: Vec<String>,
    /// Histogram upper bounds with +Inf last; empty for other types. A series may have
    /// its own ([`HistogramValue::bounds`]).
    pub buckets: Vec<f64>,
    /// Series, sorted by label values.
    pub series: Vec<MergedSeries>,
}

impl MergedFamily {
    /// The series whose labels are exactly `labels` (name, value pairs, any order).
    pub fn get(&self, labels: &[(&str, &str)]) -> Option<&Value> {
        self.series
            .iter()
            .find(|s| {
                let names = s.label_names(self);
                names.len() == labels.len()
                    && names
                        .iter()
                        .zip(s.labels.iter())
                        .all(|(n, v)| labels.iter().any(|(k, want)| *k == n.as_str() && *want == &**v))
            })
            .map(|s| &s.value)
    }
}

/// Counts about one scrape, also exposed as `shmetrics_*` self-metrics.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ScrapeStats {
    /// Files whose writer holds its lock.
    pub live_files: u64,
    /// Well-formed files whose writer has exited (including those already folded into
    /// the accumulator and waiting to be deleted).
    pub dead_files: u64,
    /// Dead files already folded into the accumulator (not merged again).
    pub folded_files: u64,
    /// Accumulator files (the folded values of dead writers).
    pub accumulators: u64,
    /// Files skipped because they are not well-formed.
    pub corrupt_files: u64,
    /// Store files of a newer format version, left alone (a rolling upgrade or
    /// downgrade: a reader of their version reads them).
    pub newer_files: u64,
    /// Files that could not be read in this scrape (no descriptor left, no permission,
    /// changed while read). What an earlier scrape read of them is still served.
    pub unreadable_files: u64,
    /// Files in the directory that do not belong to the store.
    pub foreign_files: u64,
    /// Files skipped (corrupt, newer, unreadable) and why.
    pub corrupt: Vec<(PathBuf, String)>,
    /// Foreign files.
    pub foreign: Vec<PathBuf>,
    /// Merged series.
    pub series: usize,
    /// Bytes of files mapped by the reader.
    pub mapped_bytes: u64,
    /// Time spent reading and merging.
    pub duration: Duration,
    /// Store errors counted by writers, per kind (`growth`, `invalid_value`, `label_count`).
    pub store_errors: Vec<(&'static str, u64)>,
    /// Lookups sent to the overflow series, per family.
    pub overflow: Vec<(String, u64)>,
    /// (file, family) pairs skipped because the file declares the family with another
    /// type or gauge mode (also Python entries, Python families of another type than the
    /// native family of the same name, and families whose exposed names would clash).
    pub conflicts: u64,
    /// Python `prometheus_client` files (`*.db`) merged.
    pub python_files: u64,
    /// Python `live*` gauge files not merged: their process is gone (`/proc` liveness).
    pub python_dead_files: u64,
    /// Python entries skipped because they cannot be exposed: names that are not valid
    /// Prometheus names, or samples that do not belong to the file's metric type.
    pub python_skipped: u64,
}

/// The merged metrics of a directory.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub(super) families: Vec<MergedFamily>,
    pub(super) stats: ScrapeStats,
    pub(super) self_metrics: bool,
    /// Whether help texts go to the encoder unescaped (the Prometheus data model carries
    /// them raw; the OpenMetrics text encoder writes them as given, so they are escaped
    /// first).
    pub(super) raw_help: bool,
}

impl Snapshot {
    pub(crate) fn new(families: Vec<MergedFamily>, stats: ScrapeStats) -> Self {
        Snapshot {
            families,
            stats,
            self_metrics: true,
            raw_help: false,
        }
    }

    pub(crate) fn stats_mut(&mut self) -> &mut ScrapeStats {
        &mut self.stats
    }

    /// Leaves the `shmetrics_*` self-metrics out of the encoding.
    pub fn without_self_metrics(mut self) -> Self {
        self.self_metrics = false;
        self
    }

    /// Merged families, sorted by name.
    pub fn families(&self) -> &[MergedFamily] {
        &self.families
    }

    /// The family called `name`.
    pub fn family(&self, name: &str) -> Option<&MergedFamily> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The merged value of one series (labels as name, value pairs).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Value> {
        self.family(name)?.get(labels)
    }

    /// An integer counter's merged value.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        match self.get(name, labels)? {
            Value::Counter(v) => Some(*v),
            _ => None,
        }
    }

    /// A float counter's merged value.
    pub fn counter_f64(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.get(name, labels)? {
            Value::CounterF64(v) => Some(*v),
            _ => None,
        }
    }

    /// A gauge's merged value.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.get(name, labels)? {
            Value::Gauge(v) => Some(*v),
            _ => None,
        }
    }

    /// A histogram's merged value.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Option<&HistogramValue> {
        match self.get(name, labels)? {
            Value::Histogram(h) => Some(h),
            _ => None,
        }
    }

    /// Counts about this scrape.
    pub fn stats(&self) -> &ScrapeStats {
        &self.stats
    }
}
