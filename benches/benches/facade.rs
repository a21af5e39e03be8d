//! The `metrics` facade: `counter!(..)` with two labels `.increment(1)` and
//! `histogram!(..).record(..)` through the shmetrics recorder (an atomic add in the shared
//! file) beside metrics-exporter-prometheus' recorder (in process, buckets configured the
//! same way), each macro call as application code writes it: the key's lookup included.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use metrics::Recorder;

const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// `n` calls of `f` with `recorder` as this thread's recorder; `after` runs untimed (the
/// exporter drains its histogram samples there, as its upkeep task does).
fn timed(recorder: &dyn Recorder, n: u64, f: impl Fn(), after: impl FnOnce()) -> Duration {
    let t = metrics::with_local_recorder(recorder, || {
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        start.elapsed()
    });
    after();
    t
}

fn counter() {
    metrics::counter!("http_requests_total", "method" => "GET", "status" => "200").increment(black_box(1));
}

fn histogram() {
    metrics::histogram!("http_request_duration_seconds", "route" => "/users/{id}").record(black_box(0.042));
}

fn facade(c: &mut Criterion) {
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let store = shmetrics_benches::builder(dir.path()).open().unwrap();
    let ours = shmetrics_core::recorder::RecorderBuilder::new(&store)
        .set_buckets(&BUCKETS)
        .unwrap()
        .build();
    let theirs = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&BUCKETS)
        .unwrap()
        .build_recorder();
    let handle = theirs.handle();

    let mut g = c.benchmark_group("facade");
    g.bench_function("counter_2_labels/shmetrics", |b| {
        b.iter_custom(|n| timed(&ours, n, counter, || {}))
    });
    g.bench_function("counter_2_labels/metrics_exporter_prometheus", |b| {
        b.iter_custom(|n| timed(&theirs, n, counter, || handle.run_upkeep()))
    });
    g.bench_function("histogram/shmetrics", |b| {
        b.iter_custom(|n| timed(&ours, n, histogram, || {}))
    });
    g.bench_function("histogram/metrics_exporter_prometheus", |b| {
        b.iter_custom(|n| timed(&theirs, n, histogram, || handle.run_upkeep()))
    });
    g.finish();
}

criterion_group!(benches, facade);
criterion_main!(benches);
