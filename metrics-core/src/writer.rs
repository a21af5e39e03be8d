//! The writing side of one process: its own file, its growth, and the records in it.
//!
//! A process writes only its own file and holds an exclusive `flock` on it for its whole
//! life; the kernel drops the lock when the process dies, however it dies, so readers can
//! tell live writers from dead ones without any supervisor hook.
//!
//! With a stable worker id, the file is the worker's slot (`slot-<id>.shm`): a restarted
//! worker resumes it, counters and histograms going on from where its predecessor stopped.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use crate::cell::Cell;
use crate::desc::{FamilyDesc, OVERFLOW_LABEL_VALUE};
use crate::error::Error;
use crate::format::{self, ERROR_KINDS, ErrorKind, HEADER_BYTES, MR_SEQ, MR_TIME, MR_VALUE, MetricType};
use crate::parse::{self, Parsed};
use crate::reader::MAX_FILE_BYTES;
use crate::region::Region;
use crate::sys;

/// Settings shared by the writer and the store.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub dir: PathBuf,
    pub application: String,
    pub worker_id: Option<u64>,
    pub file_mode: u32,
    pub series_limit: usize,
    pub max_file_size: usize,
    pub compact_threshold: usize,
}

/// First reservation of a new file.
const INITIAL_BYTES: usize = 16 << 10;
/// Slots per value block (one page with its header word).
const BLOCK_SLOTS: usize = 511;
/// Largest single growth step.
const MAX_STEP: usize = 4 << 20;

/// Prefix of writer file names.
pub(crate) const WRITER_PREFIX: &str = "w-";
/// Prefix of worker slot file names.
pub(crate) const SLOT_PREFIX: &str = "slot-";
/// Extension of every store file.
pub(crate) const STORE_EXT: &str = ".shm";
/// Prefix of files being initialised (ignored by readers).
pub(crate) const TMP_PREFIX: &str = ".tmp-";
/// The directory lock file.
pub(crate) const LOCK_FILE: &str = ".shmetrics.lock";
/// The directory lock's turnstile (see `dirlock`).
pub(crate) const TURN_FILE: &str = ".shmetrics.turn";

/// What a handle asks the writer to bind to (`family`: index among this process's
/// declarations, not the family id inside a file).
pub(crate) enum BindKey<'a> {
    /// The value slots of one series.
    Series { family: u32, labels: &'a [Box<str>] },
    /// The statistics slot of a family (cardinality overflow count).
    Stats { family: u32 },
}

/// One process's writer, shared by all handles of a store.
pub(crate) struct Writer {
    pub(crate) config: Arc<Config>,
    state: Mutex<WriterState>,
    /// Series living in process memory because the file had no room for them when they
    /// were created: moved into the file at the next chance (any successful write of a
    /// new series, a declaration, a scrape of this process).
    waiting: Mutex<Vec<Weak<Cell>>>,
    waiting_count: AtomicUsize,
    header_epoch: AtomicU64,
    header_ptr: AtomicPtr<AtomicU64>,
    growth_logged: AtomicBool,
    misuse_logged: [AtomicBool; ERROR_KINDS],
}

struct WriterState {
    /// Fork generation the current file belongs to.
    fork_gen: u64,
    file: Option<WriterFile>,
    /// Files this process no longer writes but still maps (an ancestor's after fork, a
    /// retired slot): handles may hold pointers into them.
    retired: Vec<WriterFile>,
    /// Families declared in this process, by declaration index.
    families: Vec<Arc<FamilyDesc>>,
    /// Errors counted while there was no file to count them in.
    pending_errors: [u64; ERROR_KINDS],
    /// Whether this process owns the configured worker slot (a fork child does not).
    slot_owner: bool,
}

const UNBOUND: u64 = u64::MAX;

/// Why a family cannot be written into the current file.
enum EmitError {
    /// No room (counted and logged).
    Growth,
    /// A resumed slot file declares the name differently.
    Mismatch,
}

impl Writer {
    pub(crate) fn new(config: Arc<Config>) -> Self {
        let slot_owner = config.worker_id.is_some();
        Writer {
            config,
            state: Mutex::new(WriterState {
                fork_gen: sys::fork_generation(),
                file: None,
                retired: Vec::new(),
                families: Vec::new(),
                pending_errors: [0; ERROR_KINDS],
                slot_owner,
            }),
            waiting: Mutex::new(Vec::new()),
            waiting_count: AtomicUsize::new(0),
            header_epoch: AtomicU64::new(UNBOUND),
            header_ptr: AtomicPtr::new(std::ptr::null_mut()),
            growth_logged: AtomicBool::new(false),
            misuse_logged: [const { AtomicBool::new(false) }; ERROR_KINDS],
        }
    }

    fn lock(&self) -> MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Path of this process's current file, if it has one.
    pub(crate) fn path(&self) -> Option<PathBuf> {
        let _gate = sys::enter_gate();
        let mut st = self.lock();
        self.sync_fork(&mut st);
        st.file.as_ref().map(|f| f.path.clone())
    }

    /// Identities of every file this process holds (current and retired), so that the
    /// reader treats them as live without probing.
    pub(crate) fn own_ids(&self) -> Vec<u64> {
        let _gate = sys::enter_gate();
        let mut st = self.lock();
        self.sync_fork(&mut st);
        let fork_gen = st.fork_gen;
        st.file
            .iter()
            .chain(st.retired.iter())
            .filter(|f| f.fork_gen == fork_gen)
            .map(|f| f.writer_id)
            .collect()
    }

    /// Adds a family and writes its record now if there is room (later otherwise).
    /// Called with the directory lock held; `folded` tells whether a writer id was folded
    /// into the accumulator (a slot file that was folded must not be resumed).
    ///
    /// A file that cannot be created now (a full filesystem, no descriptor left) does not
    /// fail the declaration: values wait in process memory, the failure is counted
    /// (`growth`), and the file is created at the next chance.
    pub(crate) fn declare(&self, desc: Arc<FamilyDesc>, folded: &dyn Fn(u64) -> bool) -> Result<u32, Error> {
        let _gate = sys::enter_gate();
        let mut st = self.lock();
        self.sync_fork(&mut st);
        if st.file.is_none() {
            match self.open_file(&mut st, true, folded) {
                Ok(()) => {}
                Err(e) if waits_in_memory(&e) => self.growth_failed(&mut st, &e.to_string()),
                Err(e) => return Err(e),
            }
        }
        let fid = st.families.len() as u32;
        st.families.push(desc);
        let all = st.families.len();
        match self.emit_families(&mut st, all) {
            Ok(()) | Err(EmitError::Growth) => Ok(fid),
            Err(EmitError::Mismatch) => {
                // A previous deployment declared this name differently in our slot file:
                // retire that file (an ordinary dead file once we exit) and start afresh.
                self.retire_slot(&mut st, folded)?;
                let _ = self.emit_families(&mut st, all);
                Ok(fid)
            }
        }
    }

    /// Whether a new label set of family `family` (declaration index) may get a series of
    /// its own under `limit`: the series this process's file already holds count, those
    /// written by earlier lives of a resumed slot file too. A label set the file holds
    /// already is always admitted (it adds nothing).
    pub(crate) fn admit(&self, family: u32, labels: &[&str], limit: usize) -> bool {
        let _gate = sys::enter_gate();
        let mut st = self.lock();
        self.sync_fork(&mut st);
        let Some(file) = st.file.as_ref() else {
            return true;
        };
        let Some(Some(id)) = file.ids.get(family as usize) else {
            return true;
        };
        let Some(series) = file.series.get(id) else {
            return true;
        };
        let overflow: Box<[Box<str>]> = vec![Box::<str>::from(OVERFLOW_LABEL_VALUE); labels.len()].into();
        let held = series.len() - usize::from(series.contains_key(&overflow));
        if held < limit {
            return true;
        }
        let key: Box<[Box<str>]> = labels.iter().map(|l| Box::<str>::from(*l)).collect();
        series.contains_key(&key)
    }

    /// Errors counted while this process had no file to count them in (shown in its own
    /// scrapes until a file takes them).
    pub(crate) fn pending_errors(&self) -> [u64; ERROR_KINDS] {
        let _gate = sys::enter_gate();
        let mut st = self.lock();
        self.sync_fork(&mut st);
        st.pending_errors
    }

    /// Whether series wait in process memory for file slots.
    #[inline]
    pub(crate) fn has_waiting(&self) -> bool {
        self.waiting_count.load(Ordering::Relaxed) > 0
    }

    /// Remembers a series that could not get file slots.
    pub(crate) fn wait_for_file(&self, cell: Weak<Cell>) {
        let mut list = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        list.push(cell);
        self.waiting_count.store(list.len(), Ordering::Relaxed);
    }

    /// Moves the series waiting in process memory into the file, until one does not fit.
    /// Call without holding the writer's state (it takes it for each series).
    pub(crate) fn flush_waiting(&self) {
        let _gate = sys::enter_gate();
        let Ok(mut list) = self.waiting.try_lock() else {
            return; // another thread is at it
        };
        let mut keep = Vec::with_capacity(list.len());
        let mut full = false;
        for w in list.drain(..) {
            let Some(cell) = w.upgrade() else { continue };
            if full || !cell.flush() {
                // Not bound: no room (stop trying the others now) or busy elsewhere.
                full |= !cell.bound();
                keep.push(w);
            }
        }
        *list = keep;
        self.waiting_count.store(list.len(), Ordering::Relaxed);
    }

    /// Binds `key` to `nslots` value slots in this process's current file.
    /// `None` when the file cannot hold them now (counted and logged).
    pub(crate) fn bind(&self, key: &BindKey<'_>, nslots: usize) -> Option<*const AtomicU64> {
        let _gate = sys::enter_gate();
        let mut st = self.lock();
        self.sync_fork(&mut st);
        if st.file.is_none() {
            if let Err(e) = self.open_file(&mut st, false, &|_| false) {
                self.growth_failed(&mut st, &e.to_string());
                return None;
            }
        }
        let fid = match key {
            BindKey::Series { family, .. } | BindKey::Stats { family } => *family as usize,
        };
        if self.emit_families(&mut st, fid + 1).is_err() {
            return None;
        }
        let file = st.file.as_mut()?;
        let id = file.ids.get(fid).copied().flatten()?;
        let result = match key {
            BindKey::Stats { .. } => {
                let off = file.stats[id as usize];
                return file.region.words_ptr(off, 1);
            }
            BindKey::Series { labels, .. } => {
                if let Some(off) = file.series.get(&id).and_then(|m| m.get(*labels)) {
                    return file.region.words_ptr(*off, nslots);
                }
                let values: Vec<&str> = labels.iter().map(|l| &**l).collect();
                let record = format::encode_series(id, 0, &values);
                file.append_with_values(nslots, record, format::SERIES_VALUES_WORD)
                    .and_then(|off| {
                        file.series
                            .entry(id)
                            .or_default()
                            .insert(labels.to_vec().into(), off);
                        file.region
                            .words_ptr(off, nslots)
                            .ok_or_else(|| io::Error::other("value slots out of range"))
                    })
            }
        };
        match result {
            Ok(p) => Some(p),
            Err(e) => {
                self.growth_failed(&mut st, &e.to_string());
                None
            }
        }
    }

    /// Appends a record that has no value slots (a removal) and publishes it.
    pub(crate) fn append_record(&self, words: &[u64]) -> Result<(), Error> {
        let _gate = sys::enter_gate();
        let mut st = self.lock();
        self.sync_fork(&mut st);
        if st.file.is_none() {
            self.open_file(&mut st, false, &|_| false)?;
        }
        let file = st
            .file
            .as_mut()
            .ok_or_else(|| Error::io("writing", &self.config.dir, io::Error::other("no file")))?;
        let path = file.path.clone();
        file.append(words).map_err(|e| Error::io("growing", &path, e))?;
        file.publish();
        Ok(())
    }

    /// Counts a refused operation in this process's header (visible in every scrape as
    /// `shmetrics_store_errors_total{kind}`) and logs its first occurrence.
    pub(crate) fn count_error(&self, kind: ErrorKind, detail: &dyn Fn() -> String) {
        if kind != ErrorKind::Growth && !self.misuse_logged[kind as usize].swap(true, Ordering::Relaxed) {
            tracing::warn!(
                kind = kind.label(),
                "{} (further occurrences are only counted)",
                detail()
            );
        }
        if self.header_epoch.load(Ordering::Acquire) == sys::bind_epoch() {
            let p = self.header_ptr.load(Ordering::Relaxed);
            // SAFETY: `header_ptr` points at the error counters of the current file's header
            // (set together with `header_epoch` under the state lock, Release/Acquire). That
            // file's mapping lives as long as `self`, and the header is reserved at creation.
            unsafe { &*p.add(kind as usize) }.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let _gate = sys::enter_gate();
        let mut st = self.lock();
        self.sync_fork(&mut st);
        match &st.file {
            Some(f) => {
                if let Some(w) = f.region.word((format::H_ERRORS + kind as usize) * 8) {
                    w.fetch_add(1, Ordering::Relaxed);
                }
                self.cache_header(f);
            }
            None => st.pending_errors[kind as usize] += 1,
        }
    }

    fn cache_header(&self, f: &WriterFile) {
        if let Some(p) = f.region.words_ptr(format::H_ERRORS * 8, ERROR_KINDS) {
            self.header_ptr.store(p.cast_mut(), Ordering::Relaxed);
            self.header_epoch.store(sys::bind_epoch(), Ordering::Release);
        }
    }

    fn growth_failed(&self, st: &mut WriterState, reason: &str) {
        let counted = match &st.file {
            Some(f) => f
                .region
                .word((format::H_ERRORS + ErrorKind::Growth as usize) * 8)
                .map(|w| w.fetch_add(1, Ordering::Relaxed))
                .is_some(),
            None => false,
        };
        if !counted {
            st.pending_errors[ErrorKind::Growth as usize] += 1;
        }
        if !self.growth_logged.swap(true, Ordering::Relaxed) {
            tracing::error!(
                dir = %self.config.dir.display(),
                "metrics store cannot grow: {reason}. New series are kept in process memory \
                 and written when space is available; free space in the directory's filesystem \
                 (further failures are only counted in shmetrics_store_errors_total{{kind=\"growth\"}})"
            );
        }
    }

    /// After fork(), moves the parent's file aside (its descriptor was already closed and
    /// its mapping detached by the atfork child handler) so that the next write creates
    /// this process's own file. A fork child never owns its parent's worker slot.
    fn sync_fork(&self, st: &mut WriterState) {
        let fork_gen = sys::fork_generation();
        if st.fork_gen == fork_gen {
            return;
        }
        if let Some(old) = st.file.take() {
            st.retired.push(old);
        }
        st.fork_gen = fork_gen;
        st.pending_errors = [0; ERROR_KINDS];
        st.slot_owner = false;
        self.header_epoch.store(UNBOUND, Ordering::Release);
    }

    /// Gives this process a file: its worker slot (resumed or new) when it owns one and
    /// holds the directory lock, a new file of its own otherwise.
    fn open_file(
        &self,
        st: &mut WriterState,
        dir_locked: bool,
        folded: &dyn Fn(u64) -> bool,
    ) -> Result<(), Error> {
        let file = match self.config.worker_id {
            Some(slot) if st.slot_owner && dir_locked => {
                WriterFile::acquire_slot(&self.config, slot, st.pending_errors, st.fork_gen, folded)?
            }
            _ => {
                let name = format!(
                    "{WRITER_PREFIX}{}-{:016x}{STORE_EXT}",
                    sys::current_pid(),
                    sys::random_u64()
                );
                WriterFile::create(&self.config, &name, st.pending_errors, st.fork_gen)?
            }
        };
        st.pending_errors = [0; ERROR_KINDS];
        self.cache_header(&file);
        st.file = Some(file);
        Ok(())
    }

    /// Renames the current (resumed slot) file to an ordinary writer name and opens a new
    /// slot file. The old file stays mapped and locked until this process exits (handles
    /// may still hold pointers into it), then it is an ordinary dead file.
    fn retire_slot(&self, st: &mut WriterState, folded: &dyn Fn(u64) -> bool) -> Result<(), Error> {
        if let Some(old) = st.file.take() {
            let name = format!(
                "{WRITER_PREFIX}{}-{:016x}{STORE_EXT}",
                sys::current_pid(),
                old.writer_id
            );
            let to = self.config.dir.join(&name);
            std::fs::rename(&old.path, &to).map_err(|e| Error::io("renaming", &old.path, e))?;
            tracing::warn!(
                from = %old.path.display(),
                to = %to.display(),
                "worker slot file declares a metric differently (an earlier deployment): kept as an \
                 ordinary file, and a new slot file started"
            );
            st.retired.push(old);
        }
        self.open_file(st, true, folded)?;
        // Every handle of the process rebinds (to the new file) on its next write.
        sys::bump_bind_epoch();
        Ok(())
    }

    /// Writes the records of families `0..upto` that the current file lacks.
    fn emit_families(&self, st: &mut WriterState, upto: usize) -> Result<(), EmitError> {
        for fid in 0..upto {
            let desc = Arc::clone(&st.families[fid]);
            let Some(file) = st.file.as_mut() else {
                return Err(EmitError::Growth);
            };
            if file.ids.len() <= fid {
                file.ids.resize(fid + 1, None);
            }
            if file.ids[fid].is_some() {
                continue;
            }
            if let Some(&id) = file.by_name.get(&desc.name) {
                if file.descs[id as usize].same_schema(&desc) {
                    file.ids[fid] = Some(id);
                    continue;
                }
                return Err(EmitError::Mismatch);
            }
            let id = file.descs.len() as u32;
            let words = format::encode_family(&desc.record(id, 0));
            match file.append_with_values(1, words, format::FAMILY_STATS_WORD) {
                Ok(off) => {
                    file.stats.push(off);
                    file.descs.push((*desc).clone());
                    file.by_name.insert(desc.name.clone(), id);
                    file.ids[fid] = Some(id);
                }
                Err(e) => {
                    self.growth_failed(st, &e.to_string());
                    return Err(EmitError::Growth);
                }
            }
        }
        Ok(())
    }
}

/// What resuming a slot file found.
enum Resume {
    Resumed(Box<WriterFile>),
    /// Not resumable, moved out of the way: start a new slot file.
    Replace,
    /// Not usable by this version, left in place: write an ordinary file instead.
    Skip(String),
}

/// Value slot offsets of one family's series, by label values.
type SeriesOffsets = HashMap<Box<[Box<str>]>, usize>;

/// This process's file: descriptor (holding the `flock`), mapping, cursor and index.
pub(crate) struct WriterFile {
    path: PathBuf,
    file: ManuallyDrop<File>,
    fd_entry: Option<&'static sys::WriterSlot>,
    /// Fork generation that owns the descriptor.
    fork_gen: u64,
    writer_id: u64,
    region: Region,
    reserve: usize,
    /// Bytes written (published to readers through the header's used word).
    used: usize,
    /// Bytes reserved with fallocate (the file size).
    allocated: usize,
    /// Free range of the current value block.
    values_next: usize,
    values_end: usize,
    /// Process declaration index -> family id in this file.
    ids: Vec<Option<u32>>,
    /// Families of this file, by id, and by name.
    descs: Vec<FamilyDesc>,
    by_name: HashMap<String, u32>,
    /// Statistics slot offset of each family of this file.
    stats: Vec<usize>,
    /// Value slot offset of each series, by family id and label values.
    series: HashMap<u32, SeriesOffsets>,
}

impl WriterFile {
    /// Creates `name` in the directory: initialised under a temporary name, locked, then
    /// renamed into place, so readers never see a half-written file.
    fn create(
        config: &Config,
        name: &str,
        pending: [u64; ERROR_KINDS],
        fork_gen: u64,
    ) -> Result<WriterFile, Error> {
        let pid = sys::current_pid();
        let writer_id = sys::random_u64();
        let path = config.dir.join(name);
        let tmp = config
            .dir
            .join(format!("{TMP_PREFIX}{}{STORE_EXT}", sys::random_u64()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(config.file_mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| creation_error(&config.dir, &tmp, e))?;
        let cleanup = |e: Error| {
            let _ = std::fs::remove_file(&tmp);
            e
        };
        // The umask may have removed bits: apply the configured mode exactly.
        file.set_permissions(std::fs::Permissions::from_mode(config.file_mode))
            .map_err(|e| cleanup(Error::io("setting permissions of", &tmp, e)))?;
        match sys::try_flock(file.as_raw_fd(), true) {
            Ok(true) => {}
            Ok(false) => {
                return Err(cleanup(Error::io(
                    "locking",
                    &tmp,
                    io::Error::other("a new file is already locked by someone else"),
                )));
            }
            Err(e) => return Err(cleanup(Error::io("locking", &tmp, e))),
        }
        let reserve = config.max_file_size.max(INITIAL_BYTES);
        sys::reserve(file.as_raw_fd(), 0, INITIAL_BYTES as u64)
            .map_err(|e| cleanup(Error::io("reserving space for", &tmp, e)))?;
        let region = Region::map_writer(&file, reserve, INITIAL_BYTES)
            .map_err(|e| cleanup(Error::io("mapping", &tmp, e)))?;
        let mut wf = WriterFile::from_parts(path.clone(), file, fork_gen, writer_id, region, reserve);
        wf.allocated = INITIAL_BYTES;
        wf.write_header(pid, writer_id, config.worker_id, pending, 0);
        let app = format::encode_application(&config.application);
        wf.append(&app)
            .map_err(|e| cleanup(Error::io("writing", &tmp, e)))?;
        wf.publish();
        std::fs::rename(&tmp, &path).map_err(|e| cleanup(Error::io("renaming", &tmp, e)))?;
        wf.register();
        Ok(wf)
    }

    fn from_parts(
        path: PathBuf,
        file: File,
        fork_gen: u64,
        writer_id: u64,
        region: Region,
        reserve: usize,
    ) -> Self {
        WriterFile {
            path,
            file: ManuallyDrop::new(file),
            fd_entry: None,
            fork_gen,
            writer_id,
            region,
            reserve,
            used: HEADER_BYTES,
            allocated: 0,
            values_next: 0,
            values_end: 0,
            ids: Vec::new(),
            descs: Vec::new(),
            by_name: HashMap::new(),
            stats: Vec::new(),
            series: HashMap::new(),
        }
    }

    /// Records descriptor and mapping for detaching in fork children. Called in the gate.
    fn register(&mut self) {
        let (addr, len) = self.region.span();
        self.fd_entry = Some(sys::register_writer(self.file.as_raw_fd(), addr, len));
    }

    /// Takes worker slot `slot`: resumes its file if a previous worker left one that is
    /// whole, or starts a new one. Called with the directory lock held.
    ///
    /// Something at the slot's name that is not a slot file this version can resume (a
    /// symlink or another kind of file planted there, a file of a newer format version)
    /// is left alone, logged and counted (`slot_skipped`): this process then writes an
    /// ordinary file of its own, so a planted file cannot keep a worker from starting.
    fn acquire_slot(
        config: &Config,
        slot: u64,
        mut pending: [u64; ERROR_KINDS],
        fork_gen: u64,
        folded: &dyn Fn(u64) -> bool,
    ) -> Result<WriterFile, Error> {
        let name = format!("{SLOT_PREFIX}{slot}{STORE_EXT}");
        let path = config.dir.join(&name);
        let mut skip = |why: String| {
            tracing::warn!(
                file = %path.display(),
                "worker slot file not used: {why}; left in place, this process writes an ordinary \
                 file instead (counted in shmetrics_store_errors_total{{kind=\"slot_skipped\"}})"
            );
            pending[ErrorKind::SlotSkipped as usize] += 1;
            let own = format!(
                "{WRITER_PREFIX}{}-{:016x}{STORE_EXT}",
                sys::current_pid(),
                sys::random_u64()
            );
            WriterFile::create(config, &own, pending, fork_gen)
        };
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return WriterFile::create(config, &name, pending, fork_gen);
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return skip("it is a symbolic link (not followed; someone may have planted it)".into());
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENXIO | libc::EISDIR)) => {
                return skip("it is not a regular file".into());
            }
            Err(e) => return Err(Error::io("opening", &path, e)),
        };
        let md = file.metadata().map_err(|e| Error::io("inspecting", &path, e))?;
        if !md.is_file() {
            return skip("it is not a regular file".into());
        }
        if !sys::try_flock(file.as_raw_fd(), true).map_err(|e| Error::io("locking", &path, e))? {
            let pid = Region::map_reader(&file, (md.len() as usize).clamp(8, HEADER_BYTES))
                .ok()
                .and_then(|r| {
                    r.word(format::H_PID * 8)
                        .map(|w| w.load(Ordering::Relaxed) as u32)
                })
                .unwrap_or(0);
            return Err(Error::SlotBusy {
                dir: config.dir.clone(),
                slot,
                pid,
            });
        }
        match WriterFile::resume(config, &path, file, fork_gen, folded)? {
            Resume::Resumed(wf) => Ok(*wf),
            Resume::Replace => WriterFile::create(config, &name, pending, fork_gen),
            Resume::Skip(why) => skip(why),
        }
    }

    /// Resumes a locked slot file, in any state a SIGKILL of its previous writer can
    /// leave: only what that writer published (records below `used`) is trusted, the
    /// unpublished tail is zeroed before anything new is written there, and sequence words
    /// left odd by a kill mid-write are made even.
    fn resume(
        config: &Config,
        path: &Path,
        file: File,
        fork_gen: u64,
        folded: &dyn Fn(u64) -> bool,
    ) -> Result<Resume, Error> {
        let size = file
            .metadata()
            .map_err(|e| Error::io("inspecting", path, e))?
            .len();
        let size = match usize::try_from(size) {
            Ok(s) if s <= MAX_FILE_BYTES => s,
            _ => return WriterFile::move_aside(path, &format!("{size} bytes, larger than any store file")),
        };
        let reserve = config.max_file_size.max(INITIAL_BYTES).max(size);
        let region = Region::map_writer(&file, reserve, size).map_err(|e| Error::io("mapping", path, e))?;
        let header = match parse::read_header(&region, size) {
            Ok(h) if h.accumulator() => {
                return WriterFile::move_aside(path, "an accumulator under a slot name");
            }
            Ok(h) if h.used > size => {
                return WriterFile::move_aside(
                    path,
                    &format!(
                        "used length {} past the end of the file ({size} bytes): truncated",
                        h.used
                    ),
                );
            }
            Ok(h) => h,
            Err(parse::HeaderError::Newer(v)) => {
                return Ok(Resume::Skip(format!(
                    "it has format version {v}, newer than this version's {} (a newer deployment's slot, \
                     resumed when it comes back)",
                    format::VERSION
                )));
            }
            Err(parse::HeaderError::Corrupt(c)) => return WriterFile::move_aside(path, &c.0),
        };
        let mut parsed = Parsed::new(false);
        if let Err(c) = parsed.parse(&region, header.used) {
            return WriterFile::move_aside(path, &c.0);
        }
        if folded(header.writer_id) {
            // Its values are in the accumulator already (a compaction stopped before
            // deleting it): continuing it would count them twice.
            std::fs::remove_file(path).map_err(|e| Error::io("removing", path, e))?;
            return Ok(Resume::Replace);
        }
        if parsed.application.as_deref() != Some(config.application.as_str()) {
            return Err(Error::WrongApplication {
                dir: config.dir.clone(),
                owner: parsed.application.unwrap_or_default(),
                requested: config.application.clone(),
            });
        }
        let mut wf = WriterFile::from_parts(
            path.to_path_buf(),
            file,
            fork_gen,
            header.writer_id,
            region,
            reserve,
        );
        wf.used = header.used;
        wf.allocated = size;
        // The tail past `used` holds whatever the killed writer had started to append
        // (a record, a block header) and never published: new blocks' slots must read
        // zero, so clear it before anything is handed out there.
        for off in (header.used..size - size % 8).step_by(8) {
            if let Some(w) = wf.region.word(off) {
                w.store(0, Ordering::Relaxed);
            }
        }
        for fam in &parsed.families {
            wf.by_name.insert(fam.rec.name.clone(), fam.rec.id);
            wf.descs.push(FamilyDesc::from_record(&fam.rec));
            wf.stats.push(fam.rec.stats_offset as usize);
        }
        for s in &parsed.series {
            let labels = Parsed::series_labels(&wf.region, s)
                .map_err(|c| Error::io("reading", path, io::Error::other(c.0)))?;
            wf.series.entry(s.family).or_default().insert(labels, s.offset);
        }
        for s in &parsed.series {
            let fam = &parsed.families[s.family as usize].rec;
            if fam.ty != MetricType::Gauge {
                continue;
            }
            let word = |i: usize| wf.region.word(s.offset + i * 8);
            // A new process: what it is doing now starts from zero (in-flight requests
            // of a killed predecessor must not linger); counters, histograms and the
            // other gauge modes go on.
            let reset = fam.mode.live_only();
            if fam.mode.most_recent() {
                if let (Some(seq), Some(v), Some(t)) = (word(MR_SEQ), word(MR_VALUE), word(MR_TIME)) {
                    // Odd: the predecessor was killed inside `set`. No one else writes
                    // this slot now; make it even so the next write does not wait.
                    let cur = seq.load(Ordering::Relaxed);
                    seq.store(cur + (cur & 1), Ordering::Release);
                    if reset {
                        v.store(0, Ordering::Relaxed);
                        t.store(0, Ordering::Relaxed);
                    }
                }
            } else if let (true, Some(v)) = (reset, word(0)) {
                v.store(0, Ordering::Relaxed);
            }
        }
        if let Some(w) = wf.region.word(format::H_PID * 8) {
            w.store(u64::from(sys::current_pid()), Ordering::Relaxed);
        }
        if let Some(w) = wf.region.word(format::H_START * 8) {
            w.store(sys::unix_nanos(), Ordering::Relaxed);
        }
        wf.publish();
        wf.register();
        Ok(Resume::Resumed(Box::new(wf)))
    }

    /// Renames an unreadable slot file aside (still `.shm`: readers report it, nothing
    /// deletes it) so the slot starts a new file.
    fn move_aside(path: &Path, why: &str) -> Result<Resume, Error> {
        let aside = path.with_extension(format!("corrupt-{:08x}.shm", sys::random_u64() as u32));
        tracing::warn!(
            file = %path.display(),
            reason = %why,
            "worker slot file is not readable: moved aside to {}, starting a new one",
            aside.display()
        );
        std::fs::rename(path, &aside).map_err(|e| Error::io("renaming", path, e))?;
        Ok(Resume::Replace)
    }

    fn write_header(
        &self,
        pid: u32,
        writer_id: u64,
        worker: Option<u64>,
        pending: [u64; ERROR_KINDS],
        flags: u32,
    ) {
        let mut h = [0u64; format::HEADER_WORDS];
        h[format::H_MAGIC] = u64::from_le_bytes(format::MAGIC);
        h[format::H_VERSION] = u64::from(format::VERSION) | ((HEADER_BYTES as u64) << 32);
        h[format::H_USED] = 0;
        h[format::H_PID] = u64::from(pid) | (u64::from(flags) << 32);
        h[format::H_START] = sys::unix_nanos();
        h[format::H_WRITER_ID] = writer_id;
        h[format::H_WORKER] = worker.unwrap_or(format::NO_WORKER);
        h[format::H_ERRORS..format::H_ERRORS + ERROR_KINDS].copy_from_slice(&pending);
        for (i, w) in h.iter().enumerate() {
            if let Some(word) = self.region.word(i * 8) {
                word.store(*w, Ordering::Relaxed);
            }
        }
    }

    /// Makes everything appended so far visible to readers.
    fn publish(&self) {
        if let Some(w) = self.region.word(format::H_USED * 8) {
            w.store(self.used as u64, Ordering::Release);
        }
    }

    /// Reserves file space so that `need` bytes are backed.
    fn ensure(&mut self, need: usize) -> io::Result<()> {
        if need <= self.allocated {
            return Ok(());
        }
        if need > self.reserve {
            return Err(io::Error::other(format!(
                "the file would exceed its limit of {} bytes (StoreBuilder::max_file_size)",
                self.reserve
            )));
        }
        let step = self.allocated.clamp(INITIAL_BYTES, MAX_STEP);
        let roomy = round_up(need.max(self.allocated + step), 4096).min(self.reserve);
        let tight = round_up(need, 4096).min(self.reserve);
        let fd = self.file.as_raw_fd();
        let mut target = roomy;
        let mut result = sys::reserve(fd, self.allocated as u64, (roomy - self.allocated) as u64);
        if result.is_err() && tight < roomy {
            target = tight;
            result = sys::reserve(fd, self.allocated as u64, (tight - self.allocated) as u64);
        }
        result?;
        self.allocated = target;
        self.region.set_accessible(target);
        Ok(())
    }

    /// Writes a record at the end (not yet published).
    fn append(&mut self, words: &[u64]) -> io::Result<usize> {
        let off = self.used;
        self.ensure(off + words.len() * 8)?;
        self.store_words(off, words);
        self.used = off + words.len() * 8;
        Ok(off)
    }

    fn store_words(&self, off: usize, words: &[u64]) {
        for (i, w) in words.iter().enumerate() {
            if let Some(word) = self.region.word(off + i * 8) {
                word.store(*w, Ordering::Relaxed);
            }
        }
    }

    /// Allocates `nslots` zeroed value slots and appends `record`, whose word
    /// `offset_word` receives the slots' byte offset; publishes both. All space is
    /// reserved before anything is written, so a failure leaves the file unchanged.
    fn append_with_values(
        &mut self,
        nslots: usize,
        mut record: Vec<u64>,
        offset_word: usize,
    ) -> io::Result<usize> {
        let need_block = self.values_end - self.values_next < nslots * 8;
        let block_slots = BLOCK_SLOTS.max(nslots);
        let block_bytes = if need_block { 8 + block_slots * 8 } else { 0 };
        self.ensure(self.used + block_bytes + record.len() * 8)?;
        if need_block {
            let start = self.used;
            self.store_words(start, &[format::values_header(block_slots)]);
            self.values_next = start + 8;
            self.values_end = start + block_bytes;
            self.used = self.values_end;
        }
        let off = self.values_next;
        self.values_next += nslots * 8;
        record[offset_word] = off as u64;
        self.append(&record)?;
        self.publish();
        Ok(off)
    }
}

impl Drop for WriterFile {
    fn drop(&mut self) {
        if self.fork_gen == sys::fork_generation() {
            if let Some(e) = self.fd_entry {
                sys::unregister_writer(e);
            }
            // SAFETY: dropped exactly once, here; the descriptor is ours (same generation).
            unsafe { ManuallyDrop::drop(&mut self.file) };
        }
        // Otherwise this is an inherited file in a fork child: the atfork handler closed
        // its descriptor (closing the number again could close an unrelated file) and
        // replaced its mapping with a placeholder, which the region's drop unmaps.
    }
}

/// Whether an error creating this process's file means "not now" (values wait in process
/// memory and the file is created later) rather than a mistake to report at the call.
fn waits_in_memory(e: &Error) -> bool {
    let io = match e {
        Error::Io { source, .. } => source,
        Error::Directory { source: Some(s), .. } => s,
        _ => return false,
    };
    matches!(
        io.raw_os_error(),
        Some(
            libc::ENOSPC
                | libc::EDQUOT
                | libc::EFBIG
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOMEM
                | libc::EAGAIN
        )
    )
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

fn creation_error(dir: &Path, path: &Path, e: io::Error) -> Error {
    let reason = match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "cannot create a file here (permission denied): give this process's user write access to the directory".to_string()
        }
        Some(libc::EROFS) => "the filesystem is read-only: use a directory on /dev/shm".to_string(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            "the filesystem is full: free space or enlarge it (e.g. /dev/shm size)".to_string()
        }
        Some(libc::ENOENT) => "the directory no longer exists".to_string(),
        _ => format!("cannot create {}", path.display()),
    };
    Error::Directory {
        path: dir.to_path_buf(),
        reason,
        source: Some(e),
    }
}
