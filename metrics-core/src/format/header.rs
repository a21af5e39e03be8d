//! A store file's header (`FORMAT.md`, "Header"): built by the writer and the compactor,
//! checked by every reader.

use std::sync::atomic::Ordering;

use super::records::{Corrupt, corrupt};
use super::{self as format, ERROR_KINDS, HEADER_BYTES, HEADER_WORDS};
use crate::sys::region::Region;

/// The header of a new file, as its creator writes it.
pub(crate) struct NewHeader {
    /// [`format::BASE_VERSION`], or [`format::VERSION`] for a file that holds native
    /// histograms.
    pub version: u32,
    pub pid: u32,
    pub flags: u32,
    pub writer_id: u64,
    pub worker: Option<u64>,
    pub errors: [u64; ERROR_KINDS],
}

impl NewHeader {
    /// The header words, the used length 0 (published later) and the start time now.
    pub(crate) fn words(&self) -> [u64; HEADER_WORDS] {
        let mut h = [0u64; HEADER_WORDS];
        h[format::H_MAGIC] = u64::from_le_bytes(format::MAGIC);
        h[format::H_VERSION] = version_word(self.version);
        h[format::H_USED] = 0;
        h[format::H_PID] = u64::from(self.pid) | (u64::from(self.flags) << 32);
        h[format::H_START] = crate::sys::unix_nanos();
        h[format::H_WRITER_ID] = self.writer_id;
        h[format::H_WORKER] = self.worker.unwrap_or(format::NO_WORKER);
        h[format::H_ERRORS..format::H_ERRORS + ERROR_KINDS].copy_from_slice(&self.errors);
        h
    }
}

/// Word 1 of a header of `version`.
pub(crate) fn version_word(version: u32) -> u64 {
    u64::from(version) | ((HEADER_BYTES as u64) << 32)
}

/// The header fields a reader needs (re-read on every scrape: a resumed slot changes pid).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    pub version: u32,
    pub pid: u32,
    pub flags: u32,
    pub start: u64,
    pub writer_id: u64,
    pub worker: u64,
    pub used: usize,
}

impl Header {
    pub(crate) fn accumulator(&self) -> bool {
        self.flags & format::FLAG_ACCUMULATOR != 0
    }
}

/// Why a header is not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// The file breaks the format.
    Corrupt(Corrupt),
    /// The file is a store file of a newer format version than this crate knows (a rolling
    /// upgrade or downgrade): it is left alone, never folded or deleted.
    Newer(u32),
}

impl From<Corrupt> for HeaderError {
    fn from(c: Corrupt) -> Self {
        HeaderError::Corrupt(c)
    }
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Corrupt(c) => c.fmt(f),
            HeaderError::Newer(v) => write!(
                f,
                "format version {v}, newer than the version {} this reader knows (left alone)",
                format::VERSION
            ),
        }
    }
}

/// Checks magic, version and sizes, and reads the header of a file of `size` bytes (the
/// size just checked: `region` maps at least `min(size, HEADER_BYTES)` bytes of it).
pub(crate) fn read_header(region: &Region, size: usize) -> Result<Header, HeaderError> {
    let magic = region.word(0).map(|w| w.load(Ordering::Relaxed).to_le_bytes());
    if magic.is_none_or(|m| m != format::MAGIC) {
        return Err(corrupt!("wrong magic: not a shmetrics file").into());
    }
    // The version first: a newer version may have another header size.
    let version_word = region
        .word(format::H_VERSION * 8)
        .map(|w| w.load(Ordering::Relaxed))
        .ok_or_else(|| corrupt!("{size} bytes, shorter than the {HEADER_BYTES}-byte header"))?;
    let version = version_word as u32;
    if version > format::VERSION {
        return Err(HeaderError::Newer(version));
    }
    if version < format::BASE_VERSION {
        return Err(corrupt!(
            "format version {version}, this reader knows versions {} to {}",
            format::BASE_VERSION,
            format::VERSION
        )
        .into());
    }
    if size < HEADER_BYTES {
        return Err(corrupt!("{size} bytes, shorter than the {HEADER_BYTES}-byte header").into());
    }
    let mut h = Vec::with_capacity(format::HEADER_WORDS);
    if !region.copy_words(0, format::HEADER_WORDS, &mut h) {
        return Err(corrupt!("header out of range").into());
    }
    let header_bytes = (h[format::H_VERSION] >> 32) as usize;
    if header_bytes != HEADER_BYTES {
        return Err(corrupt!("header of {header_bytes} bytes, expected {HEADER_BYTES}").into());
    }
    let flags = (h[format::H_PID] >> 32) as u32;
    if flags & !format::FLAG_ACCUMULATOR != 0 {
        return Err(corrupt!("unknown header flags {flags:#x}").into());
    }
    // `used` is published with Release: load it with Acquire, after the other words.
    let used = region
        .word(format::H_USED * 8)
        .map(|w| w.load(Ordering::Acquire))
        .ok_or_else(|| corrupt!("header out of range"))?;
    let used = usize::try_from(used).map_err(|_| corrupt!("used length out of range"))?;
    // `used` may be past `size`: the writer grew the file and published more after the
    // size was checked. The caller checks the size again (see `Header::used`).
    if used < HEADER_BYTES || used % 8 != 0 {
        return Err(corrupt!("used length {used} below {HEADER_BYTES} or unaligned").into());
    }
    Ok(Header {
        version,
        pid: h[format::H_PID] as u32,
        flags,
        start: h[format::H_START],
        writer_id: h[format::H_WRITER_ID],
        worker: h[format::H_WORKER],
        used,
    })
}
