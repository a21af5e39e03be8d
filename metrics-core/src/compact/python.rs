//! Python compaction: folding the counter and histogram files of dead Python
//! `prometheus_client` processes into `accumulator-python.shm`, so that a directory whose
//! workers come and go (gunicorn's `max_requests`) stays bounded.
//!
//! Only for directories that nothing reads with Python's own `MultiProcessCollector`: it
//! cannot read the accumulator, and would lose the folded counts.
//!
//! A file is folded only once no process has its pid. Steps, under the exclusive directory
//! lock (scrapes hold it shared):
//!
//! 1. delete the files an earlier compaction folded but did not delete (their fold ids are
//!    in the accumulator's folded set; readers skip them);
//! 2. rename each foldable file to `<name>.folding-<id>` (a fresh random fold id): no
//!    Python process opens that name, so a process that reuses the pid later starts a new
//!    file. Readers read a renamed file as before, until an accumulator lists its id;
//! 3. check again that no process has the pid: one that took the pid before the rename may
//!    have the file open, and its file is left for a later compaction;
//! 4. read the renamed files whole, add them to the accumulator's values, and write the
//!    result to a temporary file whose folded set lists their fold ids;
//! 5. rename it over `accumulator-python.shm` (atomic);
//! 6. delete the folded files;
//! 7. write the accumulator again without their ids (no file has them any more).
//!
//! A crash before 5 leaves the old accumulator and the files (renamed or not), read as
//! before: nothing lost. A crash after 5 leaves files whose ids are in the new folded set:
//! readers skip them and the next compaction deletes them: nothing counted twice.
//!
//! A family is folded only when its values fit one declaration of the accumulator: every
//! series with the same label names (and the same bucket bounds, for histograms), names a
//! store file accepts. The files of a family that does not (a release that changed its
//! labels or buckets, a name the store refuses) are left in place, still counted.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::PathBuf;

use super::{build_accumulator, delete_folded, replace_accumulator};
use crate::error::Error;
use crate::format::desc::{FamilyDesc, Opts};
use crate::format::{MetricType, PYTHON_ACCUMULATOR};
use crate::read::Reader;
use crate::read::fold::{FoldFamily, FoldView};
use crate::read::join::{FamilyOut, OutSeries};
use crate::read::python::FOLDING_MARK;
use crate::sys;
use crate::write::config::Config;

/// What a Python compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PythonCompactionStats {
    /// Files of dead Python processes folded into the accumulator by this compaction.
    pub folded: usize,
    /// Files deleted (folded now, or by an earlier compaction that stopped short).
    pub deleted: usize,
    /// Files of dead processes left in place: a family they hold does not fit one
    /// declaration, they could not be read whole, or their pid was taken again.
    pub kept: usize,
    /// Series in the new accumulator.
    pub series: usize,
    /// Whether a new accumulator was written.
    pub rewritten: bool,
}

/// The steps a Python compaction goes through, for the crash tests' hook.
pub(crate) const PY_STEPS: [&str; 7] = [
    "locked", "claimed", "written", "renamed", "unlinked", "tidied", "done",
];

/// Most files one Python compaction folds (the rest wait for the next one): bounds the
/// memory and the time the directory lock is held.
const PY_FOLD_BATCH: usize = 4096;

/// A file claimed for folding: its name now (renamed), path and fold id.
struct Claimed {
    name: OsString,
    path: PathBuf,
    id: u64,
    /// The process identifier in its name.
    pid: Box<str>,
}

/// Folds the counter and histogram files of dead Python processes into the Python
/// accumulator. The caller holds the exclusive directory lock; `own`: its own writer ids.
pub(crate) fn compact_python(
    config: &Config,
    reader: &mut Reader,
    own: &[u64],
    hook: &dyn Fn(&str),
) -> Result<PythonCompactionStats, Error> {
    let _gate = sys::enter_gate();
    hook(PY_STEPS[0]);
    let mut stats = PythonCompactionStats::default();
    let plan = reader.python_fold_plan(own)?;
    for path in &plan.leftovers {
        remove(path, &mut stats)?;
    }
    let mut claimed = claim(config, &plan.candidates)?;
    if !claimed.is_empty() {
        hook(PY_STEPS[1]);
    }
    // A process that took the pid between the first check and the rename may have the
    // file open: it stays (renamed, still read) until that process is gone too.
    claimed.retain(|c| pid_gone(&c.pid));
    if claimed.is_empty() {
        hook(PY_STEPS[6]);
        return Ok(stats);
    }
    let target = plan.accumulator.as_ref();
    // The accumulator's own families and counters of errors, as they are.
    let (acc_families, errors): (Vec<FoldFamily>, _) = match target {
        Some(t) => {
            let view = reader.fold_view(&HashSet::new(), Some(t.writer_id))?;
            let families = view
                .families
                .into_iter()
                .filter(|f| t.names.contains(&f.desc.name))
                .collect();
            (families, view.errors)
        }
        None => (Vec::new(), Default::default()),
    };
    let renamed = claimed.len();
    // Read the claimed files; leave out those not read whole and those holding a family
    // that does not fit one declaration, then read the rest again.
    let mut names: HashSet<OsString> = claimed.iter().map(|c| c.name.clone()).collect();
    let mut view = None;
    for _ in 0..4 {
        if names.is_empty() {
            break;
        }
        let read = reader.python_fold_read(own, &names)?;
        let before = names.len();
        let (families, misfits) = fold_families(&acc_families, read.families);
        names.retain(|n| {
            read.whole
                .get(n)
                .is_some_and(|fams| fams.iter().all(|f| !misfits.contains(&**f)))
        });
        if names.len() == before {
            view = Some(families);
            break;
        }
    }
    if view.is_none() {
        names.clear();
    }
    claimed.retain(|c| names.contains(&c.name));
    stats.kept = renamed - claimed.len();
    let Some(families) = view.filter(|_| !claimed.is_empty()) else {
        hook(PY_STEPS[6]);
        return Ok(stats);
    };
    let view = FoldView {
        families,
        errors,
        removals: Vec::new(),
    };
    let folded: Vec<u64> = claimed.iter().map(|c| c.id).collect();
    let (words, series) = build_accumulator(config, &view, &folded);
    stats.series = series;
    let path = config.dir.join(PYTHON_ACCUMULATOR);
    let written = replace_accumulator(config, &path, &words, target.map(|t| t.ident), &|| {
        hook(PY_STEPS[2])
    })?;
    stats.rewritten = true;
    stats.folded = claimed.len();
    hook(PY_STEPS[3]);
    for (i, c) in claimed.iter().enumerate() {
        remove(&c.path, &mut stats)?;
        if i == 0 {
            hook(PY_STEPS[4]);
        }
    }
    // The folded files are gone: the accumulator no longer needs their ids, which every
    // scrape would otherwise look files up in.
    let (words, _) = build_accumulator(config, &view, &[]);
    replace_accumulator(config, &path, &words, written, &|| {})?;
    hook(PY_STEPS[5]);
    hook(PY_STEPS[6]);
    Ok(stats)
}

/// Deletes a folded file (gone already is fine).
fn remove(path: &std::path::Path, stats: &mut PythonCompactionStats) -> Result<(), Error> {
    if delete_folded(path)? {
        stats.deleted += 1;
    }
    Ok(())
}

/// Whether `pid` (a Python file's process identifier) is a pid no process has now.
fn pid_gone(pid: &str) -> bool {
    pid.parse::<i32>().is_ok_and(sys::process_gone)
}

/// Renames the candidates whose pid no process has to their folding names (those renamed
/// by an earlier compaction keep theirs).
fn claim(
    config: &Config,
    candidates: &[(OsString, PathBuf, Box<str>, Option<u64>)],
) -> Result<Vec<Claimed>, Error> {
    let mut claimed = Vec::new();
    for (name, path, pid, fold_id) in candidates.iter().take(PY_FOLD_BATCH) {
        if !pid_gone(pid) {
            continue;
        }
        match fold_id {
            Some(id) => claimed.push(Claimed {
                name: name.clone(),
                path: path.clone(),
                id: *id,
                pid: pid.clone(),
            }),
            None => {
                let id = sys::random_u64();
                let mut new_name = name.clone();
                new_name.push(format!("{FOLDING_MARK}{id:016x}"));
                let new_path = config.dir.join(&new_name);
                match std::fs::rename(path, &new_path) {
                    Ok(()) => claimed.push(Claimed {
                        name: new_name,
                        path: new_path,
                        id,
                        pid: pid.clone(),
                    }),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("renaming", path, e)),
                }
            }
        }
    }
    Ok(claimed)
}

/// The accumulator's families with the Python families added, and the names of the
/// Python families that do not fit one declaration (left out).
fn fold_families(acc: &[FoldFamily], python: Vec<FamilyOut>) -> (Vec<FoldFamily>, HashSet<String>) {
    let mut by_name: BTreeMap<String, (Option<FamilyDesc>, u64, FamilyOut)> = BTreeMap::new();
    for f in acc {
        let out = FamilyOut {
            name: f.desc.name.clone(),
            help: f.desc.help.clone(),
            ty: f.desc.ty,
            mode: f.desc.mode,
            label_names: f.desc.labels.clone(),
            buckets: f.desc.buckets.clone(),
            series: f
                .series
                .iter()
                .map(|(labels, acc)| OutSeries::plain(labels.clone(), acc.clone()))
                .collect(),
            sorted: false,
        };
        by_name.insert(f.desc.name.clone(), (Some(f.desc.clone()), f.stats, out));
    }
    let mut misfits = HashSet::new();
    for py in python {
        let name = py.name.clone();
        match by_name.get_mut(&name) {
            Some((_, _, out)) => {
                if out.absorb(py).is_err() {
                    misfits.insert(name);
                }
            }
            None => {
                by_name.insert(name, (None, 0, py));
            }
        }
    }
    let mut families = Vec::new();
    for (name, (desc, stats, out)) in by_name {
        if misfits.contains(&name) {
            continue;
        }
        let desc = desc.or_else(|| declare(&out));
        let fits = desc.as_ref().is_some_and(|d| {
            d.labels == out.label_names
                && (d.ty != MetricType::Histogram || d.buckets == out.buckets)
                && (d.ty == out.ty)
                && out.series.iter().all(|s| s.names.is_none() && s.bounds.is_none())
        });
        match desc {
            Some(desc) if fits => families.push(FoldFamily {
                desc,
                series: out.series.into_iter().map(|s| (s.labels, s.acc)).collect(),
                exemplars: Vec::new(),
                stats,
            }),
            _ => {
                misfits.insert(name);
            }
        }
    }
    (families, misfits)
}

/// The store's declaration of a Python family (validated as any declaration is), if the
/// store can hold it.
fn declare(out: &FamilyOut) -> Option<FamilyDesc> {
    let mut opts = Opts::new(out.name.clone(), out.help.clone()).label_names(out.label_names.clone());
    if out.ty == MetricType::Histogram {
        let finite: Vec<f64> = out.buckets.iter().copied().filter(|b| b.is_finite()).collect();
        opts = opts.buckets(finite);
    }
    FamilyDesc::new(out.ty, opts, usize::MAX).ok()
}
