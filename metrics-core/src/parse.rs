//! Parsing a store file from its mapping: header and records, every length and offset
//! checked (see `FORMAT.md`, "Validation"). Shared by the reader, the compactor, and a
//! writer resuming its worker slot.

use std::sync::atomic::Ordering;

use crate::format::{self, Corrupt, FamilyRecord, HEADER_BYTES, corrupt};
use crate::region::Region;

/// The header fields a reader needs (re-read on every scrape: a resumed slot changes pid).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
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
    if version != format::VERSION {
        return Err(corrupt!(
            "format version {version}, this reader knows version {}",
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
        pid: h[format::H_PID] as u32,
        flags,
        start: h[format::H_START],
        writer_id: h[format::H_WRITER_ID],
        worker: h[format::H_WORKER],
        used,
    })
}

/// A family as found in a file.
#[derive(Debug, Clone)]
pub(crate) struct ParsedFamily {
    pub rec: FamilyRecord,
    /// Value slots per series.
    pub slots: usize,
}

/// A series as found in a file. Its label values stay in the file (read back with
/// [`Parsed::read_series`]): a scrape of thousands of series allocates none of them.
#[derive(Debug, Clone)]
pub(crate) struct ParsedSeries {
    pub family: u32,
    pub offset: usize,
    /// Byte offset of the series record's body (after its header word), and its words.
    pub record: usize,
    pub record_words: usize,
}

/// One baseline of a removal: a file's values of a series when it was removed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Baseline {
    pub writer_id: u64,
    pub labels: Box<[Box<str>]>,
    pub values: Vec<u64>,
}

/// A removal of one series, or of every series of a family.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Removal {
    pub time: u64,
    pub family: String,
    /// `None`: every series of the family.
    pub labels: Option<Box<[Box<str>]>>,
    pub baselines: Vec<Baseline>,
}

/// Everything parsed from one file so far.
#[derive(Debug, Default, Clone)]
pub(crate) struct Parsed {
    pub accumulator: bool,
    pub application: Option<String>,
    pub families: Vec<ParsedFamily>,
    pub series: Vec<ParsedSeries>,
    pub blocks: Vec<(usize, usize)>,
    pub folded: Vec<u64>,
    pub removals: Vec<std::sync::Arc<Removal>>,
    /// Bytes parsed (records below this offset are in the vectors above).
    pub parsed: usize,
}

impl Parsed {
    pub(crate) fn new(accumulator: bool) -> Self {
        Parsed {
            accumulator,
            parsed: HEADER_BYTES,
            ..Parsed::default()
        }
    }

    /// Label values a series of `fam` carries in this file (per-process gauges carry their
    /// `pid` label value in an accumulator).
    pub(crate) fn series_label_count(&self, fam: &FamilyRecord) -> usize {
        let extra = self.accumulator && fam.ty == format::MetricType::Gauge && fam.mode.per_process();
        fam.labels.len() + usize::from(extra)
    }

    /// Parses the records of `[self.parsed, used)`, one at a time: each record's length is
    /// checked (at most [`format::MAX_RECORD_BYTES`], inside `used`) before anything of it
    /// is copied, so a file that lies about its size costs no more memory than one record.
    /// `used` must lie inside the region (checked by the caller).
    pub(crate) fn parse(&mut self, region: &Region, used: usize) -> Result<(), Corrupt> {
        if used > region.accessible() {
            return Err(corrupt!("records out of range"));
        }
        let mut body = Vec::new();
        while self.parsed < used {
            let at = self.parsed;
            let w0 = region
                .word(at)
                .map(|w| w.load(Ordering::Relaxed))
                .ok_or_else(|| corrupt!("records out of range"))?;
            let kind = w0 as u32;
            let len = (w0 >> 32) as usize;
            if len < 8 || len % 8 != 0 || len > format::MAX_RECORD_BYTES || len > used - at {
                return Err(corrupt!("record at {at} has bad length {len}"));
            }
            body.clear();
            // A value block's body is its slots: nothing to decode, nothing to copy.
            if kind != format::REC_VALUES && !region.copy_words(at + 8, len / 8 - 1, &mut body) {
                return Err(corrupt!("records out of range"));
            }
            self.record(kind, at, len, &body)?;
            self.parsed = at + len;
        }
        Ok(())
    }

    fn record(&mut self, kind: u32, at: usize, len: usize, body: &[u64]) -> Result<(), Corrupt> {
        match kind {
            format::REC_APPLICATION => {
                if self.application.is_some() {
                    return Err(corrupt!("second application record at {at}"));
                }
                self.application = Some(format::decode_application(body)?);
            }
            format::REC_FAMILY => {
                let rec = format::decode_family(body)?;
                if rec.id as usize != self.families.len() {
                    return Err(corrupt!("family id {} out of sequence at {at}", rec.id));
                }
                if self.families.iter().any(|f| f.rec.name == rec.name) {
                    return Err(corrupt!("family {:?} declared twice", rec.name));
                }
                if !in_block(&self.blocks, rec.stats_offset, 1) {
                    return Err(corrupt!(
                        "family {:?} statistics slot outside value blocks",
                        rec.name
                    ));
                }
                let slots = format::series_slots(rec.ty, rec.mode, rec.buckets.len());
                self.families.push(ParsedFamily { rec, slots });
            }
            format::REC_SERIES => {
                let rec = format::view_series(body)?;
                let fam = self
                    .families
                    .get(rec.family as usize)
                    .ok_or_else(|| corrupt!("series of unknown family {} at {at}", rec.family))?;
                let want = self.series_label_count(&fam.rec);
                if rec.len() != want {
                    return Err(corrupt!(
                        "series of {:?} with {} label values, expected {want}",
                        fam.rec.name,
                        rec.len()
                    ));
                }
                if !in_block(&self.blocks, rec.value_offset, fam.slots) {
                    return Err(corrupt!("series value slots outside value blocks at {at}"));
                }
                self.series.push(ParsedSeries {
                    family: rec.family,
                    offset: rec.value_offset as usize,
                    record: at + 8,
                    record_words: body.len(),
                });
            }
            format::REC_VALUES => self.blocks.push((at + 8, at + len)),
            format::REC_FOLDED => {
                if !self.accumulator {
                    return Err(corrupt!("folded-files record outside an accumulator"));
                }
                self.folded.extend(format::decode_folded(body)?);
            }
            format::REC_REMOVAL => self
                .removals
                .push(std::sync::Arc::new(format::decode_removal(body)?)),
            k if k & format::REC_OPTIONAL != 0 => {}
            k => return Err(corrupt!("unknown record kind {k} at {at}")),
        }
        Ok(())
    }
}

impl Parsed {
    /// Reads a series record back from the file into `buf` and views it (validated when
    /// parsed; records never change).
    pub(crate) fn read_series<'b>(
        region: &Region,
        s: &ParsedSeries,
        buf: &'b mut Vec<u64>,
    ) -> Result<format::SeriesView<'b>, Corrupt> {
        buf.clear();
        if !region.copy_words(s.record, s.record_words, buf) {
            return Err(corrupt!("series record out of range"));
        }
        format::view_series(buf)
    }

    /// A series' label values, owned.
    pub(crate) fn series_labels(region: &Region, s: &ParsedSeries) -> Result<Box<[Box<str>]>, Corrupt> {
        let mut buf = Vec::new();
        let view = Parsed::read_series(region, s, &mut buf)?;
        Ok(view.labels().map(Box::from).collect())
    }
}

/// Whether `[off, off + slots * 8)` lies in one value block.
pub(crate) fn in_block(blocks: &[(usize, usize)], off: u64, slots: usize) -> bool {
    let Ok(off) = usize::try_from(off) else {
        return false;
    };
    if off % 8 != 0 {
        return false;
    }
    let Some(end) = slots.checked_mul(8).and_then(|b| off.checked_add(b)) else {
        return false;
    };
    let i = blocks.partition_point(|(start, _)| *start <= off);
    i > 0 && end <= blocks[i - 1].1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_containment() {
        let blocks = vec![(136, 1000), (2000, 3000)];
        assert!(in_block(&blocks, 136, 1));
        assert!(in_block(&blocks, 992, 1));
        assert!(!in_block(&blocks, 992, 2));
        assert!(!in_block(&blocks, 1000, 1));
        assert!(!in_block(&blocks, 137, 1));
        assert!(!in_block(&blocks, 128, 1));
        assert!(in_block(&blocks, 2000, 125));
        assert!(!in_block(&blocks, u64::MAX - 7, 1));
        assert!(!in_block(&blocks, 2000, usize::MAX));
    }
}
