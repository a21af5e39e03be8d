//! Encoding and decoding of the records of `FORMAT.md`. The decoders treat every length
//! and offset as untrusted and work on local copies of words.

use std::fmt;

use super::native::{CHUNK_WORDS, ChunkId, NativeSpec};
use super::{
    FAMILY_NATIVE, GaugeMode, MAX_BASELINES, MAX_BUCKETS, MAX_LABELS, MAX_NAME_BYTES, MAX_RECORD_BYTES,
    MetricType, REC_APPLICATION, REC_EXEMPLAR, REC_FAMILY, REC_FOLDED, REC_NATIVE_CHUNK, REC_REMOVAL,
    REC_SERIES, REC_VALUES,
};

/// Most values one removal baseline holds: a histogram's slots, then a (bucket, count)
/// word pair per native bucket.
pub(crate) const MAX_BASELINE_VALUES: usize = 1 << 17;

/// A family record, decoded.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FamilyRecord {
    pub id: u32,
    pub ty: MetricType,
    pub mode: GaugeMode,
    pub name: String,
    pub help: String,
    pub labels: Vec<String>,
    /// Upper bounds, +Inf last (histograms only; none for a histogram with native buckets
    /// only).
    pub buckets: Vec<f64>,
    /// Native buckets' settings (histograms of format version 2 only).
    pub native: Option<NativeSpec>,
    /// Byte offset of the family's statistics slot (cardinality overflow count).
    pub stats_offset: u64,
}

impl FamilyRecord {
    /// Value slots per series.
    pub(crate) fn slots(&self) -> usize {
        super::series_slots(self.ty, self.mode, self.buckets.len(), self.native.is_some())
    }
}

/// Builds one record as a sequence of little-endian words.
pub(crate) struct RecordBuf {
    words: Vec<u64>,
}

impl RecordBuf {
    pub(crate) fn new(kind: u32) -> Self {
        RecordBuf {
            words: vec![u64::from(kind)],
        }
    }

    pub(crate) fn word(&mut self, w: u64) -> &mut Self {
        self.words.push(w);
        self
    }

    pub(crate) fn halves(&mut self, low: u32, high: u32) -> &mut Self {
        self.word(u64::from(low) | (u64::from(high) << 32))
    }

    pub(crate) fn string(&mut self, s: &str) -> &mut Self {
        self.word(s.len() as u64);
        for chunk in s.as_bytes().chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.words.push(u64::from_le_bytes(b));
        }
        self
    }

    /// Finishes the record: writes its length into word 0 and returns the words.
    pub(crate) fn finish(mut self) -> Vec<u64> {
        let bytes = (self.words.len() * 8) as u64;
        self.words[0] |= bytes << 32;
        self.words
    }
}

/// Word of a family record holding its statistics slot offset.
pub(crate) const FAMILY_STATS_WORD: usize = 3;
/// Word of a series record holding its value slots' offset.
pub(crate) const SERIES_VALUES_WORD: usize = 2;

/// Encodes a family record.
pub(crate) fn encode_family(f: &FamilyRecord) -> Vec<u64> {
    let mut r = RecordBuf::new(REC_FAMILY);
    let native = if f.native.is_some() { FAMILY_NATIVE } else { 0 };
    let flags = u32::from(f.ty.code()) | (u32::from(f.mode.code()) << 8) | native;
    r.halves(f.id, flags)
        .halves(f.labels.len() as u32, f.buckets.len() as u32)
        .word(f.stats_offset)
        .string(&f.name)
        .string(&f.help);
    for l in &f.labels {
        r.string(l);
    }
    for b in &f.buckets {
        r.word(b.to_bits());
    }
    if let Some(n) = &f.native {
        r.halves(i32::from(n.schema) as u32, n.max_buckets)
            .word(n.zero_threshold.to_bits());
    }
    r.finish()
}

/// Encodes a native bucket chunk record (version 2): its identity and 16 counts.
pub(crate) fn encode_chunk(id: ChunkId, counts: &[u64; CHUNK_WORDS]) -> Vec<u64> {
    let mut r = RecordBuf::new(REC_NATIVE_CHUNK);
    r.word(id.word());
    for w in counts {
        r.word(*w);
    }
    r.finish()
}

/// Decodes a chunk record body (its identity; the counts stay in the file).
pub(crate) fn decode_chunk(body: &[u64]) -> Result<ChunkId, Corrupt> {
    if body.len() != 1 + CHUNK_WORDS {
        return Err(corrupt!("chunk record of {} words", body.len() + 1));
    }
    ChunkId::from_word(body[0]).map_err(|e| corrupt!("{e}"))
}

/// Encodes an exemplar record (version 2) with room for `capacity` bytes of label data,
/// and, if given, an exemplar in it (sequence even: complete).
pub(crate) fn encode_exemplar(
    series_offset: u32,
    bucket: u32,
    capacity: usize,
    exemplar: Option<(&[u8], u32, f64, u64)>,
) -> Vec<u64> {
    let mut r = RecordBuf::new(REC_EXEMPLAR);
    r.halves(series_offset, bucket);
    let words = capacity.div_ceil(8);
    match exemplar {
        Some((data, pairs, value, time)) => {
            r.word(2)
                .word(value.to_bits())
                .word(time)
                .halves(data.len() as u32, pairs);
            let mut padded = data.to_vec();
            padded.resize(words * 8, 0);
            for w in padded.chunks_exact(8) {
                r.word(u64::from_le_bytes(w.try_into().unwrap_or([0; 8])));
            }
        }
        None => {
            r.word(0).word(0).word(0).word(0);
            for _ in 0..words {
                r.word(0);
            }
        }
    }
    r.finish()
}

/// Decodes an exemplar record's identity: (series' value offset, bucket, bytes of label
/// data it has room for). Its other words change under its sequence word: read them so.
pub(crate) fn decode_exemplar_id(body: &[u64]) -> Result<(u32, u32, usize), Corrupt> {
    let head = crate::format::exemplar::EX_HEAD_WORDS - 1;
    if body.len() < head {
        return Err(corrupt!("exemplar record of {} words", body.len() + 1));
    }
    let id = body[0];
    Ok((id as u32, (id >> 32) as u32, (body.len() - head) * 8))
}

/// Encodes a series record.
pub(crate) fn encode_series(family: u32, value_offset: u64, labels: &[&str]) -> Vec<u64> {
    let mut r = RecordBuf::new(REC_SERIES);
    r.halves(family, labels.len() as u32).word(value_offset);
    for l in labels {
        r.string(l);
    }
    r.finish()
}

/// Encodes the application record.
pub(crate) fn encode_application(name: &str) -> Vec<u64> {
    let mut r = RecordBuf::new(REC_APPLICATION);
    r.string(name);
    r.finish()
}

/// Encodes a block of `slots` zeroed value slots (the caller leaves the slots as they are:
/// the file region is zero when reserved).
pub(crate) fn values_header(slots: usize) -> u64 {
    u64::from(REC_VALUES) | (((slots as u64 + 1) * 8) << 32)
}

/// Encodes the list of writer ids folded into an accumulator.
pub(crate) fn encode_folded(ids: &[u64]) -> Vec<u64> {
    let mut r = RecordBuf::new(REC_FOLDED);
    r.word(ids.len() as u64);
    for id in ids {
        r.word(*id);
    }
    r.finish()
}

/// Decodes a folded-ids record body.
pub(crate) fn decode_folded(body: &[u64]) -> Result<Vec<u64>, Corrupt> {
    let mut c = Cursor::new(body);
    let n = c.word()?;
    if n as usize != body.len().saturating_sub(1) {
        return Err(corrupt!("folded record count {n} does not match its length"));
    }
    Ok(body[1..].to_vec())
}

/// Encodes a removal record.
pub(crate) fn encode_removal(r: &crate::format::records::Removal) -> Vec<u64> {
    let mut b = RecordBuf::new(REC_REMOVAL);
    let nlabels = r.labels.as_ref().map_or(0, |l| l.len());
    b.word(r.time)
        .halves(u32::from(r.labels.is_none()), nlabels as u32)
        .word(r.baselines.len() as u64)
        .string(&r.family);
    for l in r.labels.iter().flatten() {
        b.string(l);
    }
    for base in &r.baselines {
        b.word(base.writer_id).word(base.labels.len() as u64);
        for l in base.labels.iter() {
            b.string(l);
        }
        b.word(base.values.len() as u64);
        for v in &base.values {
            b.word(*v);
        }
    }
    b.finish()
}

/// Decodes a removal record body.
pub(crate) fn decode_removal(body: &[u64]) -> Result<crate::format::records::Removal, Corrupt> {
    let mut c = Cursor::new(body);
    let time = c.word()?;
    let (flags, nlabels) = c.halves()?;
    let whole = match flags {
        0 => false,
        1 => true,
        f => return Err(corrupt!("unknown removal flags {f}")),
    };
    if nlabels as usize > MAX_LABELS + 1 || (whole && nlabels != 0) {
        return Err(corrupt!("removal with {nlabels} label values"));
    }
    let n = c.word()? as usize;
    if n > MAX_BASELINES {
        return Err(corrupt!("removal with {n} baselines"));
    }
    let family = c.string(MAX_NAME_BYTES)?;
    crate::format::names::check_metric_name(&family).map_err(|e| corrupt!("removal family: {e}"))?;
    let mut labels = Vec::with_capacity(nlabels as usize);
    for _ in 0..nlabels {
        labels.push(c.string(MAX_RECORD_BYTES)?.into_boxed_str());
    }
    let mut baselines = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let writer_id = c.word()?;
        let nl = c.word()? as usize;
        if nl > MAX_LABELS + 1 {
            return Err(corrupt!("baseline with {nl} label values"));
        }
        let mut bl = Vec::with_capacity(nl);
        for _ in 0..nl {
            bl.push(c.string(MAX_RECORD_BYTES)?.into_boxed_str());
        }
        let ns = c.word()? as usize;
        if ns > MAX_BASELINE_VALUES {
            return Err(corrupt!("baseline with {ns} values"));
        }
        let mut values = Vec::with_capacity(ns);
        for _ in 0..ns {
            values.push(c.word()?);
        }
        baselines.push(crate::format::records::Baseline {
            writer_id,
            labels: bl.into_boxed_slice(),
            values,
        });
    }
    if !c.at_end() {
        return Err(corrupt!("trailing words in removal record"));
    }
    Ok(crate::format::records::Removal {
        time,
        family,
        labels: (!whole).then(|| labels.into_boxed_slice()),
        baselines,
    })
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

/// Why a file is not accepted. Kept short: it ends up in a log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Corrupt(pub(crate) String);

impl fmt::Display for Corrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! corrupt {
    ($($t:tt)*) => { Corrupt(format!($($t)*)) };
}
pub(crate) use corrupt;

/// Reads words from a local copy of a record, each step bounds-checked.
pub(crate) struct Cursor<'a> {
    words: &'a [u64],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(words: &'a [u64]) -> Self {
        Cursor { words, pos: 0 }
    }

    pub(crate) fn word(&mut self) -> Result<u64, Corrupt> {
        let w = *self
            .words
            .get(self.pos)
            .ok_or_else(|| corrupt!("record ends early"))?;
        self.pos += 1;
        Ok(w)
    }

    pub(crate) fn halves(&mut self) -> Result<(u32, u32), Corrupt> {
        let w = self.word()?;
        Ok((w as u32, (w >> 32) as u32))
    }

    pub(crate) fn string(&mut self, max: usize) -> Result<String, Corrupt> {
        let len = self.word()?;
        if len > max as u64 {
            return Err(corrupt!("string of {len} bytes exceeds {max}"));
        }
        let len = len as usize;
        let nwords = len.div_ceil(8);
        let end = self
            .pos
            .checked_add(nwords)
            .filter(|e| *e <= self.words.len())
            .ok_or_else(|| corrupt!("string runs past its record"))?;
        let mut bytes = Vec::with_capacity(nwords * 8);
        for w in &self.words[self.pos..end] {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        if bytes[len..].iter().any(|b| *b != 0) {
            return Err(corrupt!("non-zero string padding"));
        }
        bytes.truncate(len);
        self.pos = end;
        String::from_utf8(bytes).map_err(|_| corrupt!("string is not UTF-8"))
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos == self.words.len()
    }
}

/// Decodes a family record body (the words after the record header word).
pub(crate) fn decode_family(body: &[u64]) -> Result<FamilyRecord, Corrupt> {
    let mut c = Cursor::new(body);
    let (id, flags) = c.halves()?;
    let ty =
        MetricType::from_code(flags as u8).ok_or_else(|| corrupt!("unknown metric type {}", flags as u8))?;
    let mode = GaugeMode::from_code((flags >> 8) as u8)
        .ok_or_else(|| corrupt!("unknown gauge mode {}", (flags >> 8) as u8))?;
    if flags >> 17 != 0 {
        return Err(corrupt!("reserved family flags set"));
    }
    let native = flags & FAMILY_NATIVE != 0;
    if native && ty != MetricType::Histogram {
        return Err(corrupt!("native buckets on a family that is not a histogram"));
    }
    if ty != MetricType::Gauge && mode != GaugeMode::All {
        return Err(corrupt!("gauge mode on a non-gauge family"));
    }
    let (nlabels, nbuckets) = c.halves()?;
    let (nlabels, nbuckets) = (nlabels as usize, nbuckets as usize);
    if nlabels > MAX_LABELS {
        return Err(corrupt!("{nlabels} label names"));
    }
    if nbuckets > MAX_BUCKETS {
        return Err(corrupt!("{nbuckets} buckets"));
    }
    let stats_offset = c.word()?;
    let name = c.string(MAX_NAME_BYTES)?;
    crate::format::names::check_metric_name(&name).map_err(|e| corrupt!("family name: {e}"))?;
    let help = c.string(MAX_RECORD_BYTES)?;
    let mut labels = Vec::with_capacity(nlabels);
    for _ in 0..nlabels {
        let l = c.string(MAX_NAME_BYTES)?;
        crate::format::names::check_label_name(&l).map_err(|e| corrupt!("label name: {e}"))?;
        if labels.contains(&l) {
            return Err(corrupt!("duplicate label name {l:?}"));
        }
        labels.push(l);
    }
    let mut buckets = Vec::with_capacity(nbuckets);
    for _ in 0..nbuckets {
        buckets.push(f64::from_bits(c.word()?));
    }
    let native = if native {
        let (schema, max_buckets) = c.halves()?;
        let spec = NativeSpec {
            schema: i8::try_from(schema as i32).map_err(|_| corrupt!("native schema {}", schema as i32))?,
            zero_threshold: f64::from_bits(c.word()?),
            max_buckets,
        };
        spec.check().map_err(|e| corrupt!("native buckets: {e}"))?;
        Some(spec)
    } else {
        None
    };
    match ty {
        MetricType::Histogram => {
            // Native buckets only: no classic bounds at all.
            if !(native.is_some() && buckets.is_empty()) {
                crate::format::names::check_stored_buckets(&buckets).map_err(|e| corrupt!("buckets: {e}"))?;
            }
            if labels.iter().any(|l| l == "le") {
                return Err(corrupt!("histogram with an `le` label"));
            }
        }
        _ if nbuckets != 0 => return Err(corrupt!("buckets on a non-histogram family")),
        _ => {}
    }
    if ty == MetricType::Gauge && mode.per_process() && labels.iter().any(|l| l == "pid") {
        return Err(corrupt!("per-process gauge with a `pid` label"));
    }
    if !c.at_end() {
        return Err(corrupt!("trailing words in family record"));
    }
    Ok(FamilyRecord {
        id,
        ty,
        mode,
        name,
        help,
        labels,
        buckets,
        native,
        stats_offset,
    })
}

/// A series record body, validated, read in place: label values are slices of the
/// record's bytes (no allocation).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SeriesView<'a> {
    pub family: u32,
    pub value_offset: u64,
    /// The label strings (length word, bytes, padding; repeated).
    labels: &'a [u8],
    count: usize,
}

/// Reads and validates a series record body (the words after its header word).
pub(crate) fn view_series(body: &[u64]) -> Result<SeriesView<'_>, Corrupt> {
    let (first, rest) = body.split_first().ok_or_else(|| corrupt!("record ends early"))?;
    let (family, count) = (*first as u32, (*first >> 32) as usize);
    if count > MAX_LABELS + 1 {
        return Err(corrupt!("{count} label values"));
    }
    let (value_offset, rest) = rest.split_first().ok_or_else(|| corrupt!("record ends early"))?;
    let labels: &[u8] = bytemuck::cast_slice(rest);
    let mut pos = 0;
    for _ in 0..count {
        let (_, next) = view_string(labels, pos)?;
        pos = next;
    }
    if pos != labels.len() {
        return Err(corrupt!("trailing words in series record"));
    }
    Ok(SeriesView {
        family,
        value_offset: *value_offset,
        labels,
        count,
    })
}

/// The string at byte `pos` of `bytes` (length word, bytes, zero padding to 8), and the
/// position after it.
fn view_string(bytes: &[u8], pos: usize) -> Result<(&str, usize), Corrupt> {
    let len_bytes: [u8; 8] = bytes
        .get(pos..pos + 8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| corrupt!("record ends early"))?;
    let len = u64::from_le_bytes(len_bytes);
    if len > MAX_RECORD_BYTES as u64 {
        return Err(corrupt!("string of {len} bytes exceeds {MAX_RECORD_BYTES}"));
    }
    let len = len as usize;
    let start = pos + 8;
    let end = start + len.div_ceil(8) * 8;
    let padded = bytes
        .get(start..end)
        .ok_or_else(|| corrupt!("string runs past its record"))?;
    if padded[len..].iter().any(|b| *b != 0) {
        return Err(corrupt!("non-zero string padding"));
    }
    let s = std::str::from_utf8(&padded[..len]).map_err(|_| corrupt!("string is not UTF-8"))?;
    Ok((s, end))
}

impl<'a> SeriesView<'a> {
    /// Number of label values.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The label values, in order.
    pub(crate) fn labels(&self) -> impl Iterator<Item = &'a str> + Clone + 'a {
        // Validated by `view_series`: the check cannot fail here.
        self.label_bytes().map(|b| std::str::from_utf8(b).unwrap_or(""))
    }

    /// The label values as bytes (UTF-8, checked by `view_series`), for lookups that
    /// compare bytes and need no second check.
    pub(crate) fn label_bytes(&self) -> impl Iterator<Item = &'a [u8]> + Clone + 'a {
        let bytes = self.labels;
        let mut pos = 0;
        (0..self.count).map(move |_| {
            // Every string was checked by `view_series` (lengths in range, padding, UTF-8)
            // over these same immutable bytes; only the walk is repeated here.
            let len_bytes: [u8; 8] = bytes[pos..pos + 8].try_into().unwrap_or([0; 8]);
            let len = u64::from_le_bytes(len_bytes) as usize;
            let start = pos + 8;
            pos = start + len.div_ceil(8) * 8;
            &bytes[start..start + len]
        })
    }
}

/// Decodes the application record body.
pub(crate) fn decode_application(body: &[u64]) -> Result<String, Corrupt> {
    let mut c = Cursor::new(body);
    let s = c.string(MAX_NAME_BYTES)?;
    if !c.at_end() {
        return Err(corrupt!("trailing words in application record"));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_round_trip() {
        let f = FamilyRecord {
            id: 3,
            ty: MetricType::Histogram,
            mode: GaugeMode::All,
            name: "latency_seconds".into(),
            help: "Help with \"quotes\"\nand é".into(),
            labels: vec!["route".into(), "method".into()],
            buckets: vec![0.1, 1.0, f64::INFINITY],
            native: None,
            stats_offset: 4096,
        };
        let words = encode_family(&f);
        assert_eq!(words[0] as u32, REC_FAMILY);
        assert_eq!((words[0] >> 32) as usize, words.len() * 8);
        assert_eq!(decode_family(&words[1..]).unwrap(), f);
        for buckets in [vec![], vec![0.5, f64::INFINITY]] {
            let native = FamilyRecord {
                buckets,
                native: Some(NativeSpec {
                    schema: -2,
                    zero_threshold: 1e-9,
                    max_buckets: 160,
                }),
                ..f.clone()
            };
            let words = encode_family(&native);
            assert_eq!(decode_family(&words[1..]).unwrap(), native);
            let mut bad = words.clone();
            let last = bad.len() - 2;
            bad[last] = 9; // schema 9
            assert!(decode_family(&bad[1..]).is_err());
        }
        let classic_without_bounds = FamilyRecord {
            buckets: vec![],
            ..f.clone()
        };
        assert!(decode_family(&encode_family(&classic_without_bounds)[1..]).is_err());
    }

    #[test]
    fn series_round_trip_and_truncation() {
        let words = encode_series(7, 1024, &["GET", "/a\"b\\c\n", "日本"]);
        let s = view_series(&words[1..]).unwrap();
        assert_eq!(s.family, 7);
        assert_eq!(s.value_offset, 1024);
        assert_eq!(s.labels().collect::<Vec<_>>(), vec!["GET", "/a\"b\\c\n", "日本"]);
        for cut in 1..words.len() - 1 {
            assert!(view_series(&words[1..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = words.clone();
        bad[4] = 0xfffe; // invalid UTF-8 in the first label
        assert!(view_series(&bad[1..]).is_err());
    }

    #[test]
    fn strings_reject_bad_padding_and_utf8() {
        let mut words = encode_application("ab");
        words[2] |= 0xff << 40;
        assert!(decode_application(&words[1..]).is_err());
        let mut words = encode_application("ab");
        words[2] = 0xfffe;
        assert!(decode_application(&words[1..]).is_err());
        let mut words = encode_application("ab");
        words[1] = u64::MAX;
        assert!(decode_application(&words[1..]).is_err());
    }

    #[test]
    fn folded_and_removal_round_trip() {
        let f = encode_folded(&[1, 2, u64::MAX]);
        assert_eq!(decode_folded(&f[1..]).unwrap(), vec![1, 2, u64::MAX]);
        assert!(decode_folded(&f[1..3]).is_err());
        let r = crate::format::records::Removal {
            time: 42,
            family: "req".into(),
            labels: Some(vec![Box::from("GET"), Box::from("/a")].into_boxed_slice()),
            baselines: vec![crate::format::records::Baseline {
                writer_id: 7,
                labels: vec![Box::from("GET"), Box::from("/a")].into_boxed_slice(),
                values: vec![3, 4],
            }],
        };
        let w = encode_removal(&r);
        assert_eq!(decode_removal(&w[1..]).unwrap(), r);
        let whole = crate::format::records::Removal {
            labels: None,
            baselines: vec![],
            ..r
        };
        let w = encode_removal(&whole);
        assert_eq!(decode_removal(&w[1..]).unwrap(), whole);
        for cut in 1..w.len() - 1 {
            assert!(decode_removal(&w[1..cut]).is_err());
        }
    }

    #[test]
    fn gauge_modes_parse_and_print() {
        for m in GaugeMode::ALL {
            assert_eq!(m.as_str().parse::<GaugeMode>().unwrap(), m);
            assert_eq!(GaugeMode::from_code(m.code()), Some(m));
        }
        assert!("average".parse::<GaugeMode>().unwrap_err().contains("livesum"));
    }
}
