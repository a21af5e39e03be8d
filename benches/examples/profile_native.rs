//! Histogram observations, for instruction counts: `valgrind --tool=callgrind
//! target/release/examples/profile_native KIND [N]` does N observations (default
//! 1,000,000) of latency-like values into one pre-bound histogram of KIND: `classic`
//! (Prometheus' default buckets), `native` (schema 3) or `both`.
use std::hint::black_box;

use shmetrics_core::{DEFAULT_BUCKETS, Histogram, NativeOpts, Opts, Store};

fn main() {
    let kind = std::env::args().nth(1).unwrap_or_else(|| "native".into());
    let n: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let store = Store::builder(dir.path()).application("profile").open().unwrap();
    let opts = Opts::new("latency_seconds", "Latency");
    let opts = match kind.as_str() {
        "classic" => opts.buckets(DEFAULT_BUCKETS),
        "native" => opts.native(NativeOpts::default()),
        "both" => opts.native(NativeOpts::default()).buckets(DEFAULT_BUCKETS),
        other => panic!("unknown kind {other}: classic, native or both"),
    };
    let h = store.register::<Histogram>(opts).unwrap().labels(&[]).clone();
    // Latency-like values from 1 ms to 1 s; every bucket they need exists first.
    let values: Vec<f64> = (0..1024)
        .map(|i| 1e-3 * 1000f64.powf(f64::from(i) / 1024.0))
        .collect();
    for v in &values {
        h.observe(*v);
    }
    for i in 0..n {
        black_box(&h).observe(black_box(values[(i * 7) & 1023]));
    }
    eprintln!("{n} observations ({kind})");
}
