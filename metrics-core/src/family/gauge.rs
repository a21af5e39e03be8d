//! Gauges: values that go up and down, combined over processes by a [`GaugeMode`].
//!
//! [`GaugeMode`]: crate::GaugeMode

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::metric::{Metric, sealed::Sealed};
use crate::format::desc::FamilyDesc;
use crate::format::{MR_SEQ, MR_TIME, MR_VALUE, MetricType};
use crate::sys;
use crate::write::cell::{Cell, Layout, add_f64};

/// A gauge (`f64`). `set`, `inc` and `dec` all work in every mode; the family's
/// [`GaugeMode`](crate::GaugeMode) says how the processes' values combine at scrape time.
#[derive(Clone)]
pub struct Gauge {
    cell: Arc<Cell>,
    most_recent: bool,
}

impl Gauge {
    /// Sets this process's value.
    #[inline]
    pub fn set(&self, v: f64) {
        if self.most_recent {
            self.cell.with(|s| write_most_recent(s, |_| v));
        } else {
            self.cell.with(|s| s[0].store(v.to_bits(), Ordering::Relaxed));
        }
    }

    /// Adds `v` to this process's value.
    #[inline]
    pub fn add(&self, v: f64) {
        if self.most_recent {
            self.cell.with(|s| write_most_recent(s, |old| old + v));
        } else {
            self.cell.with(|s| add_f64(&s[0], v));
        }
    }

    /// Subtracts `v` from this process's value.
    #[inline]
    pub fn sub(&self, v: f64) {
        self.add(-v);
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1.0);
    }

    /// Subtracts one.
    #[inline]
    pub fn dec(&self) {
        self.add(-1.0);
    }

    /// This process's value.
    pub fn get(&self) -> f64 {
        let slot = if self.most_recent { MR_VALUE } else { 0 };
        self.cell
            .with(|s| f64::from_bits(s[slot].load(Ordering::Relaxed)))
    }
}

/// Tries a writer waits for another one's `mostrecent` write to end (64 spins, then
/// yields) before it takes over: a writer killed mid-write leaves the sequence odd.
const MR_WAIT_TRIES: u32 = 64 + 1000;

/// Writes a `mostrecent` gauge: value and time change together under a sequence word
/// (odd while a write is in progress), so a reader never pairs a value with another
/// write's time. The wait for another writer is bounded: a sequence that stays odd, at
/// one value, for [`MR_WAIT_TRIES`] tries belongs to a writer that died mid-write, and is
/// taken over.
fn write_most_recent(s: &[AtomicU64], f: impl FnOnce(f64) -> f64) {
    let seq = &s[MR_SEQ];
    let mut cur = seq.load(Ordering::Relaxed);
    let mut stuck_at = cur;
    let mut tries = 0u32;
    // The even value the sequence had before this write.
    let base = loop {
        if cur & 1 == 0 {
            match seq.compare_exchange_weak(cur, cur + 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => break cur,
                Err(actual) => {
                    cur = actual;
                    continue;
                }
            }
        }
        if cur != stuck_at {
            stuck_at = cur;
            tries = 0;
        }
        tries += 1;
        if tries > MR_WAIT_TRIES {
            // Still odd at the same value: nobody is writing; keep it odd, as ours.
            match seq.compare_exchange(cur, cur + 2, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => break cur + 1,
                Err(actual) => {
                    cur = actual;
                    continue;
                }
            }
        }
        if tries < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
        cur = seq.load(Ordering::Relaxed);
    };
    let old = f64::from_bits(s[MR_VALUE].load(Ordering::Relaxed));
    s[MR_VALUE].store(f(old).to_bits(), Ordering::Relaxed);
    s[MR_TIME].store(sys::unix_nanos().max(1), Ordering::Relaxed);
    seq.store(base + 2, Ordering::Release);
}

#[allow(private_interfaces)] // sealed: unnameable outside the crate
impl Sealed for Gauge {
    fn layout(desc: &FamilyDesc) -> Layout {
        if desc.mode.most_recent() {
            Layout::MostRecent
        } else {
            Layout::Gauge
        }
    }
    fn from_cell(cell: Arc<Cell>, desc: &FamilyDesc) -> Self {
        Gauge {
            cell,
            most_recent: desc.mode.most_recent(),
        }
    }
    fn cell(&self) -> &Arc<Cell> {
        &self.cell
    }
}

impl Metric for Gauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl std::fmt::Debug for Gauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gauge")
            .field("labels", &self.cell.labels())
            .field("value", &self.get())
            .finish()
    }
}
