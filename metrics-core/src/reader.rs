//! The reading side: merges every file of a directory into one [`Snapshot`].
//!
//! Files are mapped read-only and cached between scrapes with their decoded metadata;
//! a scrape parses only records appended since the last one, then reads value slots.
//! Every length and offset read from a file is checked before use: a file that breaks
//! any rule of `FORMAT.md` is skipped as a whole, counted and logged once, and the rest
//! of the directory is served. The reader never modifies or deletes a file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::Instant;

use crate::desc::FamilyDesc;
use crate::dirlock::DirLock;
use crate::error::Error;
use crate::format::{ERROR_KINDS, ErrorKind, GaugeMode, MR_SEQ, MR_TIME, MR_VALUE, MetricType};
use crate::keys::KeyTable;
use crate::parse::{self, Header, Parsed, Removal};
use crate::python::{self, PyReader};
use crate::region::Region;
use crate::snapshot::{HistogramValue, MergedFamily, MergedSeries, ScrapeStats, Snapshot, Value};
use crate::sys;
use crate::writer::{LOCK_FILE, STORE_EXT, TMP_PREFIX, TURN_FILE};

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
    python: PyReader,
    conflicts_logged: HashSet<String>,
    lock: Option<DirLock>,
    /// Files of this process's own writer: live without probing.
    pub(crate) own_writers: Vec<u64>,
    /// The dead files a compaction's merge takes values from.
    fold_selected: HashSet<u64>,
    /// The accumulator (writer id) a compaction folds into.
    fold_target: Option<u64>,
}

/// Why a file is not read in a pass.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Problem {
    /// Could not be read now (no descriptor left, changed or removed while being read):
    /// retried at the next pass. What an earlier pass read of it is still merged.
    Transient(String),
    /// This process may not read it (permission): reported; read again once it changes.
    Unreadable(String),
    /// It breaks the format: reported; read again once it changes.
    Corrupt(String),
    /// A newer format version (a rolling upgrade or downgrade): left alone, reported.
    Newer(u32),
}

impl Problem {
    /// The reason alone.
    pub(crate) fn short(&self) -> String {
        match self {
            Problem::Transient(r) | Problem::Unreadable(r) | Problem::Corrupt(r) => r.clone(),
            Problem::Newer(v) => format!("format version {v}"),
        }
    }

    fn reason(&self) -> String {
        match self {
            Problem::Transient(r) => format!("{r} (retried at the next scrape)"),
            Problem::Unreadable(r) | Problem::Corrupt(r) => r.clone(),
            Problem::Newer(v) => format!(
                "format version {v}, newer than the version {} this reader knows: left alone \
                 (it is read again by a reader of its version)",
                crate::format::VERSION
            ),
        }
    }
}

/// What the directory listing shows of a file (`lstat`): a file with a problem is read
/// again only once this changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Listing {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Listing {
    fn of(md: &std::fs::Metadata) -> Self {
        Listing {
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
        }
    }
}

/// Largest store file a reader accepts. Writers never make one larger
/// ([`StoreBuilder::max_file_size`](crate::StoreBuilder::max_file_size) is capped to it):
/// a larger one (a sparse file, say) is refused before anything of it is read.
pub(crate) const MAX_FILE_BYTES: usize = 1 << 30;

pub(crate) struct CachedFile {
    ident: (u64, u64),
    /// Whether the directory entry is a regular file (`lstat`).
    regular: bool,
    pub(crate) path: PathBuf,
    region: Option<Region>,
    /// Why the last pass could not read the file; `None` if it could.
    problem: Option<Problem>,
    /// The listing when `problem` was found.
    problem_listing: Listing,
    logged: bool,
    /// Whether `header` and `parsed` hold what a pass read (possibly an earlier one).
    known: bool,
    /// Whether this pass read the file. A file read only by an earlier pass (a transient
    /// error now) is still merged, but a compaction neither folds nor deletes it.
    pub(crate) fresh: bool,
    pub(crate) live: bool,
    pub(crate) header: Header,
    pub(crate) parsed: Parsed,
    /// Cached (merged family index, epoch) per family of the file.
    fam_merged: Vec<Option<(usize, u64)>>,
    /// Cached (merged series index, epoch) per series of the file.
    series_merged: Vec<Option<(usize, u64)>>,
    /// Value of the `pid` label for this file's per-process gauges.
    pid_label: String,
    /// Folded into an accumulator already: not merged (waits for deletion).
    pub(crate) folded: bool,
}

/// The merged families of the last pass, kept between passes with their series indexes.
/// A name has one entry per declaration met (files of two releases may declare a family
/// with other labels or buckets: each declaration's series show); one of them is the
/// reference, the declaration of the first file in merge order.
#[derive(Default)]
struct MergeIndex {
    families: Vec<IndexFamily>,
    by_name: HashMap<String, Vec<usize>>,
    next_epoch: u64,
}

impl MergeIndex {
    /// The entry of `desc`'s declaration, created if needed.
    fn entry(&mut self, desc: FamilyDesc) -> usize {
        if let Some(list) = self.by_name.get(&desc.name) {
            if let Some(&j) = list.iter().find(|&&j| self.families[j].desc.same_schema(&desc)) {
                return j;
            }
        }
        self.next_epoch += 1;
        let j = self.families.len();
        self.by_name.entry(desc.name.clone()).or_default().push(j);
        self.families.push(IndexFamily::new(desc, self.next_epoch));
        j
    }

    /// The entry a file's declaration `rec` merges into: its own declaration's, if it is of
    /// the reference's type and gauge mode (labels and buckets may differ); `None` when it
    /// cannot be shown beside the reference.
    fn entry_for(&mut self, rec: &crate::format::FamilyRecord) -> Option<usize> {
        let desc = FamilyDesc::from_record(rec);
        let list = self.by_name.get(&desc.name)?;
        if let Some(&j) = list.iter().find(|&&j| self.families[j].desc.same_schema(&desc)) {
            return Some(j);
        }
        let reference = list.iter().map(|&j| &self.families[j]).find(|f| f.reference)?;
        if reference.desc.ty != desc.ty || reference.desc.mode != desc.mode {
            return None;
        }
        Some(self.entry(desc))
    }
}

struct IndexFamily {
    desc: FamilyDesc,
    epoch: u64,
    keys: KeyTable,
    acc: Vec<Acc>,
    seen: Vec<bool>,
    covered: Vec<bool>,
    declared: bool,
    /// The reference declaration of its name (the others are other releases').
    reference: bool,
    /// Whether this pass took values of files into it.
    folded_here: bool,
    stats: u64,
}

/// A merged value being accumulated (also the compactor's input).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Acc {
    U64(u64),
    F64(f64),
    Gauge {
        v: f64,
        t: u64,
    },
    Hist {
        buckets: Vec<u64>,
        sum: f64,
    },
    /// Python summaries only.
    Summary {
        count: f64,
        sum: f64,
    },
}

/// Which files a merge takes values from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// A scrape: every readable file.
    All,
    /// A compaction: the accumulator and the selected dead files only (the other files
    /// still provide declarations and removals); the values of live-only gauges are left
    /// out (their families stay declared).
    Fold,
}

/// One merged family as the compactor needs it: declaration, accumulated values (with
/// the time of `mostrecent` gauges) and the family's statistics counter.
pub(crate) struct FoldFamily {
    pub desc: FamilyDesc,
    pub series: Vec<(Arc<[Box<str>]>, Acc)>,
    pub stats: u64,
}

/// Everything a compaction writes into the new accumulator.
pub(crate) struct FoldView {
    pub families: Vec<FoldFamily>,
    pub errors: [u64; ERROR_KINDS],
    /// Removals that still have baselines of files not folded now.
    pub removals: Vec<Removal>,
}

/// What a compaction may fold, as read now.
pub(crate) struct FoldPlan {
    /// Dead writer files, read whole in this pass.
    pub sources: Vec<FoldSource>,
    /// Files folded by an earlier compaction, still to be deleted.
    pub leftovers: Vec<(PathBuf, u64)>,
    /// The accumulators read in this pass, `accumulator.shm` first.
    pub accumulators: Vec<FoldTarget>,
    /// (device, inode) of what `accumulator.shm` holds, if anything: the accumulator read
    /// in this pass, or an entry that is not a file.
    pub primary: Option<(u64, u64)>,
}

/// A dead writer file a compaction may fold.
pub(crate) struct FoldSource {
    pub path: PathBuf,
    pub writer_id: u64,
    /// (device, inode), to check that the name still holds the file read.
    pub ident: (u64, u64),
    /// Its families' declarations.
    pub decls: Vec<FamilyDesc>,
}

/// An accumulator a compaction may fold into.
pub(crate) struct FoldTarget {
    pub path: PathBuf,
    pub writer_id: u64,
    pub ident: (u64, u64),
    pub decls: Vec<FamilyDesc>,
}

/// Whether `name` is an accumulator's: `accumulator.shm`, or `accumulator-<16 hex>.shm`
/// for the series of families that other releases declare otherwise.
pub(crate) fn is_accumulator_name(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    if name == crate::compact::ACCUMULATOR {
        return true;
    }
    name.strip_prefix("accumulator-")
        .and_then(|r| r.strip_suffix(STORE_EXT))
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
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
                let reason = match e.kind() {
                    std::io::ErrorKind::NotFound => "does not exist".to_string(),
                    _ => format!("cannot be read: {e}"),
                };
                return Err(Error::Directory {
                    path: dir,
                    reason,
                    source: Some(e),
                });
            }
        }
        Ok(Reader {
            dir,
            files: BTreeMap::new(),
            foreign_logged: HashSet::new(),
            index: MergeIndex::default(),
            python: PyReader::default(),
            conflicts_logged: HashSet::new(),
            lock: None,
            own_writers: Vec::new(),
            fold_selected: HashSet::new(),
            fold_target: None,
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
        if self.lock.is_none() {
            self.lock = DirLock::open_ro(&self.dir)?;
        }
        let lock = self.lock.take();
        // A shared lock: no compaction in the middle of this scrape.
        let guard = match &lock {
            Some(l) => Some(l.shared()?),
            None => None,
        };
        let result = self.guarded(true, |r| {
            let mut stats = ScrapeStats::default();
            r.refresh(&mut stats)?;
            let python = r.python.merge(&mut stats);
            let mut native: Vec<FamilyOut> = Vec::new();
            for entry in r.merge(Scope::All, &mut stats) {
                let out = entry.out();
                // Another release's declaration of the family just before: its series
                // join the reference's (they differ in labels or buckets only).
                match native.last_mut() {
                    Some(prev) if prev.name == out.name => {
                        if let Err(why) = prev.absorb(out) {
                            stats.conflicts += 1;
                            tracing::warn!("family left out: {why}");
                        }
                    }
                    _ => native.push(out),
                }
            }
            Ok((r.combine(native, python, &mut stats), stats))
        });
        drop(guard);
        self.lock = lock;
        let (families, mut stats) = result?;
        stats.series = families.iter().map(|f| f.series.len()).sum();
        stats.duration = started.elapsed();
        Ok(Snapshot::new(families, stats))
    }

    /// Runs `op`, which reads mappings, under the SIGBUS guard (`sys::bus_guard`). When a
    /// file shrank under it (cut by another process between its size check and a read),
    /// what `op` read of that file was zeros: the file's mapping is dropped, and `op` runs
    /// again (`retry`; at most a few times) or fails.
    fn guarded<T>(
        &mut self,
        retry: bool,
        mut op: impl FnMut(&mut Reader) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut attempts = 0;
        loop {
            let guard = sys::bus_guard();
            let result = op(self);
            let fault = guard.take_fault();
            drop(guard);
            let Some(addr) = fault else {
                return result;
            };
            let file = self.forget_mapping_at(addr);
            tracing::warn!(
                file = %file.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default(),
                "a file of the metrics directory shrank while it was being read (cut by another \
                 process): reading it again"
            );
            attempts += 1;
            if !retry || attempts >= 4 {
                return Err(Error::Directory {
                    path: self.dir.clone(),
                    reason: "files kept shrinking while they were being read (cut by another process): \
                             try again"
                        .into(),
                    source: None,
                });
            }
        }
    }

    /// Forgets the mapping that holds `addr` (and what was read through it); returns the
    /// file's path.
    fn forget_mapping_at(&mut self, addr: usize) -> Option<PathBuf> {
        for cf in self.files.values_mut() {
            if cf.region.as_ref().is_some_and(|r| r.contains(addr)) {
                cf.forget();
                cf.problem = Some(Problem::Transient("shrank while being read".into()));
                return Some(cf.path.clone());
            }
        }
        self.python.forget_mapping_at(addr)
    }

    /// Joins the native families and those of Python's files, sorted by name.
    fn combine(
        &mut self,
        native: Vec<FamilyOut>,
        python: Vec<FamilyOut>,
        stats: &mut ScrapeStats,
    ) -> Vec<MergedFamily> {
        let mut out = native;
        if !python.is_empty() {
            let mut by_name: HashMap<String, usize> =
                out.iter().enumerate().map(|(i, f)| (f.name.clone(), i)).collect();
            for py in python {
                match by_name.get(&py.name) {
                    None => {
                        by_name.insert(py.name.clone(), out.len());
                        out.push(py);
                    }
                    Some(&i) => {
                        if let Err(why) = out[i].absorb(py) {
                            stats.conflicts += 1;
                            if self.conflicts_logged.insert(why.clone()) {
                                tracing::warn!("prometheus_client family left out: {why}");
                            }
                        }
                    }
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
        }
        self.drop_clashes(&mut out, stats);
        out.into_iter().map(FamilyOut::into_merged).collect()
    }

    /// Leaves out families whose exposed names meet those of another family (files of
    /// processes that were declared before the check, or of an earlier deployment; Python
    /// files), and Python families in the store's own `shmetrics_` namespace: an
    /// exposition must parse. Of two clashing families the first by name stays (`jobs`
    /// before `jobs_total`, `lat` before `lat_count`). Counted as conflicts.
    fn drop_clashes(&mut self, out: &mut Vec<FamilyOut>, stats: &mut ScrapeStats) {
        let mut claimed: HashMap<String, usize> = HashMap::new();
        let mut keep = vec![true; out.len()];
        for (i, f) in out.iter().enumerate() {
            let names = crate::desc::claimed_names(f.ty, &f.name);
            let why = if f.name.starts_with(crate::desc::SELF_PREFIX) {
                Some(format!("{} is in the store's own shmetrics_ namespace", f.name))
            } else {
                names.iter().find_map(|n| {
                    claimed
                        .get(n)
                        .map(|&j| format!("{} and {} would both expose {n}", out[j].name, f.name))
                })
            };
            match why {
                Some(why) => {
                    keep[i] = false;
                    stats.conflicts += 1;
                    if self.conflicts_logged.insert(why.clone()) {
                        tracing::warn!("family left out of the exposition: {why}");
                    }
                }
                None => {
                    for n in names {
                        claimed.insert(n, i);
                    }
                }
            }
        }
        let mut i = 0;
        out.retain(|_| {
            i += 1;
            keep[i - 1]
        });
    }

    /// Refreshes for a compaction (the caller holds the exclusive directory lock) and
    /// lists what it may fold. Fails, and nothing may be folded, when the directory holds
    /// an accumulator this pass could not read: folding without it would replace its
    /// totals.
    pub(crate) fn fold_plan(&mut self) -> Result<FoldPlan, Error> {
        self.guarded(true, |r| r.refresh(&mut ScrapeStats::default()))?;
        let mut primary = None;
        let mut accumulators = Vec::new();
        for (name, acc) in &self.files {
            if !is_accumulator_name(name) {
                continue;
            }
            let is_primary = name == std::ffi::OsStr::new(crate::compact::ACCUMULATOR);
            if is_primary {
                // Something planted there that is not a file (a symlink, a FIFO) holds no
                // counts: a new accumulator may replace the entry itself, never its target.
                primary = Some(acc.ident);
            }
            if !acc.regular {
                continue;
            }
            if !acc.good() || !acc.header.accumulator() {
                let why = match &acc.problem {
                    Some(p) => p.reason(),
                    None if !acc.fresh => "it could not be read in this pass".to_string(),
                    None => "it is not an accumulator".to_string(),
                };
                return Err(Error::Directory {
                    path: self.dir.clone(),
                    reason: format!(
                        "not compacting: {} cannot be read ({why}); it is left as it is, and dead \
                         writers' files are kept (they still count) until it can be read",
                        name.to_string_lossy()
                    ),
                    source: None,
                });
            }
            let target = FoldTarget {
                path: acc.path.clone(),
                writer_id: acc.header.writer_id,
                ident: acc.ident,
                decls: acc.declarations(),
            };
            if is_primary {
                accumulators.insert(0, target);
            } else {
                accumulators.push(target);
            }
        }
        let sources = self
            .fold_sources()
            .filter(|c| !c.header.accumulator())
            .map(|c| FoldSource {
                path: c.path.clone(),
                writer_id: c.header.writer_id,
                ident: c.ident,
                decls: c.declarations(),
            })
            .collect();
        let leftovers = self
            .folded_files()
            .map(|c| (c.path.clone(), c.header.writer_id))
            .collect();
        Ok(FoldPlan {
            sources,
            leftovers,
            accumulators,
            primary,
        })
    }

    /// Merges the accumulator `target` (writer id; `None` for a new one) and the dead files
    /// `selected` (writer ids, among the plan's sources, all declaring their families as
    /// `target` does) as read by the last [`fold_plan`](Reader::fold_plan): the view a
    /// compaction writes. Fails if a file shrank while it was read (a compaction must not
    /// delete a file whose values it did not read), or if two of them declare a family
    /// differently.
    pub(crate) fn fold_view(
        &mut self,
        selected: &HashSet<u64>,
        target: Option<u64>,
    ) -> Result<FoldView, Error> {
        self.fold_selected = selected.clone();
        self.fold_target = target;
        self.guarded(false, |r| r.fold_view_pass(selected, target))
    }

    fn fold_view_pass(&mut self, selected: &HashSet<u64>, target: Option<u64>) -> Result<FoldView, Error> {
        let mut stats = ScrapeStats::default();
        let dir = self.dir.clone();
        let idx = self.merge(Scope::Fold, &mut stats);
        // One declaration per name: the one the folded files hold (the others' files
        // give declarations only), or the reference for a name none of them holds.
        let mut families: Vec<FoldFamily> = Vec::new();
        let mut valued: HashSet<String> = HashSet::new();
        let mut declared_only: HashMap<String, FoldFamily> = HashMap::new();
        for f in &idx {
            let series: Vec<(Arc<[Box<str>]>, Acc)> = (0..f.acc.len())
                .filter_map(|i| f.visible(i).map(|a| (Arc::clone(f.keys.key(i)), a.clone())))
                .collect();
            let fam = FoldFamily {
                desc: f.desc.clone(),
                series,
                stats: f.stats,
            };
            if f.folded_here {
                if !valued.insert(fam.desc.name.clone()) {
                    return Err(Error::Directory {
                        path: dir,
                        reason: format!(
                            "not compacting: the files to fold declare {} differently",
                            fam.desc.name
                        ),
                        source: None,
                    });
                }
                families.push(fam);
            } else if f.reference || !declared_only.contains_key(&fam.desc.name) {
                declared_only.insert(fam.desc.name.clone(), fam);
            }
        }
        for (name, mut fam) in declared_only {
            if !valued.contains(&name) {
                fam.series.clear();
                families.push(fam);
            }
        }
        families.sort_by(|a, b| a.desc.name.cmp(&b.desc.name));
        let inputs: Vec<&CachedFile> = self
            .fold_sources()
            .filter(|c| {
                (c.header.accumulator() && Some(c.header.writer_id) == target)
                    || selected.contains(&c.header.writer_id)
            })
            .collect();
        let folded_ids: HashSet<u64> = inputs.iter().map(|c| c.header.writer_id).collect();
        let mut errors = [0u64; ERROR_KINDS];
        let mut removals = Vec::new();
        for cf in &inputs {
            if let Some(r) = &cf.region {
                for (k, e) in errors.iter_mut().enumerate() {
                    if let Some(w) = r.word((crate::format::H_ERRORS + k) * 8) {
                        *e = e.saturating_add(w.load(Ordering::Relaxed));
                    }
                }
            }
            for rem in &cf.parsed.removals {
                let mut rem = Removal::clone(rem);
                rem.baselines.retain(|b| !folded_ids.contains(&b.writer_id));
                if !rem.baselines.is_empty() {
                    removals.push(rem);
                }
            }
        }
        Ok(FoldView {
            families,
            errors,
            removals,
        })
    }

    /// Files whose values a compaction folds: readable, not live, not already folded, and
    /// not worker slots (a restarted worker resumes its slot; there is one per worker id).
    fn fold_sources(&self) -> impl Iterator<Item = &CachedFile> {
        self.files
            .values()
            .filter(|c| c.good() && !c.live && !c.folded && !c.is_slot())
    }

    /// Files already folded into the accumulator (only waiting to be deleted).
    fn folded_files(&self) -> impl Iterator<Item = &CachedFile> {
        self.files.values().filter(|c| c.good() && c.folded)
    }

    /// Live files' declarations, for the cross-process checks at declaration (schema,
    /// name clashes): `(pid, path, declaration)`. Refreshes the cache first.
    pub(crate) fn live_declarations(&mut self) -> Result<Vec<(u32, PathBuf, FamilyDesc)>, Error> {
        self.guarded(true, |r| r.refresh(&mut ScrapeStats::default()))?;
        let mut out = Vec::new();
        for cf in self.files.values() {
            if !cf.usable() || !cf.live || self.own_writers.contains(&cf.header.writer_id) {
                continue;
            }
            for f in &cf.parsed.families {
                out.push((cf.header.pid, cf.path.clone(), FamilyDesc::from_record(&f.rec)));
            }
        }
        Ok(out)
    }

    /// Writer ids folded into the accumulator, as of the last refresh.
    pub(crate) fn folded_ids(&mut self) -> Result<HashSet<u64>, Error> {
        self.guarded(true, |r| r.refresh(&mut ScrapeStats::default()))?;
        Ok(self.folded_set())
    }

    fn folded_set(&self) -> HashSet<u64> {
        self.files
            .values()
            .filter(|c| c.usable() && c.header.accumulator())
            .flat_map(|c| c.parsed.folded.iter().copied())
            .collect()
    }

    fn refresh(&mut self, stats: &mut ScrapeStats) -> Result<(), Error> {
        let entries = retry_transient(|| std::fs::read_dir(&self.dir)).map_err(|e| Error::Directory {
            path: self.dir.clone(),
            reason: "cannot be listed".into(),
            source: Some(e),
        })?;
        let mut present: HashSet<OsString> = HashSet::new();
        let mut listings: HashMap<OsString, Listing> = HashMap::new();
        let mut py_listed = Vec::new();
        let mut dir_dev: Option<u64> = None;
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            if name_str == LOCK_FILE || name_str == TURN_FILE || name_str.starts_with(TMP_PREFIX) {
                continue;
            }
            let path = entry.path();
            if python::parse_file_name(&name_str).is_some() {
                // From the directory entry, without a stat per file (thousands of them in
                // a Python directory): a symlink is reported, never followed.
                let Ok(file_type) = entry.file_type() else {
                    continue;
                };
                let dev = match dir_dev {
                    Some(d) => d,
                    None => *dir_dev.insert(std::fs::metadata(&self.dir).map(|m| m.dev()).unwrap_or(0)),
                };
                py_listed.push(python::Listed {
                    name: name.clone(),
                    path,
                    ident: (dev, std::os::unix::fs::DirEntryExt::ino(&entry)),
                    regular: file_type.is_file(),
                });
                continue;
            }
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
            let md = match entry.metadata() {
                Ok(md) => md,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(_) => {
                    // Listed, but not inspectable now: keep what was read of it before.
                    if self.files.contains_key(&name) {
                        present.insert(name.clone());
                    }
                    continue;
                }
            };
            let ident = (md.dev(), md.ino());
            present.insert(name.clone());
            let listing = Listing::of(&md);
            let stale = self.files.get(&name).is_none_or(|c| c.ident != ident);
            if stale {
                let mut cf = CachedFile::new(ident, path);
                cf.regular = md.file_type().is_file();
                if !cf.regular {
                    cf.problem = Some(Problem::Corrupt("not a regular file".into()));
                    cf.problem_listing = listing;
                }
                self.files.insert(name.clone(), cf);
            }
            listings.insert(name, listing);
        }
        self.files.retain(|name, _| present.contains(name));
        self.python.sync(py_listed);
        let application = self.owner();
        for (name, cf) in self.files.iter_mut() {
            match listings.get(name) {
                Some(listing) => cf.refresh(*listing, &self.own_writers, application.as_deref()),
                None => cf.fresh = false,
            }
        }
        let folded = self.folded_set();
        let mut transient_logged = false;
        for cf in self.files.values_mut() {
            cf.folded = cf.usable() && !cf.header.accumulator() && folded.contains(&cf.header.writer_id);
            if let Some(p) = &cf.problem {
                let reason = p.reason();
                match p {
                    Problem::Corrupt(_) => stats.corrupt_files += 1,
                    Problem::Newer(_) => stats.newer_files += 1,
                    Problem::Unreadable(_) | Problem::Transient(_) => stats.unreadable_files += 1,
                }
                stats.corrupt.push((cf.path.clone(), reason.clone()));
                let transient = matches!(p, Problem::Transient(_));
                if !(cf.logged || transient && transient_logged) {
                    cf.logged = true;
                    transient_logged |= transient;
                    let kept = if cf.usable() {
                        "what an earlier scrape read of it is still served"
                    } else {
                        "left in place"
                    };
                    tracing::warn!(
                        file = %cf.path.display(),
                        reason = %reason,
                        "cannot read a file of the metrics directory now ({kept}; counted in \
                         shmetrics_corrupt_files, shmetrics_newer_files or shmetrics_unreadable_files)"
                    );
                }
                if !cf.usable() {
                    continue;
                }
            }
            if cf.folded {
                stats.folded_files += 1;
                stats.dead_files += 1;
            } else if cf.header.accumulator() {
                stats.accumulators += 1;
            } else if cf.live {
                stats.live_files += 1;
            } else {
                stats.dead_files += 1;
            }
            if let Some(r) = &cf.region {
                stats.mapped_bytes += r.accessible() as u64;
            }
        }
        Ok(())
    }

    /// The application recorded in the directory's lock file, if any.
    fn owner(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join(LOCK_FILE)).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("application="))
            .map(str::to_string)
    }

    fn merge(&mut self, scope: Scope, stats: &mut ScrapeStats) -> Vec<&mut IndexFamily> {
        let index = &mut self.index;
        let fold_selected = &self.fold_selected;
        let fold_target = self.fold_target;
        // Good files, live first, then newest first: the order decides which declaration
        // is the reference and which of two per-process gauges with one pid is shown.
        let mut order: Vec<&mut CachedFile> = self
            .files
            .values_mut()
            .filter(|c| c.usable() && !c.folded)
            .collect();
        order.sort_by(|a, b| b.live.cmp(&a.live).then(b.header.start.cmp(&a.header.start)));
        // The `pid` label of per-process gauges. Two files can share a pid (pid reuse, or
        // processes in different pid namespaces: every container's first process is 1);
        // their series must not hide each other, so colliding pids get the file's
        // identity appended.
        let mut pid_count: HashMap<u32, usize> = HashMap::new();
        for cf in order.iter().filter(|c| !c.header.accumulator()) {
            *pid_count.entry(cf.header.pid).or_default() += 1;
        }
        // Pid labels the accumulator already holds (folded writers: in containers every
        // worker is pid 1).
        let folded_pids = accumulator_pid_labels(order.iter().map(|c| &**c));
        for cf in order.iter_mut() {
            let collides = pid_count.get(&cf.header.pid).copied().unwrap_or(0) > 1
                || folded_pids.contains(cf.header.pid.to_string().as_str());
            let label = if collides {
                format!("{}-{:08x}", cf.header.pid, cf.header.writer_id >> 32)
            } else {
                cf.header.pid.to_string()
            };
            if label != cf.pid_label {
                cf.pid_label = label;
                cf.series_merged.iter_mut().for_each(|m| *m = None);
            }
        }

        // Reference declaration of each family name.
        let mut refs: Vec<(String, FamilyDesc)> = Vec::new();
        {
            let mut seen: HashSet<&str> = HashSet::new();
            for cf in order.iter() {
                for f in &cf.parsed.families {
                    if seen.insert(f.rec.name.as_str()) {
                        refs.push((f.rec.name.clone(), FamilyDesc::from_record(&f.rec)));
                    }
                }
            }
        }
        for fam in &mut index.families {
            fam.declared = false;
            fam.reference = false;
            fam.folded_here = false;
        }
        for (_, desc) in refs {
            let help = desc.help.clone();
            let j = index.entry(desc);
            let fam = &mut index.families[j];
            fam.desc.help = help;
            fam.declared = true;
            fam.reference = true;
        }
        for fam in &mut index.families {
            fam.reset();
        }

        // Removals, by family: the latest one covering a series decides its baselines.
        let all_removals: Vec<Arc<Removal>> = order
            .iter()
            .flat_map(|c| c.parsed.removals.iter().cloned())
            .collect();
        let removals = RemovalIndex::new(&all_removals);

        let mut errors = [0u64; ERROR_KINDS];
        for cf in order {
            let values = match scope {
                Scope::All => true,
                Scope::Fold => {
                    (cf.header.accumulator() && Some(cf.header.writer_id) == fold_target)
                        || (!cf.live && fold_selected.contains(&cf.header.writer_id))
                }
            };
            let Some(region) = cf.region.as_ref() else {
                continue;
            };
            if values {
                for (k, e) in errors.iter_mut().enumerate() {
                    if let Some(w) = region.word((crate::format::H_ERRORS + k) * 8) {
                        *e = e.saturating_add(w.load(Ordering::Relaxed));
                    }
                }
            }
            let accumulator = cf.header.accumulator();
            // Map each of the file's families to its merged family, or skip it.
            cf.fam_merged.resize(cf.parsed.families.len(), None);
            let mut targets: Vec<Option<usize>> = Vec::with_capacity(cf.parsed.families.len());
            for (ff, cache) in cf.parsed.families.iter().zip(cf.fam_merged.iter_mut()) {
                let cached = match *cache {
                    Some((j, epoch)) if index.families.get(j).is_some_and(|f| f.epoch == epoch) => Some(j),
                    _ => index.entry_for(&ff.rec),
                };
                let Some(i) = cached else {
                    // Another type or gauge mode than the reference's: cannot be shown.
                    stats.conflicts += 1;
                    targets.push(None);
                    continue;
                };
                let fam = &mut index.families[i];
                *cache = Some((i, fam.epoch));
                // A declaration of another release may be first met here.
                fam.declared = true;
                let live_gauge = fam.desc.ty == MetricType::Gauge && fam.desc.mode.live_only();
                let skip = !values || (live_gauge && (!cf.live || scope == Scope::Fold));
                if values {
                    fam.folded_here = true;
                    if let Some(w) = region.word(ff.rec.stats_offset as usize) {
                        fam.stats = fam.stats.saturating_add(w.load(Ordering::Relaxed));
                    }
                }
                targets.push(if skip { None } else { Some(i) });
            }
            cf.series_merged.resize(cf.parsed.series.len(), None);
            let mut record = Vec::new();
            for (s, cache) in cf.parsed.series.iter().zip(cf.series_merged.iter_mut()) {
                let Some(fi) = targets[s.family as usize] else {
                    continue;
                };
                let fam = &mut index.families[fi];
                let idx = match *cache {
                    Some((idx, epoch)) if epoch == fam.epoch => idx,
                    _ => {
                        // Records never change: read the label values back from the file.
                        let Ok(view) = Parsed::read_series(region, s, &mut record) else {
                            continue;
                        };
                        let pid = (!accumulator).then_some(cf.pid_label.as_str());
                        let idx = fam.key_index(view.labels(), view.len(), pid);
                        *cache = Some((idx, fam.epoch));
                        idx
                    }
                };
                let slots = cf.parsed.families[s.family as usize].slots;
                let baseline = removals.baseline(
                    &fam.desc.name,
                    fam.keys.key(idx),
                    cf.header.writer_id,
                    fam.desc.labels.len(),
                );
                fam.accumulate(idx, region, s.offset, slots, baseline);
            }
        }
        for (k, n) in errors.iter().enumerate() {
            stats.store_errors.push((ErrorKind::ALL[k].label(), *n));
        }
        let mut overflow: Vec<(String, u64)> = index
            .families
            .iter()
            .filter(|f| f.declared && f.stats > 0)
            .map(|f| (f.desc.name.clone(), f.stats))
            .collect();
        overflow.sort();
        stats.overflow = overflow;

        let mut out: Vec<&mut IndexFamily> = index.families.iter_mut().filter(|f| f.declared).collect();
        // By name, the reference declaration first.
        out.sort_by(|a, b| a.desc.name.cmp(&b.desc.name).then(b.reference.cmp(&a.reference)));
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

/// What a series' removal says about one file's contribution.
enum Baseline<'a> {
    /// No removal covers the series.
    None,
    /// Covered, and this file's values at removal time are these.
    Values(&'a [u64]),
    /// Covered, and this file had no values then (it contributes all it has).
    Zero,
}

/// A baseline's key: (removal, writer id, series key).
type BaselineKey<'a> = (*const Removal, u64, &'a [Box<str>]);

/// Removals of one merge, indexed.
struct RemovalIndex<'a> {
    /// Family name -> removals of it, latest first.
    by_family: HashMap<&'a str, Vec<&'a Removal>>,
    /// Baseline values, built once per merge.
    baselines: HashMap<BaselineKey<'a>, &'a [u64]>,
}

impl<'a> RemovalIndex<'a> {
    fn new(all: &'a [Arc<Removal>]) -> Self {
        let mut by_family: HashMap<&str, Vec<&Removal>> = HashMap::new();
        let mut baselines = HashMap::new();
        for r in all {
            let r: &Removal = r;
            by_family.entry(r.family.as_str()).or_default().push(r);
            for b in &r.baselines {
                baselines.insert(
                    (r as *const Removal, b.writer_id, &*b.labels),
                    b.values.as_slice(),
                );
            }
        }
        for v in by_family.values_mut() {
            v.sort_by_key(|r| std::cmp::Reverse(r.time));
        }
        RemovalIndex { by_family, baselines }
    }

    /// The baseline of series `key` (its label values, plus the pid for per-process
    /// gauges) in file `writer`.
    fn baseline(&self, family: &str, key: &[Box<str>], writer: u64, nlabels: usize) -> Baseline<'_> {
        let Some(list) = self.by_family.get(family) else {
            return Baseline::None;
        };
        let labels = &key[..nlabels.min(key.len())];
        let Some(r) = list
            .iter()
            .find(|r| r.labels.as_deref().is_none_or(|l| l == labels))
        else {
            return Baseline::None;
        };
        match self.baselines.get(&(*r as *const Removal, writer, key)) {
            Some(v) => Baseline::Values(v),
            None => Baseline::Zero,
        }
    }
}

impl CachedFile {
    /// The declarations of the file's families.
    fn declarations(&self) -> Vec<FamilyDesc> {
        self.parsed
            .families
            .iter()
            .map(|f| FamilyDesc::from_record(&f.rec))
            .collect()
    }

    fn is_slot(&self) -> bool {
        self.path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(crate::writer::SLOT_PREFIX))
    }

    fn new(ident: (u64, u64), path: PathBuf) -> Self {
        CachedFile {
            ident,
            regular: true,
            path,
            region: None,
            problem: None,
            problem_listing: Listing::default(),
            logged: false,
            known: false,
            fresh: false,
            live: false,
            header: Header::default(),
            parsed: Parsed::new(false),
            fam_merged: Vec::new(),
            series_merged: Vec::new(),
            pid_label: String::new(),
            folded: false,
        }
    }

    /// Whether the merge takes this file: read by this pass, or by an earlier one and only
    /// transiently unreadable now (a scrape never drops a file for a passing error).
    pub(crate) fn usable(&self) -> bool {
        self.known && matches!(self.problem, None | Some(Problem::Transient(_)))
    }

    /// Read by this pass without any problem.
    pub(crate) fn good(&self) -> bool {
        self.fresh && self.problem.is_none()
    }

    /// Forgets everything read from the file (it was rewritten, or cannot be read).
    fn forget(&mut self) {
        self.region = None;
        self.known = false;
        self.header = Header::default();
        self.parsed = Parsed::new(false);
        self.fam_merged.clear();
        self.series_merged.clear();
    }

    fn refresh(&mut self, listing: Listing, own: &[u64], application: Option<&str>) {
        self.fresh = false;
        if let Some(Problem::Corrupt(_) | Problem::Unreadable(_) | Problem::Newer(_)) = &self.problem {
            if self.problem_listing == listing {
                return;
            }
        }
        match self.try_refresh(own, application) {
            Ok(()) => {
                self.problem = None;
                self.logged = false;
                self.fresh = true;
            }
            Err(p) => {
                if !matches!(p, Problem::Transient(_)) {
                    self.forget();
                }
                if self.problem.as_ref() != Some(&p) {
                    self.logged = false;
                }
                self.problem = Some(p);
                self.problem_listing = listing;
            }
        }
    }

    fn try_refresh(&mut self, own: &[u64], application: Option<&str>) -> Result<(), Problem> {
        // No descriptor is kept between passes: a directory of thousands of files costs
        // one descriptor at a time.
        let file = open_read_only(&self.path)?;
        let md = file.metadata().map_err(|e| transient("cannot inspect", &e))?;
        if !md.is_file() {
            return Err(Problem::Corrupt("not a regular file".into()));
        }
        if (md.dev(), md.ino()) != self.ident {
            return Err(Problem::Transient("replaced while being read".into()));
        }
        let mut first = Some(md.len());
        let header = self.sized_header(&file, &mut || match first.take() {
            Some(len) => Ok(len),
            None => file.metadata().map(|m| m.len()),
        })?;
        if self.known
            && (header.writer_id != self.header.writer_id
                || header.flags != self.header.flags
                || header.used < self.parsed.parsed)
        {
            // Rewritten in place (same inode, another file): start over.
            self.forget();
            return self.try_refresh(own, application);
        }
        if !self.known {
            if header.accumulator() && !self.path.file_name().is_some_and(is_accumulator_name) {
                return Err(Problem::Corrupt(format!(
                    "an accumulator under another name than {} or accumulator-<16 hex digits>.shm",
                    crate::compact::ACCUMULATOR
                )));
            }
            self.parsed = Parsed::new(header.accumulator());
        }
        // Liveness: a writer holds an exclusive flock for its whole life. An accumulator
        // is never live (its writer, a compaction, finished before any reader saw it).
        let live = if header.accumulator() {
            false
        } else if own.contains(&header.writer_id) {
            true
        } else {
            let fd = file.as_raw_fd();
            match sys::try_flock(fd, false) {
                Ok(true) => {
                    let _ = sys::flock_unlock(fd);
                    false
                }
                Ok(false) => true,
                Err(e) => return Err(transient("cannot check its lock", &e)),
            }
        };
        drop(file);
        let region = self
            .region
            .as_ref()
            .ok_or_else(|| Problem::Transient("not mapped".into()))?;
        if let Err(c) = self.parsed.parse(region, header.used) {
            return Err(Problem::Corrupt(c.0));
        }
        if let (Some(owner), Some(app)) = (application, self.parsed.application.as_deref()) {
            if owner != app {
                return Err(Problem::Corrupt(format!(
                    "belongs to application {app:?}, the directory to {owner:?}"
                )));
            }
        }
        self.header = header;
        self.live = live;
        self.known = true;
        Ok(())
    }

    /// Checks the size (`size_now`: the file's size at the time of the call), maps what it
    /// covers and reads the header. A `used` length past the size is a file that grew
    /// after the check (the writer reserves, then publishes): the size is checked again.
    fn sized_header(
        &mut self,
        file: &File,
        size_now: &mut dyn FnMut() -> io::Result<u64>,
    ) -> Result<Header, Problem> {
        let mut size = checked_size(size_now().map_err(|e| transient("cannot inspect", &e))?)?;
        // Files never shrink: one that did was rewritten (or cut). Read it afresh, and
        // never touch the part of the old mapping past the new end.
        if self.region.as_ref().is_some_and(|r| r.accessible() > size) {
            self.forget();
        }
        self.ensure_mapped(file, size)?;
        let header = self.read_header(size)?;
        if header.used > size {
            size = checked_size(size_now().map_err(|e| transient("cannot inspect", &e))?)?;
            if header.used > size {
                return Err(Problem::Corrupt(format!(
                    "used length {} is past the end of the file ({size} bytes): truncated",
                    header.used
                )));
            }
            self.ensure_mapped(file, size)?;
        }
        Ok(header)
    }

    /// Maps the file if the mapping is missing or shorter than `size`, the size just
    /// checked.
    fn ensure_mapped(&mut self, file: &File, size: usize) -> Result<(), Problem> {
        if size < 8 {
            return Err(Problem::Corrupt(format!(
                "{size} bytes, shorter than the {}-byte header",
                crate::format::HEADER_BYTES
            )));
        }
        if self.region.as_ref().is_none_or(|r| r.accessible() < size) {
            let region = Region::map_reader(file, size).map_err(|e| transient("cannot map", &e))?;
            self.region = Some(region);
        }
        Ok(())
    }

    /// The header, read through the mapping (`size`: the size just checked).
    fn read_header(&self, size: usize) -> Result<Header, Problem> {
        let region = self
            .region
            .as_ref()
            .ok_or_else(|| Problem::Transient("not mapped".into()))?;
        parse::read_header(region, size).map_err(|e| match e {
            parse::HeaderError::Newer(v) => Problem::Newer(v),
            parse::HeaderError::Corrupt(c) => Problem::Corrupt(c.0),
        })
    }
}

/// Runs `f` again (a few times, a millisecond apart) while it fails with a transient error.
pub(crate) fn retry_transient<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut tries = 0;
    loop {
        match f() {
            Err(e) if is_transient(&e) && tries < 3 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            r => return r,
        }
    }
}

/// The size of a file as a reader may map it.
fn checked_size(len: u64) -> Result<usize, Problem> {
    usize::try_from(len)
        .ok()
        .filter(|s| *s <= MAX_FILE_BYTES)
        .ok_or_else(|| {
            Problem::Corrupt(format!(
                "{len} bytes, larger than any store file ({MAX_FILE_BYTES} bytes at most)"
            ))
        })
}

/// Whether an error of `open`, `fstat`, `mmap` or `flock` may go away by itself: out of
/// descriptors or memory, interrupted, busy.
pub(crate) fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOMEM
                | libc::EAGAIN
                | libc::EINTR
                | libc::EBUSY
                | libc::ENOLCK
                | libc::ENOBUFS
        )
    )
}

fn transient(action: &str, e: &io::Error) -> Problem {
    if is_transient(e) {
        Problem::Transient(format!("{action}: {e}"))
    } else {
        Problem::Unreadable(format!("{action}: {e}"))
    }
}

/// Opens a file of the directory to read it: never follows a symlink, never blocks
/// (a FIFO planted in the directory), not inherited by exec'd programs.
pub(crate) fn open_read_only(path: &Path) -> Result<File, Problem> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => Problem::Transient("removed while being read".into()),
            Some(libc::ELOOP) => Problem::Corrupt("a symbolic link: not followed".into()),
            Some(libc::EACCES | libc::EPERM) => {
                Problem::Unreadable(format!("cannot open: {e}: give this process read access"))
            }
            _ => transient("cannot open", &e),
        })
}

impl IndexFamily {
    fn new(desc: FamilyDesc, epoch: u64) -> Self {
        IndexFamily {
            desc,
            epoch,
            keys: KeyTable::new(),
            acc: Vec::new(),
            seen: Vec::new(),
            covered: Vec::new(),
            declared: false,
            reference: false,
            folded_here: false,
            stats: 0,
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
            MetricType::Summary => Acc::Summary { count: 0.0, sum: 0.0 },
        }
    }

    fn reset(&mut self) {
        let zero = self.zero();
        for a in &mut self.acc {
            match a {
                Acc::Hist { buckets, sum } => {
                    buckets.iter_mut().for_each(|b| *b = 0);
                    *sum = 0.0;
                }
                a => *a = zero.clone(),
            }
        }
        self.seen.iter_mut().for_each(|s| *s = false);
        self.covered.iter_mut().for_each(|s| *s = false);
        self.stats = 0;
    }

    /// Index of the merged series for `labels` (`pid`: the file's pid label, for
    /// per-process gauges of ordinary files; accumulator series carry it already).
    fn key_index<'a>(
        &mut self,
        labels: impl Iterator<Item = &'a str> + Clone,
        count: usize,
        pid: Option<&'a str>,
    ) -> usize {
        let per_process = self.desc.ty == MetricType::Gauge && self.desc.mode.per_process();
        let extra = if per_process { pid } else { None };
        let count = count + usize::from(extra.is_some());
        let (i, new) = self.keys.index(labels.chain(extra), count);
        if !new {
            return i;
        }
        self.acc.push(self.zero());
        self.seen.push(false);
        self.covered.push(false);
        i
    }

    fn accumulate(
        &mut self,
        idx: usize,
        region: &Region,
        offset: usize,
        slots: usize,
        baseline: Baseline<'_>,
    ) {
        let raw = |i: usize| {
            region
                .word(offset + i * 8)
                .map_or(0, |w| w.load(Ordering::Relaxed))
        };
        let base = |i: usize| match baseline {
            Baseline::Values(v) => v.get(i).copied().unwrap_or(0),
            _ => 0,
        };
        if !matches!(baseline, Baseline::None) {
            self.covered[idx] = true;
        }
        let mode = self.desc.mode;
        let first = !self.seen[idx];
        match &mut self.acc[idx] {
            Acc::U64(v) => *v = v.saturating_add(raw(0).saturating_sub(base(0))),
            Acc::F64(v) => *v += (f64::from_bits(raw(0)) - f64::from_bits(base(0))).max(0.0),
            Acc::Gauge { v, t } => {
                if mode.most_recent() {
                    let (val, time) = read_most_recent(region, offset);
                    if matches!(baseline, Baseline::Values(b) if b.get(MR_TIME) == Some(&time)) {
                        return; // not written since it was removed
                    }
                    if time > *t {
                        *v = val;
                        *t = time;
                    }
                } else {
                    let bits = raw(0);
                    if matches!(baseline, Baseline::Values(b) if b.first() == Some(&bits)) {
                        return; // not written since it was removed
                    }
                    let x = f64::from_bits(bits);
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
                    *b = b.saturating_add(raw(i).saturating_sub(base(i)));
                }
                *sum += f64::from_bits(raw(n)) - f64::from_bits(base(n));
            }
            Acc::Summary { .. } => {} // never stored natively
        }
        self.seen[idx] = true;
    }

    /// The value of series `i` if it is shown: seen, and (if a removal covers it) written
    /// since.
    fn visible(&self, i: usize) -> Option<&Acc> {
        let a = &self.acc[i];
        if !self.seen[i] {
            return None;
        }
        if self.covered[i] {
            let empty = match a {
                Acc::U64(v) => *v == 0,
                Acc::F64(v) => *v == 0.0,
                Acc::Hist { buckets, .. } => buckets.iter().all(|b| *b == 0),
                Acc::Gauge { .. } | Acc::Summary { .. } => false,
            };
            if empty {
                return None;
            }
        }
        Some(a)
    }

    fn out(&mut self) -> FamilyOut {
        let mut label_names = self.desc.labels.clone();
        if self.desc.ty == MetricType::Gauge && self.desc.mode.per_process() {
            label_names.push("pid".into());
        }
        self.keys.sort();
        let mut series = Vec::with_capacity(self.acc.len());
        for &i in self.keys.sorted() {
            if let Some(a) = self.visible(i as usize) {
                series.push(OutSeries::plain(Arc::clone(self.keys.key(i as usize)), a.clone()));
            }
        }
        FamilyOut {
            name: self.desc.name.clone(),
            help: self.desc.help.clone(),
            ty: self.desc.ty,
            mode: self.desc.mode,
            label_names,
            buckets: self.desc.buckets.clone(),
            series,
            sorted: true,
        }
    }
}

/// A merged family before it becomes a [`MergedFamily`]: native, from Python files, or both.
pub(crate) struct FamilyOut {
    pub name: String,
    pub help: String,
    pub ty: MetricType,
    pub mode: GaugeMode,
    /// Label names, `pid` last for per-process gauges.
    pub label_names: Vec<String>,
    pub buckets: Vec<f64>,
    pub series: Vec<OutSeries>,
    /// Whether `series` is in label order already.
    pub sorted: bool,
}

/// One series of a [`FamilyOut`].
pub(crate) struct OutSeries {
    pub labels: Arc<[Box<str>]>,
    /// Its own label names, when they are not the family's.
    pub names: Option<Arc<[String]>>,
    /// Its own bucket bounds (histograms), when they are not the family's.
    pub bounds: Option<Arc<[f64]>>,
    pub acc: Acc,
}

impl OutSeries {
    pub(crate) fn plain(labels: Arc<[Box<str>]>, acc: Acc) -> Self {
        OutSeries {
            labels,
            names: None,
            bounds: None,
            acc,
        }
    }
}

impl FamilyOut {
    fn into_merged(self) -> MergedFamily {
        let mut series: Vec<MergedSeries> = self
            .series
            .into_iter()
            .map(|s| MergedSeries {
                labels: s.labels,
                names: s.names,
                value: match s.acc {
                    Acc::U64(v) => Value::Counter(v),
                    Acc::F64(v) => Value::CounterF64(v),
                    Acc::Gauge { v, .. } => Value::Gauge(v),
                    Acc::Hist { buckets, sum } => Value::Histogram(HistogramValue {
                        buckets,
                        sum,
                        bounds: s.bounds,
                    }),
                    Acc::Summary { count, sum } => Value::Summary { count, sum },
                },
            })
            .collect();
        if !self.sorted {
            series.sort_by(|a, b| {
                (a.names.as_deref().unwrap_or(&self.label_names), &a.labels)
                    .cmp(&(b.names.as_deref().unwrap_or(&self.label_names), &b.labels))
            });
        }
        MergedFamily {
            name: self.name,
            help: self.help,
            metric_type: self.ty,
            mode: self.mode,
            label_names: self.label_names,
            buckets: self.buckets,
            series,
        }
    }

    /// The identity of series `s`: its (label name, value) pairs, sorted.
    fn identity(&self, s: &OutSeries) -> Vec<(String, Box<str>)> {
        let names = s.names.as_deref().unwrap_or(&self.label_names);
        let mut id: Vec<(String, Box<str>)> = names.iter().cloned().zip(s.labels.iter().cloned()).collect();
        id.sort();
        id
    }

    /// Adds the series of `other`, the family of the same name from other files (Python's,
    /// or native files declaring it with other labels or buckets), to this one: counters and
    /// histograms add up, gauges combine by their mode. Series keep their own label names
    /// and bounds where they differ from this family's (a rolling deploy that added a label
    /// or changed buckets keeps both sets, as Python's collector does); two series with the
    /// same labels and other bounds add up bound by bound, over the union of the bounds.
    ///
    /// Refused (and nothing changes) unless both are of one type (and gauge mode): such
    /// series cannot be shown as one family.
    fn absorb(&mut self, other: FamilyOut) -> Result<(), String> {
        let same_type = match (self.ty, other.ty) {
            (MetricType::Counter | MetricType::CounterF64, MetricType::Counter | MetricType::CounterF64) => {
                true
            }
            (MetricType::Gauge, MetricType::Gauge) => self.mode == other.mode,
            (a, b) => a == b,
        };
        if !same_type {
            let describe = |f: &FamilyOut| match f.ty {
                MetricType::Gauge => format!("a {} gauge", f.mode),
                t => format!("a {t:?}"),
            };
            return Err(format!(
                "{} is {} in some files and {} in others",
                self.name,
                describe(self),
                describe(&other)
            ));
        }
        if self.ty != other.ty {
            // Integer and float counters: the sum is a float.
            self.ty = MetricType::CounterF64;
            for s in &mut self.series {
                if let Acc::U64(v) = s.acc {
                    s.acc = Acc::F64(v as f64);
                }
            }
        }
        let mut at: HashMap<Vec<(String, Box<str>)>, usize> = self
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| (self.identity(s), i))
            .collect();
        let other_names = other.label_names.clone();
        let other_buckets = other.buckets.clone();
        for mut s in other.series {
            if let Acc::U64(v) = s.acc {
                if self.ty == MetricType::CounterF64 {
                    s.acc = Acc::F64(v as f64);
                }
            }
            let names: Arc<[String]> = s.names.take().unwrap_or_else(|| other_names.clone().into());
            let bounds: Arc<[f64]> = s.bounds.take().unwrap_or_else(|| other_buckets.clone().into());
            // In this family's label order when it has the same names.
            let (labels, names) = match reorder(&names, &s.labels, &self.label_names) {
                Some(labels) => (labels, None),
                None => (s.labels, Some(names)),
            };
            let incoming = OutSeries {
                labels,
                names,
                bounds: (self.ty == MetricType::Histogram && *bounds != *self.buckets).then_some(bounds),
                acc: s.acc,
            };
            let id = self.identity(&incoming);
            match at.get(&id) {
                Some(&i) => {
                    let family_buckets = self.buckets.clone();
                    merge_series(&mut self.series[i], incoming, &family_buckets, self.mode);
                }
                None => {
                    at.insert(id, self.series.len());
                    self.series.push(incoming);
                    self.sorted = false;
                }
            }
        }
        Ok(())
    }
}

/// `values` (named `names`) in the order of `wanted`, if both are the same set of names.
fn reorder(names: &[String], values: &Arc<[Box<str>]>, wanted: &[String]) -> Option<Arc<[Box<str>]>> {
    if names == wanted {
        return Some(Arc::clone(values));
    }
    if names.len() != wanted.len() {
        return None;
    }
    wanted
        .iter()
        .map(|w| names.iter().position(|n| n == w).map(|i| values[i].clone()))
        .collect()
}

/// Adds `b` (the same series from other files) into `a`. Histograms whose bounds differ add
/// up bound by bound over the union of the bounds (each file's counts stay on its own
/// bounds: nothing is counted under a bound a file did not have).
fn merge_series(a: &mut OutSeries, b: OutSeries, family_buckets: &[f64], mode: GaugeMode) {
    match (&mut a.acc, b.acc) {
        (
            Acc::Hist { buckets, sum },
            Acc::Hist {
                buckets: b_buckets,
                sum: b_sum,
            },
        ) => {
            let a_bounds: Vec<f64> = a.bounds.as_deref().unwrap_or(family_buckets).to_vec();
            let b_bounds: Vec<f64> = b.bounds.as_deref().unwrap_or(family_buckets).to_vec();
            if a_bounds == b_bounds {
                for (x, y) in buckets.iter_mut().zip(b_buckets) {
                    *x = x.saturating_add(y);
                }
            } else {
                let mut union: Vec<f64> = a_bounds.iter().chain(&b_bounds).copied().collect();
                union.sort_by(f64::total_cmp);
                union.dedup();
                let mut counts = vec![0u64; union.len()];
                for (bounds, values) in [(&a_bounds, &*buckets), (&b_bounds, &b_buckets)] {
                    for (bound, n) in bounds.iter().zip(values) {
                        if let Ok(j) = union.binary_search_by(|x| x.total_cmp(bound)) {
                            counts[j] = counts[j].saturating_add(*n);
                        }
                    }
                }
                *buckets = counts;
                a.bounds = (union != family_buckets).then(|| union.into());
            }
            *sum += b_sum;
        }
        (acc, other) => acc.absorb(other, mode),
    }
}

impl Acc {
    /// Combines another source's merged value of the same series into this one.
    fn absorb(&mut self, other: Acc, mode: GaugeMode) {
        match (self, other) {
            (Acc::F64(a), Acc::F64(b)) => *a += b,
            (Acc::U64(a), Acc::U64(b)) => *a = a.saturating_add(b),
            (Acc::Gauge { v, t }, Acc::Gauge { v: bv, t: bt }) => match mode {
                GaugeMode::Min | GaugeMode::LiveMin => *v = v.min(bv),
                GaugeMode::Max | GaugeMode::LiveMax => *v = v.max(bv),
                GaugeMode::Sum | GaugeMode::LiveSum => *v += bv,
                GaugeMode::MostRecent | GaugeMode::LiveMostRecent => {
                    if bt > *t {
                        (*v, *t) = (bv, bt);
                    }
                }
                // One series per process: the same pid in both is the same process seen
                // twice (it cannot be two live processes); keep the native value.
                GaugeMode::All | GaugeMode::LiveAll => {}
            },
            (Acc::Hist { buckets, sum }, Acc::Hist { buckets: b, sum: s }) => {
                for (x, y) in buckets.iter_mut().zip(b) {
                    *x = x.saturating_add(y);
                }
                *sum += s;
            }
            (Acc::Summary { count, sum }, Acc::Summary { count: c, sum: s }) => {
                *count += c;
                *sum += s;
            }
            _ => {}
        }
    }
}

/// Reads a `mostrecent` gauge's (value, time) consistently, or the latest words after a
/// bounded number of tries (a writer killed mid-write leaves the sequence odd forever).
pub(crate) fn read_most_recent(region: &Region, offset: usize) -> (f64, u64) {
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

/// Reads the current values of a series' slots (for removal baselines).
pub(crate) fn read_slots(region: &Region, offset: usize, slots: usize) -> Vec<u64> {
    (0..slots)
        .map(|i| {
            region
                .word(offset + i * 8)
                .map_or(0, |w| w.load(Ordering::Relaxed))
        })
        .collect()
}

impl Reader {
    /// Baselines of the series of `family` (all of them, or the one with `labels`) in
    /// every readable, unfolded file, as of now. The caller holds the directory lock.
    pub(crate) fn baselines(
        &mut self,
        family: &str,
        labels: Option<&[Box<str>]>,
    ) -> Result<Vec<parse::Baseline>, Error> {
        self.guarded(true, |r| {
            r.refresh(&mut ScrapeStats::default())?;
            Ok(r.baselines_pass(family, labels))
        })
    }

    fn baselines_pass(&self, family: &str, labels: Option<&[Box<str>]>) -> Vec<parse::Baseline> {
        let mut out = Vec::new();
        for cf in self.files.values() {
            if !cf.usable() || cf.folded {
                continue;
            }
            let Some(region) = &cf.region else { continue };
            for s in &cf.parsed.series {
                let fam = &cf.parsed.families[s.family as usize];
                if fam.rec.name != family {
                    continue;
                }
                let Ok(series_labels) = Parsed::series_labels(region, s) else {
                    continue;
                };
                let own_labels = &series_labels[..fam.rec.labels.len().min(series_labels.len())];
                if labels.is_some_and(|l| l != own_labels) {
                    continue;
                }
                let mut values = read_slots(region, s.offset, fam.slots);
                if fam.rec.ty == MetricType::Gauge && fam.rec.mode.most_recent() {
                    let (v, t) = read_most_recent(region, s.offset);
                    values = vec![0, v.to_bits(), t];
                }
                // The key the merge uses: label values, plus the pid label for per-process
                // gauges of ordinary files.
                let mut key: Vec<Box<str>> = series_labels.to_vec();
                if fam.rec.ty == MetricType::Gauge && fam.rec.mode.per_process() && !cf.header.accumulator() {
                    key.push(cf.pid_label_now(&self.files).into());
                }
                out.push(parse::Baseline {
                    writer_id: cf.header.writer_id,
                    labels: key.into_boxed_slice(),
                    values,
                });
            }
        }
        out
    }
}

/// The `pid` label values of per-process gauge series in accumulators.
fn accumulator_pid_labels<'a>(files: impl Iterator<Item = &'a CachedFile>) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut record = Vec::new();
    for cf in files.filter(|c| c.usable() && !c.folded && c.header.accumulator()) {
        let Some(region) = &cf.region else { continue };
        for s in &cf.parsed.series {
            let fam = &cf.parsed.families[s.family as usize].rec;
            if fam.ty == MetricType::Gauge && fam.mode.per_process() {
                if let Ok(view) = Parsed::read_series(region, s, &mut record) {
                    if let Some(pid) = view.labels().last() {
                        out.insert(pid.to_string());
                    }
                }
            }
        }
    }
    out
}

impl CachedFile {
    /// The pid label this file's per-process series get in a merge of `files`.
    fn pid_label_now(&self, files: &BTreeMap<OsString, CachedFile>) -> String {
        let same = files
            .values()
            .filter(|c| c.usable() && !c.folded && !c.header.accumulator() && c.header.pid == self.header.pid)
            .count();
        let folded = accumulator_pid_labels(files.values()).contains(self.header.pid.to_string().as_str());
        if same > 1 || folded {
            format!("{}-{:08x}", self.header.pid, self.header.writer_id >> 32)
        } else {
            self.header.pid.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that grows between the size check and the read of its `used` length, as a
    /// live writer's does: read whole, not called corrupt.
    #[test]
    fn growth_between_the_size_check_and_the_header_is_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::builder(dir.path()).open().unwrap();
        let c = store.counter_family("grown", "Grown", &["n"]).unwrap();
        c.labels(&["a"]).inc();
        let path = store.file_path().unwrap();
        let md = std::fs::symlink_metadata(&path).unwrap();
        let mut cf = CachedFile::new((md.dev(), md.ino()), path.clone());
        let file = open_read_only(&path).unwrap();
        let mut calls = 0;
        let header = cf
            .sized_header(&file, &mut || {
                calls += 1;
                let size = file.metadata()?.len();
                if calls == 1 {
                    // Right after the check, the writer grows the file and publishes into
                    // the new part.
                    for i in 0..2000 {
                        c.labels(&[&format!("{i:04}-{}", "x".repeat(100))]).inc();
                    }
                }
                Ok(size)
            })
            .expect("a growing file is not damaged");
        assert_eq!(calls, 2);
        assert!(header.used > md.len() as usize);
        assert!(cf.region.as_ref().unwrap().accessible() >= header.used);
    }

    /// Out of descriptors (or memory) is a passing state: never a verdict on the file.
    #[test]
    fn running_out_of_descriptors_is_transient_not_damage() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOMEM,
            libc::EAGAIN,
            libc::EINTR,
        ] {
            let e = io::Error::from_raw_os_error(errno);
            assert!(
                matches!(transient("cannot open", &e), Problem::Transient(_)),
                "{e}"
            );
        }
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        assert!(matches!(
            transient("cannot open", &denied),
            Problem::Unreadable(_)
        ));
    }

    /// A file that could not be read for a passing reason is read again at the very next
    /// pass, and what was read of it before is served meanwhile; a corrupt one is not read
    /// again until it changes.
    #[test]
    fn a_transient_problem_is_retried_at_the_next_pass_and_a_corrupt_file_once_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::builder(dir.path()).open().unwrap();
        store.counter("jobs", "Jobs").unwrap().inc();
        let path = store.file_path().unwrap();
        let md = std::fs::symlink_metadata(&path).unwrap();
        let listing = Listing::of(&md);
        let mut cf = CachedFile::new((md.dev(), md.ino()), path.clone());
        cf.refresh(listing, &[], None);
        assert!(cf.good());
        cf.problem = Some(Problem::Transient("cannot open: Too many open files".into()));
        cf.fresh = false;
        assert!(cf.usable(), "what was read before is still served");
        cf.refresh(listing, &[], None);
        assert!(cf.good(), "retried at the next pass: {:?}", cf.problem);
        cf.forget();
        cf.problem = Some(Problem::Corrupt("damaged".into()));
        cf.problem_listing = listing;
        cf.refresh(listing, &[], None);
        assert!(
            !cf.usable() && !cf.fresh,
            "a corrupt file is not read again unchanged"
        );
        let changed = Listing {
            size: listing.size + 1,
            ..listing
        };
        cf.refresh(changed, &[], None);
        assert!(cf.good(), "read again once changed: {:?}", cf.problem);
    }
}
