//! A metric family: one series per label set, found without locks.
//!
//! Lookups probe an open-addressing table of pointers with atomic loads only; inserts are
//! serialised per family and publish each entry (and each grown table) with a Release
//! store. Entries and tables are freed only when the family is dropped, so a `&M` handed
//! out by [`Family::labels`] stays valid for as long as the family is borrowed.
//!
//! Every family has a series limit. Past it, new label sets share one overflow series
//! (all label values `__overflow__`) and each such lookup is counted in
//! `shmetrics_cardinality_overflow_total{family}`: a flood of distinct values cannot
//! grow the files without bound.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::cell::{Cell, Layout};
use crate::desc::{FamilyDesc, OVERFLOW_LABEL_VALUE};
use crate::error::Result;
use crate::format::{ErrorKind, MAX_LABEL_VALUE_BYTES};
use crate::metrics::Metric;
use crate::store::Shared;
use crate::sys;
use crate::writer::Writer;

struct Entry<M> {
    hash: u64,
    labels: Box<[Box<str>]>,
    metric: M,
}

struct Table<M> {
    slots: Box<[AtomicPtr<Entry<M>>]>,
}

impl<M> Table<M> {
    fn with_capacity(cap: usize) -> *mut Table<M> {
        let slots = (0..cap).map(|_| AtomicPtr::new(std::ptr::null_mut())).collect();
        Box::into_raw(Box::new(Table { slots }))
    }

    /// Puts `e` in the first free slot of its probe sequence. Callers hold the insert lock
    /// (no concurrent insert) and keep the table at most half full (a free slot exists).
    fn insert(&self, e: *mut Entry<M>, hash: u64) {
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        while !self.slots[i].load(Ordering::Relaxed).is_null() {
            i = (i + 1) & mask;
        }
        self.slots[i].store(e, Ordering::Release);
    }
}

/// Everything the family owns, behind the insert lock.
struct Owned<M> {
    tables: Vec<*mut Table<M>>,
    entries: Vec<*mut Entry<M>>,
}

/// Equality of two byte strings, inline for the short ones label values usually are
/// (a call to `memcmp` per label costs more than the comparison itself).
#[inline(always)]
fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap_or([0; 8]));
    let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().unwrap_or([0; 4]));
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

pub(crate) struct FamilyCore<M: Metric> {
    pub(crate) desc: Arc<FamilyDesc>,
    id: u32,
    shared: Arc<Shared>,
    writer: Arc<Writer>,
    hasher: foldhash::fast::RandomState,
    table: AtomicPtr<Table<M>>,
    owned: Mutex<Owned<M>>,
    len: AtomicUsize,
    full: AtomicBool,
    limit_logged: AtomicBool,
    overflow: OnceLock<M>,
    drops: Arc<Cell>,
}

// SAFETY: the raw pointers in `table` and `owned` point to heap objects owned by this
// family (freed only in `Drop`); `Entry<M>` and `Table<M>` hold only `Send + Sync` data
// (`M: Metric` is `Send + Sync`, atomics, boxed strings). Shared access goes through
// atomics (lookups) or the `owned` mutex (inserts).
unsafe impl<M: Metric> Send for FamilyCore<M> {}
// SAFETY: see `Send`.
unsafe impl<M: Metric> Sync for FamilyCore<M> {}

impl<M: Metric> FamilyCore<M> {
    pub(crate) fn new(desc: Arc<FamilyDesc>, id: u32, shared: Arc<Shared>) -> Self {
        let writer = Arc::clone(&shared.writer);
        let drops = Cell::new(Arc::clone(&writer), id, None, Layout::U64);
        let first = Table::with_capacity(8);
        FamilyCore {
            desc,
            id,
            shared,
            writer,
            hasher: foldhash::fast::RandomState::default(),
            table: AtomicPtr::new(first),
            owned: Mutex::new(Owned {
                tables: vec![first],
                entries: Vec::new(),
            }),
            len: AtomicUsize::new(0),
            full: AtomicBool::new(false),
            limit_logged: AtomicBool::new(false),
            overflow: OnceLock::new(),
            drops,
        }
    }

    fn hash(&self, values: &[&str]) -> u64 {
        // No separator between values: each write mixes its own length, and a lookup
        // compares the values themselves; the hash only has to spread.
        let mut h = self.hasher.build_hasher();
        for v in values {
            std::hash::Hasher::write(&mut h, v.as_bytes());
        }
        std::hash::Hasher::finish(&h)
    }

    #[inline]
    fn find(&self, hash: u64, values: &[&str]) -> Option<&M> {
        // SAFETY: `table` always points to a live table: tables are freed only when the
        // family is dropped, which cannot happen while `&self` is borrowed. The Acquire
        // load pairs with the Release store that published it fully built.
        let table = unsafe { &*self.table.load(Ordering::Acquire) };
        let mask = table.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let p = table.slots[i].load(Ordering::Acquire);
            if p.is_null() {
                return None;
            }
            // SAFETY: non-null slots point to entries published (Release) after being fully
            // built, and entries live until the family is dropped.
            let e = unsafe { &*p };
            if e.hash == hash
                && e.labels.len() == values.len()
                && e.labels
                    .iter()
                    .zip(values)
                    .all(|(a, b)| bytes_eq(a.as_bytes(), b.as_bytes()))
            {
                return Some(&e.metric);
            }
            i = (i + 1) & mask;
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
        let hash = self.hash(values);
        if let Some(m) = self.find(hash, values) {
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
        let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = self.find(hash, values) {
            return m;
        }
        let len = self.len.load(Ordering::Relaxed);
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
        let entry = Box::into_raw(Box::new(Entry { hash, labels, metric }));
        // SAFETY: the current table is live (see `find`); we hold the insert lock.
        let mut table = unsafe { &*self.table.load(Ordering::Acquire) };
        if (len + 1) * 2 > table.slots.len() {
            let bigger = Table::with_capacity(table.slots.len() * 2);
            // SAFETY: freshly allocated, not yet shared.
            let t = unsafe { &*bigger };
            for e in &owned.entries {
                // SAFETY: entries are live until drop.
                t.insert(*e, unsafe { (**e).hash });
            }
            owned.tables.push(bigger);
            self.table.store(bigger, Ordering::Release);
            table = t;
        }
        table.insert(entry, hash);
        owned.entries.push(entry);
        self.len.store(len + 1, Ordering::Relaxed);
        // SAFETY: just published; lives until the family is dropped.
        unsafe { &(*entry).metric }
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

impl<M: Metric> Drop for FamilyCore<M> {
    fn drop(&mut self) {
        let owned = self.owned.get_mut().unwrap_or_else(PoisonError::into_inner);
        for e in owned.entries.drain(..) {
            // SAFETY: allocated by `Box::into_raw` in `insert`, freed once, here; no reference
            // can outlive the family (`&mut self`).
            drop(unsafe { Box::from_raw(e) });
        }
        for t in owned.tables.drain(..) {
            // SAFETY: as above, for tables.
            drop(unsafe { Box::from_raw(t) });
        }
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
        self.core.len.load(Ordering::Relaxed)
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
            return Err(crate::Error::InvalidOption {
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
            return Err(crate::Error::InvalidOption {
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

#[cfg(test)]
mod tests {
    use super::bytes_eq;

    #[test]
    fn short_string_equality_matches_the_plain_one() {
        let words = [
            "",
            "a",
            "b",
            "ab",
            "ba",
            "abc",
            "abd",
            "xbc",
            "GET",
            "PUT",
            "POST",
            "/a/b",
            "/a/c",
            "200",
            "201",
            "404",
            "abcdefg",
            "abcdefh",
            "bbcdefg",
            "/users/{id}",
            "/users/{ix}",
            "/orders/{id}/items",
            "/orders/{id}/itemz",
            "0123456789abcdef",
            "0123456789abcdeF",
            "é",
            "ü",
            "日本",
            "日本語",
        ];
        for a in words {
            for b in words {
                assert_eq!(bytes_eq(a.as_bytes(), b.as_bytes()), a == b, "{a:?} {b:?}");
            }
        }
        // Every length up to 40, a difference at every position.
        for n in 0..40usize {
            let a: Vec<u8> = (0..n as u8).collect();
            assert!(bytes_eq(&a, &a.clone()));
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 0x40;
                assert!(!bytes_eq(&a, &b), "len {n} pos {i}");
            }
        }
    }
}
