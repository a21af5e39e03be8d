//! Benches of shmetrics (see `benches/` and `BENCHMARKS.md`). This library holds the
//! fixtures they share.

pub mod noop;

use shmetrics_core::{Store, StoreBuilder};

/// Series per writer in the churn benches (as in the churn test).
pub const CHURN_SERIES: usize = 50;

/// Declares the churn benches' families and writes one of each series.
pub fn write_churn_series(store: &Store) {
    let fam = store
        .counter_family("churn_requests", "Requests", &["route"])
        .expect("counter");
    let h = store
        .histogram_family("churn_seconds", "Latency", &["route"], &[0.1, 1.0])
        .expect("histogram");
    for i in 0..CHURN_SERIES {
        let route = format!("/route/{i}");
        fam.labels(&[&route]).inc();
        h.labels(&[&route]).observe(0.5);
    }
}

/// A store builder for a bench directory.
pub fn builder(dir: &std::path::Path) -> StoreBuilder {
    Store::builder(dir).application("bench")
}
