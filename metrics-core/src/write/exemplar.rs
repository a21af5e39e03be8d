//! Exemplars in this process's file: one record per counter series or histogram bucket
//! (kind 8 of `FORMAT.md`), found through the series' slots here, written under the
//! record's sequence word without a lock: a writer makes the sequence odd with a
//! compare-and-swap (a writer that finds it odd, another thread's write in progress, skips
//! its exemplar: the other one is as recent), writes the words, and makes it even again.
//! A reader that sees the sequence odd or changed skips the record for that scrape, so it
//! never pairs one write's labels with another's value.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use super::cell::{Cell, ExemplarSlots, Slot};
use crate::format::ErrorKind;
use crate::format::exemplar::{EX_HEAD_WORDS, EX_LEN, EX_SEQ, EX_TIME, EX_VALUE};
use crate::sys;

/// An exemplar to write: its encoded labels (`format::exemplar::encode_labels`), their
/// number, its value and time (nanoseconds since the Unix epoch).
pub(crate) struct NewExemplar<'a> {
    pub data: &'a [u8],
    pub pairs: u32,
    pub value: f64,
    pub time: u64,
}

/// What became of an exemplar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Written,
    /// Another write of the same record was in progress, or the bucket was written less
    /// than the sampling interval ago: skipped.
    Skipped,
    /// No record could be had (the series is not in the file yet, or the file is full):
    /// dropped and counted.
    Dropped,
}

impl Cell {
    /// The series' exemplar slots, made on the first exemplar.
    fn exemplar_slots(&self, buckets: usize) -> &ExemplarSlots {
        if let Some(s) = self.exemplars.get() {
            return s;
        }
        // Inside the fork gate before the OnceLock's own lock, like every internal lock.
        let _gate = sys::enter_gate();
        self.exemplars.get_or_init(|| ExemplarSlots::new(buckets))
    }

    /// Whether `bucket`'s exemplar was last written less than `interval` before `now` (in
    /// the caller's clock) by this process; if not, takes the turn (marks it written at
    /// `now`). For callers that sample.
    #[cfg(feature = "http")]
    pub(crate) fn exemplar_due(&self, bucket: usize, buckets: usize, now: u64, interval: u64) -> bool {
        let Some(slot) = self.exemplar_slots(buckets).slots.get(bucket) else {
            return false;
        };
        let last = slot.last.load(Ordering::Relaxed);
        if last != 0 && now.wrapping_sub(last) < interval {
            return false;
        }
        slot.last
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Writes `ex` as the exemplar of `bucket` (of `buckets`) of this series.
    pub(crate) fn write_exemplar(
        self: &Arc<Self>,
        bucket: usize,
        buckets: usize,
        ex: &NewExemplar<'_>,
    ) -> Outcome {
        let Some(slot) = self.exemplar_slots(buckets).slots.get(bucket) else {
            return Outcome::Dropped;
        };
        if slot.generation.load(Ordering::Acquire) == sys::bind_epoch() {
            let p = slot.ptr.load(Ordering::Relaxed);
            // SAFETY: `p` was stored (before `generation`, Release/Acquire) by `bind_slot` in
            // this bind epoch, from `Writer::bind_exemplar`: it points at a whole exemplar
            // record in this process's mapping of its current file, checked to be inside
            // it and aligned. The writer keeps its mappings as long as it lives, and
            // `self.writer` keeps it alive.
            match unsafe { write_record(p, ex) } {
                Some(true) => return Outcome::Written,
                Some(false) => return Outcome::Skipped,
                None => {} // too small for these labels: a larger record
            }
        }
        self.bind_slot(slot, bucket, ex)
    }

    #[cold]
    #[inline(never)]
    fn bind_slot(self: &Arc<Self>, slot: &Slot, bucket: usize, ex: &NewExemplar<'_>) -> Outcome {
        let _gate = sys::enter_gate();
        // The series' slots first: its records name it by their offset in the file.
        self.with(|_| ());
        let epoch = sys::bind_epoch();
        let current = (slot.generation.load(Ordering::Acquire) == epoch)
            .then(|| slot.ptr.load(Ordering::Relaxed).cast_const());
        let key = self.bind_key();
        let Some(p) = self
            .writer
            .bind_exemplar(&key, bucket as u32, ex.data.len(), current)
        else {
            self.writer.count_error(ErrorKind::Exemplar, &|| {
                "an exemplar could not be written: the series has no room in the file (full \
                 filesystem or file size limit)"
                    .to_string()
            });
            return Outcome::Dropped;
        };
        slot.ptr.store(p.cast_mut(), Ordering::Relaxed);
        slot.generation.store(epoch, Ordering::Release);
        // SAFETY: as in `write_exemplar`: `p` is the record `bind_exemplar` just returned.
        match unsafe { write_record(p, ex) } {
            Some(true) => Outcome::Written,
            Some(false) => Outcome::Skipped,
            None => Outcome::Dropped,
        }
    }
}

/// Writes `ex` into the exemplar record at `p` under its sequence word. `Some(false)`:
/// another write of it is in progress (skipped); `None`: the labels do not fit.
///
/// # Safety
///
/// `p` must point at the first word of a whole exemplar record in a live mapping of this
/// process (as `Writer::bind_exemplar` returns), accessed by every process only as atomic
/// 64-bit words.
unsafe fn write_record(p: *const AtomicU64, ex: &NewExemplar<'_>) -> Option<bool> {
    // SAFETY: the caller's promise: the record's words from `p` on are valid atomics; the
    // header word says how many there are, and no index below goes past them.
    let word = |i: usize| unsafe { &*p.add(i) };
    let len_words = (word(0).load(Ordering::Relaxed) >> 32) as usize / 8;
    let room = len_words.checked_sub(EX_HEAD_WORDS)? * 8;
    if ex.data.len() > room {
        return None;
    }
    let seq = word(EX_SEQ);
    let s = seq.load(Ordering::Relaxed);
    if s & 1 == 1
        || seq
            .compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        return Some(false);
    }
    // The odd sequence is seen before any of the words below (the reader's fence pairs
    // with this one).
    fence(Ordering::Release);
    word(EX_VALUE).store(ex.value.to_bits(), Ordering::Relaxed);
    word(EX_TIME).store(ex.time, Ordering::Relaxed);
    word(EX_LEN).store(
        ex.data.len() as u64 | (u64::from(ex.pairs) << 32),
        Ordering::Relaxed,
    );
    for (i, chunk) in ex.data.chunks(8).enumerate() {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        word(EX_HEAD_WORDS + i).store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
    seq.store(s + 2, Ordering::Release);
    Some(true)
}

// A first record holds a trace id: "trace_id" and 32 hex digits, with their two lengths.
const _: () = assert!(2 + 8 + 2 + 32 <= crate::format::exemplar::EX_FIRST_CAPACITY);
