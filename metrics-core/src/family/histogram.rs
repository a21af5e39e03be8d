//! Histograms: classic buckets (fixed bounds, identical in every process of an
//! application), native buckets (Prometheus' sparse exponential buckets), or both.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::metric::{Metric, sealed::Sealed};
use crate::format::desc::FamilyDesc;
use crate::format::{ErrorKind, MetricType};
use crate::write::cell::{Cell, Layout, add_f64};
use crate::write::native::NativeCell;

/// A histogram: one counter per classic bucket and a sum (the count is the sum of the
/// buckets), and, when declared with [native buckets](crate::Opts::native), a zero bucket
/// and sparse exponential buckets allocated as observations need them.
#[derive(Clone)]
pub struct Histogram {
    cell: Arc<Cell>,
    /// Finite upper bounds of the classic buckets (the +Inf bucket follows them).
    bounds: Arc<[f64]>,
    /// Classic buckets (`bounds.len() + 1`, or 0 for native buckets only): the sum's slot.
    classic: usize,
    native: Option<Native>,
}

/// A histogram's native part.
#[derive(Clone)]
struct Native {
    cell: Arc<NativeCell>,
    zero_threshold: f64,
}

impl Histogram {
    /// Records one observation. NaN and infinities are refused (they would make the sum
    /// NaN or infinite for good): counted in
    /// `shmetrics_store_errors_total{kind="invalid_value"}` and logged once.
    #[inline]
    pub fn observe(&self, v: f64) {
        if !v.is_finite() {
            self.cell.writer.count_error(ErrorKind::InvalidValue, &|| {
                format!("histogram observation {v} refused: observations must be finite")
            });
            return;
        }
        let Some(native) = &self.native else {
            let bucket = bucket_index(&self.bounds, v);
            let sum = self.bounds.len() + 1;
            self.cell.with(|s| {
                s[bucket].fetch_add(1, Ordering::Relaxed);
                add_f64(&s[sum], v);
            });
            return;
        };
        let sum = self.classic;
        let bucket = (sum > 0).then(|| bucket_index(&self.bounds, v));
        let zero = v.abs() <= native.zero_threshold;
        self.cell.with(|s| {
            if let Some(b) = bucket {
                s[b].fetch_add(1, Ordering::Relaxed);
            }
            add_f64(&s[sum], v);
            if zero {
                s[sum + 1].fetch_add(1, Ordering::Relaxed);
            }
        });
        if !zero {
            native.cell.observe(v);
        }
    }

    /// Records a duration in seconds.
    #[inline]
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Records an observation with an exemplar: `labels` (e.g. `[("trace_id", id)]`, at
    /// most [`MAX_EXEMPLAR_CHARS`](crate::MAX_EXEMPLAR_CHARS) characters of names and
    /// values), the value `v` and the time now, kept for the classic bucket `v` falls in
    /// (the `+Inf` bucket of a histogram with native buckets only). The exposition shows
    /// each bucket's latest exemplar across all processes: Grafana links from a slow bucket
    /// to its trace.
    ///
    /// Labels that break the rules are dropped, counted in
    /// `shmetrics_store_errors_total{kind="exemplar"}` and logged once; the observation
    /// counts whatever happens to its exemplar.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = shmetrics_core::Store::open(dir.path()).unwrap();
    /// let latency = store.histogram("latency_seconds", "Latency", &[0.1, 1.0])?;
    /// latency.observe_with_exemplar(0.42, &[("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736")]);
    /// let text = store.scrape()?;
    /// assert!(text.contains(r#"latency_seconds_bucket{le="1.0"} 1 # {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"} 0.42"#));
    /// # Ok::<(), shmetrics_core::Error>(())
    /// ```
    pub fn observe_with_exemplar(&self, v: f64, labels: &[(&str, &str)]) {
        self.observe(v);
        if v.is_finite() {
            let (bucket, buckets) = self.exemplar_bucket(v);
            super::exemplar::record(&self.cell, bucket, buckets, labels, v);
        }
    }

    /// The exemplar slot of `v` and the number of slots: its classic bucket, or the one
    /// slot of a histogram with native buckets only.
    pub(crate) fn exemplar_bucket(&self, v: f64) -> (usize, usize) {
        if self.classic == 0 {
            (0, 1)
        } else {
            (bucket_index(&self.bounds, v), self.classic)
        }
    }

    /// This process's per-bucket counts of the classic buckets (+Inf last; none for a
    /// histogram with native buckets only) and sum.
    pub fn get(&self) -> (Vec<u64>, f64) {
        let n = self.classic;
        self.cell.with(|s| {
            let buckets = s[..n].iter().map(|b| b.load(Ordering::Relaxed)).collect();
            (buckets, f64::from_bits(s[n].load(Ordering::Relaxed)))
        })
    }
}

/// Index of the bucket of `v` (the first bound `>= v`; `bounds.len()` for +Inf). Bounds are
/// sorted, so that is the number of bounds below `v`: for the usual handful of buckets,
/// counting them is branch-free and vectorises, faster than a binary search's dependent
/// steps.
#[inline(always)]
fn bucket_index(bounds: &[f64], v: f64) -> usize {
    if bounds.len() <= 32 {
        bounds.iter().map(|b| usize::from(*b < v)).sum()
    } else {
        bounds.partition_point(|b| *b < v)
    }
}

#[allow(private_interfaces)] // sealed: unnameable outside the crate
impl Sealed for Histogram {
    fn layout(desc: &FamilyDesc) -> Layout {
        match desc.native {
            Some(_) => Layout::Native(desc.buckets.len()),
            None => Layout::Histogram(desc.buckets.len()),
        }
    }
    fn from_cell(cell: Arc<Cell>, desc: &FamilyDesc) -> Self {
        let finite = &desc.buckets[..desc.buckets.len().saturating_sub(1)];
        let native = desc.native.map(|spec| Native {
            cell: NativeCell::new(Arc::clone(&cell), spec),
            zero_threshold: spec.zero_threshold,
        });
        Histogram {
            cell,
            bounds: finite.into(),
            classic: desc.buckets.len(),
            native,
        }
    }
    fn cell(&self) -> &Arc<Cell> {
        &self.cell
    }
}

impl Metric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (buckets, sum) = self.get();
        f.debug_struct("Histogram")
            .field("labels", &self.cell.labels())
            .field("buckets", &buckets)
            .field("sum", &sum)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::bucket_index;

    #[test]
    fn bucket_index_is_the_first_bound_not_below() {
        let small = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        let large: Vec<f64> = (1..100).map(|i| i as f64).collect();
        for bounds in [&small[..], &large[..]] {
            for v in [
                -1.0,
                0.0,
                0.005,
                0.0051,
                0.3,
                1.0,
                9.99,
                10.0,
                10.01,
                42.0,
                99.0,
                1e9,
                f64::INFINITY,
            ] {
                assert_eq!(bucket_index(bounds, v), bounds.partition_point(|b| *b < v), "{v}");
            }
        }
    }
}
