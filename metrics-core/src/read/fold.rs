//! The compaction's view of the directory: what it may fold ([`plan`]) and the merged
//! values it writes into an accumulator ([`view`]). A compaction reads through these only.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::acc::Acc;
use super::merge::{MergeIndex, Scope};
use super::scan::{CachedFile, Scan};
use super::snapshot::ScrapeStats;
use crate::error::Error;
use crate::format::desc::FamilyDesc;
use crate::format::exemplar::ExemplarData;
use crate::format::records::Removal;
use crate::format::{self, ERROR_KINDS, is_accumulator_name};

/// One merged family as the compactor needs it: declaration, accumulated values (with
/// the time of `mostrecent` gauges) and the family's statistics counter.
pub(crate) struct FoldFamily {
    pub(crate) desc: FamilyDesc,
    pub(crate) series: Vec<(Arc<[Box<str>]>, Acc)>,
    /// The newest exemplar of each bucket, by index into `series`.
    pub(crate) exemplars: Vec<(usize, usize, ExemplarData)>,
    pub(crate) stats: u64,
}

/// Everything a compaction writes into the new accumulator.
pub(crate) struct FoldView {
    pub(crate) families: Vec<FoldFamily>,
    pub(crate) errors: [u64; ERROR_KINDS],
    /// Removals that still have baselines of files not folded now.
    pub(crate) removals: Vec<Removal>,
}

/// What a compaction may fold, as read now.
pub(crate) struct FoldPlan {
    /// Dead writer files, read whole in this pass.
    pub(crate) sources: Vec<FoldSource>,
    /// Files folded by an earlier compaction, still to be deleted.
    pub(crate) leftovers: Vec<(PathBuf, u64)>,
    /// The accumulators read in this pass, `accumulator.shm` first.
    pub(crate) accumulators: Vec<FoldTarget>,
    /// (device, inode) of what `accumulator.shm` holds, if anything: the accumulator read
    /// in this pass, or an entry that is not a file.
    pub(crate) primary: Option<(u64, u64)>,
}

/// A dead writer file a compaction may fold.
pub(crate) struct FoldSource {
    pub(crate) path: PathBuf,
    pub(crate) writer_id: u64,
    /// (device, inode), to check that the name still holds the file read.
    pub(crate) ident: (u64, u64),
    /// Its families' declarations.
    pub(crate) decls: Vec<FamilyDesc>,
}

/// An accumulator a compaction may fold into.
pub(crate) struct FoldTarget {
    pub(crate) path: PathBuf,
    pub(crate) writer_id: u64,
    pub(crate) ident: (u64, u64),
    pub(crate) decls: Vec<FamilyDesc>,
}

/// Lists what a compaction may fold, as `scan`'s last pass read it. Fails, and nothing may
/// be folded, when the directory holds an accumulator this pass could not read: folding
/// without it would replace its totals.
pub(crate) fn plan(scan: &Scan) -> Result<FoldPlan, Error> {
    let mut primary = None;
    let mut accumulators = Vec::new();
    for (name, acc) in &scan.files {
        if !is_accumulator_name(name) {
            continue;
        }
        // A Python compaction's, read by every pass but folded into by it alone.
        let python = name == std::ffi::OsStr::new(format::PYTHON_ACCUMULATOR);
        let is_primary = name == std::ffi::OsStr::new(format::ACCUMULATOR);
        if is_primary {
            // Something planted there that is not a file (a symlink, a FIFO) holds no
            // counts: a new accumulator may replace the entry itself, never its target.
            primary = Some(acc.ident);
        }
        if !acc.regular {
            continue;
        }
        if python && acc.good() {
            continue;
        }
        if !acc.good() || !acc.header.accumulator() {
            let why = match &acc.problem {
                Some(p) => p.reason(),
                None if !acc.fresh => "it could not be read in this pass".to_string(),
                None => "it is not an accumulator".to_string(),
            };
            return Err(Error::Directory {
                path: scan.dir.clone(),
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
    let sources = sources(scan)
        .filter(|c| !c.header.accumulator())
        .map(|c| FoldSource {
            path: c.path.clone(),
            writer_id: c.header.writer_id,
            ident: c.ident,
            decls: c.declarations(),
        })
        .collect();
    let leftovers = folded_files(scan)
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
/// `target` does) as `scan`'s last pass read them: the view a compaction writes. Fails if
/// two of them declare a family differently.
pub(crate) fn view(
    index: &mut MergeIndex,
    scan: &mut Scan,
    selected: &HashSet<u64>,
    target: Option<u64>,
) -> Result<FoldView, Error> {
    let mut stats = ScrapeStats::default();
    let dir = scan.dir.clone();
    let idx = index.merge(&mut scan.files, Scope::Fold { selected, target }, &mut stats);
    // One declaration per name: the one the folded files hold (the others' files
    // give declarations only), or the reference for a name none of them holds.
    let mut families: Vec<FoldFamily> = Vec::new();
    let mut valued: HashSet<String> = HashSet::new();
    let mut declared_only: HashMap<String, FoldFamily> = HashMap::new();
    for f in &idx {
        let mut series: Vec<(Arc<[Box<str>]>, Acc)> = Vec::new();
        let mut exemplars = Vec::new();
        for i in 0..f.acc.len() {
            let Some(a) = f.visible(i) else { continue };
            for (bucket, e) in f.exemplars.get(&i).into_iter().flatten().enumerate() {
                if let Some(e) = e {
                    exemplars.push((series.len(), bucket, e.clone()));
                }
            }
            series.push((Arc::clone(f.keys.key(i)), a.clone()));
        }
        let fam = FoldFamily {
            desc: f.desc.clone(),
            series,
            exemplars,
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
            fam.exemplars.clear();
            families.push(fam);
        }
    }
    families.sort_by(|a, b| a.desc.name.cmp(&b.desc.name));
    let inputs: Vec<&CachedFile> = sources(scan)
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
                if let Some(w) = r.word((format::H_ERRORS + k) * 8) {
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
pub(crate) fn sources(scan: &Scan) -> impl Iterator<Item = &CachedFile> {
    scan.files
        .values()
        .filter(|c| c.good() && !c.live && !c.folded && !c.is_slot())
}

/// Files already folded into the accumulator (only waiting to be deleted).
fn folded_files(scan: &Scan) -> impl Iterator<Item = &CachedFile> {
    scan.files.values().filter(|c| c.good() && c.folded)
}
