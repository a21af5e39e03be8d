//! A series' binding to its value slots in this process's file.
//!
//! The hot path is two relaxed loads, a compare and the atomic operation on the slot. The
//! cached pointer is only used in the bind epoch it was bound in: after `fork()` the
//! child's first write takes the slow path, which binds the series in the child's own file
//! (and the same happens, within one process, when a writer moves to another file).
//! When the file cannot grow (full filesystem), the series lives in process memory
//! (`local`) and every write takes the slow path, which retries the binding now and then
//! and, when it succeeds, moves what was recorded meanwhile into the file: nothing is lost.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::format::{MR_TIME, MR_VALUE};
use crate::sys;
use crate::write::{BindKey, Waiting, Writer};

/// How often a series without file slots retries to get some.
pub(crate) const RETRY_INTERVAL: Duration = Duration::from_millis(500);

const UNBOUND: u64 = u64::MAX;

/// Meaning of a series' slots, for moving in-memory values into the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// One u64 added to (integer counter, family statistics).
    U64,
    /// One f64 added to (float counter).
    F64,
    /// One f64 gauge value.
    Gauge,
    /// `mostrecent` gauge: sequence, value, time.
    MostRecent,
    /// `n` u64 bucket counts, then the f64 sum.
    Histogram(usize),
    /// `n` u64 classic bucket counts, the f64 sum, then the u64 zero bucket count of a
    /// native histogram (its other buckets are in chunks).
    Native(usize),
}

impl Layout {
    pub(crate) fn slots(self) -> usize {
        match self {
            Layout::U64 | Layout::F64 | Layout::Gauge => 1,
            Layout::MostRecent => 3,
            Layout::Histogram(n) => n + 1,
            Layout::Native(n) => n + 2,
        }
    }

    /// Adds what `from` (process memory) holds into fresh file slots `to`.
    fn transfer(self, from: &[AtomicU64], to: &[AtomicU64]) {
        match self {
            Layout::U64 => {
                to[0].fetch_add(from[0].load(Ordering::Relaxed), Ordering::Relaxed);
            }
            Layout::F64 | Layout::Gauge => add_f64(&to[0], f64::from_bits(from[0].load(Ordering::Relaxed))),
            Layout::MostRecent => {
                let t = from[MR_TIME].load(Ordering::Relaxed);
                if t != 0 {
                    to[MR_VALUE].store(from[MR_VALUE].load(Ordering::Relaxed), Ordering::Relaxed);
                    to[MR_TIME].store(t, Ordering::Relaxed);
                }
            }
            Layout::Histogram(n) | Layout::Native(n) => {
                for i in 0..n {
                    to[i].fetch_add(from[i].load(Ordering::Relaxed), Ordering::Relaxed);
                }
                add_f64(&to[n], f64::from_bits(from[n].load(Ordering::Relaxed)));
                if let Layout::Native(_) = self {
                    to[n + 1].fetch_add(from[n + 1].load(Ordering::Relaxed), Ordering::Relaxed);
                }
            }
        }
        for s in from {
            s.store(0, Ordering::Relaxed);
        }
    }

    /// Moves a gauge's value from the slots of a file this process no longer writes to
    /// the new slots (counters stay where they are: the old file still counts).
    fn carry_gauge(self, old: &[AtomicU64], new: &[AtomicU64]) {
        match self {
            Layout::Gauge => new[0].store(old[0].swap(0, Ordering::Relaxed), Ordering::Relaxed),
            Layout::MostRecent => {
                let t = old[MR_TIME].swap(0, Ordering::Relaxed);
                let v = old[MR_VALUE].swap(0, Ordering::Relaxed);
                if t != 0 {
                    new[MR_VALUE].store(v, Ordering::Relaxed);
                    new[MR_TIME].store(t, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }
}

/// Adds `v` to the f64 stored (as bits) in `slot`.
#[inline]
pub(crate) fn add_f64(slot: &AtomicU64, v: f64) {
    let mut cur = slot.load(Ordering::Relaxed);
    loop {
        let new = (f64::from_bits(cur) + v).to_bits();
        match slot.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}

/// One series (or family statistics slot) of this process.
pub(crate) struct Cell {
    /// Bind epoch `ptr` is valid in, or `UNBOUND`.
    generation: AtomicU64,
    ptr: AtomicPtr<AtomicU64>,
    layout: Layout,
    nslots: usize,
    family: u32,
    /// Label values; `None` for a family statistics slot.
    labels: Option<Box<[Box<str>]>>,
    pub(crate) writer: Arc<Writer>,
    local: Box<[AtomicU64]>,
    bind: Mutex<BindState>,
    /// Whether the writer's list of series waiting for file slots holds this one.
    queued: AtomicBool,
    /// The series' exemplar records, once it has one (see `super::exemplar`).
    pub(crate) exemplars: std::sync::OnceLock<ExemplarSlots>,
}

struct BindState {
    /// Fork generation whose values `local` holds.
    local_gen: u64,
    /// Fork generation `ptr` was bound in (its file is still mapped in that generation).
    bound_gen: u64,
    retry_at: Option<Instant>,
}

impl Cell {
    /// Creates the cell and binds it now if the file has room (otherwise on a later write).
    pub(crate) fn new(
        writer: Arc<Writer>,
        family: u32,
        labels: Option<Box<[Box<str>]>>,
        layout: Layout,
    ) -> Arc<Cell> {
        let nslots = layout.slots();
        let cell = Arc::new(Cell {
            generation: AtomicU64::new(UNBOUND),
            ptr: AtomicPtr::new(std::ptr::null_mut()),
            layout,
            nslots,
            family,
            labels,
            writer,
            local: (0..nslots).map(|_| AtomicU64::new(0)).collect(),
            queued: AtomicBool::new(false),
            exemplars: std::sync::OnceLock::new(),
            bind: Mutex::new(BindState {
                local_gen: sys::fork_generation(),
                bound_gen: u64::MAX,
                retry_at: None,
            }),
        });
        cell.with(|_| ());
        cell
    }

    /// The label values of this series.
    pub(crate) fn labels(&self) -> &[Box<str>] {
        self.labels.as_deref().unwrap_or(&[])
    }

    /// What this cell binds to in the writer.
    pub(crate) fn bind_key(&self) -> BindKey<'_> {
        match &self.labels {
            Some(labels) => BindKey::Series {
                family: self.family,
                labels,
            },
            None => BindKey::Stats { family: self.family },
        }
    }

    /// Runs `f` on this process's value slots of the series.
    #[inline(always)]
    pub(crate) fn with<R>(self: &Arc<Self>, f: impl FnOnce(&[AtomicU64]) -> R) -> R {
        if self.generation.load(Ordering::Acquire) == sys::bind_epoch() {
            let p = self.ptr.load(Ordering::Relaxed);
            // SAFETY: the epoch matches, so `p` was stored (before `generation`, Release/
            // Acquire) by a successful bind in this very process and epoch: it points at
            // `nslots` reserved, aligned words of a mapping the writer keeps as long as it
            // lives, and `self.writer` keeps it alive. Only atomics touch those words.
            let slots = unsafe { std::slice::from_raw_parts(p.cast_const(), self.nslots) };
            return f(slots);
        }
        self.slow(f)
    }

    #[cold]
    #[inline(never)]
    fn slow<R>(self: &Arc<Self>, f: impl FnOnce(&[AtomicU64]) -> R) -> R {
        let _gate = sys::enter_gate();
        let mut st = self.bind.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slots) = self.bind_locked(&mut st, false) {
            drop(st);
            // A chance to write: the series that waited in memory go to the file now.
            if self.writer.has_waiting() {
                self.writer.flush_waiting();
            }
            return f(slots);
        }
        if !self.queued.swap(true, Ordering::AcqRel) {
            let weak: std::sync::Weak<Cell> = Arc::downgrade(self);
            self.writer.wait_for_file(weak);
        }
        // Under the lock: a bind moves `local` into the file under it too, so no write
        // to `local` can land after the move.
        f(&self.local)
    }

    /// Binds the series to file slots now if it is not bound (and, unless `now`, if its
    /// retry time has come). `None`: it lives in process memory for now.
    fn bind_locked(&self, st: &mut BindState, now: bool) -> Option<&[AtomicU64]> {
        let epoch = sys::bind_epoch();
        if self.generation.load(Ordering::Acquire) == epoch {
            let p = self.ptr.load(Ordering::Relaxed);
            // SAFETY: as in `with`.
            return Some(unsafe { std::slice::from_raw_parts(p.cast_const(), self.nslots) });
        }
        let fork_gen = sys::fork_generation();
        if st.local_gen != fork_gen {
            // Values in process memory were recorded by the parent before fork(): the
            // parent still holds and will write them; the child starts from zero.
            for s in self.local.iter() {
                s.store(0, Ordering::Relaxed);
            }
            st.local_gen = fork_gen;
            st.retry_at = None;
        }
        let at = Instant::now();
        if !now && st.retry_at.is_some_and(|t| at < t) {
            return None;
        }
        let key = self.bind_key();
        let Some(p) = self.writer.bind(&key, self.nslots) else {
            st.retry_at = Some(at + RETRY_INTERVAL);
            return None;
        };
        // SAFETY: `bind` returns a pointer to `nslots` reserved, aligned words of the
        // current mapping (see `with`); the mapping outlives `self.writer`.
        let slots = unsafe { std::slice::from_raw_parts(p, self.nslots) };
        let old = self.ptr.load(Ordering::Relaxed);
        if !old.is_null() && old.cast_const() != p && st.bound_gen == fork_gen {
            // SAFETY: `old` was bound in this fork generation, so its file is still
            // mapped by this process (the writer retires files, never unmaps them).
            let old = unsafe { std::slice::from_raw_parts(old.cast_const(), self.nslots) };
            self.layout.carry_gauge(old, slots);
        }
        self.layout.transfer(&self.local, slots);
        self.ptr.store(p.cast_mut(), Ordering::Relaxed);
        self.generation.store(epoch, Ordering::Release);
        st.bound_gen = fork_gen;
        st.retry_at = None;
        Some(slots)
    }

    /// Whether the series has file slots in this process now.
    pub(crate) fn bound(&self) -> bool {
        self.generation.load(Ordering::Acquire) == sys::bind_epoch()
    }

    /// Tries to move a series that waits in process memory into the file now (without
    /// waiting for a lock another thread holds). Returns whether it no longer waits.
    pub(crate) fn flush(&self) -> bool {
        let Ok(mut st) = self.bind.try_lock() else {
            return false;
        };
        let done = self.bind_locked(&mut st, true).is_some();
        if done {
            self.queued.store(false, Ordering::Release);
        }
        done
    }
}

impl Waiting for Cell {
    fn flush(&self) -> bool {
        Cell::flush(self)
    }

    fn bound(&self) -> bool {
        Cell::bound(self)
    }
}

impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cell")
            .field("family", &self.family)
            .field("labels", &self.labels)
            .field(
                "bound",
                &(self.generation.load(Ordering::Relaxed) == sys::bind_epoch()),
            )
            .finish()
    }
}

/// One bucket's exemplar record in this process's current file.
pub(super) struct Slot {
    /// Bind epoch `ptr` is valid in (see `Cell`).
    pub(super) generation: AtomicU64,
    pub(super) ptr: AtomicPtr<AtomicU64>,
    /// When this process last wrote it (the caller's clock, for sampling).
    #[cfg(feature = "http")]
    pub(super) last: AtomicU64,
}

/// A series' exemplar records: one per bucket (one for a counter), written by
/// `super::exemplar`.
pub(crate) struct ExemplarSlots {
    pub(super) slots: Box<[Slot]>,
}

impl ExemplarSlots {
    pub(super) fn new(buckets: usize) -> Self {
        ExemplarSlots {
            slots: (0..buckets.max(1))
                .map(|_| Slot {
                    generation: AtomicU64::new(UNBOUND),
                    ptr: AtomicPtr::new(std::ptr::null_mut()),
                    #[cfg(feature = "http")]
                    last: AtomicU64::new(0),
                })
                .collect(),
        }
    }
}
