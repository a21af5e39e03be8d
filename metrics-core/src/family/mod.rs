//! A metric family: one series per label set, found without locks (see [`table`]).
//!
//! Every family has a series limit. Past it, new label sets share one overflow series
//! (all label values `__overflow__`) and each such lookup is counted in
//! `shmetrics_cardinality_overflow_total{family}`: a flood of distinct values cannot
//! grow the files without bound.
//!
//! [`declare`] holds the [`Store`](crate::Store) methods that declare families.

pub(crate) mod counter;
pub(crate) mod declare;
pub(crate) mod exemplar;
pub(crate) mod gauge;
pub(crate) mod histogram;
pub(crate) mod metric;
pub(crate) mod table;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::Result;
use crate::format::desc::{FamilyDesc, OVERFLOW_LABEL_VALUE};
use crate::format::{ErrorKind, MAX_LABEL_VALUE_BYTES};
use crate::store::shared::Shared;
use crate::sys;
use crate::write::Writer;
use crate::write::cell::{Cell, Layout};
use metric::Metric;
use table::Table;

pub(crate) struct FamilyCore<M: Metric> {
    pub(crate) desc: Arc<FamilyDesc>,
    id: u32,
    shared: Arc<Shared>,
    writer: Arc<Writer>,
    table: Table<M>,
    full: AtomicBool,
    limit_logged: AtomicBool,
    overflow: OnceLock<M>,
    drops: Arc<Cell>,
}

impl<M: Metric> FamilyCore<M> {
    pub(crate) fn new(desc: Arc<FamilyDesc>, id: u32, shared: Arc<Shared>) -> Self {
        let writer = Arc::clone(&shared.writer);
        let drops = Cell::new(Arc::clone(&writer), id, None, Layout::U64);
        FamilyCore {
            desc,
            id,
            shared,
            writer,
            table: Table::new(),
            full: AtomicBool::new(false),
            limit_logged: AtomicBool::new(false),
            overflow: OnceLock::new(),
            drops,
        }
    }

    pub(crate) fn get(&self, values: &[&str]) -> &M {
        if values.len() != self.desc.labels.len() {
            self.writer.count_error(ErrorKind::LabelCount, &|| {
                format!(
                    "metric {:?} takes {} label values ({}), got {}: recorded in its overflow series",
                    self.desc.name,
                    self.desc.labels.len(),
                    self.desc.labels.join(", "),
                    values.len()
                )
            });
            return self.overflow();
        }
        let hash = self.table.hash(values);
        if let Some(m) = self.table.find(hash, values) {
            return m;
        }
        if self.full.load(Ordering::Relaxed) {
            self.drops.with(|s| s[0].fetch_add(1, Ordering::Relaxed));
            return self.overflow();
        }
        self.insert(hash, values)
    }

    #[cold]
    fn insert(&self, hash: u64, values: &[&str]) -> &M {
        if let Some(v) = values.iter().find(|v| v.len() > MAX_LABEL_VALUE_BYTES) {
            let len = v.len();
            self.writer.count_error(ErrorKind::LabelValue, &|| {
                format!(
                    "metric {:?}: a label value of {len} bytes refused (at most {MAX_LABEL_VALUE_BYTES}): \
                     recorded in its overflow series",
                    self.desc.name
                )
            });
            return self.overflow();
        }
        let _gate = sys::enter_gate();
        let inserter = self.table.inserter();
        if let Some(m) = self.table.find(hash, values) {
            return m;
        }
        let len = self.table.len();
        // The file's series count too: a resumed slot file holds earlier lives' series.
        if len >= self.desc.series_limit || !self.writer.admit(self.id, values, self.desc.series_limit) {
            if len >= self.desc.series_limit {
                // Every series the file may hold is in the table now: the lookups of new
                // label sets go to the overflow series without coming here.
                self.full.store(true, Ordering::Relaxed);
            }
            if !self.limit_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    metric = %self.desc.name,
                    limit = self.desc.series_limit,
                    "series limit reached: new label sets go to the overflow series \
                     (counted in shmetrics_cardinality_overflow_total)"
                );
            }
            self.drops.with(|s| s[0].fetch_add(1, Ordering::Relaxed));
            return self.overflow();
        }
        let labels: Box<[Box<str>]> = values.iter().map(|v| Box::<str>::from(*v)).collect();
        let metric = self.make(labels.clone());
        inserter.insert(hash, labels, metric)
    }

    fn make(&self, labels: Box<[Box<str>]>) -> M {
        let cell = Cell::new(
            Arc::clone(&self.writer),
            self.id,
            Some(labels),
            M::layout(&self.desc),
        );
        M::from_cell(cell, &self.desc)
    }

    fn overflow(&self) -> &M {
        if let Some(m) = self.overflow.get() {
            return m;
        }
        // Enter the fork gate before the OnceLock's own lock, like every internal lock.
        let _gate = sys::enter_gate();
        self.overflow.get_or_init(|| {
            let labels = vec![Box::<str>::from(OVERFLOW_LABEL_VALUE); self.desc.labels.len()];
            self.make(labels.into_boxed_slice())
        })
    }
}

/// A family of metrics of kind `M`: one series per combination of label values.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let store = shmetrics_core::Store::builder(dir.path()).open().unwrap();
/// let requests = store.counter_family("http_requests", "Requests", &["method", "status"])?;
/// requests.labels(&["GET", "200"]).inc();
/// let ok = requests.labels(&["GET", "200"]).clone(); // keep a handle for the hot path
/// ok.inc_by(2);
/// assert_eq!(ok.get(), 3);
/// # Ok::<(), shmetrics_core::Error>(())
/// ```
pub struct Family<M: Metric> {
    pub(crate) core: Arc<FamilyCore<M>>,
}

impl<M: Metric> Family<M> {
    /// The series for these label values, created on first use (at value zero, so it
    /// appears in the next scrape). Values are given in the order of the family's label
    /// names and may hold any UTF-8 text of at most
    /// [`MAX_LABEL_VALUE_BYTES`](crate::MAX_LABEL_VALUE_BYTES) bytes.
    ///
    /// Never panics: a wrong number of values, a longer value, or a new label set past
    /// the family's series limit, returns the overflow series (and is counted in
    /// `shmetrics_store_errors_total` or `shmetrics_cardinality_overflow_total`).
    #[inline]
    pub fn labels(&self, values: &[&str]) -> &M {
        self.core.get(values)
    }

    /// The family's name (without the `_total` suffix of counters).
    pub fn name(&self) -> &str {
        &self.core.desc.name
    }

    /// The family's label names.
    pub fn label_names(&self) -> &[String] {
        &self.core.desc.labels
    }

    /// Number of label sets this process has created (the overflow series excluded).
    pub fn series_count(&self) -> usize {
        self.core.table.len()
    }

    /// The series limit of this family in this process.
    pub fn series_limit(&self) -> usize {
        self.core.desc.series_limit
    }

    /// Removes the series with these label values from the scrape of every worker
    /// (something Python's multiprocess mode cannot do, client_python #720).
    ///
    /// What every process recorded for it so far is dropped from the merge; if some
    /// process records it again, it reappears with what was recorded after the removal.
    /// Handles to it keep working. Returns whether any process had the series.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = shmetrics_core::Store::open(dir.path()).unwrap();
    /// let jobs = store.counter_family("jobs", "Jobs", &["queue"])?;
    /// jobs.labels(&["old-queue"]).inc_by(5);
    /// assert!(jobs.remove(&["old-queue"])?);
    /// assert_eq!(store.snapshot()?.counter("jobs", &[("queue", "old-queue")]), None);
    /// jobs.labels(&["old-queue"]).inc();
    /// assert_eq!(store.snapshot()?.counter("jobs", &[("queue", "old-queue")]), Some(1));
    /// # Ok::<(), shmetrics_core::Error>(())
    /// ```
    pub fn remove(&self, values: &[&str]) -> Result<bool> {
        if values.len() != self.core.desc.labels.len() {
            return Err(crate::error::Error::InvalidOption {
                name: self.core.desc.name.clone(),
                reason: format!(
                    "takes {} label values ({}), got {}",
                    self.core.desc.labels.len(),
                    self.core.desc.labels.join(", "),
                    values.len()
                ),
            });
        }
        if let Some(v) = values.iter().find(|v| v.len() > MAX_LABEL_VALUE_BYTES) {
            return Err(crate::error::Error::InvalidOption {
                name: self.core.desc.name.clone(),
                reason: format!(
                    "a label value of {} bytes: label values are at most {MAX_LABEL_VALUE_BYTES} bytes",
                    v.len()
                ),
            });
        }
        let labels: Vec<Box<str>> = values.iter().map(|v| Box::<str>::from(*v)).collect();
        self.core.shared.remove(&self.core.desc.name, Some(&labels))
    }

    /// Removes every series of the family from the scrape of every worker (see
    /// [`Family::remove`]).
    pub fn clear(&self) -> Result<()> {
        self.core.shared.remove(&self.core.desc.name, None).map(|_| ())
    }
}

impl<M: Metric> Clone for Family<M> {
    fn clone(&self) -> Self {
        Family {
            core: Arc::clone(&self.core),
        }
    }
}

impl<M: Metric> std::fmt::Debug for Family<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family")
            .field("name", &self.core.desc.name)
            .field("type", &M::TYPE)
            .field("labels", &self.core.desc.labels)
            .field("series", &self.series_count())
            .finish()
    }
}
