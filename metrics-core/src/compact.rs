//! Compaction: folding dead writers into the directory's accumulator.
//!
//! Python's multiprocess mode keeps one file set per pid forever, and scrapes slow down as
//! they pile up (client_python #367, #443). Here the counters and histograms of dead
//! writers (and gauges of the modes that keep dead processes) are folded into one file,
//! `accumulator.shm`, and their files deleted: scrape cost follows the live writers.
//! Worker slot files are left alone: a restarted worker resumes its slot.
//!
//! Steps, under the exclusive directory lock (scrapes hold it shared, so none sees a
//! half-done compaction):
//!
//! 1. merge the accumulator and every dead, unfolded file (the reader's merge, with
//!    removals applied), and write the result to a temporary file, whose folded-set
//!    record lists the writer ids of every file it contains;
//! 2. rename it over `accumulator.shm` (atomic);
//! 3. delete the folded files.
//!
//! A crash before 2 leaves the old accumulator and the files: nothing lost. A crash after
//! 2 leaves files whose ids are in the new accumulator's folded set: readers skip them and
//! the next compaction deletes them: nothing counted twice. Files of live writers (whose
//! `flock` is held) are never touched.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::error::Error;
use crate::format::{self, ERROR_KINDS, HEADER_BYTES};
use crate::reader::{Acc, Reader};
use crate::sys;
use crate::writer::{Config, STORE_EXT, TMP_PREFIX};

/// Name of the accumulator file.
pub(crate) const ACCUMULATOR: &str = "accumulator.shm";

/// Temporary files older than this, with no writer holding their lock, are leftovers of
/// a crash and are deleted.
const TMP_GRACE: Duration = Duration::from_secs(60);

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactionStats {
    /// Dead writer files folded into the accumulator by this compaction.
    pub folded: usize,
    /// Files deleted (folded now, or by an earlier compaction that stopped short).
    pub deleted: usize,
    /// Leftover temporary files deleted.
    pub temporary_removed: usize,
    /// Series in the new accumulator.
    pub series: usize,
    /// Whether a new accumulator was written.
    pub rewritten: bool,
}

/// The steps a compaction goes through, for the crash tests' hook.
pub(crate) const STEPS: [&str; 5] = ["locked", "written", "renamed", "unlinked", "done"];

/// Folds dead writers into the accumulator. The caller holds the exclusive directory lock.
pub(crate) fn compact(
    config: &Config,
    reader: &mut Reader,
    hook: &dyn Fn(&str),
) -> Result<CompactionStats, Error> {
    let _gate = sys::enter_gate();
    hook(STEPS[0]);
    let mut stats = CompactionStats {
        temporary_removed: remove_stale_temporaries(config),
        ..CompactionStats::default()
    };
    let view = reader.fold_view()?;
    let acc_path = config.dir.join(ACCUMULATOR);
    let to_fold = &view.sources;
    let leftovers: Vec<PathBuf> = view.leftovers.iter().map(|(p, _)| p.clone()).collect();
    if to_fold.is_empty() && leftovers.is_empty() {
        hook(STEPS[4]);
        return Ok(stats);
    }
    // Hold each file's lock while folding it: proof that its writer is dead, and no one
    // (a worker taking its slot back) can open it for writing meanwhile.
    let mut held = Vec::new();
    for (path, _) in to_fold {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| Error::io("opening", path, e))?;
        if !sys::try_flock(f.as_raw_fd(), true).map_err(|e| Error::io("locking", path, e))? {
            // Came back to life (cannot happen without the directory lock): try later.
            return Ok(stats);
        }
        held.push(f);
    }
    if !to_fold.is_empty() {
        let mut ids: Vec<u64> = to_fold.iter().map(|(_, id)| *id).collect();
        ids.extend(view.leftovers.iter().map(|(_, id)| *id));
        let (words, series) = build_accumulator(config, &view, &ids);
        stats.series = series;
        let tmp = config
            .dir
            .join(format!("{TMP_PREFIX}{:016x}{STORE_EXT}", sys::random_u64()));
        write_file(config, &tmp, &words)?;
        hook(STEPS[1]);
        std::fs::rename(&tmp, &acc_path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io("renaming", &tmp, e)
        })?;
        stats.rewritten = true;
        stats.folded = to_fold.len();
        hook(STEPS[2]);
    }
    for (i, path) in to_fold.iter().map(|(p, _)| p).chain(leftovers.iter()).enumerate() {
        match std::fs::remove_file(path) {
            Ok(()) => stats.deleted += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing", path, e)),
        }
        if i == 0 {
            hook(STEPS[3]);
        }
    }
    drop(held);
    hook(STEPS[4]);
    Ok(stats)
}

/// Writes `words` to a new file at `path`, locked while written, with the store's mode.
fn write_file(config: &Config, path: &std::path::Path, words: &[u64]) -> Result<(), Error> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(config.file_mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io("creating", path, e))?;
    let cleanup = |e: Error| {
        let _ = std::fs::remove_file(path);
        e
    };
    f.set_permissions(std::fs::Permissions::from_mode(config.file_mode))
        .map_err(|e| cleanup(Error::io("setting permissions of", path, e)))?;
    let _ = sys::try_flock(f.as_raw_fd(), true);
    // Reserve first: a full filesystem is an error here, not a SIGBUS in a reader.
    sys::reserve(f.as_raw_fd(), 0, (words.len() * 8) as u64)
        .map_err(|e| cleanup(Error::io("reserving", path, e)))?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    f.write_all(&bytes)
        .map_err(|e| cleanup(Error::io("writing", path, e)))?;
    f.sync_all().map_err(|e| cleanup(Error::io("syncing", path, e)))?;
    Ok(())
}

/// The accumulator's words: header, application, folded ids, families with their series
/// and values, and the removals still in force for files not folded.
fn build_accumulator(config: &Config, view: &crate::reader::FoldView, folded: &[u64]) -> (Vec<u64>, usize) {
    let mut w: Vec<u64> = vec![0; format::HEADER_WORDS];
    w[format::H_MAGIC] = u64::from_le_bytes(format::MAGIC);
    w[format::H_VERSION] = u64::from(format::VERSION) | ((HEADER_BYTES as u64) << 32);
    w[format::H_PID] = u64::from(sys::current_pid()) | (u64::from(format::FLAG_ACCUMULATOR) << 32);
    w[format::H_START] = sys::unix_nanos();
    w[format::H_WRITER_ID] = sys::random_u64();
    w[format::H_WORKER] = format::NO_WORKER;
    w[format::H_ERRORS..format::H_ERRORS + ERROR_KINDS].copy_from_slice(&view.errors);
    w.extend(format::encode_application(&config.application));
    w.extend(format::encode_folded(folded));
    let mut series_count = 0;
    for (id, fam) in view.families.iter().enumerate() {
        let slots = format::series_slots(fam.desc.ty, fam.desc.mode, fam.desc.buckets.len());
        // One block: the statistics slot, then every series' slots.
        let block_slots = 1 + slots * fam.series.len();
        let block_at = w.len() * 8;
        w.push(format::values_header(block_slots));
        let first_slot = block_at + 8;
        w.push(fam.stats);
        for (_, acc) in &fam.series {
            match acc {
                Acc::U64(v) => w.push(*v),
                Acc::F64(v) => w.push(v.to_bits()),
                Acc::Gauge { v, t } if fam.desc.mode.most_recent() => w.extend([0, v.to_bits(), *t]),
                Acc::Gauge { v, .. } => w.push(v.to_bits()),
                Acc::Hist { buckets, sum } => {
                    w.extend(buckets.iter().copied());
                    w.push(sum.to_bits());
                }
                Acc::Summary { .. } => {} // Python files only: never folded
            }
        }
        w.extend(format::encode_family(
            &fam.desc.record(id as u32, first_slot as u64),
        ));
        for (i, (labels, _)) in fam.series.iter().enumerate() {
            let values: Vec<&str> = labels.iter().map(|l| &**l).collect();
            let off = first_slot + 8 + i * slots * 8;
            w.extend(format::encode_series(id as u32, off as u64, &values));
        }
        series_count += fam.series.len();
    }
    for r in &view.removals {
        w.extend(format::encode_removal(r));
    }
    w[format::H_USED] = (w.len() * 8) as u64;
    (w, series_count)
}

/// Deletes temporary files left by crashed writers or compactions: older than the grace
/// period and not locked by anyone.
fn remove_stale_temporaries(config: &Config) -> usize {
    let Ok(entries) = std::fs::read_dir(&config.dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(TMP_PREFIX) {
            continue;
        }
        let Ok(md) = entry.metadata() else { continue };
        if !md.is_file() {
            continue;
        }
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(md.mtime().max(0) as u64);
        if now.duration_since(mtime).unwrap_or_default() < TMP_GRACE {
            continue;
        }
        let path = entry.path();
        let Ok(f) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
        else {
            continue;
        };
        if sys::try_flock(f.as_raw_fd(), true).unwrap_or(false) && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}
