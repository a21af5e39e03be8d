//! The table of a family's series: label values to handle, read without locks.
//!
//! Open addressing over generations of slots. A slot is a [`OnceLock`]: filled once (under
//! the insert lock) and never emptied, so a lookup is acquire loads and compares only. When
//! a generation is half full, the next one (twice as large) is filled with clones of every
//! entry and published; older generations stay until the table is dropped, so a `&M` a
//! lookup returned stays valid for as long as the table is borrowed (the handles of both
//! generations write the same series).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

/// Slots of the first generation.
const FIRST_SLOTS: usize = 8;
/// Generations: the last has `FIRST_SLOTS << (GENERATIONS - 1)` slots, far more series
/// than any family may hold.
const GENERATIONS: usize = 32;

struct Entry<M> {
    hash: u64,
    labels: Box<[Box<str>]>,
    metric: M,
}

/// One generation of slots.
type Slots<M> = Box<[OnceLock<Entry<M>>]>;

/// Label values to `M`.
pub(crate) struct Table<M> {
    hasher: foldhash::fast::RandomState,
    generations: [OnceLock<Slots<M>>; GENERATIONS],
    /// The generation lookups use (published after it is filled).
    current: AtomicUsize,
    len: AtomicUsize,
    insert: Mutex<()>,
}

impl<M: Clone> Table<M> {
    pub(crate) fn new() -> Self {
        let generations: [OnceLock<Slots<M>>; GENERATIONS] = std::array::from_fn(|_| OnceLock::new());
        let _ = generations[0].set(empty_slots(FIRST_SLOTS));
        Table {
            hasher: foldhash::fast::RandomState::default(),
            generations,
            current: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            insert: Mutex::new(()),
        }
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub(crate) fn hash(&self, values: &[&str]) -> u64 {
        // No separator between values: each write mixes its own length, and a lookup
        // compares the values themselves; the hash only has to spread.
        let mut h = self.hasher.build_hasher();
        for v in values {
            std::hash::Hasher::write(&mut h, v.as_bytes());
        }
        std::hash::Hasher::finish(&h)
    }

    /// The current generation's slots.
    #[inline]
    fn slots(&self) -> &[OnceLock<Entry<M>>] {
        let g = self.current.load(Ordering::Acquire) % GENERATIONS;
        // Published only once filled: the generation is set.
        self.generations[g].get().map_or(&[], |s| &s[..])
    }

    /// The entry for `values` (of hash `hash`), if there is one. Inlined into the
    /// lookup of the hot path (a call costs its register saves each time).
    #[inline(always)]
    pub(crate) fn find(&self, hash: u64, values: &[&str]) -> Option<&M> {
        let slots = self.slots();
        // A power of two: every generation is (an empty slice ends at the first `get`).
        let mask = slots.len().wrapping_sub(1);
        let mut i = hash as usize;
        loop {
            i &= mask;
            let e = slots.get(i)?.get()?;
            if e.hash == hash
                && e.labels.len() == values.len()
                && e.labels
                    .iter()
                    .zip(values)
                    .all(|(a, b)| bytes_eq(a.as_bytes(), b.as_bytes()))
            {
                return Some(&e.metric);
            }
            i = i.wrapping_add(1);
        }
    }

    /// Takes the insert lock (callers are inside the fork gate).
    pub(crate) fn inserter(&self) -> Inserter<'_, M> {
        Inserter {
            table: self,
            _lock: self.insert.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }
}

fn empty_slots<M>(n: usize) -> Slots<M> {
    (0..n).map(|_| OnceLock::new()).collect()
}

/// Puts `e` in the first free slot of its probe sequence in `slots` (at most half full:
/// a free slot exists). Called under the insert lock.
fn place<M>(slots: &[OnceLock<Entry<M>>], e: Entry<M>) -> &M {
    let mask = slots.len() - 1;
    let mut i = e.hash as usize & mask;
    while slots[i].get().is_some() {
        i = (i + 1) & mask;
    }
    let mut e = Some(e);
    &slots[i].get_or_init(|| e.take().expect("placed once")).metric
}

/// The insert lock of a [`Table`], held.
pub(crate) struct Inserter<'a, M> {
    table: &'a Table<M>,
    _lock: MutexGuard<'a, ()>,
}

impl<'a, M: Clone> Inserter<'a, M> {
    /// Adds `metric` for `labels` (of hash `hash`, not in the table: the caller looked it
    /// up under this lock) and returns it.
    pub(crate) fn insert(self, hash: u64, labels: Box<[Box<str>]>, metric: M) -> &'a M {
        let t = self.table;
        let len = t.len();
        let g = t.current.load(Ordering::Relaxed);
        let mut slots = t.slots();
        if (len + 1) * 2 > slots.len() && g + 1 < GENERATIONS {
            // The next generation, filled with every entry before lookups see it.
            let bigger = t.generations[g + 1].get_or_init(|| empty_slots(slots.len() * 2));
            for e in slots.iter().filter_map(OnceLock::get) {
                place(
                    bigger,
                    Entry {
                        hash: e.hash,
                        labels: e.labels.clone(),
                        metric: e.metric.clone(),
                    },
                );
            }
            t.current.store(g + 1, Ordering::Release);
            slots = bigger;
        }
        let m = place(slots, Entry { hash, labels, metric });
        t.len.store(len + 1, Ordering::Relaxed);
        m
    }
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
