//! The reading side: merges every file of a directory into one [`Snapshot`].
//!
//! Files are mapped read-only and cached between scrapes with their decoded metadata;
//! a scrape parses only records appended since the last one, then reads value slots.
//! Every length and offset read from a file is checked before use: a file that breaks
//! any rule of `FORMAT.md` is skipped as a whole, counted and logged once, and the rest
//! of the directory is served. Files are never modified or deleted by the reader.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::Instant;

use crate::desc::FamilyDesc;
use crate::error::Error;
use crate::format::{
    self, Corrupt, ERROR_KINDS, ErrorKind, FamilyRecord, GaugeMode, HEADER_BYTES, MR_SEQ, MR_TIME, MR_VALUE,
    MetricType, corrupt,
};
use crate::region::Region;
use crate::snapshot::{HistogramValue, MergedFamily, MergedSeries, ScrapeStats, Snapshot, Value};
use crate::sys;
use crate::writer::{LOCK_FILE, STORE_EXT, TMP_PREFIX};

/// Merges the files of one directory; keeps decoded metadata between scrapes.
///
/// A [`Store`](crate::Store) has one inside; use a `Reader` directly to scrape a directory
/// without writing to it (a sidecar, a debugging tool).
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let store = shmetrics_core::Store::builder(dir.path()).open().unwrap();
/// # store.counter("jobs", "Jobs").unwrap().inc();
/// let mut reader = shmetrics_core::Reader::new(dir.path())?;
/// let snapshot = reader.snapshot()?;
/// assert_eq!(snapshot.counter("jobs", &[]), Some(1));
/// # Ok::<(), shmetrics_core::Error>(())
/// ```
pub struct Reader {
    dir: PathBuf,
    files: BTreeMap<OsString, CachedFile>,
    foreign_logged: HashSet<OsString>,
    index: MergeIndex,
    /// Identity of a writer in this process whose file is read as live without probing.
    pub(crate) own_writer: Option<u64>,
}

struct CachedFile {
    ident: (u64, u64),
    path: PathBuf,
    file: Option<File>,
    region: Option<Region>,
    corrupt: Option<String>,
    logged: bool,
    live: bool,
    pid: u32,
    start: u64,
    writer_id: u64,
    application: Option<String>,
    /// Value of the `pid` label for this file's per-process gauges.
    pid_label: String,
    parsed: usize,
    families: Vec<FileFamily>,
    blocks: Vec<(usize, usize)>,
    series: Vec<FileSeries>,
}

struct FileFamily {
    rec: FamilyRecord,
    slots: usize,
    /// Cached (merged family index, epoch of its reference schema).
    merged: Option<(usize, u64)>,
}

struct FileSeries {
    family: u32,
    offset: usize,
    labels: Box<[Box<str>]>,
    /// Cached (merged series index, epoch).
    merged: Option<(usize, u64)>,
}

#[derive(Default)]
struct MergeIndex {
    families: Vec<IndexFamily>,
    by_name: HashMap<String, usize>,
    next_epoch: u64,
}

struct IndexFamily {
    desc: FamilyDesc,
    epoch: u64,
    keys: Vec<Arc<[Box<str>]>>,
    by_key: HashMap<Arc<[Box<str>]>, usize>,
    acc: Vec<Acc>,
    seen: Vec<bool>,
    declared: bool,
}

#[derive(Clone, Debug)]
enum Acc {
    U64(u64),
    F64(f64),
    Gauge { v: f64, t: u64 },
    Hist { buckets: Vec<u64>, sum: f64 },
}

impl Reader {
    /// A reader for `dir`, which must exist.
    pub fn new(dir: impl AsRef<Path>) -> Result<Reader, Error> {
        let dir = dir.as_ref().to_path_buf();
        match std::fs::metadata(&dir) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(Error::Directory {
                    path: dir,
                    reason: "is not a directory".into(),
                    source: None,
                });
            }
            Err(e) => {
                return Err(Error::Directory {
                    path: dir,
                    reason: "cannot be read (does it exist?)".into(),
                    source: Some(e),
                });
            }
        }
        Ok(Reader {
            dir,
            files: BTreeMap::new(),
            foreign_logged: HashSet::new(),
            index: MergeIndex::default(),
            own_writer: None,
        })
    }

    /// The directory this reader merges.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads and merges every file now.
    pub fn snapshot(&mut self) -> Result<Snapshot, Error> {
        let _gate = sys::enter_gate();
        let started = Instant::now();
        let mut stats = ScrapeStats::default();
        self.refresh(&mut stats)?;
        let families = self.merge(&mut stats);
        stats.series = families.iter().map(|f| f.series.len()).sum();
        stats.duration = started.elapsed();
        Ok(Snapshot::new(families, stats))
    }

    /// Live files' declarations of `name`, for the cross-process schema check at
    /// declaration: `(pid, path, declaration)`. Refreshes the cache first.
    pub(crate) fn live_declarations(&mut self, name: &str) -> Result<Vec<(u32, PathBuf, FamilyDesc)>, Error> {
        let mut stats = ScrapeStats::default();
        self.refresh(&mut stats)?;
        let mut out = Vec::new();
        for cf in self.files.values() {
            if cf.corrupt.is_some() || !cf.live || Some(cf.writer_id) == self.own_writer {
                continue;
            }
            if let Some(f) = cf.families.iter().find(|f| f.rec.name == name) {
                out.push((cf.pid, cf.path.clone(), FamilyDesc::from_record(&f.rec)));
            }
        }
        Ok(out)
    }

    fn refresh(&mut self, stats: &mut ScrapeStats) -> Result<(), Error> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::Directory {
            path: self.dir.clone(),
            reason: "cannot be listed".into(),
            source: Some(e),
        })?;
        let mut present: HashSet<OsString> = HashSet::new();
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            if name_str == LOCK_FILE || name_str.starts_with(TMP_PREFIX) {
                continue;
            }
            let path = entry.path();
            if !name_str.ends_with(STORE_EXT) {
                stats.foreign_files += 1;
                stats.foreign.push(path.clone());
                if self.foreign_logged.insert(name.clone()) {
                    tracing::warn!(
                        file = %path.display(),
                        "file in the metrics directory is not a shmetrics file: ignored, left in place"
                    );
                }
                continue;
            }
            // lstat: a symlink is reported, never followed.
            let Ok(md) = entry.metadata() else { continue };
            let ident = (md.dev(), md.ino());
            present.insert(name.clone());
            let stale = self.files.get(&name).is_none_or(|c| c.ident != ident);
            if stale {
                let mut cf = CachedFile::new(ident, path);
                if !md.file_type().is_file() {
                    cf.corrupt = Some("not a regular file".into());
                }
                self.files.insert(name.clone(), cf);
            }
        }
        self.files.retain(|name, _| present.contains(name));
        for cf in self.files.values_mut() {
            cf.refresh(self.own_writer);
            match &cf.corrupt {
                Some(reason) => {
                    stats.corrupt_files += 1;
                    stats.corrupt.push((cf.path.clone(), reason.clone()));
                    if !cf.logged {
                        cf.logged = true;
                        tracing::warn!(
                            file = %cf.path.display(),
                            reason = %reason,
                            "skipping unreadable file in the metrics directory (left in place; \
                             counted in shmetrics_corrupt_files)"
                        );
                    }
                }
                None if cf.live => stats.live_files += 1,
                None => stats.dead_files += 1,
            }
            if let Some(r) = &cf.region {
                stats.mapped_bytes += r.accessible() as u64;
            }
        }
        Ok(())
    }

    fn merge(&mut self, stats: &mut ScrapeStats) -> Vec<MergedFamily> {
        let index = &mut self.index;
        // Good files, live first, then newest first: the order decides which declaration
        // is the reference and which of two per-process gauges with one pid is shown.
        let mut order: Vec<&mut CachedFile> =
            self.files.values_mut().filter(|c| c.corrupt.is_none()).collect();
        order.sort_by(|a, b| b.live.cmp(&a.live).then(b.start.cmp(&a.start)));
        // The `pid` label of per-process gauges. Two files can share a pid (pid reuse, or
        // processes in different pid namespaces: every container's first process is 1);
        // their series must not hide each other, so colliding pids get the file's
        // identity appended.
        let mut pid_count: HashMap<u32, usize> = HashMap::new();
        for cf in order.iter() {
            *pid_count.entry(cf.pid).or_default() += 1;
        }
        for cf in order.iter_mut() {
            let label = if pid_count[&cf.pid] > 1 {
                format!("{}-{:08x}", cf.pid, cf.writer_id >> 32)
            } else {
                cf.pid.to_string()
            };
            if label != cf.pid_label {
                cf.pid_label = label;
                for s in &mut cf.series {
                    s.merged = None;
                }
            }
        }

        // Reference declaration of each family name.
        let mut reference: HashMap<&str, &FamilyRecord> = HashMap::new();
        for cf in order.iter() {
            for f in &cf.families {
                reference.entry(f.rec.name.as_str()).or_insert(&f.rec);
            }
        }
        let mut refs: Vec<(String, FamilyDesc)> = reference
            .into_iter()
            .map(|(n, r)| (n.to_string(), FamilyDesc::from_record(r)))
            .collect();
        refs.sort_by(|a, b| a.0.cmp(&b.0));
        for fam in &mut index.families {
            fam.declared = false;
        }
        for (name, desc) in refs {
            match index.by_name.get(&name) {
                Some(&i) => {
                    let fam = &mut index.families[i];
                    if !fam.desc.same_schema(&desc) {
                        index.next_epoch += 1;
                        *fam = IndexFamily::new(desc, index.next_epoch);
                    } else {
                        fam.desc.help = desc.help;
                    }
                    fam.declared = true;
                }
                None => {
                    index.next_epoch += 1;
                    let mut fam = IndexFamily::new(desc, index.next_epoch);
                    fam.declared = true;
                    index.by_name.insert(name, index.families.len());
                    index.families.push(fam);
                }
            }
        }
        for fam in &mut index.families {
            fam.reset();
        }

        let mut errors = [0u64; ERROR_KINDS];
        let mut overflow: BTreeMap<String, u64> = BTreeMap::new();
        for cf in order {
            if let Some(region) = &cf.region {
                for (k, e) in errors.iter_mut().enumerate() {
                    if let Some(w) = region.word((format::H_ERRORS + k) * 8) {
                        *e = e.wrapping_add(w.load(Ordering::Relaxed));
                    }
                }
            }
            let Some(region) = cf.region.as_ref() else {
                continue;
            };
            let pid = cf.pid_label.clone();
            // Map each of the file's families to its merged family, or skip it.
            let mut targets: Vec<Option<usize>> = Vec::with_capacity(cf.families.len());
            for ff in &mut cf.families {
                let i = index.by_name[&ff.rec.name];
                let fam = &index.families[i];
                let ok = match ff.merged {
                    Some((j, epoch)) if j == i && epoch == fam.epoch => true,
                    _ => {
                        if fam.desc.same_schema(&FamilyDesc::from_record(&ff.rec)) {
                            ff.merged = Some((i, fam.epoch));
                            true
                        } else {
                            false
                        }
                    }
                };
                if !ok {
                    stats.conflicts += 1;
                    targets.push(None);
                    continue;
                }
                if let Some(w) = region.word(ff.rec.stats_offset as usize) {
                    let n = w.load(Ordering::Relaxed);
                    if n > 0 {
                        *overflow.entry(ff.rec.name.clone()).or_default() += n;
                    }
                }
                let skip = fam.desc.ty == MetricType::Gauge && fam.desc.mode.live_only() && !cf.live;
                targets.push(if skip { None } else { Some(i) });
            }
            for s in &mut cf.series {
                let Some(fi) = targets[s.family as usize] else {
                    continue;
                };
                let fam = &mut index.families[fi];
                let idx = match s.merged {
                    Some((idx, epoch)) if epoch == fam.epoch => idx,
                    _ => {
                        let idx = fam.key_index(&s.labels, &pid);
                        s.merged = Some((idx, fam.epoch));
                        idx
                    }
                };
                let slots = cf.families[s.family as usize].slots;
                fam.accumulate(idx, region, s.offset, slots);
            }
        }
        for (k, n) in errors.iter().enumerate() {
            stats.store_errors.push((ErrorKind::ALL[k].label(), *n));
        }
        stats.overflow = overflow.into_iter().collect();

        let mut out: Vec<MergedFamily> = index
            .families
            .iter()
            .filter(|f| f.declared)
            .map(IndexFamily::snapshot)
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("dir", &self.dir)
            .field("files", &self.files.len())
            .finish()
    }
}

impl CachedFile {
    fn new(ident: (u64, u64), path: PathBuf) -> Self {
        CachedFile {
            ident,
            path,
            file: None,
            region: None,
            corrupt: None,
            logged: false,
            live: false,
            pid: 0,
            start: 0,
            writer_id: 0,
            application: None,
            pid_label: String::new(),
            parsed: 0,
            families: Vec::new(),
            blocks: Vec::new(),
            series: Vec::new(),
        }
    }

    fn refresh(&mut self, own_writer: Option<u64>) {
        if self.corrupt.is_some() {
            return;
        }
        if let Err(c) = self.try_refresh(own_writer) {
            self.corrupt = Some(c.0);
            self.region = None;
            self.file = None;
            self.families.clear();
            self.series.clear();
            self.blocks.clear();
        }
    }

    fn try_refresh(&mut self, own_writer: Option<u64>) -> Result<(), Corrupt> {
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
        let size = usize::try_from(md.len()).map_err(|_| corrupt!("too large"))?;
        if size == 0 {
            return Err(corrupt!(
                "empty file, shorter than the {HEADER_BYTES}-byte header"
            ));
        }
        let remap = self.region.as_ref().is_none_or(|r| r.accessible() < size);
        if remap {
            self.region = Some(Region::map_reader(file, size).map_err(|e| corrupt!("cannot map: {e}"))?);
        }
        let region = self.region.as_ref().ok_or_else(|| corrupt!("not mapped"))?;
        if self.parsed == 0 {
            // The magic first: a stranger's short file is "not ours", not "truncated".
            let magic = region.word(0).map(|w| w.load(Ordering::Relaxed).to_le_bytes());
            if magic.is_none_or(|m| m != format::MAGIC) {
                return Err(corrupt!("wrong magic: not a shmetrics file"));
            }
            if size < HEADER_BYTES {
                return Err(corrupt!(
                    "{size} bytes, shorter than the {HEADER_BYTES}-byte header"
                ));
            }
            let mut h = Vec::with_capacity(format::HEADER_WORDS);
            if !region.copy_words(0, format::HEADER_WORDS, &mut h) {
                return Err(corrupt!("header out of range"));
            }
            if h[format::H_MAGIC].to_le_bytes() != format::MAGIC {
                return Err(corrupt!("wrong magic: not a shmetrics file"));
            }
            let version = h[format::H_VERSION] as u32;
            let header_bytes = (h[format::H_VERSION] >> 32) as usize;
            if version != format::VERSION {
                return Err(corrupt!(
                    "format version {version}, this reader knows version {}",
                    format::VERSION
                ));
            }
            if header_bytes != HEADER_BYTES {
                return Err(corrupt!(
                    "header of {header_bytes} bytes, expected {HEADER_BYTES}"
                ));
            }
            self.pid = h[format::H_PID] as u32;
            self.start = h[format::H_START];
            self.writer_id = h[format::H_WRITER_ID];
            self.parsed = HEADER_BYTES;
        }
        // Liveness: a writer holds an exclusive flock for its whole life.
        self.live = if own_writer == Some(self.writer_id) {
            true
        } else {
            let fd = file.as_raw_fd();
            match sys::try_flock(fd, false) {
                Ok(true) => {
                    let _ = sys::flock_unlock(fd);
                    false
                }
                Ok(false) => true,
                Err(_) => false,
            }
        };
        let used = region
            .word(format::H_USED * 8)
            .map(|w| w.load(Ordering::Acquire))
            .ok_or_else(|| corrupt!("header out of range"))?;
        let used = usize::try_from(used).map_err(|_| corrupt!("used length out of range"))?;
        if used < self.parsed || used > size || used % 8 != 0 {
            return Err(corrupt!(
                "used length {used} outside [{}, {size}] or unaligned",
                self.parsed
            ));
        }
        if used > self.parsed {
            self.parse(used)?;
        }
        Ok(())
    }

    fn parse(&mut self, used: usize) -> Result<(), Corrupt> {
        let region = self.region.as_ref().ok_or_else(|| corrupt!("not mapped"))?;
        let base = self.parsed;
        let mut words = Vec::new();
        if !region.copy_words(base, (used - base) / 8, &mut words) {
            return Err(corrupt!("records out of range"));
        }
        let mut pos = 0usize;
        while pos < words.len() {
            let w0 = words[pos];
            let kind = w0 as u32;
            let len = (w0 >> 32) as usize;
            if len < 8 || len % 8 != 0 || len > format::MAX_RECORD_BYTES || pos + len / 8 > words.len() {
                return Err(corrupt!("record at {} has bad length {len}", base + pos * 8));
            }
            let at = base + pos * 8;
            let body = &words[pos + 1..pos + len / 8];
            match kind {
                format::REC_APPLICATION => {
                    if self.application.is_some() {
                        return Err(corrupt!("second application record at {at}"));
                    }
                    self.application = Some(format::decode_application(body)?);
                }
                format::REC_FAMILY => {
                    let rec = format::decode_family(body)?;
                    if rec.id as usize != self.families.len() {
                        return Err(corrupt!("family id {} out of sequence at {at}", rec.id));
                    }
                    if self.families.iter().any(|f| f.rec.name == rec.name) {
                        return Err(corrupt!("family {:?} declared twice", rec.name));
                    }
                    if !in_block(&self.blocks, rec.stats_offset, 1) {
                        return Err(corrupt!(
                            "family {:?} statistics slot outside value blocks",
                            rec.name
                        ));
                    }
                    let slots = format::series_slots(rec.ty, rec.mode, rec.buckets.len());
                    self.families.push(FileFamily {
                        rec,
                        slots,
                        merged: None,
                    });
                }
                format::REC_SERIES => {
                    let rec = format::decode_series(body)?;
                    let fam = self
                        .families
                        .get(rec.family as usize)
                        .ok_or_else(|| corrupt!("series of unknown family {} at {at}", rec.family))?;
                    if rec.labels.len() != fam.rec.labels.len() {
                        return Err(corrupt!(
                            "series of {:?} with {} label values, family has {} labels",
                            fam.rec.name,
                            rec.labels.len(),
                            fam.rec.labels.len()
                        ));
                    }
                    if !in_block(&self.blocks, rec.value_offset, fam.slots) {
                        return Err(corrupt!("series value slots outside value blocks at {at}"));
                    }
                    self.series.push(FileSeries {
                        family: rec.family,
                        offset: rec.value_offset as usize,
                        labels: rec.labels.into_iter().map(String::into_boxed_str).collect(),
                        merged: None,
                    });
                }
                format::REC_VALUES => self.blocks.push((at + 8, at + len)),
                k if k & format::REC_OPTIONAL != 0 => {}
                k => return Err(corrupt!("unknown record kind {k} at {at}")),
            }
            pos += len / 8;
        }
        self.parsed = used;
        Ok(())
    }
}

/// Whether `[off, off + slots * 8)` lies in one value block.
fn in_block(blocks: &[(usize, usize)], off: u64, slots: usize) -> bool {
    let Ok(off) = usize::try_from(off) else {
        return false;
    };
    if off % 8 != 0 {
        return false;
    }
    let Some(end) = slots.checked_mul(8).and_then(|b| off.checked_add(b)) else {
        return false;
    };
    let i = blocks.partition_point(|(start, _)| *start <= off);
    i > 0 && end <= blocks[i - 1].1
}

impl IndexFamily {
    fn new(desc: FamilyDesc, epoch: u64) -> Self {
        IndexFamily {
            desc,
            epoch,
            keys: Vec::new(),
            by_key: HashMap::new(),
            acc: Vec::new(),
            seen: Vec::new(),
            declared: false,
        }
    }

    fn zero(&self) -> Acc {
        match self.desc.ty {
            MetricType::Counter => Acc::U64(0),
            MetricType::CounterF64 => Acc::F64(0.0),
            MetricType::Gauge => Acc::Gauge { v: 0.0, t: 0 },
            MetricType::Histogram => Acc::Hist {
                buckets: vec![0; self.desc.buckets.len()],
                sum: 0.0,
            },
        }
    }

    fn reset(&mut self) {
        let zero = self.zero();
        for a in &mut self.acc {
            match (a, &zero) {
                (Acc::Hist { buckets, sum }, _) => {
                    buckets.iter_mut().for_each(|b| *b = 0);
                    *sum = 0.0;
                }
                (a, z) => *a = z.clone(),
            }
        }
        self.seen.iter_mut().for_each(|s| *s = false);
    }

    fn key_index(&mut self, labels: &[Box<str>], pid: &str) -> usize {
        let key: Arc<[Box<str>]> = if self.desc.ty == MetricType::Gauge && self.desc.mode.per_process() {
            labels
                .iter()
                .cloned()
                .chain(std::iter::once(Box::from(pid)))
                .collect()
        } else {
            labels.into()
        };
        if let Some(&i) = self.by_key.get(&key) {
            return i;
        }
        let i = self.keys.len();
        self.keys.push(Arc::clone(&key));
        self.by_key.insert(key, i);
        self.acc.push(self.zero());
        self.seen.push(false);
        i
    }

    fn accumulate(&mut self, idx: usize, region: &Region, offset: usize, slots: usize) {
        let load = |i: usize| {
            region
                .word(offset + i * 8)
                .map_or(0, |w| w.load(Ordering::Relaxed))
        };
        let first = !self.seen[idx];
        self.seen[idx] = true;
        let mode = self.desc.mode;
        match &mut self.acc[idx] {
            Acc::U64(v) => *v = v.wrapping_add(load(0)),
            Acc::F64(v) => *v += f64::from_bits(load(0)),
            Acc::Gauge { v, t } => {
                if mode.most_recent() {
                    let (val, time) = read_most_recent(region, offset);
                    if time > *t {
                        *v = val;
                        *t = time;
                    }
                } else {
                    let x = f64::from_bits(load(0));
                    *v = match mode {
                        _ if first => x,
                        GaugeMode::All | GaugeMode::LiveAll => *v,
                        GaugeMode::Min | GaugeMode::LiveMin => v.min(x),
                        GaugeMode::Max | GaugeMode::LiveMax => v.max(x),
                        GaugeMode::Sum | GaugeMode::LiveSum => *v + x,
                        GaugeMode::MostRecent | GaugeMode::LiveMostRecent => x,
                    };
                }
            }
            Acc::Hist { buckets, sum } => {
                let n = buckets.len();
                debug_assert_eq!(slots, n + 1);
                for (i, b) in buckets.iter_mut().enumerate() {
                    *b = b.wrapping_add(load(i));
                }
                *sum += f64::from_bits(load(n));
            }
        }
    }

    fn snapshot(&self) -> MergedFamily {
        let mut label_names = self.desc.labels.clone();
        if self.desc.ty == MetricType::Gauge && self.desc.mode.per_process() {
            label_names.push("pid".into());
        }
        let mut series: Vec<MergedSeries> = self
            .acc
            .iter()
            .enumerate()
            .filter(|(i, _)| self.seen[*i])
            .map(|(i, a)| MergedSeries {
                labels: Arc::clone(&self.keys[i]),
                value: match a {
                    Acc::U64(v) => Value::Counter(*v),
                    Acc::F64(v) if self.desc.ty == MetricType::CounterF64 => Value::CounterF64(*v),
                    Acc::F64(v) => Value::Gauge(*v),
                    Acc::Gauge { v, .. } => Value::Gauge(*v),
                    Acc::Hist { buckets, sum } => Value::Histogram(HistogramValue {
                        buckets: buckets.clone(),
                        sum: *sum,
                    }),
                },
            })
            .collect();
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        MergedFamily {
            name: self.desc.name.clone(),
            help: self.desc.help.clone(),
            metric_type: self.desc.ty,
            mode: self.desc.mode,
            label_names,
            buckets: self.desc.buckets.clone(),
            series,
        }
    }
}

/// Reads a `mostrecent` gauge's (value, time) consistently, or the latest words after a
/// bounded number of tries (a writer killed mid-write leaves the sequence odd forever).
fn read_most_recent(region: &Region, offset: usize) -> (f64, u64) {
    let word = |i: usize| region.word(offset + i * 8);
    let (Some(seq), Some(val), Some(time)) = (word(MR_SEQ), word(MR_VALUE), word(MR_TIME)) else {
        return (0.0, 0);
    };
    for _ in 0..64 {
        let s1 = seq.load(Ordering::Acquire);
        if s1 & 1 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let v = val.load(Ordering::Relaxed);
        let t = time.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if seq.load(Ordering::Relaxed) == s1 {
            return (f64::from_bits(v), t);
        }
    }
    (
        f64::from_bits(val.load(Ordering::Relaxed)),
        time.load(Ordering::Relaxed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_containment() {
        let blocks = vec![(136, 1000), (2000, 3000)];
        assert!(in_block(&blocks, 136, 1));
        assert!(in_block(&blocks, 992, 1));
        assert!(!in_block(&blocks, 992, 2));
        assert!(!in_block(&blocks, 1000, 1));
        assert!(!in_block(&blocks, 137, 1));
        assert!(!in_block(&blocks, 128, 1));
        assert!(in_block(&blocks, 2000, 125));
        assert!(!in_block(&blocks, u64::MAX - 7, 1));
        assert!(!in_block(&blocks, 2000, usize::MAX));
    }
}
