//! A memory mapping seen as an array of `AtomicU64` words.
//!
//! Other processes write the same pages at any time, so the mapping is never turned into a
//! `&[u8]` or `&mut [u8]`: every access is an atomic load or store of one aligned 64-bit
//! word, through [`AtomicU64::from_ptr`]. Offsets are bytes from the start of the file.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

/// A shared mapping of (a prefix of) a store file.
pub(crate) struct Region {
    map: MmapRaw,
    /// Bytes that may be touched: backed by the file (reserved with `fallocate` by the
    /// writer, or the file size at mapping time for a reader). Pages past the end of the
    /// file would raise SIGBUS, so nothing at or past `accessible` is ever read or written.
    accessible: usize,
}

impl Region {
    /// Maps `reserve` bytes of `file` read-write, of which the first `accessible` exist.
    ///
    /// Mapping more than the file holds is allowed by the kernel; growing the file later
    /// (with `fallocate`) makes more of the same mapping usable without moving it, so
    /// pointers held by handles stay valid for the life of the mapping.
    pub(crate) fn map_writer(file: &File, reserve: usize, accessible: usize) -> io::Result<Self> {
        debug_assert!(accessible <= reserve);
        let map = MmapOptions::new().len(reserve).map_raw(file)?;
        Ok(Region { map, accessible })
    }

    /// Maps the first `len` bytes of `file` read-only (`len` must not exceed its size).
    pub(crate) fn map_reader(file: &File, len: usize) -> io::Result<Self> {
        let map = MmapOptions::new().len(len).map_raw_read_only(file)?;
        Ok(Region { map, accessible: len })
    }

    /// Start and length of the whole mapping.
    pub(crate) fn span(&self) -> (*mut u8, usize) {
        (self.map.as_mut_ptr(), self.map.len())
    }

    /// Whether `addr` lies in the mapping.
    pub(crate) fn contains(&self, addr: usize) -> bool {
        let start = self.map.as_mut_ptr() as usize;
        addr >= start && addr - start < self.map.len()
    }

    /// Bytes that may be accessed.
    pub(crate) fn accessible(&self) -> usize {
        self.accessible
    }

    /// Declares that the file now backs `accessible` bytes (after a successful reservation).
    pub(crate) fn set_accessible(&mut self, accessible: usize) {
        assert!(accessible <= self.map.len(), "growth past the mapping");
        self.accessible = accessible;
    }

    /// The word at byte offset `off`, if it is aligned and inside the accessible range.
    #[inline]
    pub(crate) fn word(&self, off: usize) -> Option<&AtomicU64> {
        if off % 8 != 0 || off.checked_add(8)? > self.accessible {
            return None;
        }
        // SAFETY: `off + 8 <= accessible <= map.len()`, so the pointer is inside the mapping,
        // which stays mapped for the lifetime of `&self`; the mapping starts page-aligned and
        // `off` is a multiple of 8, so the word is 8-byte aligned. The bytes are backed by
        // the file (reserved or already present), so the access cannot fault. Every process
        // touches these words only through 64-bit atomics, as `from_ptr` requires.
        Some(unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(off).cast::<u64>()) })
    }

    /// Raw pointer to `n` consecutive words at `off`, after the same checks as [`word`].
    ///
    /// Handles keep such pointers; they stay valid while this `Region` is alive.
    ///
    /// [`word`]: Region::word
    pub(crate) fn words_ptr(&self, off: usize, n: usize) -> Option<*const AtomicU64> {
        let end = off.checked_add(n.checked_mul(8)?)?;
        if off % 8 != 0 || end > self.accessible || n == 0 {
            return None;
        }
        Some(self.word(off)? as *const AtomicU64)
    }

    /// Copies the words of `[off, off + n * 8)` into `out` with relaxed atomic loads.
    /// Returns `false` (and copies nothing) if the range is not accessible.
    pub(crate) fn copy_words(&self, off: usize, n: usize, out: &mut Vec<u64>) -> bool {
        let Some(end) = n.checked_mul(8).and_then(|b| off.checked_add(b)) else {
            return false;
        };
        if off % 8 != 0 || end > self.accessible {
            return false;
        }
        out.reserve(n);
        let start = out.len();
        // SAFETY: `[off, end)` is inside the accessible range (checked above), 8-aligned,
        // backed by the file and mapped for the lifetime of `&self`; every word is read
        // with an atomic load, as other processes write them.
        let base = unsafe { self.map.as_mut_ptr().add(off).cast::<u64>() };
        // Straight into the spare capacity: no per-word length update, no zeroing first.
        for (i, slot) in out.spare_capacity_mut()[..n].iter_mut().enumerate() {
            // SAFETY: as above; `i < n` keeps the word inside the checked range.
            let w = unsafe { AtomicU64::from_ptr(base.add(i)) };
            slot.write(w.load(Ordering::Relaxed));
        }
        // SAFETY: `reserve(n)` made room for `n` more words, and the loop initialised
        // exactly the first `n` of the spare capacity.
        unsafe { out.set_len(start + n) };
        true
    }
}
