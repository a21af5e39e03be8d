//! Exemplars of the request metrics: where a request's trace id comes from (by default the
//! W3C `traceparent` header, or a closure of the application's, e.g. over an OpenTelemetry
//! span's context), and the sampling that keeps a flood of traced requests from paying for
//! an exemplar write each.
//!
//! A traced request attaches an exemplar `{trace_id="<32 hex digits>"}` to its request
//! counter series (value 1) and to its latency bucket (value: the latency), at most once
//! per bucket per [interval](crate::http::HttpMetricsBuilder::exemplar_interval) (1 s by
//! default) in each process: Prometheus keeps the exemplars it sees at its scrapes, so
//! more frequent writes would only cost.

use std::sync::Arc;

/// The request headers an exemplar source reads, whatever the framework.
pub trait RequestHeaders {
    /// The value of header `name` (lowercase), if the request has one.
    fn header(&self, name: &str) -> Option<&[u8]>;

    /// The `traceparent` header's value: what every request pays for when exemplars are
    /// on, so adapters look it up with a prebuilt header name.
    fn traceparent(&self) -> Option<&[u8]> {
        self.header("traceparent")
    }
}

/// A closure giving a request's 16-byte trace id (see
/// [`HttpMetricsBuilder::trace_id`](crate::http::HttpMetricsBuilder::trace_id)).
pub type TraceIdFn = Arc<dyn Fn(&dyn RequestHeaders) -> Option<[u8; 16]> + Send + Sync>;

/// Where trace ids come from.
#[derive(Clone, Default)]
pub(crate) enum TraceSource {
    /// No exemplars.
    Off,
    /// The W3C `traceparent` header, sampled traces only.
    #[default]
    TraceParent,
    /// The application's closure.
    Custom(TraceIdFn),
}

impl std::fmt::Debug for TraceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TraceSource::Off => "Off",
            TraceSource::TraceParent => "TraceParent",
            TraceSource::Custom(_) => "Custom",
        })
    }
}

impl TraceSource {
    /// Generic over the adapter's headers so that the default source's one lookup is
    /// inlined into the middleware: a request without a trace pays for nothing else.
    #[inline]
    pub(crate) fn trace_id<H: RequestHeaders>(&self, headers: &H) -> Option<[u8; 16]> {
        match self {
            TraceSource::Off => None,
            TraceSource::TraceParent => match headers.traceparent() {
                None => None,
                Some(v) => parse_traceparent(v),
            },
            TraceSource::Custom(f) => f(headers).filter(|id| *id != [0; 16]),
        }
    }
}

/// The trace id of a W3C `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`), if it is
/// well-formed, not all zeros, and sampled (flag 01): an exemplar should lead to a trace
/// that was kept.
pub fn parse_traceparent(v: &[u8]) -> Option<[u8; 16]> {
    let v = v.trim_ascii();
    let head: &[u8; 55] = v.get(..55)?.try_into().ok()?;
    let version = hex_byte(head[0], head[1])?;
    // Version 00 is exactly 55 bytes; later versions may append fields after a dash.
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    if head[2] != b'-' || head[35] != b'-' || head[52] != b'-' {
        return None;
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&head[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let mut id = [0u8; 16];
    for (k, out) in id.chunks_exact_mut(4).enumerate() {
        out.copy_from_slice(&hex_word(word(3 + 8 * k))?.to_le_bytes());
    }
    // The parent span id: checked, not kept.
    hex_word(word(36))?;
    hex_word(word(44))?;
    let flags = hex_byte(head[53], head[54])?;
    (id != [0; 16] && flags & 1 == 1).then_some(id)
}

/// The four bytes that eight lowercase hex digits spell (the bytes of `w`, first digit in
/// the low byte), or `None` if any byte is not a lowercase hex digit. Each step works on
/// the eight bytes at once, a third of the instructions of a lookup per digit: every
/// traced request pays for this.
#[inline]
fn hex_word(w: u64) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0x80;
    // Per byte, the high bit set where the byte is at least `c`. With every byte below
    // 0x80 (checked below; otherwise the answer is `None` whatever the lanes hold) and `c`
    // at least b'0', no byte's sum reaches 0x100: nothing carries into the next byte.
    let at_least = |c: u8| w.wrapping_add(ONES * u64::from(0x80 - c));
    let digit = at_least(b'0') & !at_least(b'9' + 1);
    let letter = at_least(b'a') & !at_least(b'f' + 1);
    if w & HIGH != 0 || (digit | letter) & HIGH != HIGH {
        return None;
    }
    // Each byte's value: its low four bits, plus 9 for a letter ('a' is 0x61).
    let n = (w & (ONES * 0x0f)) + ((letter & HIGH) >> 7) * 9;
    // Byte 2i becomes digit 2i << 4 | digit 2i+1; then the four even bytes side by side.
    let b = ((n << 4) | (n >> 8)) & 0x00ff_00ff_00ff_00ff;
    let b = (b | (b >> 8)) & 0x0000_ffff_0000_ffff;
    Some((b | (b >> 16)) as u32)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    Some(hex_digit(hi)? << 4 | hex_digit(lo)?)
}

/// The exemplar label data of trace id `id` (`trace_id` and its 32 lowercase hex digits,
/// as `format::exemplar::encode_labels` encodes them).
pub(crate) fn trace_label_data(id: &[u8; 16]) -> [u8; 44] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 44];
    out[0] = 8;
    out[2..10].copy_from_slice(b"trace_id");
    out[10] = 32;
    for (i, b) in id.iter().enumerate() {
        out[12 + 2 * i] = HEX[usize::from(b >> 4)];
        out[13 + 2 * i] = HEX[usize::from(b & 15)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_values() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let id = parse_traceparent(ok).unwrap();
        assert_eq!(id[0], 0x4b);
        assert_eq!(id[15], 0x36);
        let data = trace_label_data(&id);
        let labels = crate::format::exemplar::decode_labels(&data, 1).unwrap();
        assert_eq!(
            labels,
            vec![("trace_id".into(), "4bf92f3577b34da6a3ce929d0e0e4736".into())]
        );
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"[..], // not sampled
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"garbage",
            b"",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later").is_some()
        );
    }

    /// The digit-by-digit reading of a 55-byte value that `parse_traceparent` must agree
    /// with (any version but ff).
    fn reference(v: &[u8]) -> Option<[u8; 16]> {
        if v.len() != 55 || hex_byte(v[0], v[1])? == 0xff {
            return None;
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, b) in id.iter_mut().enumerate() {
            *b = hex_byte(v[3 + 2 * i], v[4 + 2 * i])?;
        }
        for &c in &v[36..52] {
            hex_digit(c)?;
        }
        let flags = hex_byte(v[53], v[54])?;
        (id != [0; 16] && flags & 1 == 1).then_some(id)
    }

    #[test]
    fn every_byte_at_every_position() {
        let base = *b"00-0123456789abcdef0fedcba987654321-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(&base),
            Some([
                0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x0f, 0xed, 0xcb, 0xa9, 0x87, 0x65, 0x43,
                0x21
            ])
        );
        for at in 0..base.len() {
            for c in 0..=255u8 {
                let mut v = base;
                v[at] = c;
                // Whitespace is trimmed at the ends only: a space in the middle is an error.
                let trimmed = (at == 0 || at == 54) && c.is_ascii_whitespace();
                if trimmed {
                    continue;
                }
                assert_eq!(parse_traceparent(&v), reference(&v), "byte {c:#x} at {at}");
            }
        }
    }
}
