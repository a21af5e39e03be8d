//! The multiprocess files of Python's `prometheus_client` (`*.db`), merged with the same
//! rules as its `MultiProcessCollector`.
//!
//! A Python worker writes one file per metric type (`counter_<pid>.db`,
//! `histogram_<pid>.db`, `summary_<pid>.db`) and one per gauge mode
//! (`gauge_<mode>_<pid>.db`). A file is a native-endian `i32` "used" length, 4 bytes of
//! padding, then entries: an `i32` key length, the UTF-8 JSON key
//! `[metric, sample, {label: value}, help]` padded with spaces to 8 bytes, and the value
//! as an `f64` followed (since prometheus_client 0.18) by an `f64` Unix timestamp in
//! seconds, which only the `mostrecent` gauge modes set. Files of older clients (no
//! timestamp) are recognised by their layout and read with timestamp 0 (their clients had
//! no `mostrecent` mode).
//!
//! Aggregation, as Python's collector: counters and summaries add up; histogram buckets
//! add up per bound and the count is the sum of the buckets; gauges combine by the mode
//! in the file name, `all` and `liveall` keeping one series per process with a `pid`
//! label taken from the file name; `mostrecent` series only appear once set. Liveness is
//! Python's: a `live*` gauge file exists while its process lives (the supervisor's
//! `mark_process_dead` deletes it), so every file present is merged.
//!
//! As Python's collector, series are merged by their sample labels: files of two releases
//! that declare a family with other labels keep both sets of series, and a histogram
//! series keeps its own bucket bounds (a bound it never had is not shown for it). `le` is
//! an ordinary label outside a histogram's buckets. Names are written as prometheus_client
//! 0.26's default exposition writes its samples (see [`escape_name`]).
//!
//! Where Python would produce an invalid exposition this reader skips, counts and logs
//! instead: a family whose files disagree on its type or gauge mode keeps the first file's
//! (files in name order) and the other entries are counted as conflicts; entries whose
//! label names clash once escaped, or whose sample does not belong to the file's type, are
//! counted as skipped. A file that breaks the layout is skipped as a whole and counted as
//! corrupt. These files are only read: never modified, compacted or deleted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::acc::{Acc, HistAcc};
use super::join::{FamilyOut, OutSeries};
use super::keys::KeyTable;
use super::scan::{Problem, open_read_only};
use super::snapshot::ScrapeStats;
use crate::format::names;
use crate::format::records::{Corrupt, corrupt};
use crate::format::{GaugeMode, MetricType};
use crate::sys::region::Region;

/// File name extension of Python's multiprocess files.
pub(crate) const PY_EXT: &str = ".db";

/// Most bytes of entries a file may use (Python doubles its file from 64 KiB; 1 GiB is far
/// beyond any real worker and keeps a corrupt length from allocating the machine away).
const MAX_USED: usize = 1 << 30;

/// How the reader decides that the process of a Python `live*` gauge file is alive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PythonLiveness {
    /// Python's own rule: a file present is a process alive (its supervisor's
    /// `mark_process_dead` deletes it; after a SIGKILL or an OOM kill nothing does, and the
    /// dead worker's last values stay counted).
    #[default]
    Files,
    /// A `live*` gauge file counts only while `/proc/<pid>` shows a process of its pid that
    /// started before the file last changed (a pid reused by a later process is not taken
    /// for the dead one's, except within a second of the file's last change: `/proc`
    /// gives start times to the second once the boot time is added). Where `/proc` cannot
    /// be read the file counts, as under Python's rule.
    Proc,
}

/// The type of a Python file, from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PyKind {
    Counter,
    Gauge(GaugeMode),
    Histogram,
    Summary,
}

impl PyKind {
    fn metric_type(self) -> MetricType {
        match self {
            PyKind::Counter => MetricType::CounterF64,
            PyKind::Gauge(_) => MetricType::Gauge,
            PyKind::Histogram => MetricType::Histogram,
            PyKind::Summary => MetricType::Summary,
        }
    }

    fn per_process(self) -> bool {
        matches!(self, PyKind::Gauge(m) if m.per_process())
    }
}

/// The kind and process identifier of a file Python names `<type>_<pid>.db` or
/// `gauge_<mode>_<pid>.db`; `None` for any other name.
pub(crate) fn parse_file_name(name: &str) -> Option<(PyKind, &str)> {
    let stem = name.strip_suffix(PY_EXT)?;
    let (typ, rest) = stem.split_once('_')?;
    let (kind, pid) = match typ {
        "counter" => (PyKind::Counter, rest),
        "histogram" => (PyKind::Histogram, rest),
        "summary" => (PyKind::Summary, rest),
        "gauge" => {
            let (mode, pid) = rest.split_once('_')?;
            (PyKind::Gauge(mode.parse().ok()?), pid)
        }
        _ => return None,
    };
    (!pid.is_empty()).then_some((kind, pid))
}

/// What a Python counter or histogram file of a dead process is renamed to while a
/// Python compaction folds it: `<name>.folding-<16 hex>`, the hex its fold id (recorded in
/// the accumulator's folded set once folded). Not `*.db`: no Python process opens it again.
pub(crate) const FOLDING_MARK: &str = ".folding-";

/// The kind, process identifier and fold id (of a file being folded) of a name Python
/// gives its files, or of such a name with [`FOLDING_MARK`]; `None` for any other name.
pub(crate) fn parse_listing_name(name: &str) -> Option<(PyKind, &str, Option<u64>)> {
    match name.rsplit_once(FOLDING_MARK) {
        Some((base, hex)) if hex.len() == 16 => {
            let id = u64::from_str_radix(hex, 16).ok()?;
            let (kind, pid) = parse_file_name(base)?;
            matches!(kind, PyKind::Counter | PyKind::Histogram).then_some((kind, pid, Some(id)))
        }
        Some(_) => None,
        None => parse_file_name(name).map(|(k, p)| (k, p, None)),
    }
}

/// What a sample of a key is, relative to its metric.
#[derive(Clone, Debug, PartialEq)]
enum Sample {
    /// `<metric>_total` of a counter.
    Total,
    /// `<metric>` of a gauge.
    Value,
    /// `<metric>_bucket` (its bound is the key's `le` label).
    Bucket,
    /// `<metric>_sum`.
    Sum,
    /// `<metric>_count`.
    Count,
}

/// A parsed JSON key.
struct KeyInfo {
    /// The metric's name as Python exposes it (escaped, see [`escape_name`]).
    metric: Box<str>,
    help: Box<str>,
    /// `Err`: the entry cannot be exposed (the reason is logged once).
    sample: Result<Sample, String>,
    /// Label names (escaped) and values, sorted by name as Python sorts them; `le` too.
    labels: Box<[(Box<str>, Box<str>)]>,
    /// The bound of a `<metric>_bucket` sample: its `le` label, parsed as Python does.
    le: Option<f64>,
    /// The key itself.
    bytes: Box<[u8]>,
}

/// A metric or label name as prometheus_client 0.26's default exposition writes its
/// samples (escaping `underscores`): each character outside `[a-zA-Z0-9_]`, and a leading
/// digit, replaced by `_`. That covers UTF-8 names (`app.temp` is served as `app_temp`;
/// clients before 0.22 refuse such names, so their files never hold them) and colons: 0.26
/// writes the samples of `a:b` as `a_b` (under a `# TYPE a:b` line of its own); this
/// reader names the family as its samples are named, so the series are the ones
/// Prometheus stores from Python's collector.
fn escape_name(name: &str) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            let ok = c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit());
            if ok { c } else { '_' }
        })
        .collect()
}

impl KeyInfo {
    fn parse(key: &[u8]) -> Result<KeyInfo, String> {
        let v: serde_json::Value = serde_json::from_slice(key).map_err(|e| format!("not JSON: {e}"))?;
        let shape = || "not a [metric, sample, {labels}, help] key".to_string();
        let [metric, sample, labels, help] = v.as_array().map(Vec::as_slice).ok_or_else(shape)? else {
            return Err(shape());
        };
        let (Some(metric), Some(sample), Some(labels), Some(help)) = (
            metric.as_str(),
            sample.as_str(),
            labels.as_object(),
            help.as_str(),
        ) else {
            return Err(shape());
        };
        let mut pairs: Vec<(Box<str>, Box<str>)> = Vec::with_capacity(labels.len());
        for (k, v) in labels {
            pairs.push((escape_name(k).into(), v.as_str().ok_or_else(shape)?.into()));
        }
        pairs.sort_unstable();
        let le = pairs.iter().find(|(k, _)| &**k == "le").map(|(_, v)| v.clone());
        let sample = Self::classify(metric, sample, le.as_deref(), &pairs);
        Ok(KeyInfo {
            metric: escape_name(metric).into(),
            help: help.into(),
            le: match &sample {
                Ok(Sample::Bucket) => le.and_then(|b| b.trim().parse().ok()),
                _ => None,
            },
            sample,
            labels: pairs.into(),
            bytes: key.into(),
        })
    }

    fn classify(
        metric: &str,
        sample: &str,
        le: Option<&str>,
        labels: &[(Box<str>, Box<str>)],
    ) -> Result<Sample, String> {
        if metric.is_empty() {
            return Err("an empty metric name".into());
        }
        for (i, (k, _)) in labels.iter().enumerate() {
            names::check_label_name(k).map_err(|r| format!("label name {k:?} of {metric} {r}"))?;
            if i > 0 && labels[i - 1].0 == *k {
                return Err(format!("label name {k:?} of {metric} twice once escaped"));
            }
        }
        let suffix = sample
            .strip_prefix(metric)
            .ok_or_else(|| format!("sample {sample:?} does not belong to metric {metric:?}"))?;
        let s = match suffix {
            "_total" => Sample::Total,
            "" => Sample::Value,
            "_sum" => Sample::Sum,
            "_count" => Sample::Count,
            "_bucket" => match le.map(|b| b.trim().parse::<f64>()) {
                Some(Ok(_)) => Sample::Bucket,
                Some(Err(_)) => {
                    return Err(format!(
                        "bucket bound le={:?} of {metric} is not a number",
                        le.unwrap_or_default()
                    ));
                }
                None => return Err(format!("bucket of {metric} without an le label")),
            },
            _ => {
                return Err(format!(
                    "sample {sample:?} of {metric} is not one this reader knows"
                ));
            }
        };
        Ok(s)
    }

    /// Whether a file of `kind` may hold this sample.
    fn fits(&self, kind: PyKind) -> bool {
        matches!(
            (kind, &self.sample),
            (PyKind::Counter, Ok(Sample::Total))
                | (PyKind::Gauge(_), Ok(Sample::Value))
                | (
                    PyKind::Histogram,
                    Ok(Sample::Bucket | Sample::Sum | Sample::Count)
                )
                | (PyKind::Summary, Ok(Sample::Sum | Sample::Count))
        )
    }

    /// The labels of the series this entry adds to in a file of `kind`: all of them but
    /// the `le` of a histogram's bucket (Python keeps `le` on counters, gauges, summaries).
    fn series_labels(&self, kind: PyKind) -> impl Iterator<Item = &(Box<str>, Box<str>)> + Clone {
        let bucket = kind == PyKind::Histogram && self.le.is_some();
        self.labels.iter().filter(move |(k, _)| !(bucket && &**k == "le"))
    }
}

/// One `.db` file of the directory, mapped read-only (its descriptor closed: a directory
/// of thousands of files costs no file descriptors), with the layout of the entries read
/// so far (keys and positions never change once written: Python only appends; values
/// are read again on every scrape).
struct PyFile {
    ident: (u64, u64),
    path: PathBuf,
    kind: PyKind,
    pid: Box<str>,
    region: Option<Region>,
    corrupt: Option<String>,
    /// Size and modification time when it was found corrupt: read again once they change.
    corrupt_at: (u64, i64, i64),
    /// Why the last pass could not read it (retried), if it could not.
    unreadable: Option<String>,
    logged: bool,
    /// Entries parsed so far, and where parsing stopped.
    entries: Vec<CachedEntry>,
    parsed_to: usize,
    /// Bytes after each key: 16 (value, timestamp) or 8 (value only); 0 until known.
    value_bytes: usize,
    /// Whether its process runs, when `/proc` liveness checked it (`live*` gauge files).
    live: Option<bool>,
    /// Its fold id, if a Python compaction renamed it to fold it.
    fold_id: Option<u64>,
    /// Whether an accumulator holds its values already (it waits to be deleted).
    folded: bool,
}

/// An entry of a file: where its key and value are, which key it is, and the merged
/// series it goes to (valid while the family's epoch is unchanged).
#[derive(Clone)]
struct CachedEntry {
    key: std::ops::Range<usize>,
    value_at: usize,
    key_id: u32,
    slot: Slot,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    family: u32,
    series: u32,
    /// Epoch of the family when resolved; 0: not resolved.
    epoch: u64,
}

/// Why a Python file is not read in a pass.
enum PyError {
    /// Retried at the next pass (out of descriptors, cut short, gone).
    Transient(String),
    /// Not a prometheus_client file: skipped until it is replaced.
    Corrupt(Corrupt),
}

impl From<Corrupt> for PyError {
    fn from(c: Corrupt) -> Self {
        PyError::Corrupt(c)
    }
}

impl PyError {
    fn io(action: &str, e: &std::io::Error) -> Self {
        PyError::Transient(format!("{action}: {e}"))
    }

    fn from_problem(p: Problem) -> Self {
        match p {
            Problem::Corrupt(c) => PyError::Corrupt(Corrupt(c)),
            other => PyError::Transient(other.short()),
        }
    }
}

/// Size and modification time of the entry `path` (not followed); zeros if it has none.
fn listing_of(path: &std::path::Path) -> (u64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .map(|m| (m.size(), m.mtime(), m.mtime_nsec()))
        .unwrap_or((0, 0, 0))
}

/// The native-endian `i32` at the start of the 8-byte word at `at`.
fn i32_at(region: &Region, at: usize) -> Option<i32> {
    let w = region.word(at)?.load(Ordering::Relaxed).to_ne_bytes();
    Some(i32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
}

/// Whether the entry whose key bytes are at `key` in `data` (a copy of the file) still
/// holds `bytes`: its length word and every byte of the key.
fn entry_holds(data: &[u8], key: &std::ops::Range<usize>, bytes: &[u8]) -> bool {
    let Ok(len) = i32::try_from(bytes.len()) else {
        return false;
    };
    key.start >= 4
        && data.get(key.start - 4..key.start) == Some(&len.to_ne_bytes()[..])
        && data.get(key.clone()) == Some(bytes)
}

/// The native-endian `f64` at byte `at` (8-aligned) of `data`.
fn f64_in(data: &[u8], at: usize) -> f64 {
    data.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0.0, f64::from_ne_bytes)
}

impl PyFile {
    fn new(l: &Listed, kind: PyKind, pid: &str, fold_id: Option<u64>) -> Self {
        let (ident, path, regular) = (l.ident, l.path.clone(), l.regular);
        PyFile {
            ident,
            path,
            kind,
            pid: pid.into(),
            region: None,
            corrupt: (!regular).then(|| "not a regular file".to_string()),
            corrupt_at: (0, 0, 0),
            unreadable: None,
            logged: false,
            entries: Vec::new(),
            parsed_to: 0,
            value_bytes: 0,
            live: None,
            fold_id,
            folded: false,
        }
    }

    /// Maps the whole file as it is now; its size. The descriptor is closed again at once.
    fn map_now(&mut self) -> Result<usize, PyError> {
        let file = open_read_only(&self.path).map_err(PyError::from_problem)?;
        let md = file.metadata().map_err(|e| PyError::io("cannot stat", &e))?;
        if !md.is_file() {
            return Err(corrupt!("not a regular file").into());
        }
        let size = usize::try_from(md.len()).unwrap_or(usize::MAX).min(MAX_USED);
        self.region = match size {
            0 => None,
            _ => Some(Region::map_reader(&file, size).map_err(|e| PyError::io("cannot map", &e))?),
        };
        Ok(size)
    }

    /// The used length of the file (0: nothing written yet), mapping it first or again if
    /// it grew past the mapping.
    fn used(&mut self) -> Result<usize, PyError> {
        if self.region.is_none() {
            self.map_now()?;
        }
        let Some(region) = &self.region else {
            return Ok(0); // created, not yet sized by its writer
        };
        let used =
            i32_at(region, 0).ok_or_else(|| PyError::from(corrupt!("shorter than the 8-byte header")))?;
        let used = usize::try_from(used).unwrap_or(usize::MAX);
        if used == 0 {
            return Ok(0); // sized, first entry not written yet
        }
        if !(8..=MAX_USED).contains(&used) {
            return Err(corrupt!(
                "used length {used} is not a prometheus_client file's (8 to {MAX_USED} bytes)"
            )
            .into());
        }
        if used > region.accessible() {
            // Python doubles the file when it fills up.
            let known = self.parsed_to;
            let size = match self.map_now() {
                Ok(size) => size,
                // The entries read before are still in the mapping: serve them.
                Err(PyError::Transient(_)) if self.region.is_some() && known > 0 => return Ok(known),
                Err(e) => return Err(e),
            };
            if used > size {
                return Err(corrupt!(
                    "used length {used} is past the end of the file ({size} bytes): truncated"
                )
                .into());
            }
        }
        Ok(used)
    }

    fn forget_entries(&mut self) {
        self.entries.clear();
        self.parsed_to = 0;
        self.value_bytes = 0;
    }

    /// Brings the entry list up to date with the `used` bytes of the file: checks that
    /// the entries already known are still in place, parses the new ones, and looks their
    /// keys up in (or adds them to) `keys`. Returns the copy of the used bytes (in
    /// `scratch`) the values are to be read from.
    fn update<'s>(
        &mut self,
        used: usize,
        keys: &mut Keys,
        scratch: &'s mut Vec<u64>,
        walk: &mut Vec<Walked>,
    ) -> Result<&'s [u8], Corrupt> {
        scratch.clear();
        let Some(region) = &self.region else {
            self.forget_entries();
            return Ok(&[]);
        };
        // One copy of the used bytes per scrape (relaxed word loads: Python writes values
        // at any time): keys are checked and values read from it.
        if !region.copy_words(0, used.div_ceil(8), scratch) {
            return Err(corrupt!("used length {used} is past the mapped file"));
        }
        let scratch: &'s Vec<u64> = scratch;
        let data = &bytemuck::cast_slice::<u64, u8>(scratch)[..used];
        // Python only appends; a file whose known entries changed was rewritten: start over.
        let unchanged = used >= self.parsed_to
            && self
                .entries
                .iter()
                .all(|e| entry_holds(data, &e.key, &keys.infos[e.key_id as usize].bytes));
        if !unchanged {
            self.entries.clear();
            self.parsed_to = 0;
            self.value_bytes = 0;
        }
        if used == 0 || used == self.parsed_to {
            return Ok(data);
        }
        let start = self.parsed_to.max(8);
        match self.value_bytes {
            0 => {
                walk_entries(data, start, 16, walk)
                    .map(|()| self.value_bytes = 16)
                    .or_else(|e| {
                        walk_entries(data, start, 8, walk)
                            .map(|()| self.value_bytes = 8)
                            .map_err(|_| e)
                    })?;
            }
            n => walk_entries(data, start, n, walk)?,
        }
        // Keys first: a key that is not prometheus_client's makes the file corrupt
        // before any of its values count.
        let mut new = Vec::with_capacity(walk.len());
        for w in walk.iter() {
            let id = keys
                .id(&data[w.key.clone()])
                .map_err(|e| corrupt!("entry key at byte {}: {e}", w.key.start - 4))?;
            new.push(CachedEntry {
                key: w.key.clone(),
                value_at: w.value_at,
                key_id: id,
                slot: Slot::default(),
            });
        }
        self.entries.extend(new);
        self.parsed_to = used;
        Ok(data)
    }
}

/// An entry found by [`walk_entries`]: key bytes and value position.
struct Walked {
    key: std::ops::Range<usize>,
    value_at: usize,
}

/// Walks the entries of `data` from byte `start` with values of `value_bytes` (16: value
/// and timestamp; 8: value only, clients before 0.18), checking every length.
fn walk_entries(data: &[u8], start: usize, value_bytes: usize, out: &mut Vec<Walked>) -> Result<(), Corrupt> {
    out.clear();
    let used = data.len();
    let mut pos = start;
    while pos < used {
        if pos + 4 > used {
            return Err(corrupt!("entry at byte {pos} is cut by the used length {used}"));
        }
        let len = i32::from_ne_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
        let len =
            usize::try_from(len).map_err(|_| corrupt!("entry at byte {pos} has a negative key length"))?;
        // Python pads the 4-byte length and the key to a multiple of 8, with 1 to 8 spaces.
        let padded = len + (8 - (len + 4) % 8);
        let value_at = pos + 4 + padded;
        let end = value_at + value_bytes;
        if len == 0 || end > used {
            return Err(corrupt!(
                "entry at byte {pos} (key of {len} bytes) runs past the used length {used}"
            ));
        }
        out.push(Walked {
            key: pos + 4..pos + 4 + len,
            value_at,
        });
        pos = end;
    }
    Ok(())
}

/// Every key met so far, parsed once.
#[derive(Default)]
struct Keys {
    infos: Vec<KeyInfo>,
    ids: HashMap<Box<[u8]>, u32, foldhash::fast::RandomState>,
}

impl Keys {
    fn id(&mut self, bytes: &[u8]) -> Result<u32, String> {
        if let Some(&id) = self.ids.get(bytes) {
            return Ok(id);
        }
        let info = KeyInfo::parse(bytes)?;
        let id = u32::try_from(self.infos.len()).map_err(|_| "too many distinct keys".to_string())?;
        self.infos.push(info);
        self.ids.insert(bytes.into(), id);
        Ok(id)
    }
}

/// A merged value of a Python series.
#[derive(Clone)]
enum PyAcc {
    Counter(f64),
    /// Gauge value, its timestamp (`mostrecent`), and whether any process set it.
    Gauge {
        v: f64,
        t: f64,
        set: bool,
    },
    /// (bound, count) pairs, and the sum.
    Hist {
        buckets: Vec<(f64, f64)>,
        sum: f64,
    },
    Summary {
        count: f64,
        sum: f64,
    },
}

/// A merged family; kept between scrapes with its series, reset before each.
struct PyFamily {
    name: Box<str>,
    help: Box<str>,
    kind: PyKind,
    /// Series by their label names and values, interleaved (`name, value, name, value`):
    /// Python merges by sample labels, so files of two releases that declare other labels
    /// each keep their series.
    keys: KeyTable,
    acc: Vec<PyAcc>,
    seen: Vec<bool>,
    /// Each series' label names and values as a merged series carries them, made on its
    /// first scrape and shared by every later one.
    labels: Vec<Option<SeriesKey>>,
    /// The distinct sets of label names, each allocated once.
    name_sets: Vec<Arc<[String]>>,
    /// Changes whenever series indices are invalidated; 0 for a dropped family.
    epoch: u64,
    used: bool,
}

/// A series' label names and values, as a merged series carries them.
type SeriesKey = (Arc<[String]>, Arc<[Box<str>]>);

impl PyFamily {
    fn zero(&self) -> PyAcc {
        match self.kind {
            PyKind::Counter => PyAcc::Counter(0.0),
            PyKind::Gauge(_) => PyAcc::Gauge {
                v: 0.0,
                t: 0.0,
                set: false,
            },
            PyKind::Histogram => PyAcc::Hist {
                buckets: Vec::new(),
                sum: 0.0,
            },
            PyKind::Summary => PyAcc::Summary { count: 0.0, sum: 0.0 },
        }
    }

    fn reset(&mut self) {
        let zero = self.zero();
        for a in &mut self.acc {
            match a {
                PyAcc::Hist { buckets, sum } => {
                    buckets.clear();
                    *sum = 0.0;
                }
                a => *a = zero.clone(),
            }
        }
        self.seen.iter_mut().for_each(|s| *s = false);
        self.used = false;
    }

    /// The series of `key` in a file of process `pid`.
    fn series(&mut self, key: &KeyInfo, pid: &str) -> u32 {
        let extra = self.kind.per_process().then_some(("pid", pid));
        let labels = key
            .series_labels(self.kind)
            .map(|(k, v)| (&**k, &**v))
            .chain(extra);
        let count = 2 * labels.clone().count();
        let (i, new) = self
            .keys
            .index(labels.flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()]), count);
        if new {
            self.acc.push(self.zero());
            self.seen.push(false);
            self.labels.push(None);
        }
        i as u32
    }

    /// Adds one entry to series `i` (`le`: the bound of a bucket), as Python's
    /// `_accumulate_metrics` does.
    fn add(&mut self, i: usize, sample: &Sample, le: Option<f64>, value: f64, ts: f64) {
        self.used = true;
        self.seen[i] = true;
        let mode = match self.kind {
            PyKind::Gauge(m) => m,
            _ => GaugeMode::All,
        };
        match (&mut self.acc[i], sample) {
            (PyAcc::Counter(c), _) => *c += value,
            (PyAcc::Gauge { v, t, set }, _) => match mode {
                GaugeMode::Min | GaugeMode::LiveMin => {
                    if !*set || value < *v {
                        *v = value;
                    }
                    *set = true;
                }
                GaugeMode::Max | GaugeMode::LiveMax => {
                    if !*set || value > *v {
                        *v = value;
                    }
                    *set = true;
                }
                GaugeMode::Sum | GaugeMode::LiveSum => {
                    *v += value;
                    *set = true;
                }
                GaugeMode::MostRecent | GaugeMode::LiveMostRecent => {
                    // Python keeps a value only if its timestamp is later than the last
                    // one (starting at 0): values never `set` do not show.
                    if *t < ts {
                        *v = value;
                        *t = ts;
                        *set = true;
                    }
                }
                GaugeMode::All | GaugeMode::LiveAll => {
                    *v = value;
                    *set = true;
                }
            },
            (PyAcc::Hist { buckets, .. }, Sample::Bucket) => {
                let le = le.unwrap_or(f64::INFINITY);
                match buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, c)) => *c += value,
                    None => buckets.push((le, value)),
                }
            }
            (PyAcc::Hist { sum, .. }, Sample::Sum) => *sum += value,
            // A histogram's count is the sum of its buckets (Python overwrites `_count`).
            (PyAcc::Hist { .. }, _) => {}
            (PyAcc::Summary { sum, .. }, Sample::Sum) => *sum += value,
            (PyAcc::Summary { count, .. }, _) => *count += value,
        }
    }

    /// Forgets every series (their indices are no longer valid).
    fn clear_series(&mut self) {
        self.keys = KeyTable::new();
        self.acc = Vec::new();
        self.seen = Vec::new();
        self.labels = Vec::new();
        self.name_sets = Vec::new();
    }

    fn out(&mut self) -> FamilyOut {
        self.keys.sort();
        let PyFamily {
            keys,
            acc,
            seen,
            labels,
            name_sets,
            ..
        } = self;
        // The family's label names (and bounds): those of its first series; a series
        // with others (a file of another release) keeps its own.
        let mut label_names: Option<Arc<[String]>> = None;
        let mut family_bounds: Option<Vec<f64>> = None;
        let mut series = Vec::with_capacity(acc.len());
        for &i in keys.sorted() {
            let i = i as usize;
            if !seen[i] {
                continue;
            }
            let (a, bounds) = match &mut acc[i] {
                PyAcc::Counter(v) => (Acc::F64(*v), None),
                PyAcc::Gauge { set: false, .. } => continue,
                PyAcc::Gauge { v, t, .. } => (
                    Acc::Gauge {
                        v: *v,
                        t: (t.max(0.0) * 1e9) as u64,
                    },
                    None,
                ),
                PyAcc::Hist { buckets, sum } => {
                    // The series' own bounds, as Python keeps them, sorted (in place: the
                    // buckets are cleared before the next scrape).
                    buckets.retain(|(b, _)| !b.is_nan());
                    buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
                    let counts = buckets.iter().map(|(_, c)| c.max(0.0) as u64).collect();
                    (HistAcc::acc(counts, *sum, None), Some(&*buckets))
                }
                PyAcc::Summary { count, sum } => (
                    Acc::Summary {
                        count: *count,
                        sum: *sum,
                    },
                    None,
                ),
            };
            let (names, values) = labels[i]
                .get_or_insert_with(|| {
                    let parts = keys.key(i);
                    let names: Vec<String> = parts.iter().step_by(2).map(|n| n.to_string()).collect();
                    let names = match name_sets.iter().find(|s| ***s == *names) {
                        Some(s) => Arc::clone(s),
                        None => {
                            let s: Arc<[String]> = names.into();
                            name_sets.push(Arc::clone(&s));
                            s
                        }
                    };
                    (names, parts.iter().skip(1).step_by(2).cloned().collect())
                })
                .clone();
            let family_names = label_names.get_or_insert_with(|| Arc::clone(&names));
            let own_bounds = bounds.map(|b| {
                let fam = family_bounds.get_or_insert_with(|| b.iter().map(|(x, _)| *x).collect());
                let same = fam.len() == b.len() && fam.iter().zip(b).all(|(f, (x, _))| f == x);
                (!same).then(|| b.iter().map(|(x, _)| *x).collect::<Arc<[f64]>>())
            });
            series.push(OutSeries {
                labels: values,
                names: (!Arc::ptr_eq(&names, family_names)).then_some(names),
                bounds: own_bounds.flatten(),
                acc: a,
                exemplars: Vec::new(),
            });
        }
        FamilyOut {
            name: self.name.to_string(),
            help: self.help.to_string(),
            ty: self.kind.metric_type(),
            mode: match self.kind {
                PyKind::Gauge(m) => m,
                _ => GaugeMode::All,
            },
            label_names: label_names.map(|n| n.to_vec()).unwrap_or_default(),
            buckets: family_bounds.unwrap_or_default(),
            series,
            sorted: false,
        }
    }
}

/// A `.db` file found in the directory listing.
pub(crate) struct Listed {
    name: OsString,
    path: PathBuf,
    ident: (u64, u64),
    regular: bool,
}

/// Takes directory `entry` (named `name`) into `listed` if it is one of Python's files;
/// whether it did. From the directory entry, without a stat per file (thousands of them in
/// a Python directory): a symlink is reported, never followed. `dir_dev`: the directory's
/// device, looked up once.
pub(crate) fn list_entry(
    dir: &Path,
    dir_dev: &mut Option<u64>,
    entry: &std::fs::DirEntry,
    name: &str,
    listed: &mut Vec<Listed>,
) -> bool {
    if parse_listing_name(name).is_none() {
        return false;
    }
    let Ok(file_type) = entry.file_type() else {
        return true;
    };
    let dev = *dir_dev.get_or_insert_with(|| std::fs::metadata(dir).map(|m| m.dev()).unwrap_or(0));
    listed.push(Listed {
        name: entry.file_name(),
        path: entry.path(),
        ident: (dev, std::os::unix::fs::DirEntryExt::ino(entry)),
        regular: file_type.is_file(),
    });
    true
}

/// The Python side of a [`Reader`](crate::Reader): the directory's `.db` files, the keys
/// already parsed and the merged families, kept between scrapes.
#[derive(Default)]
pub(crate) struct PyReader {
    pub(crate) liveness: PythonLiveness,
    files: BTreeMap<OsString, PyFile>,
    keys: Keys,
    fams: Families,
    scratch: Vec<u64>,
    walk: Vec<Walked>,
    logged: HashSet<String>,
}

impl PyReader {
    /// Takes the directory listing's `.db` files (kind already recognised by name).
    pub(crate) fn sync(&mut self, listed: Vec<Listed>) {
        let mut present: HashSet<OsString> = HashSet::with_capacity(listed.len());
        for l in listed {
            let Some((kind, pid, fold_id)) = l.name.to_str().and_then(parse_listing_name) else {
                continue;
            };
            let stale = self.files.get(&l.name).is_none_or(|f| f.ident != l.ident);
            if stale {
                let file = PyFile::new(&l, kind, pid, fold_id);
                self.files.insert(l.name.clone(), file);
            }
            present.insert(l.name);
        }
        self.files.retain(|name, _| present.contains(name));
    }

    /// Each `.db` file as [`Reader::inspect`](super::Reader::inspect) reports it.
    pub(crate) fn reports(&self) -> Vec<super::inspect::FileReport> {
        self.files
            .iter()
            .map(|(name, f)| {
                let kind = match f.kind {
                    PyKind::Counter => "python counter".to_string(),
                    PyKind::Histogram => "python histogram".to_string(),
                    PyKind::Summary => "python summary".to_string(),
                    PyKind::Gauge(m) => format!("python gauge {}", m.as_str()),
                };
                super::inspect::FileReport {
                    name: name.to_string_lossy().into_owned(),
                    kind,
                    pid: Some(f.pid.to_string()),
                    worker: None,
                    live: f.live,
                    folded: f.folded,
                    series: f.entries.len(),
                    bytes: std::fs::symlink_metadata(&f.path).map(|m| m.len()).unwrap_or(0),
                    problem: f
                        .corrupt
                        .as_ref()
                        .map(|r| format!("corrupt: {r}"))
                        .or_else(|| f.unreadable.clone()),
                }
            })
            .collect()
    }

    /// The counter and histogram files a Python compaction may fold if their processes
    /// are gone: regular, not found corrupt, not folded yet. `(name, path, pid, fold id)`.
    pub(crate) fn fold_candidates(&self) -> Vec<(OsString, PathBuf, Box<str>, Option<u64>)> {
        self.files
            .iter()
            .filter(|(_, f)| matches!(f.kind, PyKind::Counter | PyKind::Histogram))
            .filter(|(_, f)| f.corrupt.is_none() && !f.folded)
            .map(|(name, f)| (name.clone(), f.path.clone(), f.pid.clone(), f.fold_id))
            .collect()
    }

    /// Whether the last merge read file `name` whole (not corrupt, not unreadable).
    pub(crate) fn read_whole(&self, name: &OsString) -> bool {
        self.files
            .get(name)
            .is_some_and(|f| f.corrupt.is_none() && f.unreadable.is_none() && f.region.is_some())
    }

    /// The names of the families file `name` holds values of, as the last merge read it.
    pub(crate) fn families_of(&self, name: &OsString) -> HashSet<Box<str>> {
        let Some(f) = self.files.get(name) else {
            return HashSet::new();
        };
        f.entries
            .iter()
            .map(|e| self.keys.infos[e.key_id as usize].metric.clone())
            .collect()
    }

    /// Files folded into an accumulator that wait to be deleted.
    pub(crate) fn folded_leftovers(&self) -> Vec<PathBuf> {
        self.files
            .values()
            .filter(|f| f.folded && f.fold_id.is_some())
            .map(|f| f.path.clone())
            .collect()
    }

    /// Forgets the mapping that holds `addr` (the file shrank while it was read); returns
    /// the file's path.
    pub(crate) fn forget_mapping_at(&mut self, addr: usize) -> Option<PathBuf> {
        let f = self
            .files
            .values_mut()
            .find(|f| f.region.as_ref().is_some_and(|r| r.contains(addr)))?;
        f.region = None;
        f.forget_entries();
        Some(f.path.clone())
    }

    /// Reads every file and merges them, but those whose fold id is in `folded` (an
    /// accumulator holds their values) and, with `only`, those not named there.
    pub(crate) fn merge(
        &mut self,
        stats: &mut ScrapeStats,
        folded: &HashSet<u64>,
        only: Option<&HashSet<OsString>>,
    ) -> Vec<FamilyOut> {
        for fam in &mut self.fams.list {
            fam.reset();
        }
        let PyReader {
            liveness,
            files,
            keys,
            fams,
            scratch,
            walk,
            logged,
        } = self;
        for (name, f) in files.iter_mut() {
            f.folded = f.fold_id.is_some_and(|id| folded.contains(&id));
            if f.folded || only.is_some_and(|o| !o.contains(name)) {
                continue;
            }
            f.live = match (*liveness, f.kind) {
                (PythonLiveness::Proc, PyKind::Gauge(m)) if m.live_only() => {
                    Some(python_process_alive(&f.pid, &f.path))
                }
                _ => None,
            };
            if f.live == Some(false) {
                // Its process is gone: its values no longer count (as if
                // `mark_process_dead` had removed the file).
                stats.python_dead_files += 1;
                continue;
            }
            let mut data: &[u8] = &[];
            if f.corrupt.is_some() && f.corrupt_at != listing_of(&f.path) {
                // Changed since it was found corrupt (rewritten in place): read it again.
                f.corrupt = None;
                f.logged = false;
            }
            if f.corrupt.is_none() {
                match f
                    .used()
                    .and_then(|used| f.update(used, keys, scratch, walk).map_err(PyError::from))
                {
                    Ok(d) => {
                        data = d;
                        f.unreadable = None;
                    }
                    Err(PyError::Transient(why)) => {
                        // Retried at the next scrape; nothing of the file is shown now
                        // (its values were not read).
                        stats.unreadable_files += 1;
                        stats
                            .corrupt
                            .push((f.path.clone(), format!("{why} (retried at the next scrape)")));
                        if f.unreadable.is_none() {
                            tracing::warn!(
                                file = %f.path.display(),
                                "cannot read a prometheus_client file now: {why} (retried at the next scrape)"
                            );
                        }
                        f.unreadable = Some(why);
                        continue;
                    }
                    Err(PyError::Corrupt(c)) => {
                        f.corrupt = Some(c.0);
                        f.corrupt_at = listing_of(&f.path);
                        f.region = None;
                        f.forget_entries();
                    }
                }
            }
            add_values(f, data, keys, fams, logged, stats);
        }
        let out = self
            .fams
            .list
            .iter_mut()
            .filter(|f| f.used)
            .map(PyFamily::out)
            .collect();
        self.tidy();
        out
    }

    /// Drops families no file holds any more, and series tables grown far beyond the
    /// series in use (processes come and go: per-process gauges gain a series per pid).
    fn tidy(&mut self) {
        self.fams.tidy();
        // Keys no file holds any more.
        if self.keys.infos.len() > 4096 {
            let held: usize = self.files.values().map(|f| f.entries.len()).sum();
            if self.keys.infos.len() > 2 * held {
                self.keys = Keys::default();
                self.files.values_mut().for_each(PyFile::forget_entries);
            }
        }
    }
}

/// The merged families, kept between scrapes.
#[derive(Default)]
struct Families {
    list: Vec<PyFamily>,
    by_name: HashMap<Box<str>, u32, foldhash::fast::RandomState>,
    next_epoch: u64,
}

/// Adds the values of one Python file, read in this pass as `data` (a corrupt one is
/// reported and left out), into `fams`.
fn add_values(
    f: &mut PyFile,
    data: &[u8],
    keys: &Keys,
    fams: &mut Families,
    logged: &mut HashSet<String>,
    stats: &mut ScrapeStats,
) {
    if let Some(reason) = &f.corrupt {
        stats.corrupt_files += 1;
        stats.corrupt.push((f.path.clone(), reason.clone()));
        if !f.logged {
            f.logged = true;
            tracing::warn!(
                file = %f.path.display(),
                reason = %reason,
                "skipping unreadable prometheus_client file in the metrics directory \
                 (left in place; counted in shmetrics_corrupt_files)"
            );
        }
        return;
    }
    stats.python_files += 1;
    let Some(region) = &f.region else { return };
    stats.mapped_bytes += region.accessible() as u64;
    let has_ts = f.value_bytes == 16;
    for e in &mut f.entries {
        let key = &keys.infos[e.key_id as usize];
        if !fams.valid(e.slot) {
            match fams.resolve(key, f.kind, &f.pid, &f.path, logged, stats) {
                Some(slot) => e.slot = slot,
                None => continue,
            }
        }
        let Ok(sample) = &key.sample else { continue };
        let value = f64_in(data, e.value_at);
        let ts = if has_ts { f64_in(data, e.value_at + 8) } else { 0.0 };
        fams.list[e.slot.family as usize].add(e.slot.series as usize, sample, key.le, value, ts);
    }
}

impl Families {
    fn epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }

    /// Whether `slot` still designates the series it was resolved to.
    fn valid(&self, slot: Slot) -> bool {
        slot.epoch != 0
            && self
                .list
                .get(slot.family as usize)
                .is_some_and(|f| f.epoch == slot.epoch)
    }

    fn tidy(&mut self) {
        for i in 0..self.list.len() {
            let fam = &mut self.list[i];
            if fam.epoch == 0 {
                continue;
            }
            if !fam.used {
                self.by_name.remove(&fam.name);
                fam.epoch = 0;
                fam.clear_series();
                continue;
            }
            let seen = fam.seen.iter().filter(|s| **s).count();
            if fam.acc.len() > 64 && fam.acc.len() > 2 * seen {
                let epoch = self.epoch();
                let fam = &mut self.list[i];
                fam.clear_series();
                fam.epoch = epoch;
            }
        }
        let dropped = self.list.iter().filter(|f| f.epoch == 0).count();
        if dropped > 64 && dropped > self.list.len() / 2 {
            self.list.clear();
            self.by_name.clear();
        }
    }

    /// Finds (or creates) the family and series of an entry; `None` (counted, logged
    /// once) if the entry cannot be merged.
    fn resolve(
        &mut self,
        key: &KeyInfo,
        kind: PyKind,
        pid: &str,
        path: &std::path::Path,
        logged: &mut HashSet<String>,
        stats: &mut ScrapeStats,
    ) -> Option<Slot> {
        if !key.fits(kind) || (kind.per_process() && key.labels.iter().any(|(n, _)| &**n == "pid")) {
            stats.python_skipped += 1;
            let why = match &key.sample {
                Err(e) => e.clone(),
                Ok(_) if key.fits(kind) => {
                    format!("{}: label `pid` clashes with the per-process label", key.metric)
                }
                Ok(_) => format!("{} in a {kind:?} file", key.metric),
            };
            if logged.insert(why.clone()) {
                tracing::warn!(file = %path.display(), "skipping prometheus_client samples: {why}");
            }
            return None;
        }
        let fi = match self.by_name.get(&key.metric) {
            Some(&i) => i,
            None => {
                let epoch = self.epoch();
                let i = self.list.len() as u32;
                self.list.push(PyFamily {
                    name: key.metric.clone(),
                    help: key.help.clone(),
                    kind,
                    keys: KeyTable::new(),
                    acc: Vec::new(),
                    seen: Vec::new(),
                    labels: Vec::new(),
                    name_sets: Vec::new(),
                    epoch,
                    used: false,
                });
                self.by_name.insert(key.metric.clone(), i);
                i
            }
        };
        let fam = &mut self.list[fi as usize];
        // Files of two releases may declare other labels or buckets: their series all
        // show, as Python's. Another type (or gauge mode) cannot be one family.
        if fam.kind != kind {
            stats.conflicts += 1;
            let why = format!("{}: {kind:?} here, {:?} in the first file", key.metric, fam.kind);
            if logged.insert(why.clone()) {
                tracing::warn!(file = %path.display(), "prometheus_client family declared differently: {why}");
            }
            return None;
        }
        Some(Slot {
            family: fi,
            series: fam.series(key, pid),
            epoch: fam.epoch,
        })
    }
}

/// Whether the process `pid` of a Python file (its name's pid) runs and started before
/// the file last changed; `true` when it cannot be told.
fn python_process_alive(pid: &str, path: &Path) -> bool {
    let Ok(pid) = pid.parse::<i32>() else {
        return true;
    };
    match std::fs::metadata(path) {
        Ok(md) => crate::sys::process_started_by(pid, md.ctime() as f64 + md.ctime_nsec() as f64 * 1e-9),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(parse_file_name("counter_12.db"), Some((PyKind::Counter, "12")));
        assert_eq!(
            parse_file_name("gauge_livesum_7.db"),
            Some((PyKind::Gauge(GaugeMode::LiveSum), "7"))
        );
        assert_eq!(
            parse_file_name("gauge_all_worker_3.db"),
            Some((PyKind::Gauge(GaugeMode::All), "worker_3"))
        );
        assert_eq!(parse_file_name("summary_1.db"), Some((PyKind::Summary, "1")));
        assert_eq!(parse_file_name("gauge_bogus_1.db"), None);
        assert_eq!(parse_file_name("counter_.db"), None);
        assert_eq!(parse_file_name("other_1.db"), None);
        assert_eq!(parse_file_name("counter_1.shm"), None);
    }

    fn entry(key: &str, value: f64, ts: Option<f64>) -> Vec<u8> {
        let mut out = (key.len() as i32).to_ne_bytes().to_vec();
        out.extend_from_slice(key.as_bytes());
        out.resize(out.len() + 8 - (key.len() + 4) % 8, b' ');
        out.extend_from_slice(&value.to_ne_bytes());
        if let Some(ts) = ts {
            out.extend_from_slice(&ts.to_ne_bytes());
        }
        out
    }

    fn file(entries: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = entries.concat();
        let mut out = ((8 + body.len()) as i32).to_ne_bytes().to_vec();
        out.extend_from_slice(&[0; 4]);
        out.extend(body);
        out
    }

    #[test]
    fn both_layouts() {
        let k1 = r#"["a", "a_total", {"x": "1"}, "h"]"#;
        let k2 = r#"["a", "a_total", {"x": "22"}, "h"]"#;
        let mut out = Vec::new();
        let new = file(&[entry(k1, 1.5, Some(0.0)), entry(k2, 2.0, Some(3.0))]);
        walk_entries(&new, 8, 16, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        let at = |d: &[u8], i: usize| f64::from_ne_bytes(d[i..i + 8].try_into().unwrap());
        assert_eq!(
            (at(&new, out[1].value_at), at(&new, out[1].value_at + 8)),
            (2.0, 3.0)
        );
        let old = file(&[entry(k1, 1.5, None), entry(k2, 2.0, None)]);
        assert!(walk_entries(&old, 8, 16, &mut out).is_err());
        walk_entries(&old, 8, 8, &mut out).unwrap();
        assert_eq!(&old[out[1].key.clone()], k2.as_bytes());
        assert_eq!(at(&old, out[1].value_at), 2.0);
        // One old entry alone does not end where the new layout would.
        let one = file(&[entry(k1, 1.5, None)]);
        assert!(walk_entries(&one, 8, 16, &mut out).is_err());
        walk_entries(&one, 8, 8, &mut out).unwrap();
    }

    #[test]
    fn keys() {
        let k = KeyInfo::parse(br#"["h", "h_bucket", {"le": "+Inf", "b": "\u00e9\"", "a": "1"}, "help"]"#)
            .unwrap();
        assert_eq!(k.sample, Ok(Sample::Bucket));
        assert_eq!(k.le, Some(f64::INFINITY));
        let series: Vec<(&str, &str)> = k
            .series_labels(PyKind::Histogram)
            .map(|(n, v)| (&**n, &**v))
            .collect();
        assert_eq!(series, [("a", "1"), ("b", "é\"")]);
        // `le` is an ordinary label outside a histogram's buckets.
        let c = KeyInfo::parse(br#"["sli", "sli_total", {"le": "0.5"}, ""]"#).unwrap();
        assert_eq!(c.sample, Ok(Sample::Total));
        assert_eq!(c.series_labels(PyKind::Counter).count(), 1);
        // UTF-8 names, escaped as Python's exposition does.
        let u = KeyInfo::parse(br#"["app.temp", "app.temp", {"http.method": "GET"}, ""]"#).unwrap();
        assert_eq!(u.sample, Ok(Sample::Value));
        assert_eq!(&*u.metric, "app_temp");
        assert_eq!(&*u.labels[0].0, "http_method");
        assert!(KeyInfo::parse(br#"["h", "h_sum", {}]"#).is_err());
        assert!(KeyInfo::parse(b"[1, 2, 3, 4]").is_err());
        let utf8 = KeyInfo::parse(br#"["caf\u00e9", "caf\u00e9", {}, ""]"#).unwrap();
        assert_eq!(&*utf8.metric, "caf_");
        let other = KeyInfo::parse(br#"["c", "c_created", {}, ""]"#).unwrap();
        assert!(other.sample.is_err());
    }
}
