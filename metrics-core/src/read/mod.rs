//! The reading side: merges every file of a directory into one [`Snapshot`].
//!
//! Files are mapped read-only and cached between scrapes with their decoded metadata;
//! a scrape parses only records appended since the last one, then reads value slots.
//! Every length and offset read from a file is checked before use: a file that breaks
//! any rule of `FORMAT.md` is skipped as a whole, counted and logged once, and the rest
//! of the directory is served. The reader never modifies or deletes a file.
//!
//! One pass, in order: [`scan`] lists the directory and reads what changed in each file;
//! [`merge`] adds every file's values into the merge index (subtracting [`removals`]);
//! [`join`] puts each name's declarations, and Python's families ([`python`]), together;
//! [`snapshot`] is the result, [`encode`] its exposition. [`fold`] is the compaction's view of the
//! same pass; [`acc`] the values being accumulated; [`keys`] the interned series keys.

pub(crate) mod acc;
pub(crate) mod encode;
pub(crate) mod fold;
pub(crate) mod inspect;
pub(crate) mod join;
pub(crate) mod keys;
pub(crate) mod merge;
#[cfg(feature = "python")]
#[cfg_attr(docsrs, doc(cfg(feature = "python")))]
pub(crate) mod python;
pub(crate) mod removals;
pub(crate) mod scan;
pub(crate) mod snapshot;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::Error;
use crate::format::desc::{self, FamilyDesc};
use crate::format::records;
use crate::sys;
use crate::sys::dirlock::DirLock;
use fold::{FoldPlan, FoldView};
use join::FamilyOut;
use merge::{MergeIndex, Scope};
#[cfg(feature = "python")]
use python::PyReader;
use scan::Scan;
use snapshot::{MergedFamily, ScrapeStats, Snapshot};

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
    scan: Scan,
    index: MergeIndex,
    #[cfg(feature = "python")]
    python: PyReader,
    conflicts_logged: HashSet<String>,
    lock: Option<DirLock>,
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
            scan: Scan::new(dir),
            index: MergeIndex::default(),
            #[cfg(feature = "python")]
            python: PyReader::default(),
            conflicts_logged: HashSet::new(),
            lock: None,
        })
    }

    /// How Python `live*` gauge files are judged alive (default: Python's rule, a file
    /// present is a live process). With [`PythonLiveness::Proc`](crate::PythonLiveness),
    /// a SIGKILLed worker's `livesum` gauges stop counting at the next scrape.
    #[cfg(feature = "python")]
    pub fn python_liveness(&mut self, liveness: python::PythonLiveness) -> &mut Self {
        self.python.liveness = liveness;
        self
    }

    /// The directory this reader merges.
    pub fn dir(&self) -> &Path {
        &self.scan.dir
    }

    /// The application the directory belongs to, as the first store that opened it
    /// recorded it in the lock file (`None`: no store has); reads that file only.
    pub fn application(&self) -> Option<String> {
        crate::sys::dirlock::recorded_application(&self.scan.dir)
    }

    /// Reads and merges every file now.
    pub fn snapshot(&mut self) -> Result<Snapshot, Error> {
        self.snapshot_as(&[])
    }

    /// Reads every file (as a scrape does) and reports each entry of the directory: what
    /// it is, its writer, live or dead, its series and size, and why it is not read if it
    /// is not; with the directory's owner application and what is wrong with the directory
    /// itself.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = shmetrics_core::Store::open(dir.path())?;
    /// store.counter("jobs", "Jobs")?.inc();
    /// let report = shmetrics_core::Reader::new(dir.path())?.inspect()?;
    /// assert_eq!(report.files.len(), 1);
    /// assert_eq!(report.files[0].kind, "native");
    /// assert_eq!(report.files[0].live, Some(true));
    /// # Ok::<(), shmetrics_core::Error>(())
    /// ```
    pub fn inspect(&mut self) -> Result<inspect::Inspection, Error> {
        let snapshot = self.snapshot()?;
        let mut files = self.scan.reports();
        #[cfg(feature = "python")]
        files.extend(self.python.reports());
        files.extend(
            snapshot
                .stats()
                .foreign
                .iter()
                .filter_map(|p| inspect::other_entry(p)),
        );
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(inspect::Inspection {
            dir: self.scan.dir.clone(),
            application: self.application(),
            files,
            problems: inspect::directory_problems(&self.scan.dir),
        })
    }

    /// [`Reader::snapshot`] in a process whose own writers are `own` (live without probing).
    pub(crate) fn snapshot_as(&mut self, own: &[u64]) -> Result<Snapshot, Error> {
        let _gate = sys::enter_gate();
        let started = Instant::now();
        if self.lock.is_none() {
            self.lock = DirLock::open_ro(&self.scan.dir)?;
        }
        let lock = self.lock.take();
        // A shared lock: no compaction in the middle of this scrape.
        let guard = match &lock {
            Some(l) => Some(l.shared()?),
            None => None,
        };
        let result = self.guarded(true, |r| {
            let mut stats = ScrapeStats::default();
            r.refresh(own, &mut stats)?;
            #[cfg(feature = "python")]
            let python = r.python.merge(&mut stats, &r.scan.folded, None);
            #[cfg(not(feature = "python"))]
            let python = Vec::new();
            let native = r.native(&mut stats);
            Ok((r.combine(native, python, &mut stats), stats))
        });
        drop(guard);
        self.lock = lock;
        let (families, mut stats) = result?;
        stats.series = families.iter().map(|f| f.series.len()).sum();
        stats.duration = started.elapsed();
        Ok(Snapshot::new(families, stats))
    }

    /// The native families of the last refresh, merged: each name once (another release's
    /// declarations of it joined to the reference's: they differ in labels or buckets only).
    fn native(&mut self, stats: &mut ScrapeStats) -> Vec<FamilyOut> {
        let mut native: Vec<FamilyOut> = Vec::new();
        for entry in self.index.merge(&mut self.scan.files, Scope::All, stats) {
            let out = entry.out();
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
        native
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
                    path: self.scan.dir.clone(),
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
        let found = self.scan.forget_mapping_at(addr);
        #[cfg(feature = "python")]
        let found = found.or_else(|| self.python.forget_mapping_at(addr));
        found
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
            let names = desc::claimed_names(f.ty, &f.name);
            let why = if f.name.starts_with(desc::SELF_PREFIX) {
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

    /// Lists the directory and reads what changed in every file (store files, and Python's
    /// when that feature is on). `own`: this process's writer ids.
    fn refresh(&mut self, own: &[u64], stats: &mut ScrapeStats) -> Result<(), Error> {
        #[cfg(feature = "python")]
        {
            let mut listed = Vec::new();
            let dir = self.scan.dir.clone();
            let mut dir_dev: Option<u64> = None;
            self.scan.refresh(own, stats, &mut |entry, name| {
                python::list_entry(&dir, &mut dir_dev, entry, name, &mut listed)
            })?;
            self.python.sync(listed);
        }
        #[cfg(not(feature = "python"))]
        self.scan.refresh(own, stats, &mut |_, _| false)?;
        Ok(())
    }

    /// Lists and reads the directory now, for a caller that needs the files, not a merge.
    fn refresh_now(&mut self, own: &[u64]) -> Result<(), Error> {
        self.guarded(true, |r| r.refresh(own, &mut ScrapeStats::default()))
    }

    /// Refreshes for a compaction (the caller holds the exclusive directory lock) and
    /// lists what it may fold (see [`fold::plan`]).
    pub(crate) fn fold_plan(&mut self, own: &[u64]) -> Result<FoldPlan, Error> {
        self.refresh_now(own)?;
        fold::plan(&self.scan)
    }

    /// The values a compaction writes, as read by the last [`fold_plan`](Reader::fold_plan)
    /// (see [`fold::view`]). Fails if a file shrank while it was read (a compaction must not
    /// delete a file whose values it did not read).
    pub(crate) fn fold_view(
        &mut self,
        selected: &HashSet<u64>,
        target: Option<u64>,
    ) -> Result<FoldView, Error> {
        self.guarded(false, |r| fold::view(&mut r.index, &mut r.scan, selected, target))
    }

    /// Lists and reads the directory now, Python's files included, for a Python compaction
    /// (the caller holds the exclusive directory lock): what it may fold, what it folded
    /// before and still has to delete, and the Python accumulator.
    #[cfg(feature = "python")]
    pub(crate) fn python_fold_plan(&mut self, own: &[u64]) -> Result<PyFoldPlan, Error> {
        self.guarded(true, |r| {
            let mut stats = ScrapeStats::default();
            r.refresh(own, &mut stats)?;
            r.python.merge(&mut stats, &r.scan.folded, None);
            Ok(())
        })?;
        let name = std::ffi::OsStr::new(crate::format::PYTHON_ACCUMULATOR);
        let accumulator = match self.scan.files.get(name) {
            None => None,
            Some(acc) if acc.regular && acc.good() && acc.header.accumulator() => Some(PyFoldTarget {
                ident: acc.ident,
                writer_id: acc.header.writer_id,
                names: acc.declarations().into_iter().map(|d| d.name).collect(),
            }),
            Some(acc) => {
                let why = acc
                    .problem
                    .as_ref()
                    .map_or_else(|| "it is not an accumulator".into(), |p| p.reason());
                return Err(Error::Directory {
                    path: self.scan.dir.clone(),
                    reason: format!(
                        "not compacting Python files: {} cannot be read ({why}); it is left as it \
                         is, and dead Python writers' files are kept (they still count)",
                        crate::format::PYTHON_ACCUMULATOR
                    ),
                    source: None,
                });
            }
        };
        Ok(PyFoldPlan {
            candidates: self.python.fold_candidates(),
            leftovers: self.python.folded_leftovers(),
            accumulator,
        })
    }

    /// Reads the Python files `names` now, whole, and merges them alone (after a refresh,
    /// which lists the names a Python compaction gave them). Fails if a file shrank while it
    /// was read. Returns the merged families and, of `names`, those read whole with the
    /// names of the families each holds.
    #[cfg(feature = "python")]
    pub(crate) fn python_fold_read(
        &mut self,
        own: &[u64],
        names: &HashSet<std::ffi::OsString>,
    ) -> Result<PyFoldRead, Error> {
        let families = self.guarded(false, |r| {
            let mut stats = ScrapeStats::default();
            r.refresh(own, &mut stats)?;
            Ok(r.python.merge(&mut stats, &HashSet::new(), Some(names)))
        })?;
        let whole = names
            .iter()
            .filter(|n| self.python.read_whole(n))
            .map(|n| (n.clone(), self.python.families_of(n)))
            .collect();
        Ok(PyFoldRead { families, whole })
    }

    /// Live files' declarations (of other processes than `own`), for the cross-process
    /// checks at declaration: `(pid, path, declaration)`. Refreshes first.
    pub(crate) fn live_declarations(
        &mut self,
        own: &[u64],
    ) -> Result<Vec<(u32, PathBuf, FamilyDesc)>, Error> {
        self.refresh_now(own)?;
        Ok(self.scan.live_declarations(own))
    }

    /// Writer ids folded into an accumulator, as of a refresh now.
    pub(crate) fn folded_ids(&mut self, own: &[u64]) -> Result<HashSet<u64>, Error> {
        self.refresh_now(own)?;
        Ok(self.scan.folded_set())
    }

    /// Baselines of the series of `family` (all of them, or the one with `labels`) in
    /// every readable, unfolded file, as of now. The caller holds the directory lock.
    pub(crate) fn baselines(
        &mut self,
        own: &[u64],
        family: &str,
        labels: Option<&[Box<str>]>,
    ) -> Result<Vec<records::Baseline>, Error> {
        self.guarded(true, |r| {
            r.refresh(own, &mut ScrapeStats::default())?;
            Ok(removals::baselines(&r.scan, family, labels))
        })
    }

    /// Whether some file read by the last pass declares `family` with native buckets.
    pub(crate) fn family_is_native(&self, family: &str) -> bool {
        self.scan.files.values().any(|cf| {
            cf.parsed
                .families
                .iter()
                .any(|f| f.rec.name == family && f.rec.native.is_some())
        })
    }
}

/// What a Python compaction may fold, as read now.
#[cfg(feature = "python")]
pub(crate) struct PyFoldPlan {
    /// Counter and histogram files not folded yet: (name, path, pid, fold id if renamed).
    pub(crate) candidates: Vec<(std::ffi::OsString, PathBuf, Box<str>, Option<u64>)>,
    /// Files folded by an earlier Python compaction, still to be deleted.
    pub(crate) leftovers: Vec<PathBuf>,
    /// The Python accumulator, if there is one.
    pub(crate) accumulator: Option<PyFoldTarget>,
}

/// The Python accumulator as a Python compaction read it.
#[cfg(feature = "python")]
pub(crate) struct PyFoldTarget {
    pub(crate) ident: (u64, u64),
    pub(crate) writer_id: u64,
    /// The names of the families it declares.
    pub(crate) names: HashSet<String>,
}

/// Python files read for a fold.
#[cfg(feature = "python")]
pub(crate) struct PyFoldRead {
    pub(crate) families: Vec<FamilyOut>,
    /// The files read whole, with the names of their families.
    pub(crate) whole: HashMap<std::ffi::OsString, HashSet<Box<str>>>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("dir", &self.scan.dir)
            .field("files", &self.scan.files.len())
            .finish()
    }
}
