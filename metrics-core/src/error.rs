//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong when opening a store, declaring a metric or scraping.
///
/// Messages say what happened and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `PROMETHEUS_MULTIPROC_DIR` is not set (or empty).
    #[error(
        "{var} is not set: set it to the metrics directory of this application \
         (e.g. /dev/shm/prometheus/<api>), or pass a directory to Store::builder"
    )]
    EnvNotSet {
        /// The variable that was read.
        var: &'static str,
    },

    /// The metrics directory cannot be used.
    #[error("metrics directory {}: {reason}", path.display())]
    Directory {
        /// The directory.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<io::Error>,
    },

    /// A file operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("creating", "growing", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A metric name is not valid.
    #[error("invalid metric name {name:?}: it {reason}")]
    InvalidMetricName {
        /// The name as given.
        name: String,
        /// Why it is refused.
        reason: String,
    },

    /// A label name is not valid.
    #[error("invalid label name {label:?} for metric {metric:?}: it {reason}")]
    InvalidLabelName {
        /// The metric being declared.
        metric: String,
        /// The label name as given.
        label: String,
        /// Why it is refused.
        reason: String,
    },

    /// Histogram buckets are not valid.
    #[error("invalid buckets for histogram {metric:?}: the list {reason}")]
    InvalidBuckets {
        /// The metric being declared.
        metric: String,
        /// Why they are refused.
        reason: String,
    },

    /// The same metric name is already declared with another type, labels, buckets or mode.
    #[error(
        "metric {name:?} is already declared differently by {by}: {existing} (here: {requested}); \
         every process of an application must declare a metric identically"
    )]
    Conflict {
        /// The metric name.
        name: String,
        /// Who declared it first ("this process", "pid 1234 (file ...)").
        by: String,
        /// The existing declaration.
        existing: String,
        /// The declaration that was refused.
        requested: String,
    },

    /// The exposition would show one sample name for two families (`jobs` as a counter
    /// is `jobs_total`, as a gauge `jobs_total` is too; a histogram `lat` has `lat_count`).
    #[error(
        "metric {name:?} would clash with metric {other:?} declared by {by}: both would expose \
         {sample:?}, and Prometheus and OpenMetrics parsers reject such an exposition; rename one of them"
    )]
    NameClash {
        /// The metric being declared.
        name: String,
        /// The metric already declared.
        other: String,
        /// Who declared it ("this process", "live process 1234 (file ...)").
        by: String,
        /// The name both would expose.
        sample: String,
    },

    /// The directory belongs to another application.
    #[error(
        "metrics directory {} belongs to application {owner:?}, not {requested:?}: \
         give each application its own directory (e.g. /dev/shm/prometheus/{requested})",
        dir.display()
    )]
    WrongApplication {
        /// The directory.
        dir: PathBuf,
        /// The application recorded in it.
        owner: String,
        /// The application that tried to open it.
        requested: String,
    },

    /// Another live process holds the requested worker slot.
    #[error(
        "worker slot {slot} in {} is held by live process {pid}: give each live worker its own \
         worker id (or none)",
        dir.display()
    )]
    SlotBusy {
        /// The directory.
        dir: PathBuf,
        /// The worker id.
        slot: u64,
        /// The process holding it.
        pid: u32,
    },

    /// A declaration option does not fit the metric kind.
    #[error("metric {name:?}: {reason}")]
    InvalidOption {
        /// The metric name.
        name: String,
        /// What is wrong.
        reason: String,
    },

    /// Encoding the exposition failed (a `fmt::Error` from a collector).
    #[error("encoding the exposition failed (a registered collector returned an error)")]
    Encode,

    /// The exposition format asked for is not built into this binary.
    #[error(
        "the {format} format is not built in: enable the `protobuf` feature of shmetrics-core \
         (on by default), or ask for OpenMetrics"
    )]
    FormatUnavailable {
        /// The format's name.
        format: &'static str,
    },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
