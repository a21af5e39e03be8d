//! Benches of shmetrics (see `benches/` and `BENCHMARKS.md`). This library holds the
//! fixtures they share.

pub mod noop;
pub mod noop_actix;

use std::time::{Duration, Instant};

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

/// `iters` calls of `with` minus `iters` of `base`, alternating in batches of 32 within
/// one timed run: both halves see the same machine at the same moment, which matters on
/// a shared, noisy host. For criterion's `iter_custom`, when the difference is well above
/// the noise (criterion refuses a sample of zero time).
pub fn paired(iters: u64, mut base: impl FnMut(), mut with: impl FnMut()) -> Duration {
    let (base_t, with_t) = paired_halves(iters, &mut base, &mut with);
    with_t.saturating_sub(base_t)
}

/// Per call, `with` minus `base` in nanoseconds, as [`paired`] measures it, over `rounds`
/// rounds of `per_round` calls each: the median and the quartiles. For differences of a
/// few nanoseconds, where single rounds come out negative as often as positive.
pub fn paired_quartiles(
    rounds: usize,
    per_round: u64,
    mut base: impl FnMut(),
    mut with: impl FnMut(),
) -> [f64; 3] {
    let mut diffs: Vec<f64> = (0..rounds)
        .map(|_| {
            let (b, w) = paired_halves(per_round, &mut base, &mut with);
            (w.as_secs_f64() - b.as_secs_f64()) * 1e9 / per_round as f64
        })
        .collect();
    diffs.sort_by(f64::total_cmp);
    let at = |q: usize| diffs[(diffs.len() - 1) * q / 4];
    [at(1), at(2), at(3)]
}

fn paired_halves(iters: u64, base: &mut impl FnMut(), with: &mut impl FnMut()) -> (Duration, Duration) {
    const BATCH: u64 = 32;
    let (mut base_t, mut with_t) = (Duration::ZERO, Duration::ZERO);
    let mut done = 0;
    while done < iters {
        let n = BATCH.min(iters - done);
        let t = Instant::now();
        for _ in 0..n {
            base();
        }
        base_t += t.elapsed();
        let t = Instant::now();
        for _ in 0..n {
            with();
        }
        with_t += t.elapsed();
        done += n;
    }
    (base_t, with_t)
}
