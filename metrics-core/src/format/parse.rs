//! Parsing a store file from its mapping: header and records, every length and offset
//! checked (see `FORMAT.md`, "Validation"). Shared by the reader, the compactor, and a
//! writer resuming its worker slot.

use std::sync::atomic::Ordering;

use super::native::ChunkId;
use super::records::{self, Corrupt, FamilyRecord, Removal, corrupt};
use super::{self as format, HEADER_BYTES};
use crate::sys::region::Region;

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
    /// Index of its chunks and exemplars in [`Parsed::extras`] (`NO_EXTRAS` for a series
    /// that has none): kept out of this struct, which stays small for the many series that
    /// have neither.
    pub extra: u32,
    pub offset: usize,
    /// Byte offset of the series record's body (after its header word), and its words.
    pub record: usize,
    pub record_words: usize,
}

/// [`ParsedSeries::extra`] of a series without chunks or exemplars.
pub(crate) const NO_EXTRAS: u32 = u32::MAX;

/// What a series has beyond its value slots.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeriesExtras {
    /// Its native bucket chunks (indexes into [`Parsed::chunks`]), ordered by side, schema
    /// and chunk number (so their buckets come out in bucket order); chunks of the same
    /// buckets in file order.
    pub chunks: Vec<u32>,
    /// Its exemplar records (indexes into [`Parsed::exemplars`]), in file order.
    pub exemplars: Vec<u32>,
}

/// An exemplar record, as found in a file (its words change: read them under its
/// sequence word).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ParsedExemplar {
    /// Bucket (classic histogram bucket index; 0 for a counter).
    pub bucket: u32,
    /// Byte offset of the record.
    pub record: usize,
    /// Bytes of label data it has room for.
    pub capacity: usize,
}

/// A chunk of a native histogram series' buckets, as found in a file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ParsedChunk {
    pub id: ChunkId,
    /// Byte offset of its count words.
    pub counts: usize,
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
    pub chunks: Vec<ParsedChunk>,
    pub exemplars: Vec<ParsedExemplar>,
    /// The chunks and exemplars of the series that have some.
    pub extras: Vec<SeriesExtras>,
    /// Series by the offset of their value slots (chunk and exemplar records name their
    /// series so), built at the first such record.
    pub by_offset: Option<std::collections::HashMap<u32, usize>>,
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

    #[inline]
    fn record(&mut self, kind: u32, at: usize, len: usize, body: &[u64]) -> Result<(), Corrupt> {
        match kind {
            format::REC_APPLICATION => {
                if self.application.is_some() {
                    return Err(corrupt!("second application record at {at}"));
                }
                self.application = Some(records::decode_application(body)?);
            }
            format::REC_FAMILY => {
                let rec = records::decode_family(body)?;
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
                let slots = rec.slots();
                self.families.push(ParsedFamily { rec, slots });
            }
            format::REC_SERIES => {
                let rec = records::view_series(body)?;
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
                if let Some(map) = &mut self.by_offset {
                    // Value slots lie below 1 GiB (the largest file).
                    map.insert(rec.value_offset as u32, self.series.len());
                }
                self.series.push(ParsedSeries {
                    family: rec.family,
                    extra: NO_EXTRAS,
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
                self.folded.extend(records::decode_folded(body)?);
            }
            format::REC_REMOVAL => self
                .removals
                .push(std::sync::Arc::new(records::decode_removal(body)?)),
            format::REC_NATIVE_CHUNK => {
                let id = records::decode_chunk(body)?;
                let series = self.series_at(id.series_offset, at)?;
                if self.families[self.series[series].family as usize]
                    .rec
                    .native
                    .is_none()
                {
                    return Err(corrupt!("chunk of a series without native buckets at {at}"));
                }
                let key = |c: &ChunkId| (c.negative, c.schema, c.chunk);
                let chunks = &self.chunks;
                let list = &mut extras_of(&mut self.extras, &mut self.series[series]).chunks;
                let pos = list.partition_point(|&c| key(&chunks[c as usize].id) <= key(&id));
                list.insert(pos, chunks.len() as u32);
                self.chunks.push(ParsedChunk { id, counts: at + 16 });
            }
            format::REC_EXEMPLAR => {
                let (offset, bucket, capacity) = records::decode_exemplar_id(body)?;
                let series = self.series_at(offset, at)?;
                let fam = &self.families[self.series[series].family as usize].rec;
                let buckets = match fam.ty {
                    format::MetricType::Counter | format::MetricType::CounterF64 => 1,
                    // A native-only histogram keeps one, shown on its +Inf bucket.
                    format::MetricType::Histogram => fam.buckets.len().max(1),
                    _ => 0,
                };
                if bucket as usize >= buckets {
                    return Err(corrupt!("exemplar of bucket {bucket} of {:?} at {at}", fam.name));
                }
                let list = &mut extras_of(&mut self.extras, &mut self.series[series]).exemplars;
                list.push(self.exemplars.len() as u32);
                self.exemplars.push(ParsedExemplar {
                    bucket,
                    record: at,
                    capacity,
                });
            }
            k if k & format::REC_OPTIONAL != 0 => {}
            k => return Err(corrupt!("unknown record kind {k} at {at}")),
        }
        Ok(())
    }
}

/// The extras of series `s`, made if it has none yet.
fn extras_of<'e>(extras: &'e mut Vec<SeriesExtras>, s: &mut ParsedSeries) -> &'e mut SeriesExtras {
    if s.extra == NO_EXTRAS {
        s.extra = extras.len() as u32;
        extras.push(SeriesExtras::default());
    }
    &mut extras[s.extra as usize]
}

impl Parsed {
    /// The series whose value slots are at `offset` (a chunk or exemplar record at `at`
    /// names it so).
    fn series_at(&mut self, offset: u32, at: usize) -> Result<usize, Corrupt> {
        let series = &self.series;
        let map = self.by_offset.get_or_insert_with(|| {
            series
                .iter()
                .enumerate()
                .map(|(i, s)| (s.offset as u32, i))
                .collect()
        });
        map.get(&offset)
            .copied()
            .ok_or_else(|| corrupt!("record of no series at {at}"))
    }

    /// The chunks of series `s`, in bucket order (none for a series of another type).
    pub(crate) fn chunks_of(&self, s: &ParsedSeries) -> &[u32] {
        self.extras
            .get(s.extra as usize)
            .map_or(&[], |e| e.chunks.as_slice())
    }

    /// The exemplar records of series `s`, in file order.
    pub(crate) fn exemplars_of(&self, s: &ParsedSeries) -> &[u32] {
        self.extras
            .get(s.extra as usize)
            .map_or(&[], |e| e.exemplars.as_slice())
    }

    /// Reads a series record back from the file into `buf` and views it (validated when
    /// parsed; records never change).
    #[inline]
    pub(crate) fn read_series<'b>(
        region: &Region,
        s: &ParsedSeries,
        buf: &'b mut Vec<u64>,
    ) -> Result<records::SeriesView<'b>, Corrupt> {
        buf.clear();
        if !region.copy_words(s.record, s.record_words, buf) {
            return Err(corrupt!("series record out of range"));
        }
        records::view_series(buf)
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
