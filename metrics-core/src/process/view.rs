//! What the process and runtime samplers share: their two views, and totals kept
//! elsewhere (by the kernel, the runtime) written as increases.

use std::sync::{Mutex, PoisonError};

use crate::error::Result;
use crate::store::Store;

/// Declares a view's families twice, by `declare(name prefix, label names, this process's
/// label values)`: the service's (no prefix, no label) and, with `per_worker` and a store
/// that has a worker id, the worker's (`worker_`, `worker="<id>"`).
pub(super) fn declare_views<V>(
    store: &Store,
    per_worker: bool,
    declare: impl Fn(&str, &[&str], Vec<String>) -> Result<V>,
) -> Result<(V, Option<V>)> {
    let service = declare("", &[], Vec::new())?;
    let worker = match (per_worker, store.worker_id()) {
        (true, Some(id)) => Some(declare("worker_", &["worker"], vec![id.to_string()])?),
        _ => None,
    };
    Ok((service, worker))
}

/// A monotonic total read from elsewhere, written into a counter as its increases.
#[derive(Debug, Default)]
pub(super) struct Increase(Mutex<f64>);

impl Increase {
    /// How much `total` grew since the last call (the whole of it the first time; never
    /// negative in effect: a lower reading is not taken as the new base).
    pub(super) fn since_last(&self, total: f64) -> f64 {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let d = total - *last;
        *last = last.max(total);
        d
    }
}
