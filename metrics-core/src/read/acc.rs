//! A merged value while it is accumulated, and how values are read out of a mapping.

use std::sync::atomic::{Ordering, fence};

use crate::format::{GaugeMode, MR_SEQ, MR_TIME, MR_VALUE};
use crate::sys::region::Region;

/// A merged value being accumulated (also the compactor's input).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Acc {
    U64(u64),
    F64(f64),
    Gauge {
        v: f64,
        t: u64,
    },
    Hist {
        buckets: Vec<u64>,
        sum: f64,
    },
    /// Python summaries only.
    Summary {
        count: f64,
        sum: f64,
    },
}

impl Acc {
    /// Combines another source's merged value of the same series into this one.
    pub(crate) fn absorb(&mut self, other: Acc, mode: GaugeMode) {
        match (self, other) {
            (Acc::F64(a), Acc::F64(b)) => *a += b,
            (Acc::U64(a), Acc::U64(b)) => *a = a.saturating_add(b),
            (Acc::Gauge { v, t }, Acc::Gauge { v: bv, t: bt }) => match mode {
                GaugeMode::Min | GaugeMode::LiveMin => *v = v.min(bv),
                GaugeMode::Max | GaugeMode::LiveMax => *v = v.max(bv),
                GaugeMode::Sum | GaugeMode::LiveSum => *v += bv,
                GaugeMode::MostRecent | GaugeMode::LiveMostRecent => {
                    if bt > *t {
                        (*v, *t) = (bv, bt);
                    }
                }
                // One series per process: the same pid in both is the same process seen
                // twice (it cannot be two live processes); keep the native value.
                GaugeMode::All | GaugeMode::LiveAll => {}
            },
            (Acc::Hist { buckets, sum }, Acc::Hist { buckets: b, sum: s }) => {
                for (x, y) in buckets.iter_mut().zip(b) {
                    *x = x.saturating_add(y);
                }
                *sum += s;
            }
            (Acc::Summary { count, sum }, Acc::Summary { count: c, sum: s }) => {
                *count += c;
                *sum += s;
            }
            _ => {}
        }
    }
}

/// Reads a `mostrecent` gauge's (value, time) consistently, or the latest words after a
/// bounded number of tries (a writer killed mid-write leaves the sequence odd forever).
pub(crate) fn read_most_recent(region: &Region, offset: usize) -> (f64, u64) {
    let word = |i: usize| region.word(offset + i * 8);
    let (Some(seq), Some(val), Some(time)) = (word(MR_SEQ), word(MR_VALUE), word(MR_TIME)) else {
        return (0.0, 0);
    };
    for _ in 0..64 {
        let s1 = seq.load(Ordering::Acquire);
        if s1 & 1 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let v = val.load(Ordering::Relaxed);
        let t = time.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if seq.load(Ordering::Relaxed) == s1 {
            return (f64::from_bits(v), t);
        }
    }
    (
        f64::from_bits(val.load(Ordering::Relaxed)),
        time.load(Ordering::Relaxed),
    )
}

/// Reads the current values of a series' slots (for removal baselines).
pub(crate) fn read_slots(region: &Region, offset: usize, slots: usize) -> Vec<u64> {
    (0..slots)
        .map(|i| {
            region
                .word(offset + i * 8)
                .map_or(0, |w| w.load(Ordering::Relaxed))
        })
        .collect()
}
