//! The writing side of one process: its own file, its growth, and the records in it.
//!
//! A process writes only its own file and holds an exclusive `flock` on it for its whole
//! life; the kernel drops the lock when the process dies, however it dies, so readers can
//! tell live writers from dead ones without any supervisor hook.

use std::fs::{File, OpenOptions};
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::desc::FamilyDesc;
use crate::error::Error;
use crate::format::{self, ERROR_KINDS, ErrorKind, HEADER_BYTES};
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
}

/// First reservation of a new file.
const INITIAL_BYTES: usize = 16 << 10;
/// Slots per value block (one page).
const BLOCK_SLOTS: usize = 511;
/// Largest single growth step.
const MAX_STEP: usize = 4 << 20;

/// Prefix of writer file names.
pub(crate) const WRITER_PREFIX: &str = "w-";
/// Extension of every store file.
pub(crate) const STORE_EXT: &str = ".shm";
/// Prefix of files being initialised (ignored by readers).
pub(crate) const TMP_PREFIX: &str = ".tmp-";
/// The directory lock file.
pub(crate) const LOCK_FILE: &str = ".shmetrics.lock";

/// What a handle asks the writer to bind to.
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
    header_gen: AtomicU64,
    header_ptr: AtomicPtr<AtomicU64>,
    growth_logged: AtomicBool,
    misuse_logged: [AtomicBool; ERROR_KINDS],
}

struct WriterState {
    /// Fork generation the current file belongs to.
    generation: u64,
    file: Option<WriterFile>,
    /// Files of an ancestor process (before fork): kept mapped, never written.
    retired: Vec<WriterFile>,
    /// Families declared in this process; index = family id in the file.
    families: Vec<Arc<FamilyDesc>>,
    /// How many of `families` have their record in the current file.
    emitted: usize,
    /// Errors counted while there was no file to count them in.
    pending_errors: [u64; ERROR_KINDS],
}

const UNBOUND: u64 = u64::MAX;

impl Writer {
    pub(crate) fn new(config: Arc<Config>) -> Self {
        Writer {
            config,
            state: Mutex::new(WriterState {
                generation: sys::fork_generation(),
                file: None,
                retired: Vec::new(),
                families: Vec::new(),
                emitted: 0,
                pending_errors: [0; ERROR_KINDS],
            }),
            header_gen: AtomicU64::new(UNBOUND),
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
        self.sync_generation(&mut st);
        st.file.as_ref().map(|f| f.path.clone())
    }

    /// Random identity of this process's current file, if it has one.
    pub(crate) fn writer_id(&self) -> Option<u64> {
        let _gate = sys::enter_gate();
        let mut st = self.lock();
        self.sync_generation(&mut st);
        st.file.as_ref().map(|f| f.writer_id)
    }

    /// Adds a family; its record is written now if there is room, later otherwise.
    /// Fails only if this process has no file and cannot create one.
    pub(crate) fn declare(&self, desc: Arc<FamilyDesc>) -> Result<u32, Error> {
        let _gate = sys::enter_gate();
        let mut st = self.lock();
        self.sync_generation(&mut st);
        if st.file.is_none() {
            self.create_file(&mut st)?;
        }
        let id = st.families.len() as u32;
        st.families.push(desc);
        // Growth failure leaves the record pending; handles retry.
        let all = st.families.len();
        let _ = self.emit_families(&mut st, all);
        Ok(id)
    }

    /// Binds `key` to `nslots` value slots in this process's current file.
    /// `None` when the file cannot hold them now (counted and logged).
    pub(crate) fn bind(&self, key: &BindKey<'_>, nslots: usize) -> Option<*const AtomicU64> {
        let _gate = sys::enter_gate();
        let mut st = self.lock();
        self.sync_generation(&mut st);
        if st.file.is_none() {
            if let Err(e) = self.create_file(&mut st) {
                self.growth_failed(&mut st, &e.to_string());
                return None;
            }
        }
        let family = match key {
            BindKey::Series { family, .. } | BindKey::Stats { family } => *family as usize,
        };
        if self.emit_families(&mut st, family + 1).is_err() {
            return None;
        }
        let result = {
            let file = st.file.as_mut()?;
            match key {
                BindKey::Stats { family } => {
                    let off = file.stats[*family as usize];
                    return file.region.words_ptr(off, 1);
                }
                BindKey::Series { family, labels } => {
                    let labels: Vec<&str> = labels.iter().map(|l| &**l).collect();
                    let record = format::encode_series(*family, 0, &labels);
                    file.append_with_values(nslots, record, format::SERIES_VALUES_WORD)
                        .and_then(|off| {
                            file.region
                                .words_ptr(off, nslots)
                                .ok_or_else(|| io::Error::other("value slots out of range"))
                        })
                }
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
        let generation = sys::fork_generation();
        if self.header_gen.load(Ordering::Acquire) == generation {
            let p = self.header_ptr.load(Ordering::Relaxed);
            // SAFETY: `header_ptr` points at the error counters of the current file's header
            // (set together with `header_gen` under the state lock, Release/Acquire). That
            // file's mapping lives as long as `self`, and the header is reserved at creation.
            unsafe { &*p.add(kind as usize) }.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let _gate = sys::enter_gate();
        let mut st = self.lock();
        self.sync_generation(&mut st);
        match &st.file {
            Some(f) => {
                if let Some(w) = f.region.word((format::H_ERRORS + kind as usize) * 8) {
                    w.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => st.pending_errors[kind as usize] += 1,
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

    /// After fork(), moves the parent's file aside (its descriptor was already closed by
    /// the atfork child handler) so that the next write creates this process's own file.
    fn sync_generation(&self, st: &mut WriterState) {
        let generation = sys::fork_generation();
        if st.generation == generation {
            return;
        }
        if let Some(old) = st.file.take() {
            st.retired.push(old);
        }
        st.generation = generation;
        st.emitted = 0;
        st.pending_errors = [0; ERROR_KINDS];
        self.header_gen.store(UNBOUND, Ordering::Release);
    }

    fn create_file(&self, st: &mut WriterState) -> Result<(), Error> {
        let file = WriterFile::create(&self.config, st.pending_errors, st.generation)?;
        st.pending_errors = [0; ERROR_KINDS];
        st.emitted = 0;
        if let Some(p) = file.region.words_ptr(format::H_ERRORS * 8, ERROR_KINDS) {
            self.header_ptr.store(p.cast_mut(), Ordering::Relaxed);
            self.header_gen.store(st.generation, Ordering::Release);
        }
        st.file = Some(file);
        Ok(())
    }

    /// Writes the records of families `emitted..upto`. On growth failure the rest stays
    /// pending (counted and logged once).
    fn emit_families(&self, st: &mut WriterState, upto: usize) -> Result<(), ()> {
        while st.emitted < upto {
            let id = st.emitted;
            let desc = Arc::clone(&st.families[id]);
            let Some(file) = st.file.as_mut() else {
                return Err(());
            };
            let rec = desc.record(id as u32, 0);
            let words = format::encode_family(&rec);
            match file.append_with_values(1, words, format::FAMILY_STATS_WORD) {
                Ok(off) => {
                    file.stats.push(off);
                    st.emitted += 1;
                }
                Err(e) => {
                    self.growth_failed(st, &e.to_string());
                    return Err(());
                }
            }
        }
        Ok(())
    }
}

/// This process's file: descriptor (holding the `flock`), mapping, and append cursor.
struct WriterFile {
    path: PathBuf,
    file: ManuallyDrop<File>,
    fd_entry: Option<usize>,
    /// Fork generation that owns the descriptor.
    generation: u64,
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
    /// Statistics slot offset of each emitted family.
    stats: Vec<usize>,
}

impl WriterFile {
    fn create(config: &Config, pending: [u64; ERROR_KINDS], generation: u64) -> Result<WriterFile, Error> {
        let pid = sys::current_pid();
        let writer_id = sys::random_u64();
        let name = format!("{WRITER_PREFIX}{pid}-{writer_id:016x}{STORE_EXT}");
        let path = config.dir.join(&name);
        let tmp = config.dir.join(format!("{TMP_PREFIX}{name}"));
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
        let mut wf = WriterFile {
            path: path.clone(),
            file: ManuallyDrop::new(file),
            fd_entry: None,
            generation,
            writer_id,
            region,
            reserve,
            used: HEADER_BYTES,
            allocated: INITIAL_BYTES,
            values_next: 0,
            values_end: 0,
            stats: Vec::new(),
        };
        wf.write_header(pid, writer_id, config.worker_id, pending);
        let app = format::encode_application(&config.application);
        wf.append(&app)
            .map_err(|e| cleanup(Error::io("writing", &tmp, e)))?;
        wf.publish();
        // Publish the fully initialised, locked file under its final name.
        std::fs::rename(&tmp, &path).map_err(|e| cleanup(Error::io("renaming", &tmp, e)))?;
        let (addr, len) = wf.region.span();
        wf.fd_entry = sys::register_writer(wf.file.as_raw_fd(), addr, len);
        Ok(wf)
    }

    fn write_header(&self, pid: u32, writer_id: u64, worker: Option<u64>, pending: [u64; ERROR_KINDS]) {
        let mut h = [0u64; format::HEADER_WORDS];
        h[format::H_MAGIC] = u64::from_le_bytes(format::MAGIC);
        h[format::H_VERSION] = u64::from(format::VERSION) | ((HEADER_BYTES as u64) << 32);
        h[format::H_USED] = 0;
        h[format::H_PID] = u64::from(pid);
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
        if self.generation == sys::fork_generation() {
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
