//! Counters: monotonic values, summed over every process, dead ones included.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::metric::{Metric, sealed::Sealed};
use crate::format::desc::FamilyDesc;
use crate::format::{ErrorKind, MetricType};
use crate::write::cell::{Cell, Layout, add_f64};

/// An integer counter (`u64`).
///
/// The exposition names it `<name>_total`; the merged value is the sum over every
/// process that ever wrote it, so it never goes backwards when a worker dies.
#[derive(Clone)]
pub struct Counter {
    cell: Arc<Cell>,
}

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.inc_by(1);
    }

    /// Adds `v`. The total saturates at `u64::MAX` instead of wrapping around to a small
    /// number (which Prometheus would read as a counter reset).
    #[inline]
    pub fn inc_by(&self, v: u64) {
        self.cell.with(|s| {
            let old = s[0].fetch_add(v, Ordering::Relaxed);
            if old.checked_add(v).is_none() {
                saturate(&s[0]);
            }
        });
    }

    /// This process's contribution (not the merged value: scrape for that).
    pub fn get(&self) -> u64 {
        self.cell.with(|s| s[0].load(Ordering::Relaxed))
    }

    /// Raises this process's count to `v` if it is lower: for a count kept elsewhere (by
    /// the kernel, a library) and copied in from time to time. A call with an older,
    /// smaller value never lowers it, whatever the order of concurrent calls.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = shmetrics_core::Store::open(dir.path()).unwrap();
    /// let read = store.counter("disk_read_bytes", "Bytes read")?;
    /// read.absolute(4096);
    /// read.absolute(1024); // an older reading: no effect
    /// assert_eq!(read.get(), 4096);
    /// # Ok::<(), shmetrics_core::Error>(())
    /// ```
    #[inline]
    pub fn absolute(&self, v: u64) {
        self.cell.with(|s| {
            s[0].fetch_max(v, Ordering::Relaxed);
        });
    }

    /// Adds `v`, with an exemplar: `labels` (e.g. `[("trace_id", id)]`, at most
    /// [`MAX_EXEMPLAR_CHARS`](crate::MAX_EXEMPLAR_CHARS) characters of names and values),
    /// the value `v` and the time now. The exposition shows the latest exemplar of the
    /// series across all processes (OpenMetrics, protobuf).
    ///
    /// Labels that break the rules are dropped, counted in
    /// `shmetrics_store_errors_total{kind="exemplar"}` and logged once; the increment
    /// counts whatever happens to its exemplar.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = shmetrics_core::Store::open(dir.path()).unwrap();
    /// let jobs = store.counter("jobs", "Jobs done")?;
    /// jobs.inc_by_with_exemplar(1, &[("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736")]);
    /// assert!(store.scrape()?.contains(r#"jobs_total 1 # {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"} 1"#));
    /// # Ok::<(), shmetrics_core::Error>(())
    /// ```
    pub fn inc_by_with_exemplar(&self, v: u64, labels: &[(&str, &str)]) {
        self.inc_by(v);
        super::exemplar::record(&self.cell, 0, 1, labels, v as f64);
    }
}

/// Puts a counter that went past `u64::MAX` back at `u64::MAX`.
#[cold]
#[inline(never)]
fn saturate(slot: &std::sync::atomic::AtomicU64) {
    slot.store(u64::MAX, Ordering::Relaxed);
}

#[allow(private_interfaces)] // sealed: unnameable outside the crate
impl Sealed for Counter {
    fn layout(_: &FamilyDesc) -> Layout {
        Layout::U64
    }
    fn from_cell(cell: Arc<Cell>, _: &FamilyDesc) -> Self {
        Counter { cell }
    }
    fn cell(&self) -> &Arc<Cell> {
        &self.cell
    }
}

impl Metric for Counter {
    const TYPE: MetricType = MetricType::Counter;
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counter")
            .field("labels", &self.cell.labels())
            .field("value", &self.get())
            .finish()
    }
}

/// A floating-point counter (`f64`), e.g. seconds or bytes that need fractions.
#[derive(Clone)]
pub struct CounterF64 {
    cell: Arc<Cell>,
}

impl CounterF64 {
    /// Adds `v`. A negative, NaN or infinite `v` is refused: it is counted in
    /// `shmetrics_store_errors_total{kind="invalid_value"}` and logged once.
    #[inline]
    pub fn inc_by(&self, v: f64) {
        if !(v >= 0.0 && v.is_finite()) {
            self.cell.writer.count_error(ErrorKind::InvalidValue, &|| {
                format!("counter increment {v} refused: counters only go up by finite amounts")
            });
            return;
        }
        self.cell.with(|s| add_f64(&s[0], v));
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.inc_by(1.0);
    }

    /// This process's contribution.
    pub fn get(&self) -> f64 {
        self.cell.with(|s| f64::from_bits(s[0].load(Ordering::Relaxed)))
    }

    /// Adds `v` with an exemplar of value `v` (see [`Counter::inc_by_with_exemplar`]).
    pub fn inc_by_with_exemplar(&self, v: f64, labels: &[(&str, &str)]) {
        if !(v >= 0.0 && v.is_finite()) {
            return self.inc_by(v); // refused and counted there
        }
        self.inc_by(v);
        super::exemplar::record(&self.cell, 0, 1, labels, v);
    }
}

#[allow(private_interfaces)] // sealed: unnameable outside the crate
impl Sealed for CounterF64 {
    fn layout(_: &FamilyDesc) -> Layout {
        Layout::F64
    }
    fn from_cell(cell: Arc<Cell>, _: &FamilyDesc) -> Self {
        CounterF64 { cell }
    }
    fn cell(&self) -> &Arc<Cell> {
        &self.cell
    }
}

impl Metric for CounterF64 {
    const TYPE: MetricType = MetricType::CounterF64;
}

impl std::fmt::Debug for CounterF64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterF64")
            .field("labels", &self.cell.labels())
            .field("value", &self.get())
            .finish()
    }
}
