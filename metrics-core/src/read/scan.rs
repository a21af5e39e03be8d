//! The directory as the reader sees it: the listing, one cached entry per store file (its
//! mapping, header and parsed records, kept between passes), each file's liveness, and why
//! a file could not be read in a pass.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{DirEntry, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::snapshot::ScrapeStats;
use crate::error::Error;
use crate::format::desc::FamilyDesc;
use crate::format::header::{self, Header};
use crate::format::parse::Parsed;
use crate::format::{
    self, LOCK_FILE, MAX_FILE_BYTES, MetricType, STORE_EXT, TMP_PREFIX, TURN_FILE, is_accumulator_name,
};
use crate::sys;
use crate::sys::dirlock;
use crate::sys::region::Region;

/// The store files of one directory, as read by the last pass.
pub(crate) struct Scan {
    pub(crate) dir: PathBuf,
    pub(crate) files: BTreeMap<OsString, CachedFile>,
    foreign_logged: HashSet<OsString>,
    /// Writer ids (and Python fold ids) the accumulators read in the last pass list as
    /// folded.
    pub(crate) folded: HashSet<u64>,
}

impl Scan {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Scan {
            dir,
            files: BTreeMap::new(),
            foreign_logged: HashSet::new(),
            folded: HashSet::new(),
        }
    }

    /// Lists the directory and reads every store file again (what changed of it). `own`:
    /// this process's writer ids (live without probing). `other` is offered every entry
    /// that is not a store file (its name as text) and says whether it takes it; the
    /// others are counted and logged as foreign.
    pub(crate) fn refresh(
        &mut self,
        own: &[u64],
        stats: &mut ScrapeStats,
        other: &mut dyn FnMut(&DirEntry, &str) -> bool,
    ) -> Result<(), Error> {
        let listings = self.list(stats, other)?;
        let application = dirlock::recorded_application(&self.dir);
        for (name, cf) in self.files.iter_mut() {
            match listings.get(name) {
                Some(listing) => cf.refresh(*listing, own, application.as_deref()),
                None => cf.fresh = false,
            }
        }
        self.account(stats);
        Ok(())
    }

    /// Reads the directory listing: forgets files that are gone, starts entries for new
    /// ones (or ones replaced under the same name), and returns each store file's listing.
    fn list(
        &mut self,
        stats: &mut ScrapeStats,
        other: &mut dyn FnMut(&DirEntry, &str) -> bool,
    ) -> Result<HashMap<OsString, Listing>, Error> {
        let entries = retry_transient(|| std::fs::read_dir(&self.dir)).map_err(|e| Error::Directory {
            path: self.dir.clone(),
            reason: "cannot be listed".into(),
            source: Some(e),
        })?;
        let mut present: HashSet<OsString> = HashSet::new();
        let mut listings: HashMap<OsString, Listing> = HashMap::new();
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            if name_str == LOCK_FILE || name_str == TURN_FILE || name_str.starts_with(TMP_PREFIX) {
                continue;
            }
            let path = entry.path();
            if !name_str.ends_with(STORE_EXT) && other(&entry, &name_str) {
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
        Ok(listings)
    }

    /// Counts the files of the pass by state and logs each problem once.
    fn account(&mut self, stats: &mut ScrapeStats) {
        self.folded = self.folded_set();
        let folded = &self.folded;
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
    }

    /// Writer ids folded into an accumulator, as of the last pass.
    /// Each store file as [`Reader::inspect`](super::Reader::inspect) reports it.
    pub(crate) fn reports(&self) -> Vec<super::inspect::FileReport> {
        self.files
            .iter()
            .map(|(name, cf)| {
                let known = cf.usable();
                let kind = if !cf.regular {
                    "symlink"
                } else if known && cf.header.accumulator() && name == format::PYTHON_ACCUMULATOR {
                    "python accumulator"
                } else if known && cf.header.accumulator() {
                    "accumulator"
                } else if cf.is_slot() {
                    "native slot"
                } else {
                    "native"
                };
                super::inspect::FileReport {
                    name: name.to_string_lossy().into_owned(),
                    kind: kind.into(),
                    pid: (known && !cf.header.accumulator()).then(|| cf.header.pid.to_string()),
                    worker: (known && cf.header.worker != format::NO_WORKER).then_some(cf.header.worker),
                    live: (known && !cf.header.accumulator()).then_some(cf.live),
                    folded: cf.folded,
                    series: if known { cf.parsed.series.len() } else { 0 },
                    bytes: std::fs::symlink_metadata(&cf.path).map(|m| m.len()).unwrap_or(0),
                    problem: cf.problem.as_ref().map(Problem::reason),
                }
            })
            .collect()
    }

    pub(crate) fn folded_set(&self) -> HashSet<u64> {
        self.files
            .values()
            .filter(|c| c.usable() && c.header.accumulator())
            .flat_map(|c| c.parsed.folded.iter().copied())
            .collect()
    }

    /// Live files' declarations, for the cross-process checks at declaration (schema,
    /// name clashes): `(pid, path, declaration)`, the files of `own` left out.
    pub(crate) fn live_declarations(&self, own: &[u64]) -> Vec<(u32, PathBuf, FamilyDesc)> {
        let mut out = Vec::new();
        for cf in self.files.values() {
            if !cf.usable() || !cf.live || own.contains(&cf.header.writer_id) {
                continue;
            }
            for f in &cf.parsed.families {
                out.push((cf.header.pid, cf.path.clone(), FamilyDesc::from_record(&f.rec)));
            }
        }
        out
    }

    /// Forgets the mapping that holds `addr` (and what was read through it); returns the
    /// file's path.
    pub(crate) fn forget_mapping_at(&mut self, addr: usize) -> Option<PathBuf> {
        for cf in self.files.values_mut() {
            if cf.region.as_ref().is_some_and(|r| r.contains(addr)) {
                cf.forget();
                cf.problem = Some(Problem::Transient("shrank while being read".into()));
                return Some(cf.path.clone());
            }
        }
        None
    }
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
    #[cfg(feature = "python")]
    pub(crate) fn short(&self) -> String {
        match self {
            Problem::Transient(r) | Problem::Unreadable(r) | Problem::Corrupt(r) => r.clone(),
            Problem::Newer(v) => format!("format version {v}"),
        }
    }

    pub(crate) fn reason(&self) -> String {
        match self {
            Problem::Transient(r) => format!("{r} (retried at the next scrape)"),
            Problem::Unreadable(r) | Problem::Corrupt(r) => r.clone(),
            Problem::Newer(v) => format!(
                "format version {v}, newer than the version {} this reader knows: left alone \
                 (it is read again by a reader of its version)",
                format::VERSION
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

pub(crate) struct CachedFile {
    pub(crate) ident: (u64, u64),
    /// Whether the directory entry is a regular file (`lstat`).
    pub(crate) regular: bool,
    pub(crate) path: PathBuf,
    pub(crate) region: Option<Region>,
    /// Why the last pass could not read the file; `None` if it could.
    pub(crate) problem: Option<Problem>,
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
    pub(crate) fam_merged: Vec<Option<(usize, u64)>>,
    /// Cached (merged series index, epoch) per series of the file.
    pub(crate) series_merged: Vec<Option<(usize, u64)>>,
    /// Value of the `pid` label for this file's per-process gauges.
    pub(crate) pid_label: String,
    /// Folded into an accumulator already: not merged (waits for deletion).
    pub(crate) folded: bool,
}

impl CachedFile {
    /// The declarations of the file's families.
    pub(crate) fn declarations(&self) -> Vec<FamilyDesc> {
        self.parsed
            .families
            .iter()
            .map(|f| FamilyDesc::from_record(&f.rec))
            .collect()
    }

    pub(crate) fn is_slot(&self) -> bool {
        self.path.file_name().is_some_and(format::is_slot_name)
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
    pub(crate) fn forget(&mut self) {
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
                    format::ACCUMULATOR
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
                format::HEADER_BYTES
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
        header::read_header(region, size).map_err(|e| match e {
            header::HeaderError::Newer(v) => Problem::Newer(v),
            header::HeaderError::Corrupt(c) => Problem::Corrupt(c.0),
        })
    }
}

impl CachedFile {
    /// The pid label this file's per-process series get in a merge of `files`.
    pub(crate) fn pid_label_now(&self, files: &BTreeMap<OsString, CachedFile>) -> String {
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

/// The `pid` label values of per-process gauge series in accumulators.
pub(crate) fn accumulator_pid_labels<'a>(files: impl Iterator<Item = &'a CachedFile>) -> HashSet<String> {
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
