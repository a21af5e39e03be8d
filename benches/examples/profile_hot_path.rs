//! The write path, for instruction counts: `valgrind --tool=callgrind
//! target/release/examples/profile_hot_path [N] [M]` does N pre-bound counter increments
//! and M (default N/10) labelled counter + histogram pairs (as a request's middleware
//! records them). Runs with `N 0` and `0 M` give each part's cost.
use std::hint::black_box;

use shmetrics_core::{DEFAULT_BUCKETS, Store};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let pairs: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(n / 10);
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let store = Store::builder(dir.path()).application("profile").open().unwrap();
    let counter = store.counter("prebound", "Pre-bound").unwrap();
    let requests = store
        .counter_family("http_requests", "Requests", &["method", "path", "status"])
        .unwrap();
    let latency = store
        .histogram_family(
            "http_request_duration_seconds",
            "Latency",
            &["method", "path"],
            &DEFAULT_BUCKETS,
        )
        .unwrap();
    for _ in 0..n {
        black_box(&counter).inc();
    }
    let mut v = 0.0;
    for _ in 0..pairs {
        v = if v > 0.5 { 0.0 } else { v + 0.001 };
        requests.labels(black_box(&["GET", "/users/{id}", "200"])).inc();
        latency
            .labels(black_box(&["GET", "/users/{id}"]))
            .observe(black_box(v));
    }
    eprintln!("{n} increments, {pairs} pairs");
}
