//! Exemplars on the handles: labels checked and encoded once, then written into the
//! series' record for the bucket (see `write::exemplar`).

use std::sync::Arc;

use crate::format::ErrorKind;
use crate::format::exemplar::{check_labels, encode_labels_into};
use crate::sys;
use crate::write::cell::Cell;
use crate::write::exemplar::NewExemplar;

/// Records an exemplar of `value` with `labels` for `bucket` (of `buckets`) of the
/// series in `cell`, at the time now. Labels that break the rules are counted
/// (`exemplar`) and logged once.
pub(crate) fn record(cell: &Arc<Cell>, bucket: usize, buckets: usize, labels: &[(&str, &str)], value: f64) {
    let bytes = match check_labels(labels) {
        Ok(n) => n,
        Err(e) => {
            cell.writer
                .count_error(ErrorKind::Exemplar, &|| format!("exemplar dropped: {e}"));
            return;
        }
    };
    // Typical labels (a trace id, perhaps a span id) fit on the stack: no allocation.
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let buf = if bytes <= stack.len() {
        &mut stack[..]
    } else {
        heap.resize(bytes, 0);
        &mut heap[..]
    };
    let len = encode_labels_into(labels, buf);
    let ex = NewExemplar {
        data: &buf[..len],
        pairs: labels.len() as u32,
        value,
        time: sys::unix_nanos(),
    };
    cell.write_exemplar(bucket, buckets, &ex);
}
