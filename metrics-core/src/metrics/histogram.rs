//! Histograms with fixed buckets, identical in every process of an application.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Metric, sealed::Sealed};
use crate::cell::{Cell, Layout, add_f64};
use crate::desc::FamilyDesc;
use crate::format::{ErrorKind, MetricType};

/// A histogram: one counter per bucket and a sum; the count is the sum of the buckets.
#[derive(Clone)]
pub struct Histogram {
    cell: Arc<Cell>,
    /// Finite upper bounds (the +Inf bucket follows them).
    bounds: Arc<[f64]>,
}

impl Histogram {
    /// Records one observation. NaN is refused (counted in
    /// `shmetrics_store_errors_total{kind="invalid_value"}` and logged once).
    #[inline]
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            self.cell.writer.count_error(ErrorKind::InvalidValue, &|| {
                "histogram observation NaN refused".to_string()
            });
            return;
        }
        let bucket = self.bounds.partition_point(|b| *b < v);
        let sum = self.bounds.len() + 1;
        self.cell.with(|s| {
            s[bucket].fetch_add(1, Ordering::Relaxed);
            add_f64(&s[sum], v);
        });
    }

    /// Records a duration in seconds.
    #[inline]
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// This process's per-bucket counts (+Inf last) and sum.
    pub fn get(&self) -> (Vec<u64>, f64) {
        let n = self.bounds.len() + 1;
        self.cell.with(|s| {
            let buckets = s[..n].iter().map(|b| b.load(Ordering::Relaxed)).collect();
            (buckets, f64::from_bits(s[n].load(Ordering::Relaxed)))
        })
    }
}

#[allow(private_interfaces)] // sealed: unnameable outside the crate
impl Sealed for Histogram {
    fn layout(desc: &FamilyDesc) -> Layout {
        Layout::Histogram(desc.buckets.len())
    }
    fn from_cell(cell: Arc<Cell>, desc: &FamilyDesc) -> Self {
        let finite = &desc.buckets[..desc.buckets.len().saturating_sub(1)];
        Histogram {
            cell,
            bounds: finite.into(),
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
