//! Removals (`Family::remove`, `Family::clear`): the baselines a removal records, and the
//! index a merge subtracts them with.

use std::collections::HashMap;
use std::sync::Arc;

use super::acc::{native_counts, read_most_recent, read_slots};
use super::scan::Scan;
use crate::format::MetricType;
use crate::format::parse::Parsed;
use crate::format::records::{self, Removal};

/// What a series' removal says about one file's contribution.
#[derive(Clone, Copy)]
pub(crate) enum Baseline<'a> {
    /// No removal covers the series.
    None,
    /// Covered, and this file's values at removal time are these.
    Values(&'a [u64]),
    /// Covered, and this file had no values then (it contributes all it has).
    Zero,
}

/// A baseline's key: (removal, writer id, series key).
type BaselineKey<'a> = (*const Removal, u64, &'a [Box<str>]);

/// Removals of one merge, indexed.
pub(crate) struct RemovalIndex<'a> {
    /// Family name -> removals of it, latest first.
    by_family: HashMap<&'a str, Vec<&'a Removal>>,
    /// Baseline values, built once per merge.
    baselines: HashMap<BaselineKey<'a>, &'a [u64]>,
}

impl<'a> RemovalIndex<'a> {
    pub(crate) fn new(all: &'a [Arc<Removal>]) -> Self {
        let mut by_family: HashMap<&str, Vec<&Removal>> = HashMap::new();
        let mut baselines = HashMap::new();
        for r in all {
            let r: &Removal = r;
            by_family.entry(r.family.as_str()).or_default().push(r);
            for b in &r.baselines {
                baselines.insert(
                    (r as *const Removal, b.writer_id, &*b.labels),
                    b.values.as_slice(),
                );
            }
        }
        for v in by_family.values_mut() {
            v.sort_by_key(|r| std::cmp::Reverse(r.time));
        }
        RemovalIndex { by_family, baselines }
    }

    /// The removals of `family`, latest first; `None` if there are none (most families:
    /// looked up once per file, not per series).
    pub(crate) fn of_family(&self, family: &str) -> Option<&[&'a Removal]> {
        if self.by_family.is_empty() {
            return None;
        }
        self.by_family.get(family).map(Vec::as_slice)
    }

    /// The baseline of series `key` (its label values, plus the pid for per-process
    /// gauges) in file `writer`, among its family's removals `list`.
    pub(crate) fn baseline(
        &self,
        list: &[&Removal],
        key: &[Box<str>],
        writer: u64,
        nlabels: usize,
    ) -> Baseline<'_> {
        let labels = &key[..nlabels.min(key.len())];
        let Some(r) = list
            .iter()
            .find(|r| r.labels.as_deref().is_none_or(|l| l == labels))
        else {
            return Baseline::None;
        };
        match self.baselines.get(&(*r as *const Removal, writer, key)) {
            Some(v) => Baseline::Values(v),
            None => Baseline::Zero,
        }
    }
}

impl RemovalIndex<'_> {
    /// The time of the latest removal among `list` that covers the series with label
    /// values `key` (the first `nlabels` of them), if one does.
    pub(crate) fn covering_time(&self, list: &[&Removal], key: &[Box<str>], nlabels: usize) -> Option<u64> {
        let labels = &key[..nlabels.min(key.len())];
        list.iter()
            .find(|r| r.labels.as_deref().is_none_or(|l| l == labels))
            .map(|r| r.time)
    }
}

/// Baselines of the series of `family` (all of them, or the one with `labels`) in every
/// usable, unfolded file of `scan`, as of its last pass. A native histogram's baseline is
/// its slots followed by a (bucket, count) word pair per bucket it counted
/// ([`native_pairs`]).
pub(crate) fn baselines(scan: &Scan, family: &str, labels: Option<&[Box<str>]>) -> Vec<records::Baseline> {
    let mut out = Vec::new();
    for cf in scan.files.values() {
        if !cf.usable() || cf.folded {
            continue;
        }
        let Some(region) = &cf.region else { continue };
        for s in &cf.parsed.series {
            let fam = &cf.parsed.families[s.family as usize];
            if fam.rec.name != family {
                continue;
            }
            let Ok(series_labels) = Parsed::series_labels(region, s) else {
                continue;
            };
            let own_labels = &series_labels[..fam.rec.labels.len().min(series_labels.len())];
            if labels.is_some_and(|l| l != own_labels) {
                continue;
            }
            let mut values = read_slots(region, s.offset, fam.slots);
            if fam.rec.ty == MetricType::Gauge && fam.rec.mode.most_recent() {
                let (v, t) = read_most_recent(region, s.offset);
                values = vec![0, v.to_bits(), t];
            }
            for (key, count) in native_counts(region, &cf.parsed, s) {
                values.extend([key.word(), count]);
            }
            // The key the merge uses: label values, plus the pid label for per-process
            // gauges of ordinary files.
            let mut key: Vec<Box<str>> = series_labels.to_vec();
            if fam.rec.ty == MetricType::Gauge && fam.rec.mode.per_process() && !cf.header.accumulator() {
                key.push(cf.pid_label_now(&scan.files).into());
            }
            out.push(records::Baseline {
                writer_id: cf.header.writer_id,
                labels: key.into_boxed_slice(),
                values,
            });
        }
    }
    out
}
