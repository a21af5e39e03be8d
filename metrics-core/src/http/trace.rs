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
    pub(crate) fn trace_id(&self, headers: &dyn RequestHeaders) -> Option<[u8; 16]> {
        match self {
            TraceSource::Off => None,
            TraceSource::TraceParent => headers.header("traceparent").and_then(parse_traceparent),
            TraceSource::Custom(f) => f(headers).filter(|id| *id != [0; 16]),
        }
    }
}

/// The trace id of a W3C `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`), if it is
/// well-formed, not all zeros, and sampled (flag 01): an exemplar should lead to a trace
/// that was kept.
pub fn parse_traceparent(v: &[u8]) -> Option<[u8; 16]> {
    let v = v.trim_ascii();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_byte(v[0], v[1])?;
    // Version 00 is exactly 55 bytes; later versions may append fields after a dash.
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = hex_byte(v[3 + 2 * i], v[4 + 2 * i])?;
    }
    let parent_ok = (36..52).all(|i| hex_digit(v[i]).is_some());
    let flags = hex_byte(v[53], v[54])?;
    (id != [0; 16] && parent_ok && flags & 1 == 1).then_some(id)
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
}
