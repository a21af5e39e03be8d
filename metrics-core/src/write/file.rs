//! This process's file: creation under a temporary name, resume of a worker slot, growth
//! (space reserved with `fallocate` before it is used), and appending records and values.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::config::Config;
use crate::error::Error;
use crate::format::desc::FamilyDesc;
use crate::format::header::{self, NewHeader};
use crate::format::native::{CHUNK_WORDS, ChunkId};
use crate::format::parse::Parsed;
use crate::format::records;
use crate::format::{
    self, ERROR_KINDS, ErrorKind, HEADER_BYTES, MAX_FILE_BYTES, MR_SEQ, MR_TIME, MR_VALUE, MetricType,
    SLOT_PREFIX, STORE_EXT, TMP_PREFIX, WRITER_PREFIX,
};
use crate::sys;
use crate::sys::region::Region;

/// First reservation of a new file.
const INITIAL_BYTES: usize = 16 << 10;
/// Slots per value block (one page with its header word).
const BLOCK_SLOTS: usize = 511;
/// Largest single growth step.
const MAX_STEP: usize = 4 << 20;

/// What resuming a slot file found.
pub(super) enum Resume {
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
    pub(super) path: PathBuf,
    /// The descriptor; `None` once dropped.
    pub(super) file: Option<File>,
    pub(super) fd_entry: Option<&'static sys::WriterSlot>,
    /// Fork generation that owns the descriptor.
    pub(super) fork_gen: u64,
    pub(super) writer_id: u64,
    pub(super) region: Region,
    pub(super) reserve: usize,
    /// Bytes written (published to readers through the header's used word).
    pub(super) used: usize,
    /// Bytes reserved with fallocate (the file size).
    pub(super) allocated: usize,
    /// Free range of the current value block.
    pub(super) values_next: usize,
    pub(super) values_end: usize,
    /// Process declaration index -> family id in this file.
    pub(super) ids: Vec<Option<u32>>,
    /// Families of this file, by id, and by name.
    pub(super) descs: Vec<FamilyDesc>,
    pub(super) by_name: HashMap<String, u32>,
    /// Statistics slot offset of each family of this file.
    pub(super) stats: Vec<usize>,
    /// Value slot offset of each series, by family id and label values.
    pub(super) series: HashMap<u32, SeriesOffsets>,
    /// Offset of the count words of the latest chunk of each native bucket chunk identity.
    pub(super) chunks: HashMap<ChunkId, usize>,
    /// Offset of the latest exemplar record of each (series' value offset, bucket).
    pub(super) exemplars: HashMap<(u32, u32), usize>,
    /// The format version in the header: raised to 2 before the first record that needs it.
    pub(super) version: u32,
}

impl WriterFile {
    /// Creates `name` in the directory: initialised under a temporary name, locked, then
    /// renamed into place, so readers never see a half-written file.
    pub(super) fn create(
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
        let app = records::encode_application(&config.application);
        wf.append(&app)
            .map_err(|e| cleanup(Error::io("writing", &tmp, e)))?;
        wf.publish();
        std::fs::rename(&tmp, &path).map_err(|e| cleanup(Error::io("renaming", &tmp, e)))?;
        wf.register();
        Ok(wf)
    }

    pub(super) fn from_parts(
        path: PathBuf,
        file: File,
        fork_gen: u64,
        writer_id: u64,
        region: Region,
        reserve: usize,
    ) -> Self {
        WriterFile {
            path,
            file: Some(file),
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
            chunks: HashMap::new(),
            exemplars: HashMap::new(),
            version: format::BASE_VERSION,
        }
    }

    /// Records descriptor and mapping for detaching in fork children. Called in the gate.
    pub(super) fn register(&mut self) {
        let (addr, len) = self.region.span();
        self.fd_entry = Some(sys::register_writer(self.fd(), addr, len));
    }

    /// Takes worker slot `slot`: resumes its file if a previous worker left one that is
    /// whole, or starts a new one. Called with the directory lock held.
    ///
    /// Something at the slot's name that is not a slot file this version can resume (a
    /// symlink or another kind of file planted there, a file of a newer format version)
    /// is left alone, logged and counted (`slot_skipped`): this process then writes an
    /// ordinary file of its own, so a planted file cannot keep a worker from starting.
    pub(super) fn acquire_slot(
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
    pub(super) fn resume(
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
        let header = match header::read_header(&region, size) {
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
            Err(header::HeaderError::Newer(v)) => {
                return Ok(Resume::Skip(format!(
                    "it has format version {v}, newer than this version's {} (a newer deployment's slot, \
                     resumed when it comes back)",
                    format::VERSION
                )));
            }
            Err(header::HeaderError::Corrupt(c)) => return WriterFile::move_aside(path, &c.0),
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
        wf.version = header.version;
        wf.adopt(&parsed, path, size)?;
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

    /// Takes over what a resumed file holds: clears the unpublished tail past `used` (it
    /// holds whatever the killed writer had started to append, a record or a block header,
    /// and never published: new blocks' slots must read zero), indexes its families and
    /// series, and resets the gauges a new process must start from zero.
    fn adopt(&mut self, parsed: &Parsed, path: &Path, size: usize) -> Result<(), Error> {
        for off in (self.used..size - size % 8).step_by(8) {
            if let Some(w) = self.region.word(off) {
                w.store(0, Ordering::Relaxed);
            }
        }
        for fam in &parsed.families {
            self.by_name.insert(fam.rec.name.clone(), fam.rec.id);
            self.descs.push(FamilyDesc::from_record(&fam.rec));
            self.stats.push(fam.rec.stats_offset as usize);
        }
        for s in &parsed.series {
            let labels = Parsed::series_labels(&self.region, s)
                .map_err(|c| Error::io("reading", path, io::Error::other(c.0)))?;
            self.series.entry(s.family).or_default().insert(labels, s.offset);
        }
        // Later chunks of one identity replaced full ones: the last is the one to go on with.
        for c in &parsed.chunks {
            self.chunks.insert(c.id, c.counts);
        }
        for s in &parsed.series {
            for &e in parsed.exemplars_of(s) {
                let e = parsed.exemplars[e as usize];
                self.exemplars.insert((s.offset as u32, e.bucket), e.record);
                self.repair_exemplar(e.record);
            }
        }
        self.reset_gauges(parsed);
        Ok(())
    }

    /// Gauges of a resumed file: `live*` modes start from zero (in-flight requests of a
    /// killed predecessor must not linger; counters, histograms and the other gauge modes
    /// go on), and `mostrecent` sequences left odd by a kill inside `set` are made even.
    fn reset_gauges(&self, parsed: &Parsed) {
        for s in &parsed.series {
            let fam = &parsed.families[s.family as usize].rec;
            if fam.ty != MetricType::Gauge {
                continue;
            }
            let word = |i: usize| self.region.word(s.offset + i * 8);
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
    }

    /// Renames an unreadable slot file aside (still `.shm`: readers report it, nothing
    /// deletes it) so the slot starts a new file.
    pub(super) fn move_aside(path: &Path, why: &str) -> Result<Resume, Error> {
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

    pub(super) fn write_header(
        &self,
        pid: u32,
        writer_id: u64,
        worker: Option<u64>,
        pending: [u64; ERROR_KINDS],
        flags: u32,
    ) {
        let h = NewHeader {
            version: format::BASE_VERSION,
            pid,
            flags,
            writer_id,
            worker,
            errors: pending,
        }
        .words();
        for (i, w) in h.iter().enumerate() {
            if let Some(word) = self.region.word(i * 8) {
                word.store(*w, Ordering::Relaxed);
            }
        }
    }

    /// Raises the header's format version to `version` (if it is lower) before a record
    /// that needs it is appended: a reader that loads the new `used` sees the new version.
    pub(super) fn require_version(&mut self, version: u32) {
        if self.version >= version {
            return;
        }
        if let Some(w) = self.region.word(format::H_VERSION * 8) {
            w.store(header::version_word(version), Ordering::Release);
        }
        self.version = version;
    }

    /// Appends a chunk of zero counts for `id` (and publishes it): the offset of its count
    /// words. It becomes the chunk of `id` that writers go on with.
    pub(super) fn append_chunk(&mut self, id: ChunkId) -> io::Result<usize> {
        self.require_version(format::VERSION);
        let off = self.append(&records::encode_chunk(id, &[0; CHUNK_WORDS]))? + 16;
        self.publish();
        self.chunks.insert(id, off);
        Ok(off)
    }

    /// An exemplar record left odd by a writer killed inside a write: its words may be
    /// torn, so it is marked empty (time 0) and its sequence made even again.
    fn repair_exemplar(&self, record: usize) {
        use crate::format::exemplar::{EX_SEQ, EX_TIME};
        let (Some(seq), Some(time)) = (
            self.region.word(record + EX_SEQ * 8),
            self.region.word(record + EX_TIME * 8),
        ) else {
            return;
        };
        let s = seq.load(Ordering::Relaxed);
        if s & 1 == 1 {
            time.store(0, Ordering::Relaxed);
            seq.store(s + 1, Ordering::Release);
        }
    }

    /// Appends an empty exemplar record for `key` (series' value offset, bucket) with room
    /// for `capacity` bytes of labels, and publishes it: the record's offset. It becomes
    /// the record writers of that key go on with.
    pub(super) fn append_exemplar(&mut self, key: (u32, u32), capacity: usize) -> io::Result<usize> {
        self.require_version(format::VERSION);
        let off = self.append(&records::encode_exemplar(key.0, key.1, capacity, None))?;
        self.publish();
        self.exemplars.insert(key, off);
        Ok(off)
    }

    /// Makes everything appended so far visible to readers.
    pub(super) fn publish(&self) {
        if let Some(w) = self.region.word(format::H_USED * 8) {
            w.store(self.used as u64, Ordering::Release);
        }
    }

    /// Reserves file space so that `need` bytes are backed.
    pub(super) fn ensure(&mut self, need: usize) -> io::Result<()> {
        if need <= self.allocated {
            return Ok(());
        }
        if need > self.reserve {
            return Err(io::Error::other(format!(
                "the file would exceed its limit of {} bytes (StoreBuilder::max_file_size)",
                self.reserve
            )));
        }
        // A quarter more each time: at most a fifth of the file is reserved and unused (the
        // reservation is memory on tmpfs), in a few dozen `fallocate` calls up to 1 GiB.
        let step = (self.allocated / 4).clamp(INITIAL_BYTES, MAX_STEP);
        let roomy = round_up(need.max(self.allocated + step), 4096).min(self.reserve);
        let tight = round_up(need, 4096).min(self.reserve);
        let fd = self.fd();
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
    pub(super) fn append(&mut self, words: &[u64]) -> io::Result<usize> {
        let off = self.used;
        self.ensure(off + words.len() * 8)?;
        self.store_words(off, words);
        self.used = off + words.len() * 8;
        Ok(off)
    }

    pub(super) fn store_words(&self, off: usize, words: &[u64]) {
        for (i, w) in words.iter().enumerate() {
            if let Some(word) = self.region.word(off + i * 8) {
                word.store(*w, Ordering::Relaxed);
            }
        }
    }

    /// Allocates `nslots` zeroed value slots and appends `record`, whose word
    /// `offset_word` receives the slots' byte offset; publishes both. All space is
    /// reserved before anything is written, so a failure leaves the file unchanged.
    pub(super) fn append_with_values(
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
            self.store_words(start, &[records::values_header(block_slots)]);
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

impl WriterFile {
    /// The file's descriptor.
    fn fd(&self) -> std::os::fd::RawFd {
        self.file.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }
}

impl Drop for WriterFile {
    fn drop(&mut self) {
        if self.fork_gen == sys::fork_generation() {
            if let Some(e) = self.fd_entry {
                sys::unregister_writer(e);
            }
            // Ours (same generation): closing it releases the lock.
            drop(self.file.take());
        } else {
            // An inherited file in a fork child: the atfork handler closed its descriptor
            // (closing the number again could close an unrelated file) and replaced its
            // mapping with a placeholder, which the region's drop unmaps.
            std::mem::forget(self.file.take());
        }
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
