//! Merged families before they become [`MergedFamily`]s, and their join: the declarations
//! of one name from other releases (other labels, other buckets) and from Python's files.

use std::collections::HashMap;
use std::sync::Arc;

use super::acc::Acc;
use super::snapshot::{HistogramValue, MergedFamily, MergedSeries, Value};
use crate::format::exemplar::ExemplarData;
use crate::format::{GaugeMode, MetricType};

/// A merged family before it becomes a [`MergedFamily`]: native, from Python files, or both.
pub(crate) struct FamilyOut {
    pub name: String,
    pub help: String,
    pub ty: MetricType,
    pub mode: GaugeMode,
    /// Label names, `pid` last for per-process gauges.
    pub label_names: Vec<String>,
    pub buckets: Vec<f64>,
    pub series: Vec<OutSeries>,
    /// Whether `series` is in label order already.
    pub sorted: bool,
}

/// One series of a [`FamilyOut`].
pub(crate) struct OutSeries {
    pub labels: Arc<[Box<str>]>,
    /// Its own label names, when they are not the family's.
    pub names: Option<Arc<[String]>>,
    /// Its own bucket bounds (histograms), when they are not the family's.
    pub bounds: Option<Arc<[f64]>>,
    pub acc: Acc,
    /// Its newest exemplar per bucket (bucket index, exemplar), if any.
    pub exemplars: Vec<(usize, ExemplarData)>,
}

impl OutSeries {
    pub(crate) fn plain(labels: Arc<[Box<str>]>, acc: Acc) -> Self {
        OutSeries {
            labels,
            names: None,
            bounds: None,
            acc,
            exemplars: Vec::new(),
        }
    }
}

impl FamilyOut {
    pub(crate) fn into_merged(self) -> MergedFamily {
        let mut series: Vec<MergedSeries> = self
            .series
            .into_iter()
            .map(|s| MergedSeries {
                labels: s.labels,
                names: s.names,
                exemplars: s.exemplars.into_iter().map(|(b, e)| (b, e.into())).collect(),
                value: match s.acc {
                    Acc::U64(v) => Value::Counter(v),
                    Acc::F64(v) => Value::CounterF64(v),
                    Acc::Gauge { v, .. } => Value::Gauge(v),
                    Acc::Hist(h) => {
                        let h = *h;
                        Value::Histogram(HistogramValue {
                            buckets: h.buckets,
                            sum: h.sum,
                            bounds: s.bounds,
                            native: h.native.map(|n| n.sparse().into()),
                        })
                    }
                    Acc::Summary { count, sum } => Value::Summary { count, sum },
                },
            })
            .collect();
        if !self.sorted {
            series.sort_by(|a, b| {
                (a.names.as_deref().unwrap_or(&self.label_names), &a.labels)
                    .cmp(&(b.names.as_deref().unwrap_or(&self.label_names), &b.labels))
            });
        }
        MergedFamily {
            name: self.name,
            help: self.help,
            metric_type: self.ty,
            mode: self.mode,
            label_names: self.label_names,
            buckets: self.buckets,
            series,
        }
    }

    /// The identity of series `s`: its (label name, value) pairs, sorted.
    fn identity(&self, s: &OutSeries) -> Vec<(String, Box<str>)> {
        let names = s.names.as_deref().unwrap_or(&self.label_names);
        let mut id: Vec<(String, Box<str>)> = names.iter().cloned().zip(s.labels.iter().cloned()).collect();
        id.sort();
        id
    }

    /// Adds the series of `other`, the family of the same name from other files (Python's,
    /// or native files declaring it with other labels or buckets), to this one: counters and
    /// histograms add up, gauges combine by their mode. Series keep their own label names
    /// and bounds where they differ from this family's (a rolling deploy that added a label
    /// or changed buckets keeps both sets, as Python's collector does); two series with the
    /// same labels and other bounds add up bound by bound, over the union of the bounds.
    ///
    /// Refused (and nothing changes) unless both are of one type (and gauge mode): such
    /// series cannot be shown as one family.
    pub(crate) fn absorb(&mut self, other: FamilyOut) -> Result<(), String> {
        let same_type = match (self.ty, other.ty) {
            (MetricType::Counter | MetricType::CounterF64, MetricType::Counter | MetricType::CounterF64) => {
                true
            }
            (MetricType::Gauge, MetricType::Gauge) => self.mode == other.mode,
            (a, b) => a == b,
        };
        if !same_type {
            let describe = |f: &FamilyOut| match f.ty {
                MetricType::Gauge => format!("a {} gauge", f.mode),
                t => format!("a {t:?}"),
            };
            return Err(format!(
                "{} is {} in some files and {} in others",
                self.name,
                describe(self),
                describe(&other)
            ));
        }
        if self.ty != other.ty {
            // Integer and float counters: the sum is a float.
            self.ty = MetricType::CounterF64;
            for s in &mut self.series {
                if let Acc::U64(v) = s.acc {
                    s.acc = Acc::F64(v as f64);
                }
            }
        }
        let mut at: HashMap<Vec<(String, Box<str>)>, usize> = self
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| (self.identity(s), i))
            .collect();
        let other_names = other.label_names.clone();
        let other_buckets = other.buckets.clone();
        for mut s in other.series {
            if let Acc::U64(v) = s.acc {
                if self.ty == MetricType::CounterF64 {
                    s.acc = Acc::F64(v as f64);
                }
            }
            let names: Arc<[String]> = s.names.take().unwrap_or_else(|| other_names.clone().into());
            let bounds: Arc<[f64]> = s.bounds.take().unwrap_or_else(|| other_buckets.clone().into());
            // In this family's label order when it has the same names.
            let (labels, names) = match reorder(&names, &s.labels, &self.label_names) {
                Some(labels) => (labels, None),
                None => (s.labels, Some(names)),
            };
            let incoming = OutSeries {
                labels,
                names,
                bounds: (self.ty == MetricType::Histogram && *bounds != *self.buckets).then_some(bounds),
                acc: s.acc,
                exemplars: s.exemplars,
            };
            let id = self.identity(&incoming);
            match at.get(&id) {
                Some(&i) => {
                    let family_buckets = self.buckets.clone();
                    merge_series(&mut self.series[i], incoming, &family_buckets, self.mode);
                }
                None => {
                    at.insert(id, self.series.len());
                    self.series.push(incoming);
                    self.sorted = false;
                }
            }
        }
        Ok(())
    }
}

/// `values` (named `names`) in the order of `wanted`, if both are the same set of names.
fn reorder(names: &[String], values: &Arc<[Box<str>]>, wanted: &[String]) -> Option<Arc<[Box<str>]>> {
    if names == wanted {
        return Some(Arc::clone(values));
    }
    if names.len() != wanted.len() {
        return None;
    }
    wanted
        .iter()
        .map(|w| names.iter().position(|n| n == w).map(|i| values[i].clone()))
        .collect()
}

/// Adds `b` (the same series from other files) into `a`. Histograms whose bounds differ add
/// up bound by bound over the union of the bounds (each file's counts stay on its own
/// bounds: nothing is counted under a bound a file did not have). Each bucket keeps the
/// newer exemplar.
fn merge_series(a: &mut OutSeries, b: OutSeries, family_buckets: &[f64], mode: GaugeMode) {
    // Exemplars by their bucket's bound (the bucket indexes of two bound lists differ).
    let bound_of = |s: &OutSeries, i: usize| {
        s.bounds
            .as_deref()
            .unwrap_or(family_buckets)
            .get(i)
            .copied()
            .unwrap_or(f64::INFINITY)
    };
    let taken = std::mem::take(&mut a.exemplars);
    let mut exemplars: Vec<(f64, ExemplarData)> =
        taken.into_iter().map(|(i, e)| (bound_of(a, i), e)).collect();
    for (i, e) in b.exemplars.iter() {
        let bound = bound_of(&b, *i);
        match exemplars.iter_mut().find(|(x, _)| *x == bound) {
            Some((_, cur)) if e.time > cur.time => *cur = e.clone(),
            Some(_) => {}
            None => exemplars.push((bound, e.clone())),
        }
    }
    merge_values(a, b, family_buckets, mode);
    let bounds: &[f64] = a.bounds.as_deref().unwrap_or(family_buckets);
    a.exemplars = exemplars
        .into_iter()
        .map(|(bound, e)| {
            let i = bounds.iter().position(|b| *b == bound).unwrap_or(0);
            (i, e)
        })
        .collect();
    a.exemplars.sort_by_key(|(i, _)| *i);
}

/// [`merge_series`]' values.
fn merge_values(a: &mut OutSeries, b: OutSeries, family_buckets: &[f64], mode: GaugeMode) {
    match (&mut a.acc, b.acc) {
        (Acc::Hist(h), Acc::Hist(other)) => {
            let other = *other;
            let (buckets, sum) = (&mut h.buckets, &mut h.sum);
            let (b_buckets, b_sum) = (other.buckets, other.sum);
            super::acc::NativeAcc::absorb_into(&mut h.native, other.native);
            let a_bounds: Vec<f64> = a.bounds.as_deref().unwrap_or(family_buckets).to_vec();
            let b_bounds: Vec<f64> = b.bounds.as_deref().unwrap_or(family_buckets).to_vec();
            if a_bounds == b_bounds {
                for (x, y) in buckets.iter_mut().zip(b_buckets) {
                    *x = x.saturating_add(y);
                }
            } else {
                let mut union: Vec<f64> = a_bounds.iter().chain(&b_bounds).copied().collect();
                union.sort_by(f64::total_cmp);
                union.dedup();
                let mut counts = vec![0u64; union.len()];
                for (bounds, values) in [(&a_bounds, &*buckets), (&b_bounds, &b_buckets)] {
                    for (bound, n) in bounds.iter().zip(values) {
                        if let Ok(j) = union.binary_search_by(|x| x.total_cmp(bound)) {
                            counts[j] = counts[j].saturating_add(*n);
                        }
                    }
                }
                *buckets = counts;
                a.bounds = (union != family_buckets).then(|| union.into());
            }
            *sum += b_sum;
        }
        (acc, other) => acc.absorb(other, mode),
    }
}
