//! Exemplars (format version 2): a small label set (a trace id, say), a value and a
//! timestamp, kept per counter series and per classic histogram bucket in a record of kind 8
//! (`FORMAT.md`). Writers change a record's words under its sequence word (odd while a
//! write is in progress); a reader that sees the sequence change or odd skips it.

use super::names::check_label_name;

/// Most characters of an exemplar's label names and values together (OpenMetrics' limit).
pub const MAX_EXEMPLAR_CHARS: usize = 128;

/// Words of an exemplar record before its label data: the record header, the identity,
/// the sequence, the value, the time, the data's length and pair count.
pub(crate) const EX_HEAD_WORDS: usize = 6;
/// Word indexes inside an exemplar record (word 1 is its identity).
pub(crate) const EX_SEQ: usize = 2;
pub(crate) const EX_VALUE: usize = 3;
pub(crate) const EX_TIME: usize = 4;
pub(crate) const EX_LEN: usize = 5;
/// Label data a record holds when a writer first makes one (grown by a new record when a
/// longer label set comes): room for a W3C trace id label.
pub(crate) const EX_FIRST_CAPACITY: usize = 64;
/// Most label data bytes an exemplar can need: 128 characters of 4 bytes, and 4 bytes of
/// lengths per pair (at most 64 pairs: a pair has a name of at least one character).
pub(crate) const EX_MAX_DATA: usize = MAX_EXEMPLAR_CHARS * 4 + 64 * 4;

/// Checks an exemplar's labels: valid label names, distinct, at most
/// [`MAX_EXEMPLAR_CHARS`] characters of names and values together. Returns the bytes of
/// their encoding ([`encode_labels`]).
pub(crate) fn check_labels(labels: &[(&str, &str)]) -> Result<usize, String> {
    let mut chars = 0;
    let mut bytes = 0;
    for (i, (name, value)) in labels.iter().enumerate() {
        check_label_name(name).map_err(|e| format!("exemplar label name {name:?} {e}"))?;
        if labels[..i].iter().any(|(n, _)| n == name) {
            return Err(format!("exemplar label name {name:?} appears twice"));
        }
        chars += name.chars().count() + value.chars().count();
        bytes += 4 + name.len() + value.len();
    }
    if chars > MAX_EXEMPLAR_CHARS {
        return Err(format!(
            "exemplar labels of {chars} characters: OpenMetrics allows {MAX_EXEMPLAR_CHARS} (names and values together)"
        ));
    }
    Ok(bytes)
}

/// Appends the label data of `labels`: per pair, the name's length (u16, little-endian),
/// the name, the value's length, the value.
pub(crate) fn encode_labels(labels: &[(&str, &str)], out: &mut Vec<u8>) {
    let start = out.len();
    let len: usize = labels.iter().map(|(n, v)| 4 + n.len() + v.len()).sum();
    out.resize(start + len, 0);
    encode_labels_into(labels, &mut out[start..]);
}

/// Writes the label data of `labels` (as [`encode_labels`]) at the start of `out`, which
/// holds at least the bytes [`check_labels`] counted; returns their number.
pub(crate) fn encode_labels_into(labels: &[(&str, &str)], out: &mut [u8]) -> usize {
    let mut at = 0;
    for (name, value) in labels {
        for s in [name, value] {
            out[at..at + 2].copy_from_slice(&(s.len() as u16).to_le_bytes());
            out[at + 2..at + 2 + s.len()].copy_from_slice(s.as_bytes());
            at += 2 + s.len();
        }
    }
    at
}

/// Reads `pairs` label pairs from `data` (untrusted): `None` if they do not fit, are not
/// UTF-8, or break the label rules.
pub(crate) fn decode_labels(data: &[u8], pairs: usize) -> Option<Vec<(String, String)>> {
    let mut out = Vec::with_capacity(pairs.min(64));
    let mut at = 0;
    let mut next = || -> Option<String> {
        let len = u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?) as usize;
        let s = std::str::from_utf8(data.get(at + 2..at + 2 + len)?).ok()?;
        at += 2 + len;
        Some(s.to_string())
    };
    for _ in 0..pairs {
        let name = next()?;
        let value = next()?;
        out.push((name, value));
    }
    let refs: Vec<(&str, &str)> = out.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    check_labels(&refs).ok()?;
    Some(out)
}

/// An exemplar as a file holds it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ExemplarData {
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// Nanoseconds since the Unix epoch.
    pub time: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_limits() {
        let labels = [("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"), ("span", "é")];
        let n = check_labels(&labels).unwrap();
        let mut data = Vec::new();
        encode_labels(&labels, &mut data);
        assert_eq!(data.len(), n);
        let back = decode_labels(&data, 2).unwrap();
        assert_eq!(back[1], ("span".to_string(), "é".to_string()));
        assert!(decode_labels(&data[..data.len() - 1], 2).is_none());
        let long = "x".repeat(121);
        assert!(
            check_labels(&[("trace_id", &long)])
                .unwrap_err()
                .contains("129 characters")
        );
        assert!(
            check_labels(&[("trace_id", &"ü".repeat(120))]).is_ok(),
            "characters, not bytes"
        );
        assert!(check_labels(&[("__x", "a")]).is_err());
        assert!(check_labels(&[("a", "1"), ("a", "2")]).is_err());
    }
}
