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
//! Where Python would produce an invalid exposition this reader skips, counts and logs
//! instead: a family whose files disagree on its type, gauge mode or label names keeps
//! the first file's declaration (files in name order) and the other entries are counted
//! as conflicts; entries whose names are not valid Prometheus names, or whose sample does
//! not belong to the file's type, are counted as skipped. Histograms get the union of
//! the bounds seen in the family (a bound missing in a series adds nothing to it). A file
//! that breaks the layout is skipped as a whole and counted as corrupt. These files are
//! only read: never modified, compacted or deleted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use crate::format::{Corrupt, GaugeMode, MetricType, corrupt};
use crate::keys::KeyTable;
use crate::names;
use crate::reader::{Acc, FamilyOut};
use crate::snapshot::ScrapeStats;

/// File name extension of Python's multiprocess files.
pub(crate) const PY_EXT: &str = ".db";

/// Most bytes of entries a file may use (Python doubles its file from 64 KiB; 1 GiB is far
/// beyond any real worker and keeps a corrupt length from allocating the machine away).
const MAX_USED: usize = 1 << 30;

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

/// What a sample of a key is, relative to its metric.
#[derive(Clone, Debug, PartialEq)]
enum Sample {
    /// `<metric>_total` of a counter.
    Total,
    /// `<metric>` of a gauge.
    Value,
    /// `<metric>_bucket` with its `le` bound.
    Bucket(f64),
    /// `<metric>_sum`.
    Sum,
    /// `<metric>_count`.
    Count,
}

/// A parsed JSON key.
struct KeyInfo {
    metric: Box<str>,
    help: Box<str>,
    /// `None`: the entry cannot be exposed (the reason is logged once).
    sample: Result<Sample, String>,
    /// Label names, sorted (Python sorts them), without `le`.
    label_names: Box<[Box<str>]>,
    /// Label values in the order of `label_names`.
    label_values: Box<[Box<str>]>,
    /// The scrape that last met this key (old keys are dropped from the cache).
    seen: u64,
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
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(labels.len());
        for (k, v) in labels {
            pairs.push((k, v.as_str().ok_or_else(shape)?));
        }
        pairs.sort_unstable();
        let le = pairs
            .iter()
            .position(|(k, _)| *k == "le")
            .map(|i| pairs.remove(i).1);
        let sample = Self::classify(metric, sample, le, &pairs);
        Ok(KeyInfo {
            metric: metric.into(),
            help: help.into(),
            sample,
            label_names: pairs.iter().map(|(k, _)| Box::from(*k)).collect(),
            label_values: pairs.iter().map(|(_, v)| Box::from(*v)).collect(),
            seen: 0,
        })
    }

    fn classify(
        metric: &str,
        sample: &str,
        le: Option<&str>,
        labels: &[(&str, &str)],
    ) -> Result<Sample, String> {
        names::check_metric_name(metric).map_err(|r| format!("metric name {metric:?} {r}"))?;
        for (k, _) in labels {
            names::check_label_name(k).map_err(|r| format!("label name {k:?} of {metric} {r}"))?;
        }
        let suffix = sample
            .strip_prefix(metric)
            .ok_or_else(|| format!("sample {sample:?} does not belong to metric {metric:?}"))?;
        let s = match (suffix, le) {
            ("_total", None) => Sample::Total,
            ("", None) => Sample::Value,
            ("_sum", None) => Sample::Sum,
            ("_count", None) => Sample::Count,
            ("_bucket", Some(le)) => Sample::Bucket(
                le.parse()
                    .map_err(|_| format!("bucket bound le={le:?} of {metric} is not a number"))?,
            ),
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
                    Ok(Sample::Bucket(_) | Sample::Sum | Sample::Count)
                )
                | (PyKind::Summary, Ok(Sample::Sum | Sample::Count))
        )
    }
}

/// One `.db` file of the directory.
struct PyFile {
    ident: (u64, u64),
    path: PathBuf,
    kind: PyKind,
    pid: Box<str>,
    file: Option<File>,
    corrupt: Option<String>,
    logged: bool,
}

/// One entry of a file: key bytes range, value, timestamp.
type Entry = (std::ops::Range<usize>, f64, f64);

impl PyFile {
    /// Reads the used part of the file into `buf`.
    fn read(&mut self, buf: &mut Vec<u8>) -> Result<(), Corrupt> {
        buf.clear();
        if self.file.is_none() {
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&self.path)
                .map_err(|e| corrupt!("cannot open: {e}"))?;
            self.file = Some(f);
        }
        let file = self.file.as_ref().ok_or_else(|| corrupt!("not open"))?;
        let md = file.metadata().map_err(|e| corrupt!("cannot stat: {e}"))?;
        if !md.is_file() {
            return Err(corrupt!("not a regular file"));
        }
        let size = usize::try_from(md.len()).unwrap_or(usize::MAX);
        if size == 0 {
            return Ok(()); // created, not yet sized by its writer
        }
        if size < 8 {
            return Err(corrupt!("{size} bytes, shorter than the 8-byte header"));
        }
        // The first page holds the used length and, for most workers, every entry.
        buf.resize(size.min(4096), 0);
        file.read_exact_at(buf, 0)
            .map_err(|e| corrupt!("cannot read: {e}"))?;
        let used = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if used == 0 {
            buf.clear();
            return Ok(()); // sized, first entry not written yet
        }
        let used = usize::try_from(used).unwrap_or(0);
        if used < 8 || used > size || used > MAX_USED {
            return Err(corrupt!(
                "used length {used} is outside the file (8 to {size} bytes): truncated or not a prometheus_client file"
            ));
        }
        let have = buf.len();
        if used > have {
            buf.resize(used, 0);
            file.read_exact_at(&mut buf[have..], have as u64)
                .map_err(|e| corrupt!("cannot read: {e}"))?;
        }
        buf.truncate(used);
        Ok(())
    }
}

/// Walks the entries of `data` with values of `value_bytes` (16: value and timestamp;
/// 8: value only, clients before 0.18), checking every length.
fn walk_entries(data: &[u8], value_bytes: usize, out: &mut Vec<Entry>) -> Result<(), Corrupt> {
    out.clear();
    let used = data.len();
    let mut pos = 8;
    let word = |at: usize| -> [u8; 8] { data[at..at + 8].try_into().unwrap_or([0; 8]) };
    while pos < used {
        if pos + 4 > used {
            return Err(corrupt!("entry at byte {pos} is cut by the used length {used}"));
        }
        let len = i32::from_ne_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
        let len =
            usize::try_from(len).map_err(|_| corrupt!("entry at byte {pos} has a negative key length"))?;
        let padded = len + (8 - (len + 4) % 8);
        let key = pos + 4..pos + 4 + len;
        let value_at = pos + 4 + padded;
        let end = value_at + value_bytes;
        if len == 0 || end > used {
            return Err(corrupt!(
                "entry at byte {pos} (key of {len} bytes) runs past the used length {used}"
            ));
        }
        let value = f64::from_ne_bytes(word(value_at));
        let ts = if value_bytes == 16 {
            f64::from_ne_bytes(word(value_at + 8))
        } else {
            0.0
        };
        out.push((key, value, ts));
        pos = end;
    }
    Ok(())
}

/// A merged value of a Python series.
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

/// A family being merged.
struct PyFamily {
    name: Box<str>,
    help: Box<str>,
    kind: PyKind,
    label_names: Box<[Box<str>]>,
    keys: KeyTable,
    acc: Vec<PyAcc>,
}

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

    /// Adds one entry, as Python's `_accumulate_metrics` does.
    fn add(&mut self, key: &KeyInfo, pid: &str, value: f64, ts: f64) {
        let extra = self.kind.per_process().then_some(pid);
        let count = key.label_values.len() + usize::from(extra.is_some());
        let (i, new) = self
            .keys
            .index(key.label_values.iter().map(|v| &**v).chain(extra), count);
        if new {
            self.acc.push(self.zero());
        }
        let mode = match self.kind {
            PyKind::Gauge(m) => m,
            _ => GaugeMode::All,
        };
        match (&mut self.acc[i], &key.sample) {
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
            (PyAcc::Hist { buckets, .. }, Ok(Sample::Bucket(le))) => {
                match buckets.iter_mut().find(|(b, _)| b == le) {
                    Some((_, c)) => *c += value,
                    None => buckets.push((*le, value)),
                }
            }
            (PyAcc::Hist { sum, .. }, Ok(Sample::Sum)) => *sum += value,
            // A histogram's count is the sum of its buckets (Python overwrites `_count`).
            (PyAcc::Hist { .. }, _) => {}
            (PyAcc::Summary { sum, .. }, Ok(Sample::Sum)) => *sum += value,
            (PyAcc::Summary { count, .. }, _) => *count += value,
        }
    }

    fn finish(self) -> FamilyOut {
        let mut label_names: Vec<String> = self.label_names.iter().map(|n| n.to_string()).collect();
        if self.kind.per_process() {
            label_names.push("pid".into());
        }
        let mut bounds: Vec<f64> = Vec::new();
        if self.kind == PyKind::Histogram {
            for a in &self.acc {
                if let PyAcc::Hist { buckets, .. } = a {
                    bounds.extend(buckets.iter().map(|(b, _)| *b).filter(|b| !b.is_nan()));
                }
            }
            bounds.push(f64::INFINITY);
            bounds.sort_by(f64::total_cmp);
            bounds.dedup();
        }
        let series = self
            .acc
            .into_iter()
            .enumerate()
            .filter_map(|(i, a)| {
                let acc = match a {
                    PyAcc::Counter(v) => Acc::F64(v),
                    PyAcc::Gauge { set: false, .. } => return None,
                    PyAcc::Gauge { v, t, .. } => Acc::Gauge {
                        v,
                        t: (t.max(0.0) * 1e9) as u64,
                    },
                    PyAcc::Hist { buckets, sum } => {
                        let mut counts = vec![0u64; bounds.len()];
                        for (b, c) in buckets {
                            if let Ok(j) = bounds.binary_search_by(|x| x.total_cmp(&b)) {
                                counts[j] = counts[j].saturating_add(c.max(0.0) as u64);
                            }
                        }
                        Acc::Hist { buckets: counts, sum }
                    }
                    PyAcc::Summary { count, sum } => Acc::Summary { count, sum },
                };
                Some((Arc::clone(self.keys.key(i)), acc))
            })
            .collect();
        FamilyOut {
            name: self.name.into(),
            help: self.help.into(),
            ty: self.kind.metric_type(),
            mode: match self.kind {
                PyKind::Gauge(m) => m,
                _ => GaugeMode::All,
            },
            label_names,
            buckets: if self.kind == PyKind::Histogram {
                bounds
            } else {
                Vec::new()
            },
            series,
        }
    }
}

/// A `.db` file found in the directory listing.
pub(crate) struct Listed {
    pub name: OsString,
    pub path: PathBuf,
    pub ident: (u64, u64),
    pub regular: bool,
}

/// The Python side of a [`Reader`](crate::Reader): the directory's `.db` files, and the
/// keys already parsed.
#[derive(Default)]
pub(crate) struct PyReader {
    files: BTreeMap<OsString, PyFile>,
    keys: HashMap<Box<[u8]>, KeyInfo, foldhash::fast::RandomState>,
    scrape: u64,
    buf: Vec<u8>,
    entries: Vec<Entry>,
    logged: HashSet<String>,
}

impl PyReader {
    /// Takes the directory listing's `.db` files (kind already recognised by name).
    pub(crate) fn sync(&mut self, listed: Vec<Listed>) {
        let mut present: HashSet<OsString> = HashSet::with_capacity(listed.len());
        for l in listed {
            let Some((kind, pid)) = l.name.to_str().and_then(parse_file_name) else {
                continue;
            };
            let stale = self.files.get(&l.name).is_none_or(|f| f.ident != l.ident);
            if stale {
                let file = PyFile {
                    ident: l.ident,
                    path: l.path,
                    kind,
                    pid: pid.into(),
                    file: None,
                    corrupt: (!l.regular).then(|| "not a regular file".to_string()),
                    logged: false,
                };
                self.files.insert(l.name.clone(), file);
            }
            present.insert(l.name);
        }
        self.files.retain(|name, _| present.contains(name));
    }

    /// Reads every file and merges them.
    pub(crate) fn merge(&mut self, stats: &mut ScrapeStats) -> Vec<FamilyOut> {
        self.scrape += 1;
        let scrape = self.scrape;
        let mut families: Vec<PyFamily> = Vec::new();
        let mut by_name: HashMap<Box<str>, usize, foldhash::fast::RandomState> = HashMap::default();
        let mut data = std::mem::take(&mut self.buf);
        let mut entries = std::mem::take(&mut self.entries);
        for f in self.files.values_mut() {
            if f.corrupt.is_none() {
                let parsed = f.read(&mut data).and_then(|()| {
                    if data.is_empty() {
                        entries.clear();
                        return Ok(());
                    }
                    walk_entries(&data, 16, &mut entries)
                        .or_else(|e| walk_entries(&data, 8, &mut entries).map_err(|_| e))
                });
                if let Err(c) = parsed {
                    f.corrupt = Some(c.0);
                    f.file = None;
                }
            }
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
                continue;
            }
            // Keys first: a key that is not prometheus_client's makes the file corrupt
            // before any of its values count.
            let mut bad = None;
            for (range, _, _) in &entries {
                let bytes = &data[range.clone()];
                match self.keys.get_mut(bytes) {
                    Some(k) => k.seen = scrape,
                    None => match KeyInfo::parse(bytes) {
                        Ok(mut k) => {
                            k.seen = scrape;
                            self.keys.insert(bytes.into(), k);
                        }
                        Err(e) => {
                            bad = Some(format!("entry key at byte {}: {e}", range.start - 4));
                            break;
                        }
                    },
                }
            }
            if let Some(reason) = bad {
                f.corrupt = Some(reason);
                f.file = None;
                stats.corrupt_files += 1;
                stats
                    .corrupt
                    .push((f.path.clone(), f.corrupt.clone().unwrap_or_default()));
                f.logged = true;
                tracing::warn!(
                    file = %f.path.display(),
                    reason = f.corrupt.as_deref().unwrap_or_default(),
                    "skipping unreadable prometheus_client file in the metrics directory \
                     (left in place; counted in shmetrics_corrupt_files)"
                );
                continue;
            }
            stats.python_files += 1;
            for (range, value, ts) in &entries {
                let Some(key) = self.keys.get(&data[range.clone()]) else {
                    continue;
                };
                if !key.fits(f.kind) {
                    stats.python_skipped += 1;
                    let why = match &key.sample {
                        Err(e) => e.clone(),
                        Ok(_) => format!("{} in a {:?} file", key.metric, f.kind),
                    };
                    if self.logged.insert(why.clone()) {
                        tracing::warn!(file = %f.path.display(), "skipping prometheus_client samples: {why}");
                    }
                    continue;
                }
                let fi = match by_name.get(&key.metric) {
                    Some(&i) => i,
                    None => {
                        let fam = PyFamily {
                            name: key.metric.clone(),
                            help: key.help.clone(),
                            kind: f.kind,
                            label_names: key.label_names.clone(),
                            keys: KeyTable::new(),
                            acc: Vec::new(),
                        };
                        let clash = fam.kind.per_process() && fam.label_names.iter().any(|n| &**n == "pid");
                        if clash {
                            stats.python_skipped += 1;
                            continue;
                        }
                        by_name.insert(key.metric.clone(), families.len());
                        families.push(fam);
                        families.len() - 1
                    }
                };
                let fam = &mut families[fi];
                if fam.kind != f.kind || fam.label_names != key.label_names {
                    stats.conflicts += 1;
                    let why = format!(
                        "{}: {:?} with labels {:?} here, {:?} with labels {:?} in the first file",
                        key.metric, f.kind, key.label_names, fam.kind, fam.label_names
                    );
                    if self.logged.insert(why.clone()) {
                        tracing::warn!(file = %f.path.display(), "prometheus_client family declared differently: {why}");
                    }
                    continue;
                }
                fam.add(key, &f.pid, *value, *ts);
            }
        }
        self.buf = data;
        self.entries = entries;
        // Forget keys no file holds any more, once they outnumber the live ones.
        let live = self.keys.values().filter(|k| k.seen == scrape).count();
        if self.keys.len() > 1024 && self.keys.len() > 2 * live {
            self.keys.retain(|_, k| k.seen == scrape);
        }
        families.into_iter().map(PyFamily::finish).collect()
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
        walk_entries(&new, 16, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!((out[1].1, out[1].2), (2.0, 3.0));
        let old = file(&[entry(k1, 1.5, None), entry(k2, 2.0, None)]);
        assert!(walk_entries(&old, 16, &mut out).is_err());
        walk_entries(&old, 8, &mut out).unwrap();
        assert_eq!(&old[out[1].0.clone()], k2.as_bytes());
        // One old entry alone does not end where the new layout would.
        let one = file(&[entry(k1, 1.5, None)]);
        assert!(walk_entries(&one, 16, &mut out).is_err());
        walk_entries(&one, 8, &mut out).unwrap();
    }

    #[test]
    fn keys() {
        let k = KeyInfo::parse(br#"["h", "h_bucket", {"le": "+Inf", "b": "\u00e9\"", "a": "1"}, "help"]"#)
            .unwrap();
        assert_eq!(k.sample, Ok(Sample::Bucket(f64::INFINITY)));
        assert_eq!(&*k.label_names, &["a".into(), "b".into()] as &[Box<str>]);
        assert_eq!(&*k.label_values, &["1".into(), "é\"".into()] as &[Box<str>]);
        assert!(KeyInfo::parse(br#"["h", "h_sum", {}]"#).is_err());
        assert!(KeyInfo::parse(b"[1, 2, 3, 4]").is_err());
        let bad = KeyInfo::parse(br#"["caf\u00e9", "caf\u00e9", {}, ""]"#).unwrap();
        assert!(bad.sample.is_err());
        let other = KeyInfo::parse(br#"["c", "c_created", {}, ""]"#).unwrap();
        assert!(other.sample.is_err());
    }
}
