//! The file format (versions 1 and 2), as specified in `FORMAT.md`: this module is its one
//! owner.
//!
//! * here: the directory's file names, the header layout, record kinds, limits, the metric
//!   types and gauge modes as the files encode them;
//! * [`header`]: building and checking a file's header;
//! * [`records`]: encoding and decoding each record, every length untrusted;
//! * [`parse`]: the records of a mapped file, read incrementally;
//! * [`desc`]: a family's validated declaration (what a family record holds);
//! * [`names`]: metric and label name rules, escaping, bucket bounds;
//! * [`native`]: native histogram buckets (index, schema reduction, chunks).
//!
//! Nothing here writes a file; the decoders never touch shared memory directly (they work
//! on local copies of words, or through [`Region`](crate::sys::region::Region)'s atomic
//! loads).

pub(crate) mod desc;
pub(crate) mod exemplar;
pub(crate) mod header;
pub(crate) mod names;
pub(crate) mod native;
pub(crate) mod parse;
pub(crate) mod records;

use std::fmt;

#[cfg(target_endian = "big")]
compile_error!(
    "shmetrics files are little-endian and the store writes native atomics: big-endian hosts are not supported"
);

/// Bytes 0..8 of every store file.
pub(crate) const MAGIC: [u8; 8] = *b"SHMETRIC";
/// The newest format version this crate reads and writes: a file holding native
/// histograms (their family and chunk records, or removal baselines of their buckets).
pub(crate) const VERSION: u32 = 2;
/// The version of a file that holds nothing version 2 added: byte for byte what releases
/// that only know version 1 write, so they keep reading it during a rolling upgrade.
pub(crate) const BASE_VERSION: u32 = 1;
/// Size of the header in bytes (16 words).
pub(crate) const HEADER_BYTES: usize = 128;
/// Header size in words.
pub(crate) const HEADER_WORDS: usize = HEADER_BYTES / 8;

// Header word indexes.
pub(crate) const H_MAGIC: usize = 0;
/// low 32 bits: version, high 32 bits: header size in bytes.
pub(crate) const H_VERSION: usize = 1;
/// Bytes in use: every record lies below this offset. Release-stored by the writer.
pub(crate) const H_USED: usize = 2;
/// low 32 bits: pid of the writer, high 32 bits: flags (0).
pub(crate) const H_PID: usize = 3;
/// Wall-clock start of the writer, nanoseconds since the Unix epoch.
pub(crate) const H_START: usize = 4;
/// Random 64-bit identity of the writer (survives pid reuse and containers).
pub(crate) const H_WRITER_ID: usize = 5;
/// Stable worker id, or `NO_WORKER`.
pub(crate) const H_WORKER: usize = 6;
/// First of the error counters (see [`ErrorKind`]).
pub(crate) const H_ERRORS: usize = 7;
/// Number of error counters in the header (words 7 to 14; readers that know fewer
/// ignore the others, which older writers leave at zero).
pub(crate) const ERROR_KINDS: usize = 8;

/// `H_WORKER` value of a writer without a stable worker id.
pub(crate) const NO_WORKER: u64 = u64::MAX;

/// Kinds of store error counted in writer headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// The file could not grow (filesystem full, size limit): a series or family waits in
    /// process memory until space comes back.
    Growth = 0,
    /// A value was refused: negative or NaN counter increment.
    InvalidValue = 1,
    /// A label lookup with the wrong number of values (sent to the overflow series).
    LabelCount = 2,
    /// A label value longer than [`MAX_LABEL_VALUE_BYTES`] (sent to the overflow series).
    LabelValue = 3,
    /// A worker slot's file could not be used (a symlink or another kind of file planted
    /// at its name, or a newer format version): the worker wrote an ordinary file instead.
    SlotSkipped = 4,
    /// An exemplar was not recorded: its labels break the rules (more than 128 characters,
    /// an invalid name), or its record could not be written (no room).
    Exemplar = 5,
    /// A metric of the `metrics` facade was not recorded: its name is taken by another
    /// type, or it has other label names than at its first use.
    Recorder = 6,
    /// A process or runtime metric could not be read (`/proc` missing or unreadable).
    ProcessRead = 7,
}

impl ErrorKind {
    pub(crate) const ALL: [ErrorKind; ERROR_KINDS] = [
        ErrorKind::Growth,
        ErrorKind::InvalidValue,
        ErrorKind::LabelCount,
        ErrorKind::LabelValue,
        ErrorKind::SlotSkipped,
        ErrorKind::Exemplar,
        ErrorKind::Recorder,
        ErrorKind::ProcessRead,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            ErrorKind::Growth => "growth",
            ErrorKind::InvalidValue => "invalid_value",
            ErrorKind::LabelCount => "label_count",
            ErrorKind::LabelValue => "label_value",
            ErrorKind::SlotSkipped => "slot_skipped",
            ErrorKind::Exemplar => "exemplar",
            ErrorKind::Recorder => "recorder",
            ErrorKind::ProcessRead => "process_read",
        }
    }
}

// Record kinds.
pub(crate) const REC_APPLICATION: u32 = 1;
pub(crate) const REC_FAMILY: u32 = 2;
pub(crate) const REC_SERIES: u32 = 3;
pub(crate) const REC_VALUES: u32 = 4;
pub(crate) const REC_FOLDED: u32 = 5;
pub(crate) const REC_REMOVAL: u32 = 6;
/// Version 2: a chunk of a native histogram series' buckets.
pub(crate) const REC_NATIVE_CHUNK: u32 = 7;
/// Version 2: the latest exemplar of a counter series or of a histogram bucket.
pub(crate) const REC_EXEMPLAR: u32 = 8;

/// Family flag (record word 1, high half): the histogram has native buckets (version 2).
pub(crate) const FAMILY_NATIVE: u32 = 1 << 16;

/// Header flag (word 3, high half): the file is the directory's accumulator of folded
/// dead writers.
pub(crate) const FLAG_ACCUMULATOR: u32 = 1;
/// Most baselines one removal record may hold.
pub(crate) const MAX_BASELINES: usize = 1 << 20;
/// Record kinds with this bit set may be skipped by readers that do not know them.
pub(crate) const REC_OPTIONAL: u32 = 1 << 31;

/// Largest record a reader accepts, in bytes.
pub(crate) const MAX_RECORD_BYTES: usize = 16 << 20;
/// Longest metric, label or application name.
pub(crate) const MAX_NAME_BYTES: usize = 1024;
/// Longest label value a writer stores (Prometheus users never need more; a longer one
/// goes to the family's overflow series and is counted).
pub const MAX_LABEL_VALUE_BYTES: usize = 4096;
/// Longest help text a writer stores.
pub const MAX_HELP_BYTES: usize = 64 << 10;
/// Most label names per family.
pub(crate) const MAX_LABELS: usize = 64;
/// Most histogram buckets per family (including +Inf).
pub(crate) const MAX_BUCKETS: usize = 1024;

/// The metric type of a family, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricType {
    /// Monotonic integer counter (one u64 slot).
    Counter,
    /// Monotonic float counter (one f64 slot).
    CounterF64,
    /// Gauge (one f64 slot; three for the `mostrecent` modes).
    Gauge,
    /// Histogram with fixed buckets (one u64 per bucket, then the f64 sum).
    Histogram,
    /// Summary of a count and a sum, without quantiles: only read from Python
    /// `prometheus_client` files, never stored by this crate.
    Summary,
}

impl MetricType {
    pub(crate) fn code(self) -> u8 {
        match self {
            MetricType::Counter => 1,
            MetricType::CounterF64 => 2,
            MetricType::Gauge => 3,
            MetricType::Histogram => 4,
            MetricType::Summary => 0,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => MetricType::Counter,
            2 => MetricType::CounterF64,
            3 => MetricType::Gauge,
            4 => MetricType::Histogram,
            _ => return None,
        })
    }
}

/// How the gauges of several processes combine into one value (Python's
/// `multiprocess_mode`). The `live*` modes ignore processes that have exited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GaugeMode {
    /// One series per process, with a `pid` label; exited processes stay.
    #[default]
    All,
    /// One series per live process, with a `pid` label.
    LiveAll,
    /// The smallest value of any process.
    Min,
    /// The smallest value of any live process.
    LiveMin,
    /// The largest value of any process.
    Max,
    /// The largest value of any live process.
    LiveMax,
    /// The sum over all processes.
    Sum,
    /// The sum over live processes (e.g. requests in flight).
    LiveSum,
    /// The value most recently set by any process.
    MostRecent,
    /// The value most recently set by a live process.
    LiveMostRecent,
}

impl GaugeMode {
    /// Every mode, in code order.
    pub const ALL: [GaugeMode; 10] = [
        GaugeMode::All,
        GaugeMode::LiveAll,
        GaugeMode::Min,
        GaugeMode::LiveMin,
        GaugeMode::Max,
        GaugeMode::LiveMax,
        GaugeMode::Sum,
        GaugeMode::LiveSum,
        GaugeMode::MostRecent,
        GaugeMode::LiveMostRecent,
    ];

    pub(crate) fn code(self) -> u8 {
        GaugeMode::ALL.iter().position(|m| *m == self).unwrap_or(0) as u8
    }

    pub(crate) fn from_code(c: u8) -> Option<Self> {
        GaugeMode::ALL.get(usize::from(c)).copied()
    }

    /// Python's name for the mode (`"livesum"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            GaugeMode::All => "all",
            GaugeMode::LiveAll => "liveall",
            GaugeMode::Min => "min",
            GaugeMode::LiveMin => "livemin",
            GaugeMode::Max => "max",
            GaugeMode::LiveMax => "livemax",
            GaugeMode::Sum => "sum",
            GaugeMode::LiveSum => "livesum",
            GaugeMode::MostRecent => "mostrecent",
            GaugeMode::LiveMostRecent => "livemostrecent",
        }
    }

    /// Whether processes that have exited are left out.
    pub fn live_only(self) -> bool {
        matches!(
            self,
            GaugeMode::LiveAll
                | GaugeMode::LiveMin
                | GaugeMode::LiveMax
                | GaugeMode::LiveSum
                | GaugeMode::LiveMostRecent
        )
    }

    /// Whether each process gets its own series with a `pid` label.
    pub fn per_process(self) -> bool {
        matches!(self, GaugeMode::All | GaugeMode::LiveAll)
    }

    pub(crate) fn most_recent(self) -> bool {
        matches!(self, GaugeMode::MostRecent | GaugeMode::LiveMostRecent)
    }
}

impl fmt::Display for GaugeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for GaugeMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GaugeMode::ALL
            .iter()
            .copied()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown gauge mode {s:?}; expected one of: all, liveall, min, livemin, max, livemax, sum, livesum, mostrecent, livemostrecent"
                )
            })
    }
}

/// Number of value slots of one series (`native`: a histogram with native buckets, whose
/// zero bucket follows the sum; its other buckets are in chunk records).
pub(crate) fn series_slots(ty: MetricType, mode: GaugeMode, buckets: usize, native: bool) -> usize {
    match ty {
        MetricType::Counter | MetricType::CounterF64 => 1,
        MetricType::Gauge if mode.most_recent() => 3,
        MetricType::Gauge => 1,
        MetricType::Histogram => buckets + 1 + usize::from(native),
        MetricType::Summary => 2,
    }
}

// Slot layout of a `mostrecent` gauge: a sequence word (odd while a write is in
// progress), the value, and the wall-clock time of the write in Unix nanoseconds.
pub(crate) const MR_SEQ: usize = 0;
pub(crate) const MR_VALUE: usize = 1;
pub(crate) const MR_TIME: usize = 2;
/// Prefix of writer file names (`w-<pid>-<16 hex>.shm`).
pub(crate) const WRITER_PREFIX: &str = "w-";
/// Prefix of worker slot file names (`slot-<id>.shm`).
pub(crate) const SLOT_PREFIX: &str = "slot-";
/// Extension of every store file.
pub(crate) const STORE_EXT: &str = ".shm";
/// Prefix of files being initialised (ignored by readers).
pub(crate) const TMP_PREFIX: &str = ".tmp-";
/// The directory lock file and its turnstile (the lock's protocol lives in `sys::dirlock`).
pub(crate) use crate::sys::dirlock::{LOCK_FILE, TURN_FILE};
/// The accumulator of the directory's main declarations.
pub(crate) const ACCUMULATOR: &str = "accumulator.shm";
/// Prefix of the accumulators of other declarations (`accumulator-<16 hex>.shm`).
pub(crate) const ACCUMULATOR_PREFIX: &str = "accumulator-";
/// The accumulator of the Python counter and histogram files a Python compaction folded
/// (only a Python compaction writes it; the native compaction leaves it alone).
pub(crate) const PYTHON_ACCUMULATOR: &str = "accumulator-python.shm";

/// Largest store file a reader accepts. Writers never make one larger
/// ([`StoreBuilder::max_file_size`](crate::StoreBuilder::max_file_size) is capped to it):
/// a larger one (a sparse file, say) is refused before anything of it is read.
pub(crate) const MAX_FILE_BYTES: usize = 1 << 30;

/// Whether `name` is an accumulator's: `accumulator.shm`, or `accumulator-<16 hex>.shm`
/// for the series of families that other releases declare otherwise.
pub(crate) fn is_accumulator_name(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    if name == ACCUMULATOR || name == PYTHON_ACCUMULATOR {
        return true;
    }
    name.strip_prefix(ACCUMULATOR_PREFIX)
        .and_then(|r| r.strip_suffix(STORE_EXT))
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether `name` is a worker slot file's.
pub(crate) fn is_slot_name(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with(SLOT_PREFIX)
}
