//! The writing side of one process: its own file, its growth, and the records in it.
//!
//! A process writes only its own file and holds an exclusive `flock` on it for its whole
//! life; the kernel drops the lock when the process dies, however it dies, so readers can
//! tell live writers from dead ones without any supervisor hook.
//!
//! With a stable worker id, the file is the worker's slot (`slot-<id>.shm`): a restarted
//! worker resumes it, counters and histograms going on from where its predecessor stopped.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use crate::error::Error;
use crate::format::desc::{FamilyDesc, OVERFLOW_LABEL_VALUE};
use crate::format::native::ChunkId;
use crate::format::records;
use crate::format::{self, ERROR_KINDS, ErrorKind};
use crate::format::{STORE_EXT, WRITER_PREFIX};
use config::Config;
use file::WriterFile;

pub(crate) mod cell;
pub(crate) mod config;
pub(crate) mod exemplar;
pub(crate) mod file;
pub(crate) mod native;
use crate::sys;

/// A series that waits in process memory for file slots (a [`cell::Cell`]).
pub(crate) trait Waiting: Send + Sync {
    /// Tries to move the series into the file now; whether it no longer waits.
    fn flush(&self) -> bool;
    /// Whether the series has file slots in this process now.
    fn bound(&self) -> bool;
}

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
    waiting: Mutex<Vec<Weak<dyn Waiting>>>,
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

/// The writer's state locked for binding a record of one series (`Writer::lock_series`).
/// The lock is released before the fork gate: fields drop in order.
struct SeriesLock<'a> {
    st: MutexGuard<'a, WriterState>,
    /// Offset of the series' record in the current file.
    offset: u32,
    _gate: sys::GateGuard,
}

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
    pub(crate) fn wait_for_file(&self, cell: Weak<dyn Waiting>) {
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
                let record = records::encode_series(id, 0, &values);
                file.append_with_values(nslots, record, records::SERIES_VALUES_WORD)
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

    /// Binds the chunk of native buckets `chunk` (side, schema) of series `key` in this
    /// process's current file: the chunk the file holds for it, or a new one when there is
    /// none or when `replacing` (a full chunk's count words) is the one it holds. Returns
    /// the chunk's count words; `None` when the series has no slots in the file yet or the
    /// file cannot grow (counted and logged).
    pub(crate) fn bind_chunk(
        &self,
        key: &BindKey<'_>,
        negative: bool,
        schema: i8,
        chunk: i16,
        replacing: Option<*const AtomicU64>,
    ) -> Option<*const AtomicU64> {
        let mut locked = self.lock_series(key)?;
        let chunk_id = ChunkId {
            series_offset: locked.offset,
            negative,
            schema,
            chunk,
        };
        let words = crate::format::native::CHUNK_WORDS;
        let file = locked.st.file.as_mut()?;
        if let Some(&off) = file.chunks.get(&chunk_id) {
            let p = file.region.words_ptr(off, words)?;
            if replacing != Some(p) {
                return Some(p);
            }
        }
        let appended = file.append_chunk(chunk_id);
        self.appended(&mut locked.st, appended, words)
    }

    /// Binds the exemplar record of `bucket` of series `key` in this process's current
    /// file: the one it holds if it has room for `capacity` bytes of labels and is not
    /// `replacing`, a new one otherwise (room for at least `capacity`). Returns a pointer
    /// to the record's first word; `None` when the series has no slots in the file yet or
    /// the file cannot grow.
    pub(crate) fn bind_exemplar(
        &self,
        key: &BindKey<'_>,
        bucket: u32,
        capacity: usize,
        replacing: Option<*const AtomicU64>,
    ) -> Option<*const AtomicU64> {
        use crate::format::exemplar::{EX_FIRST_CAPACITY, EX_HEAD_WORDS};
        let mut locked = self.lock_series(key)?;
        let offset = locked.offset;
        let file = locked.st.file.as_mut()?;
        if let Some(&rec) = file.exemplars.get(&(offset, bucket)) {
            let len = file
                .region
                .word(rec)
                .map(|w| (w.load(Ordering::Relaxed) >> 32) as usize)?;
            let p = file.region.words_ptr(rec, len / 8)?;
            if len >= EX_HEAD_WORDS * 8 + capacity && replacing != Some(p) {
                return Some(p);
            }
        }
        let room = capacity.max(EX_FIRST_CAPACITY).div_ceil(8) * 8;
        let appended = file.append_exemplar((offset, bucket), room);
        self.appended(&mut locked.st, appended, EX_HEAD_WORDS + room / 8)
    }

    /// The writer's state, locked inside the fork gate, with the offset of series `key`'s
    /// record in the current file: `None` when the key is no series or the series has no
    /// slots in the file yet.
    fn lock_series(&self, key: &BindKey<'_>) -> Option<SeriesLock<'_>> {
        let BindKey::Series { family, labels } = key else {
            return None;
        };
        let gate = sys::enter_gate();
        let mut st = self.lock();
        self.sync_fork(&mut st);
        let file = st.file.as_ref()?;
        let id = file.ids.get(*family as usize).copied().flatten()?;
        let offset = u32::try_from(*file.series.get(&id)?.get(*labels)?).ok()?;
        Some(SeriesLock {
            st,
            offset,
            _gate: gate,
        })
    }

    /// The first `words` words of a record just appended at the offset `appended` holds,
    /// or `None` after counting and logging why the file could not grow.
    fn appended(
        &self,
        st: &mut WriterState,
        appended: io::Result<usize>,
        words: usize,
    ) -> Option<*const AtomicU64> {
        match appended {
            Ok(off) => st.file.as_ref()?.region.words_ptr(off, words),
            Err(e) => {
                self.growth_failed(st, &e.to_string());
                None
            }
        }
    }

    /// Appends a record that has no value slots (a removal) and publishes it, raising the
    /// file's format version to `version` first if it is lower.
    pub(crate) fn append_record(&self, words: &[u64], version: u32) -> Result<(), Error> {
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
        file.require_version(version);
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
            if desc.native.is_some() {
                file.require_version(format::VERSION);
            }
            let words = records::encode_family(&desc.record(id, 0));
            match file.append_with_values(1, words, records::FAMILY_STATS_WORD) {
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
