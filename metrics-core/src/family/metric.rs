//! What every handle kind is: [`Counter`](crate::Counter), [`CounterF64`](crate::CounterF64),
//! [`Gauge`](crate::Gauge), [`Histogram`](crate::Histogram).
//!
//! A handle is bound to one series (one label set) and writes this process's value with
//! one atomic operation per slot. Handles are cheap to clone (an `Arc`) and never panic.

use crate::format::MetricType;

pub(crate) mod sealed {
    use std::sync::Arc;

    use crate::format::desc::FamilyDesc;
    use crate::write::cell::{Cell, Layout};

    /// Construction of handles from cells; not implementable outside this crate.
    #[allow(private_interfaces)]
    pub trait Sealed: Sized {
        fn layout(desc: &FamilyDesc) -> Layout;
        fn from_cell(cell: Arc<Cell>, desc: &FamilyDesc) -> Self;
        fn cell(&self) -> &Arc<Cell>;
    }
}

/// A metric kind that can be declared in a [`Store`](crate::Store) and grouped in a
/// [`Family`](crate::Family).
pub trait Metric: sealed::Sealed + Clone + Send + Sync + std::fmt::Debug + 'static {
    /// The stored metric type.
    const TYPE: MetricType;
}
