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

#[cfg(feature = "python")]
pub(crate) mod python;

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::Error;
use crate::format::desc::FamilyDesc;
use crate::format::exemplar::encode_labels;
use crate::format::header::NewHeader;
use crate::format::native::{BucketKey, CHUNK_BUCKETS, CHUNK_WORDS, ChunkId};
use crate::format::records;
use crate::format::{self, ACCUMULATOR, ACCUMULATOR_PREFIX, STORE_EXT, TMP_PREFIX};
use crate::read::Reader;
use crate::read::acc::Acc;
use crate::read::fold::{FoldPlan, FoldView};
use crate::read::scan::is_transient;
use crate::sys;
use crate::write::config::Config;

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

/// Most dead files one round of a compaction holds open (and locked) at once: the rest
/// wait for the next round. Keeps a compaction within a low `RLIMIT_NOFILE`.
pub(crate) const FOLD_BATCH: usize = 64;

/// Folds dead writers into the accumulator, in rounds of at most [`FOLD_BATCH`] files.
/// The caller holds the exclusive directory lock; `own`: its own writer ids (live).
pub(crate) fn compact(
    config: &Config,
    reader: &mut Reader,
    own: &[u64],
    hook: &dyn Fn(&str),
) -> Result<CompactionStats, Error> {
    let _gate = sys::enter_gate();
    hook(STEPS[0]);
    let mut stats = CompactionStats {
        temporary_removed: remove_stale_temporaries(config),
        ..CompactionStats::default()
    };
    // Every round folds at least one file, so the number of files to fold at the start
    // bounds the rounds (files that die meanwhile wait for the next compaction).
    let mut rounds = 0;
    let mut bound = None;
    loop {
        rounds += 1;
        let plan = reader.fold_plan(own)?;
        let bound = *bound.get_or_insert(plan.sources.len() + 1);
        if (plan.sources.is_empty() && plan.leftovers.is_empty()) || rounds > bound {
            break;
        }
        let more = fold_round(config, reader, &plan, &mut stats, hook)?;
        if !more {
            break;
        }
    }
    hook(STEPS[4]);
    Ok(stats)
}

/// Where a round folds: an accumulator read in this pass, or a new one.
struct Target {
    path: PathBuf,
    /// Writer id of the accumulator read, `None` for a new one.
    writer_id: Option<u64>,
    /// What the name holds now (must not change until the rename).
    ident: Option<(u64, u64)>,
}

/// The accumulator a round folds into and the sources it folds there: dead files whose
/// declarations agree with the accumulator's and with each other's. The first accumulator
/// that can take some sources does (`accumulator.shm` first); files that none can take (a
/// release declared a family with other labels or buckets) start a new one.
fn choose(config: &Config, plan: &FoldPlan) -> (Target, Vec<usize>) {
    let pick = |decls: &mut Vec<FamilyDesc>| -> Vec<usize> {
        let mut chosen = Vec::new();
        for (i, src) in plan.sources.iter().enumerate() {
            if chosen.len() == FOLD_BATCH {
                break;
            }
            let agrees = src.decls.iter().all(|d| {
                decls
                    .iter()
                    .find(|x| x.name == d.name)
                    .is_none_or(|x| x.same_schema(d))
            });
            if agrees {
                for d in &src.decls {
                    if !decls.iter().any(|x| x.name == d.name) {
                        decls.push(d.clone());
                    }
                }
                chosen.push(i);
            }
        }
        chosen
    };
    for acc in &plan.accumulators {
        let mut decls = acc.decls.clone();
        let chosen = pick(&mut decls);
        if !chosen.is_empty() {
            let target = Target {
                path: acc.path.clone(),
                writer_id: Some(acc.writer_id),
                ident: Some(acc.ident),
            };
            return (target, chosen);
        }
    }
    let has_primary = plan
        .accumulators
        .first()
        .is_some_and(|a| a.path.file_name() == Some(std::ffi::OsStr::new(ACCUMULATOR)));
    let (path, ident) = if has_primary {
        let name = format!("{ACCUMULATOR_PREFIX}{:016x}{STORE_EXT}", sys::random_u64());
        (config.dir.join(name), None)
    } else {
        (config.dir.join(ACCUMULATOR), plan.primary)
    };
    let chosen = pick(&mut Vec::new());
    (
        Target {
            path,
            writer_id: None,
            ident,
        },
        chosen,
    )
}

/// Source files held open and locked, and the (path, writer id) of each.
type Locked = (Vec<std::fs::File>, Vec<(PathBuf, u64)>);

/// Opens and locks the chosen sources, each still the file the plan read: proof that its
/// writer is dead, and no one (a worker taking its slot back) can open it for writing while
/// it is folded. Returns the held files and the (path, writer id) of each; stops early when
/// out of descriptors (the rest wait for the next round).
fn lock_sources(plan: &FoldPlan, chosen: &[usize]) -> Result<Locked, Error> {
    let mut held = Vec::new();
    let mut selected: Vec<(PathBuf, u64)> = Vec::new();
    for &i in chosen {
        let src = &plan.sources[i];
        let f = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&src.path)
        {
            Ok(f) => f,
            // Out of descriptors: fold what is held now, the rest in the next round.
            Err(e) if is_transient(&e) && !held.is_empty() => break,
            Err(e) => return Err(Error::io("opening", &src.path, e)),
        };
        // The name must still be the file that was read.
        if f.metadata().map(|m| (m.dev(), m.ino())).ok() != Some(src.ident) {
            continue;
        }
        match sys::try_flock(f.as_raw_fd(), true) {
            Ok(true) => {}
            // Came back to life (cannot happen without the directory lock): not folded.
            Ok(false) => continue,
            Err(e) => return Err(Error::io("locking", &src.path, e)),
        }
        held.push(f);
        selected.push((src.path.clone(), src.writer_id));
    }
    Ok((held, selected))
}

/// One round: folds up to [`FOLD_BATCH`] of the plan's sources into one accumulator, and
/// deletes them and the leftovers. Returns whether sources are left for another round.
fn fold_round(
    config: &Config,
    reader: &mut Reader,
    plan: &FoldPlan,
    stats: &mut CompactionStats,
    hook: &dyn Fn(&str),
) -> Result<bool, Error> {
    let (target, chosen) = choose(config, plan);
    let (held, selected) = lock_sources(plan, &chosen)?;
    let leftovers: Vec<PathBuf> = plan.leftovers.iter().map(|(p, _)| p.clone()).collect();
    if selected.is_empty() && leftovers.is_empty() {
        return Ok(false);
    }
    if !selected.is_empty() {
        let ids: HashSet<u64> = selected.iter().map(|(_, id)| *id).collect();
        let view = reader.fold_view(&ids, target.writer_id)?;
        let mut folded: Vec<u64> = selected.iter().map(|(_, id)| *id).collect();
        folded.extend(plan.leftovers.iter().map(|(_, id)| *id));
        let (words, series) = build_accumulator(config, &view, &folded);
        stats.series = series;
        replace_accumulator(config, &target.path, &words, target.ident, &|| hook(STEPS[1]))?;
        stats.rewritten = true;
        stats.folded += selected.len();
        hook(STEPS[2]);
    }
    for (i, path) in selected
        .iter()
        .map(|(p, _)| p)
        .chain(leftovers.iter())
        .enumerate()
    {
        if delete_folded(path)? {
            stats.deleted += 1;
        }
        if i == 0 {
            hook(STEPS[3]);
        }
    }
    drop(held);
    Ok(selected.len() < plan.sources.len())
}

/// Writes `words` to a temporary file and renames it over the accumulator at `path`, only
/// if `path` holds `expected` (the accumulator read, or no entry) both before and after the
/// write; `written` runs between the write and the rename. Returns the new accumulator's
/// (device, inode).
fn replace_accumulator(
    config: &Config,
    path: &Path,
    words: &[u64],
    expected: Option<(u64, u64)>,
    written: &dyn Fn(),
) -> Result<Option<(u64, u64)>, Error> {
    let tmp = config
        .dir
        .join(format!("{TMP_PREFIX}{:016x}{STORE_EXT}", sys::random_u64()));
    let before = identity(path);
    write_file(config, &tmp, words)?;
    written();
    if before != expected || identity(path) != before {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Directory {
            path: config.dir.clone(),
            reason: format!(
                "not compacting: {} changed while it was being folded",
                path.display()
            ),
            source: None,
        });
    }
    let new = identity(&tmp);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("renaming", &tmp, e)
    })?;
    Ok(new)
}

/// Deletes a file whose values an accumulator holds; whether it was still there.
fn delete_folded(path: &Path) -> Result<bool, Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("removing", path, e)),
    }
}

/// (device, inode) of the entry `path` (not followed), if there is one.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
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
fn build_accumulator(config: &Config, view: &FoldView, folded: &[u64]) -> (Vec<u64>, usize) {
    // Version 2 only when it holds something version 2 added, so that releases that know
    // only version 1 keep reading accumulators without native histograms.
    let version = if view
        .families
        .iter()
        .any(|f| f.desc.native.is_some() || !f.exemplars.is_empty())
    {
        format::VERSION
    } else {
        format::BASE_VERSION
    };
    let mut w: Vec<u64> = NewHeader {
        version,
        pid: sys::current_pid(),
        flags: format::FLAG_ACCUMULATOR,
        writer_id: sys::random_u64(),
        worker: None,
        errors: view.errors,
    }
    .words()
    .to_vec();
    w.extend(records::encode_application(&config.application));
    w.extend(records::encode_folded(folded));
    let mut series_count = 0;
    for (id, fam) in view.families.iter().enumerate() {
        let slots = fam.desc.slots();
        // One block: the statistics slot, then every series' slots.
        let block_slots = 1 + slots * fam.series.len();
        let block_at = w.len() * 8;
        w.push(records::values_header(block_slots));
        let first_slot = block_at + 8;
        w.push(fam.stats);
        for (_, acc) in &fam.series {
            match acc {
                Acc::U64(v) => w.push(*v),
                Acc::F64(v) => w.push(v.to_bits()),
                Acc::Gauge { v, t } if fam.desc.mode.most_recent() => w.extend([0, v.to_bits(), *t]),
                Acc::Gauge { v, .. } => w.push(v.to_bits()),
                Acc::Hist(h) => {
                    w.extend(h.buckets.iter().copied());
                    w.push(h.sum.to_bits());
                    if let Some(n) = &h.native {
                        w.push(n.zero);
                    }
                }
                Acc::Summary { .. } => {} // Python files only: never folded
            }
        }
        w.extend(records::encode_family(
            &fam.desc.record(id as u32, first_slot as u64),
        ));
        for (i, (labels, _)) in fam.series.iter().enumerate() {
            let values: Vec<&str> = labels.iter().map(|l| &**l).collect();
            let off = first_slot + 8 + i * slots * 8;
            w.extend(records::encode_series(id as u32, off as u64, &values));
        }
        for (i, bucket, e) in &fam.exemplars {
            let off = first_slot + 8 + i * slots * 8;
            let labels: Vec<(&str, &str)> = e.labels.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let mut data = Vec::new();
            encode_labels(&labels, &mut data);
            let ex = (&data[..], labels.len() as u32, e.value, e.time);
            w.extend(records::encode_exemplar(
                off as u32,
                *bucket as u32,
                data.len(),
                Some(ex),
            ));
        }
        for (i, (_, acc)) in fam.series.iter().enumerate() {
            if let Acc::Hist(h) = acc {
                if let Some(n) = &h.native {
                    let off = first_slot + 8 + i * slots * 8;
                    push_chunks(&mut w, off as u32, &n.buckets);
                }
            }
        }
        series_count += fam.series.len();
    }
    for r in &view.removals {
        w.extend(records::encode_removal(r));
    }
    w[format::H_USED] = (w.len() * 8) as u64;
    (w, series_count)
}

/// The chunk records of a native series whose value slots are at `series_offset`: its
/// buckets exactly as merged (each at the schema it was recorded at), a chunk's counts
/// split over several chunks of the same buckets where one does not fit in 32 bits.
fn push_chunks(w: &mut Vec<u64>, series_offset: u32, buckets: &[(BucketKey, u64)]) {
    let mut chunks: std::collections::BTreeMap<ChunkId, [u64; 16]> = std::collections::BTreeMap::new();
    for (k, n) in buckets.iter().filter(|(_, n)| *n > 0) {
        let id = ChunkId {
            series_offset,
            negative: k.negative,
            schema: k.schema,
            chunk: ChunkId::chunk_of(k.index),
        };
        let j = k.index.rem_euclid(CHUNK_BUCKETS) as usize;
        let c = chunks.entry(id).or_insert([0; 16]);
        c[j] = c[j].saturating_add(*n);
    }
    for (id, mut counts) in chunks {
        while counts.iter().any(|c| *c > 0) {
            let mut words = [0u64; CHUNK_WORDS];
            for (j, c) in counts.iter_mut().enumerate() {
                let part = (*c).min(u64::from(u32::MAX));
                *c -= part;
                words[j / 2] |= part << (32 * (j & 1));
            }
            w.extend(records::encode_chunk(id, &words));
        }
    }
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
