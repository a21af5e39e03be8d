//! A merged value while it is accumulated, and how values are read out of a mapping.

use std::sync::atomic::{Ordering, fence};

use crate::format::exemplar::{
    EX_HEAD_WORDS, EX_LEN, EX_MAX_DATA, EX_SEQ, EX_TIME, EX_VALUE, ExemplarData, decode_labels,
};
use crate::format::native::{BucketKey, CHUNK_WORDS, NativeSpec, Sparse, chunk_counts};
use crate::format::parse::{Parsed, ParsedSeries};
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
    /// Boxed: the other variants, far more numerous in a scrape, stay small.
    Hist(Box<HistAcc>),
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
            (Acc::Hist(a), Acc::Hist(b)) => {
                let b = *b;
                for (x, y) in a.buckets.iter_mut().zip(b.buckets) {
                    *x = x.saturating_add(y);
                }
                a.sum += b.sum;
                NativeAcc::absorb_into(&mut a.native, b.native);
            }
            (Acc::Summary { count, sum }, Acc::Summary { count: c, sum: s }) => {
                *count += c;
                *sum += s;
            }
            _ => {}
        }
    }
}

/// A histogram being accumulated.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HistAcc {
    /// Classic bucket counts (not cumulative), +Inf last.
    pub buckets: Vec<u64>,
    pub sum: f64,
    /// The native buckets of a histogram that has them.
    pub native: Option<NativeAcc>,
}

impl HistAcc {
    /// An accumulated histogram value.
    pub(crate) fn acc(buckets: Vec<u64>, sum: f64, native: Option<NativeAcc>) -> Acc {
        Acc::Hist(Box::new(HistAcc { buckets, sum, native }))
    }
}

/// Native buckets being accumulated: every file's bucket counts as they were recorded
/// (each at its own schema), brought to one schema and zero bucket only for the exposition
/// ([`NativeAcc::sparse`]), so a compaction folds them exactly as they are.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NativeAcc {
    /// The coarsest schema, the widest zero threshold and the smallest bucket limit of
    /// the declarations merged.
    pub spec: NativeSpec,
    /// The narrowest zero threshold of the declarations merged (buckets recorded under it
    /// may reach into a wider one).
    pub narrowest_zero: f64,
    pub zero: u64,
    /// Counts by bucket, sorted, no duplicates.
    pub buckets: Vec<(BucketKey, u64)>,
}

impl NativeAcc {
    pub(crate) fn new(spec: NativeSpec) -> Self {
        NativeAcc {
            spec,
            narrowest_zero: spec.zero_threshold,
            zero: 0,
            buckets: Vec::new(),
        }
    }

    /// Adds `counts` (sorted by bucket, no duplicates): one pass when every bucket is
    /// known already, as in every scrape after the first.
    pub(crate) fn add_sorted(&mut self, counts: &[(BucketKey, u64)]) {
        let mut i = 0;
        for (n, &(key, c)) in counts.iter().enumerate() {
            while i < self.buckets.len() && self.buckets[i].0 < key {
                i += 1;
            }
            match self.buckets.get_mut(i) {
                Some(b) if b.0 == key => b.1 = b.1.saturating_add(c),
                _ => {
                    // A bucket this series did not have yet: the rest one by one.
                    for &(k, c) in &counts[n..] {
                        self.add(k, c);
                    }
                    return;
                }
            }
        }
    }

    /// Adds `n` to bucket `key`.
    #[inline]
    pub(crate) fn add(&mut self, key: BucketKey, n: u64) {
        match self.buckets.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(n),
            Err(i) => self.buckets.insert(i, (key, n)),
        }
    }

    /// Zero again, keeping the declaration and the room allocated.
    pub(crate) fn reset(&mut self) {
        self.zero = 0;
        self.buckets.clear();
    }

    /// Whether nothing is counted.
    pub(crate) fn is_empty(&self) -> bool {
        self.zero == 0 && self.buckets.iter().all(|(_, n)| *n == 0)
    }

    /// Takes `other` (another declaration's, or another source's) into `this`.
    pub(crate) fn absorb_into(this: &mut Option<NativeAcc>, other: Option<NativeAcc>) {
        let Some(other) = other else { return };
        let Some(a) = this else {
            *this = Some(other);
            return;
        };
        a.spec.schema = a.spec.schema.min(other.spec.schema);
        a.spec.zero_threshold = a.spec.zero_threshold.max(other.spec.zero_threshold);
        a.spec.max_buckets = match (a.spec.max_buckets, other.spec.max_buckets) {
            (0, m) | (m, 0) => m,
            (x, y) => x.min(y),
        };
        a.narrowest_zero = a.narrowest_zero.min(other.narrowest_zero);
        a.zero = a.zero.saturating_add(other.zero);
        for (k, n) in other.buckets {
            a.add(k, n);
        }
    }

    /// The buckets as one series shows them: one schema, one zero bucket, at most the
    /// bucket limit.
    pub(crate) fn sparse(&self) -> Sparse {
        Sparse::build(
            &self.buckets,
            self.zero,
            self.spec.schema,
            self.spec.zero_threshold,
            self.narrowest_zero < self.spec.zero_threshold,
            self.spec.max_buckets,
        )
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

/// The bucket counts of a native histogram series' chunks in one file (chunks of one
/// bucket added up), in bucket order; nothing for other series.
pub(crate) fn native_counts(region: &Region, parsed: &Parsed, s: &ParsedSeries) -> Vec<(BucketKey, u64)> {
    let mut out = Vec::new();
    read_native_counts(region, parsed, s, &mut out, &mut Vec::with_capacity(CHUNK_WORDS));
    out
}

/// [`native_counts`] into `out` (cleared first), with `words` as scratch. The series'
/// chunks are kept in bucket order (see [`Parsed::chunk_lists`]): the counts come out
/// sorted, chunks of the same buckets added up, without sorting.
pub(crate) fn read_native_counts(
    region: &Region,
    parsed: &Parsed,
    s: &ParsedSeries,
    out: &mut Vec<(BucketKey, u64)>,
    words: &mut Vec<u64>,
) {
    out.clear();
    let list = parsed.chunks_of(s);
    let mut i = 0;
    while i < list.len() {
        let Some(first) = parsed.chunks.get(list[i] as usize) else {
            i += 1;
            continue;
        };
        // Every chunk of these buckets (a full one, then the ones after it).
        let mut counts = [0u64; 16];
        while let Some(c) = list.get(i).and_then(|&c| parsed.chunks.get(c as usize)) {
            if c.id != first.id {
                break;
            }
            words.clear();
            if region.copy_words(c.counts, CHUNK_WORDS, words) {
                for (j, n) in chunk_counts(words) {
                    counts[j] = counts[j].saturating_add(n);
                }
            }
            i += 1;
        }
        for (j, n) in counts.into_iter().enumerate() {
            if n > 0 {
                out.push((first.id.bucket(j), n));
            }
        }
    }
}

/// Reads the exemplar record at `record` (`capacity` bytes of label data) under its
/// sequence word: `None` if a write is in progress or happened while it was read (skipped
/// for this scrape: never one write's labels with another's value), if it was never
/// written, or if its words break the format.
pub(crate) fn read_exemplar(region: &Region, record: usize, capacity: usize) -> Option<ExemplarData> {
    let word = |i: usize| region.word(record + i * 8);
    let seq = word(EX_SEQ)?;
    let s1 = seq.load(Ordering::Acquire);
    if s1 & 1 == 1 {
        return None;
    }
    let value = f64::from_bits(word(EX_VALUE)?.load(Ordering::Relaxed));
    let time = word(EX_TIME)?.load(Ordering::Relaxed);
    let len = word(EX_LEN)?.load(Ordering::Relaxed);
    let (bytes, pairs) = ((len as u32) as usize, (len >> 32) as usize);
    if bytes > capacity.min(EX_MAX_DATA) || pairs > 64 {
        return None;
    }
    let mut words = Vec::with_capacity(bytes.div_ceil(8));
    if !region.copy_words(record + EX_HEAD_WORDS * 8, bytes.div_ceil(8), &mut words) {
        return None;
    }
    fence(Ordering::Acquire);
    if seq.load(Ordering::Relaxed) != s1 || time == 0 {
        return None;
    }
    let data: &[u8] = bytemuck::cast_slice(&words);
    let labels = decode_labels(&data[..bytes], pairs)?;
    Some(ExemplarData { labels, value, time })
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
