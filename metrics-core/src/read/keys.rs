//! Interning of series keys (label values) for a merge.
//!
//! A merge looks up the same keys over and over, from borrowed label values read out of
//! files; a lookup hashes the parts and allocates nothing, only a new key does.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

/// The distinct keys of one merged family, each with a dense index.
pub(crate) struct KeyTable {
    keys: Vec<Arc<[Box<str>]>>,
    hashes: Vec<u64>,
    table: hashbrown::HashTable<usize>,
    hasher: foldhash::fast::RandomState,
    /// Indices in key order, for as many keys as it covers (recomputed when keys are added).
    order: Vec<u32>,
}

impl KeyTable {
    pub(crate) fn new() -> Self {
        KeyTable {
            keys: Vec::new(),
            hashes: Vec::new(),
            table: hashbrown::HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            order: Vec::new(),
        }
    }

    /// Sorts the key indices by key (label values), as an exposition lists series; only
    /// when keys were added since the last time.
    pub(crate) fn sort(&mut self) {
        if self.order.len() != self.keys.len() {
            let keys = &self.keys;
            self.order = (0..keys.len() as u32).collect();
            self.order
                .sort_unstable_by(|&a, &b| keys[a as usize].cmp(&keys[b as usize]));
        }
    }

    /// Key indices in key order, as of the last [`sort`](KeyTable::sort).
    pub(crate) fn sorted(&self) -> &[u32] {
        debug_assert_eq!(self.order.len(), self.keys.len(), "sort() first");
        &self.order
    }

    /// The key with index `i`.
    pub(crate) fn key(&self, i: usize) -> &Arc<[Box<str>]> {
        &self.keys[i]
    }

    /// Index of the key made of `parts` (`count` of them, each UTF-8 text), and whether it
    /// was just added. Parts are bytes: a lookup compares them as they are, only a new key
    /// is turned into text.
    pub(crate) fn index<'a>(
        &mut self,
        parts: impl Iterator<Item = &'a [u8]> + Clone,
        count: usize,
    ) -> (usize, bool) {
        let mut h = self.hasher.build_hasher();
        for l in parts.clone() {
            h.write(l);
            h.write_u8(0xff);
        }
        let hash = h.finish();
        let keys = &self.keys;
        let found = self.table.find(hash, |&i| {
            let k = &keys[i];
            k.len() == count && k.iter().map(|b| b.as_bytes()).eq(parts.clone())
        });
        if let Some(&i) = found {
            return (i, false);
        }
        let i = self.keys.len();
        self.keys.push(
            parts
                .map(|p| Box::from(std::str::from_utf8(p).unwrap_or("\u{fffd}")))
                .collect(),
        );
        self.hashes.push(hash);
        let hashes = &self.hashes;
        self.table.insert_unique(hash, i, |&j| hashes[j]);
        (i, true)
    }
}

#[cfg(test)]
mod tests {
    use super::KeyTable;

    #[test]
    fn interns_by_value() {
        let mut t = KeyTable::new();
        let p = |s: &'static [&'static str]| s.iter().map(|s| s.as_bytes());
        assert_eq!(t.index(p(&["a", "b"]), 2), (0, true));
        assert_eq!(t.index(p(&["a", "c"]), 2), (1, true));
        assert_eq!(t.index(p(&["a", "b"]), 2), (0, false));
        // The separator keeps ("ab", "") and ("a", "b") apart.
        assert_eq!(t.index(p(&["ab", ""]), 2), (2, true));
        assert_eq!(t.index(p(&["a"]), 1), (3, true));
        assert_eq!(&**t.key(1), &["a".into(), "c".into()] as &[Box<str>]);
        t.sort();
        assert_eq!(t.sorted(), &[3, 0, 1, 2]);
        assert_eq!(t.index(p(&["0"]), 1), (4, true));
        t.sort();
        assert_eq!(t.sorted(), &[4, 3, 0, 1, 2]);
    }
}
