//! The merge index: every family met in the directory's files, by declaration, with its
//! series keys and accumulated values; kept between passes (series keys are looked up once
//! per file and cached by epoch), reset and filled again by each pass.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::acc::{Acc, HistAcc, NativeAcc, read_exemplar, read_most_recent, read_native_counts};
use super::join::{FamilyOut, OutSeries};
use super::keys::KeyTable;
use super::removals::{Baseline, RemovalIndex};
use super::scan::{CachedFile, accumulator_pid_labels};
use super::snapshot::ScrapeStats;
use crate::format::desc::FamilyDesc;
use crate::format::exemplar::ExemplarData;
use crate::format::native::BucketKey;
use crate::format::parse::{Parsed, ParsedFamily, ParsedSeries};
use crate::format::records::{FamilyRecord, Removal};
use crate::format::{ERROR_KINDS, ErrorKind, GaugeMode, MR_TIME, MetricType};
use crate::sys::region::Region;

/// Which files a merge takes values from.
#[derive(Clone, Copy)]
pub(crate) enum Scope<'a> {
    /// A scrape: every readable file.
    All,
    /// A compaction: the accumulator `target` (writer id; `None` for a new one) and the
    /// dead files `selected` only (the other files still provide declarations and
    /// removals); the values of live-only gauges are left out (their families stay
    /// declared).
    Fold {
        selected: &'a HashSet<u64>,
        target: Option<u64>,
    },
}

impl Scope<'_> {
    fn takes_values(&self, cf: &CachedFile) -> bool {
        match *self {
            Scope::All => true,
            Scope::Fold { selected, target } => {
                (cf.header.accumulator() && Some(cf.header.writer_id) == target)
                    || (!cf.live && selected.contains(&cf.header.writer_id))
            }
        }
    }

    fn is_fold(&self) -> bool {
        matches!(self, Scope::Fold { .. })
    }
}

/// The merged families of the last pass, kept between passes with their series indexes.
/// A name has one entry per declaration met (files of two releases may declare a family
/// with other labels or buckets: each declaration's series show); one of them is the
/// reference, the declaration of the first file in merge order.
#[derive(Default)]
pub(crate) struct MergeIndex {
    families: Vec<IndexFamily>,
    by_name: HashMap<String, Vec<usize>>,
    next_epoch: u64,
}

impl MergeIndex {
    /// The entry of `desc`'s declaration, created if needed.
    fn entry(&mut self, desc: FamilyDesc) -> usize {
        if let Some(list) = self.by_name.get(&desc.name) {
            if let Some(&j) = list.iter().find(|&&j| self.families[j].desc.same_schema(&desc)) {
                return j;
            }
        }
        self.next_epoch += 1;
        let j = self.families.len();
        self.by_name.entry(desc.name.clone()).or_default().push(j);
        self.families.push(IndexFamily::new(desc, self.next_epoch));
        j
    }

    /// The entry a file's declaration `rec` merges into: its own declaration's, if it is of
    /// the reference's type and gauge mode (labels and buckets may differ); `None` when it
    /// cannot be shown beside the reference.
    fn entry_for(&mut self, rec: &FamilyRecord) -> Option<usize> {
        let desc = FamilyDesc::from_record(rec);
        let list = self.by_name.get(&desc.name)?;
        if let Some(&j) = list.iter().find(|&&j| self.families[j].desc.same_schema(&desc)) {
            return Some(j);
        }
        let reference = list.iter().map(|&j| &self.families[j]).find(|f| f.reference)?;
        if reference.desc.ty != desc.ty || reference.desc.mode != desc.mode {
            return None;
        }
        Some(self.entry(desc))
    }
}

pub(crate) struct IndexFamily {
    pub(crate) desc: FamilyDesc,
    epoch: u64,
    pub(crate) keys: KeyTable,
    pub(crate) acc: Vec<Acc>,
    seen: Vec<bool>,
    covered: Vec<bool>,
    declared: bool,
    /// The reference declaration of its name (the others are other releases').
    pub(crate) reference: bool,
    /// Whether this pass took values of files into it.
    pub(crate) folded_here: bool,
    pub(crate) stats: u64,
    /// Scratch space for a native series' bucket counts in one file, and their words.
    scratch: Vec<(BucketKey, u64)>,
    words: Vec<u64>,
    /// The newest exemplar of each bucket of the series that have some, by series.
    pub(crate) exemplars: HashMap<usize, Vec<Option<ExemplarData>>>,
}

impl MergeIndex {
    /// Merges the usable, unfolded `files` into the index (values as `scope` says) and
    /// returns the declared families, by name, each name's reference declaration first.
    pub(crate) fn merge<'i>(
        &'i mut self,
        files: &mut std::collections::BTreeMap<OsString, CachedFile>,
        scope: Scope<'_>,
        stats: &mut ScrapeStats,
    ) -> Vec<&'i mut IndexFamily> {
        // Good files, live first, then newest first: the order decides which declaration
        // is the reference and which of two per-process gauges with one pid is shown.
        let mut order: Vec<&mut CachedFile> =
            files.values_mut().filter(|c| c.usable() && !c.folded).collect();
        order.sort_by(|a, b| b.live.cmp(&a.live).then(b.header.start.cmp(&a.header.start)));
        assign_pid_labels(&mut order);
        self.declare_references(&order);
        // Removals, by family: the latest one covering a series decides its baselines.
        let all_removals: Vec<Arc<Removal>> = order
            .iter()
            .flat_map(|c| c.parsed.removals.iter().cloned())
            .collect();
        let removals = RemovalIndex::new(&all_removals);
        let mut errors = [0u64; ERROR_KINDS];
        for cf in order {
            self.merge_file(cf, &removals, scope, &mut errors, stats);
        }
        for (k, n) in errors.iter().enumerate() {
            stats.store_errors.push((ErrorKind::ALL[k].label(), *n));
        }
        let mut overflow: Vec<(String, u64)> = self
            .families
            .iter()
            .filter(|f| f.declared && f.stats > 0)
            .map(|f| (f.desc.name.clone(), f.stats))
            .collect();
        overflow.sort();
        stats.overflow = overflow;

        let mut out: Vec<&mut IndexFamily> = self.families.iter_mut().filter(|f| f.declared).collect();
        // By name, the reference declaration first.
        out.sort_by(|a, b| a.desc.name.cmp(&b.desc.name).then(b.reference.cmp(&a.reference)));
        out
    }

    /// Marks the reference declaration of each name (the first file's, in merge order)
    /// and resets every family for a new pass.
    fn declare_references(&mut self, order: &[&mut CachedFile]) {
        // Reference declaration of each family name.
        let mut refs: Vec<(String, FamilyDesc)> = Vec::new();
        {
            let mut seen: HashSet<&str> = HashSet::new();
            for cf in order.iter() {
                for f in &cf.parsed.families {
                    if seen.insert(f.rec.name.as_str()) {
                        refs.push((f.rec.name.clone(), FamilyDesc::from_record(&f.rec)));
                    }
                }
            }
        }
        for fam in &mut self.families {
            fam.declared = false;
            fam.reference = false;
            fam.folded_here = false;
        }
        for (_, desc) in refs {
            let help = desc.help.clone();
            let j = self.entry(desc);
            let fam = &mut self.families[j];
            fam.desc.help = help;
            fam.declared = true;
            fam.reference = true;
        }
        for fam in &mut self.families {
            fam.reset();
        }

        for fam in &mut self.families {
            fam.reset();
        }
    }

    /// Adds one file's values (as `scope` says) into the index.
    fn merge_file(
        &mut self,
        cf: &mut CachedFile,
        removals: &RemovalIndex<'_>,
        scope: Scope<'_>,
        errors: &mut [u64; ERROR_KINDS],
        stats: &mut ScrapeStats,
    ) {
        let values = scope.takes_values(cf);
        let Some(region) = cf.region.as_ref() else {
            return;
        };
        if values {
            for (k, e) in errors.iter_mut().enumerate() {
                if let Some(w) = region.word((crate::format::H_ERRORS + k) * 8) {
                    *e = e.saturating_add(w.load(Ordering::Relaxed));
                }
            }
        }
        let live = cf.live;
        let targets = self.family_targets(
            &cf.parsed.families,
            &mut cf.fam_merged,
            live,
            region,
            values,
            scope,
            removals,
            stats,
        );
        self.merge_series(cf, &targets, removals);
    }

    /// Maps each of a file's families to its merged family and that family's removals
    /// (`None`: not merged, another type or gauge mode than the reference's, or no values
    /// taken from this file), and adds the families' statistics.
    #[allow(clippy::too_many_arguments)]
    fn family_targets<'r>(
        &mut self,
        families: &[ParsedFamily],
        fam_merged: &mut Vec<Option<(usize, u64)>>,
        live: bool,
        region: &Region,
        values: bool,
        scope: Scope<'_>,
        removals: &'r RemovalIndex<'_>,
        stats: &mut ScrapeStats,
    ) -> Vec<Option<Target<'r>>> {
        fam_merged.resize(families.len(), None);
        let mut targets = Vec::with_capacity(families.len());
        for (ff, cache) in families.iter().zip(fam_merged.iter_mut()) {
            let cached = match *cache {
                Some((j, epoch)) if self.families.get(j).is_some_and(|f| f.epoch == epoch) => Some(j),
                _ => self.entry_for(&ff.rec),
            };
            let Some(i) = cached else {
                stats.conflicts += 1;
                targets.push(None);
                continue;
            };
            let fam = &mut self.families[i];
            *cache = Some((i, fam.epoch));
            // A declaration of another release may be first met here.
            fam.declared = true;
            let live_gauge = fam.desc.ty == MetricType::Gauge && fam.desc.mode.live_only();
            let skip = !values || (live_gauge && (!live || scope.is_fold()));
            if values {
                fam.folded_here = true;
                if let Some(w) = region.word(ff.rec.stats_offset as usize) {
                    fam.stats = fam.stats.saturating_add(w.load(Ordering::Relaxed));
                }
            }
            targets.push((!skip).then(|| Target {
                family: i,
                slots: ff.slots,
                native: ff.rec.native.is_some(),
                removals: removals.of_family(&ff.rec.name),
            }));
        }
        targets
    }

    /// Adds the values of a file's series into their merged families (`targets`: see
    /// [`MergeIndex::family_targets`]).
    fn merge_series(
        &mut self,
        cf: &mut CachedFile,
        targets: &[Option<Target<'_>>],
        removals: &RemovalIndex<'_>,
    ) {
        let Some(region) = cf.region.as_ref() else {
            return;
        };
        let accumulator = cf.header.accumulator();
        cf.series_merged.resize(cf.parsed.series.len(), None);
        let mut record = Vec::new();
        for (s, cache) in cf.parsed.series.iter().zip(cf.series_merged.iter_mut()) {
            let Some(t) = &targets[s.family as usize] else {
                continue;
            };
            let fam = &mut self.families[t.family];
            let idx = match *cache {
                Some((idx, epoch)) if epoch == fam.epoch => idx,
                _ => {
                    // Records never change: read the label values back from the file.
                    let Ok(view) = Parsed::read_series(region, s, &mut record) else {
                        continue;
                    };
                    let pid = (!accumulator).then_some(cf.pid_label.as_str());
                    let idx = fam.key_index(view.label_bytes(), view.len(), pid);
                    *cache = Some((idx, fam.epoch));
                    idx
                }
            };
            let baseline = match t.removals {
                None => Baseline::None,
                Some(list) => removals.baseline(
                    list,
                    fam.keys.key(idx),
                    cf.header.writer_id,
                    fam.desc.labels.len(),
                ),
            };
            fam.accumulate(idx, region, s.offset, t.slots, baseline);
            if t.native {
                fam.accumulate_native(idx, region, &cf.parsed, s, t.slots, baseline);
            }
            let records = cf.parsed.exemplars_of(s);
            if !records.is_empty() {
                // A removed series shows only exemplars written after its removal.
                let removed_at = t
                    .removals
                    .and_then(|list| removals.covering_time(list, fam.keys.key(idx), fam.desc.labels.len()));
                fam.accumulate_exemplars(idx, region, &cf.parsed, records, removed_at.unwrap_or(0));
            }
        }
    }
}

/// Where the series of one of a file's families go.
struct Target<'r> {
    /// Index of the merged family.
    family: usize,
    /// Value slots per series.
    slots: usize,
    /// Whether its series have native buckets (chunks).
    native: bool,
    /// The family's removals, if it has any.
    removals: Option<&'r [&'r Removal]>,
}

/// Gives each file the `pid` label of its per-process gauges. Two files can share a pid
/// (pid reuse, or processes in different pid namespaces: every container's first process
/// is 1); their series must not hide each other, so colliding pids get the file's identity
/// appended.
fn assign_pid_labels(order: &mut [&mut CachedFile]) {
    let mut pid_count: HashMap<u32, usize> = HashMap::new();
    for cf in order.iter().filter(|c| !c.header.accumulator()) {
        *pid_count.entry(cf.header.pid).or_default() += 1;
    }
    // Pid labels the accumulator already holds (folded writers: in containers every
    // worker is pid 1).
    let folded_pids = accumulator_pid_labels(order.iter().map(|c| &**c));
    for cf in order.iter_mut() {
        let collides = pid_count.get(&cf.header.pid).copied().unwrap_or(0) > 1
            || folded_pids.contains(cf.header.pid.to_string().as_str());
        let label = if collides {
            format!("{}-{:08x}", cf.header.pid, cf.header.writer_id >> 32)
        } else {
            cf.header.pid.to_string()
        };
        if label != cf.pid_label {
            cf.pid_label = label;
            cf.series_merged.iter_mut().for_each(|m| *m = None);
        }
    }
}

impl IndexFamily {
    pub(crate) fn new(desc: FamilyDesc, epoch: u64) -> Self {
        IndexFamily {
            desc,
            epoch,
            keys: KeyTable::new(),
            acc: Vec::new(),
            seen: Vec::new(),
            covered: Vec::new(),
            declared: false,
            reference: false,
            folded_here: false,
            stats: 0,
            scratch: Vec::new(),
            words: Vec::new(),
            exemplars: HashMap::new(),
        }
    }

    fn zero(&self) -> Acc {
        match self.desc.ty {
            MetricType::Counter => Acc::U64(0),
            MetricType::CounterF64 => Acc::F64(0.0),
            MetricType::Gauge => Acc::Gauge { v: 0.0, t: 0 },
            MetricType::Histogram => HistAcc::acc(
                vec![0; self.desc.buckets.len()],
                0.0,
                self.desc.native.map(NativeAcc::new),
            ),
            MetricType::Summary => Acc::Summary { count: 0.0, sum: 0.0 },
        }
    }

    fn reset(&mut self) {
        let zero = self.zero();
        for a in &mut self.acc {
            match a {
                Acc::Hist(h) => {
                    h.buckets.iter_mut().for_each(|b| *b = 0);
                    h.sum = 0.0;
                    if let Some(n) = &mut h.native {
                        n.reset();
                    }
                }
                a => *a = zero.clone(),
            }
        }
        self.seen.iter_mut().for_each(|s| *s = false);
        self.covered.iter_mut().for_each(|s| *s = false);
        self.stats = 0;
        self.exemplars.clear();
    }

    /// Index of the merged series for `labels` (`pid`: the file's pid label, for
    /// per-process gauges of ordinary files; accumulator series carry it already).
    fn key_index<'a>(
        &mut self,
        labels: impl Iterator<Item = &'a [u8]> + Clone,
        count: usize,
        pid: Option<&'a str>,
    ) -> usize {
        let per_process = self.desc.ty == MetricType::Gauge && self.desc.mode.per_process();
        let extra = if per_process { pid.map(str::as_bytes) } else { None };
        let count = count + usize::from(extra.is_some());
        let (i, new) = self.keys.index(labels.chain(extra), count);
        if !new {
            return i;
        }
        self.acc.push(self.zero());
        self.seen.push(false);
        self.covered.push(false);
        i
    }

    fn accumulate(
        &mut self,
        idx: usize,
        region: &Region,
        offset: usize,
        slots: usize,
        baseline: Baseline<'_>,
    ) {
        let raw = |i: usize| {
            region
                .word(offset + i * 8)
                .map_or(0, |w| w.load(Ordering::Relaxed))
        };
        let base = |i: usize| match baseline {
            Baseline::Values(v) => v.get(i).copied().unwrap_or(0),
            _ => 0,
        };
        if !matches!(baseline, Baseline::None) {
            self.covered[idx] = true;
        }
        let mode = self.desc.mode;
        let first = !self.seen[idx];
        match &mut self.acc[idx] {
            Acc::U64(v) => *v = v.saturating_add(raw(0).saturating_sub(base(0))),
            Acc::F64(v) => *v += (f64::from_bits(raw(0)) - f64::from_bits(base(0))).max(0.0),
            Acc::Gauge { v, t } => {
                if mode.most_recent() {
                    let (val, time) = read_most_recent(region, offset);
                    if matches!(baseline, Baseline::Values(b) if b.get(MR_TIME) == Some(&time)) {
                        return; // not written since it was removed
                    }
                    if time > *t {
                        *v = val;
                        *t = time;
                    }
                } else {
                    let bits = raw(0);
                    if matches!(baseline, Baseline::Values(b) if b.first() == Some(&bits)) {
                        return; // not written since it was removed
                    }
                    let x = f64::from_bits(bits);
                    *v = match mode {
                        _ if first => x,
                        GaugeMode::All | GaugeMode::LiveAll => *v,
                        GaugeMode::Min | GaugeMode::LiveMin => v.min(x),
                        GaugeMode::Max | GaugeMode::LiveMax => v.max(x),
                        GaugeMode::Sum | GaugeMode::LiveSum => *v + x,
                        GaugeMode::MostRecent | GaugeMode::LiveMostRecent => x,
                    };
                }
            }
            Acc::Hist(h) => {
                let n = h.buckets.len();
                debug_assert_eq!(slots, n + 1 + usize::from(h.native.is_some()));
                for (i, b) in h.buckets.iter_mut().enumerate() {
                    *b = b.saturating_add(raw(i).saturating_sub(base(i)));
                }
                h.sum += f64::from_bits(raw(n)) - f64::from_bits(base(n));
            }
            Acc::Summary { .. } => {} // never stored natively
        }
        self.seen[idx] = true;
    }

    /// Adds one file's native buckets of series `idx` (its zero bucket, in its slots after
    /// the sum, and its chunks), minus the file's baseline of them.
    fn accumulate_native(
        &mut self,
        idx: usize,
        region: &Region,
        parsed: &Parsed,
        series: &ParsedSeries,
        slots: usize,
        baseline: Baseline<'_>,
    ) {
        let Some(Acc::Hist(h)) = self.acc.get_mut(idx) else {
            return;
        };
        let Some(acc) = &mut h.native else {
            return;
        };
        let word = |i: usize| {
            region
                .word(series.offset + i * 8)
                .map_or(0, |w| w.load(Ordering::Relaxed))
        };
        let values = match baseline {
            Baseline::Values(v) => v,
            _ => &[],
        };
        let zero = slots - 1;
        let before = values.get(zero).copied().unwrap_or(0);
        acc.zero = acc.zero.saturating_add(word(zero).saturating_sub(before));
        read_native_counts(region, parsed, series, &mut self.scratch, &mut self.words);
        if !values.is_empty() {
            let pairs = baseline_pairs(values.get(slots..).unwrap_or(&[]));
            for (key, count) in self.scratch.iter_mut() {
                let before = pairs
                    .binary_search_by(|(k, _)| k.cmp(key))
                    .map_or(0, |i| pairs[i].1);
                *count = count.saturating_sub(before);
            }
            self.scratch.retain(|(_, c)| *c > 0);
        }
        acc.add_sorted(&self.scratch);
    }

    /// Keeps, per bucket of series `idx`, the newest of its exemplar `records` in one file
    /// (and of what other files gave), those not written after `after` (ns) left out.
    fn accumulate_exemplars(
        &mut self,
        idx: usize,
        region: &Region,
        parsed: &Parsed,
        records: &[u32],
        after: u64,
    ) {
        let buckets = match self.desc.ty {
            MetricType::Histogram => self.desc.buckets.len().max(1),
            _ => 1,
        };
        let slots = self.exemplars.entry(idx).or_insert_with(|| vec![None; buckets]);
        for &r in records {
            let Some(rec) = parsed.exemplars.get(r as usize) else {
                continue;
            };
            let Some(slot) = slots.get_mut(rec.bucket as usize) else {
                continue;
            };
            let Some(ex) = read_exemplar(region, rec.record, rec.capacity) else {
                continue;
            };
            if ex.time > after && slot.as_ref().is_none_or(|cur| ex.time > cur.time) {
                *slot = Some(ex);
            }
        }
    }

    /// The value of series `i` if it is shown: seen, and (if a removal covers it) written
    /// since.
    pub(crate) fn visible(&self, i: usize) -> Option<&Acc> {
        let a = &self.acc[i];
        if !self.seen[i] {
            return None;
        }
        if self.covered[i] {
            let empty = match a {
                Acc::U64(v) => *v == 0,
                Acc::F64(v) => *v == 0.0,
                Acc::Hist(h) => {
                    h.buckets.iter().all(|b| *b == 0) && h.native.as_ref().is_none_or(|n| n.is_empty())
                }
                Acc::Gauge { .. } | Acc::Summary { .. } => false,
            };
            if empty {
                return None;
            }
        }
        Some(a)
    }

    pub(crate) fn out(&mut self) -> FamilyOut {
        let mut label_names = self.desc.labels.clone();
        if self.desc.ty == MetricType::Gauge && self.desc.mode.per_process() {
            label_names.push("pid".into());
        }
        self.keys.sort();
        let mut series = Vec::with_capacity(self.acc.len());
        for &i in self.keys.sorted() {
            if let Some(a) = self.visible(i as usize) {
                let mut out = OutSeries::plain(Arc::clone(self.keys.key(i as usize)), a.clone());
                if let Some(ex) = self.exemplars.get(&(i as usize)) {
                    out.exemplars = ex
                        .iter()
                        .enumerate()
                        .filter_map(|(b, e)| e.clone().map(|e| (b, e)))
                        .collect();
                }
                series.push(out);
            }
        }
        FamilyOut {
            name: self.desc.name.clone(),
            help: self.desc.help.clone(),
            ty: self.desc.ty,
            mode: self.desc.mode,
            label_names,
            buckets: self.desc.buckets.clone(),
            series,
            sorted: true,
        }
    }
}

/// The (bucket, count) pairs that follow a native histogram's slots in a removal baseline,
/// sorted by bucket (pairs that do not name a bucket are left out).
fn baseline_pairs(words: &[u64]) -> Vec<(BucketKey, u64)> {
    let mut pairs: Vec<(BucketKey, u64)> = words
        .chunks_exact(2)
        .filter_map(|p| BucketKey::from_word(p[0]).map(|k| (k, p[1])))
        .collect();
    pairs.sort_unstable_by_key(|(k, _)| *k);
    pairs
}
