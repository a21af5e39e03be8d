//! The write path: shmetrics handles against prometheus-client in-process metrics and a
//! bare atomic on a shared mapping (the floor), in the same run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter as PcCounter;
use prometheus_client::metrics::family::Family as PcFamily;
use prometheus_client::metrics::gauge::Gauge as PcGauge;
use prometheus_client::metrics::histogram::Histogram as PcHistogram;
use shmetrics_core::{DEFAULT_BUCKETS, GaugeMode, Store};
use shmetrics_testing::RawMmapCounter;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    path: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    method: &'static str,
    path: &'static str,
}

/// prometheus-client's labelled counter and histogram, as an in-process service uses them.
struct Pc {
    requests: PcFamily<RequestLabels, PcCounter>,
    latency: PcFamily<LatencyLabels, PcHistogram, fn() -> PcHistogram>,
}

impl Pc {
    fn new() -> Self {
        fn hist() -> PcHistogram {
            PcHistogram::new(DEFAULT_BUCKETS)
        }
        Pc {
            requests: PcFamily::default(),
            latency: PcFamily::new_with_constructor(hist),
        }
    }

    #[inline]
    fn record(&self, v: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: "GET",
                path: "/users/{id}",
                status: "200",
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                method: "GET",
                path: "/users/{id}",
            })
            .observe(v);
    }
}

struct Sh {
    requests: shmetrics_core::Family<shmetrics_core::Counter>,
    latency: shmetrics_core::Family<shmetrics_core::Histogram>,
}

impl Sh {
    fn new(store: &Store) -> Self {
        Sh {
            requests: store
                .counter_family("http_requests", "Requests", &["method", "path", "status"])
                .unwrap(),
            latency: store
                .histogram_family(
                    "http_request_duration_seconds",
                    "Latency",
                    &["method", "path"],
                    &DEFAULT_BUCKETS,
                )
                .unwrap(),
        }
    }

    #[inline]
    fn record(&self, v: f64) {
        self.requests.labels(&["GET", "/users/{id}", "200"]).inc();
        self.latency.labels(&["GET", "/users/{id}"]).observe(v);
    }
}

fn store_dir() -> tempfile::TempDir {
    // RAM, as in production, where there is a /dev/shm.
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

fn hot_path(c: &mut Criterion) {
    let dir = store_dir();
    let store = shmetrics_benches::builder(dir.path()).open().unwrap();
    let raw = RawMmapCounter::new(dir.path()).unwrap();

    let mut g = c.benchmark_group("counter_inc");
    g.bench_function("raw_atomic_on_mmap_page", |b| b.iter(|| black_box(&raw).inc()));
    let counter = store.counter("prebound", "Pre-bound").unwrap();
    g.bench_function("shmetrics_prebound", |b| b.iter(|| black_box(&counter).inc()));
    let pc_counter = PcCounter::<u64>::default();
    g.bench_function("prometheus_client_prebound", |b| {
        b.iter(|| black_box(&pc_counter).inc())
    });
    g.finish();

    let sh = Sh::new(&store);
    let pc = Pc::new();
    let mut g = c.benchmark_group("labelled_counter_and_histogram");
    let mut v = 0.0;
    g.bench_function("shmetrics", |b| {
        b.iter(|| {
            v = if v > 0.5 { 0.0 } else { v + 0.001 };
            sh.record(black_box(v))
        })
    });
    g.bench_function("prometheus_client", |b| {
        b.iter(|| {
            v = if v > 0.5 { 0.0 } else { v + 0.001 };
            pc.record(black_box(v))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("gauge_set");
    let gauge = store.gauge("in_flight", "In flight", GaugeMode::LiveSum).unwrap();
    let pc_gauge = PcGauge::<f64, std::sync::atomic::AtomicU64>::default();
    let mut x = 0.0;
    g.bench_function("shmetrics", |b| {
        b.iter(|| {
            x += 1.0;
            black_box(&gauge).set(x)
        })
    });
    g.bench_function("prometheus_client", |b| {
        b.iter(|| {
            x += 1.0;
            black_box(&pc_gauge).set(x);
        })
    });
    g.finish();

    // The HTTP middlewares' shared core: one request tracked and recorded.
    let mut g = c.benchmark_group("http_request_tracker");
    let http = shmetrics_core::http::HttpMetrics::new(&store).unwrap();
    g.bench_function("start_status_record", |b| {
        b.iter(|| {
            let mut t = http.start(black_box("GET"));
            t.set_route(black_box("/users/{id}"));
            t.set_status(200);
            t.finish();
        })
    });
    g.finish();

    // Two threads hammering the same series: time per operation and thread (wall clock).
    let mut g = c.benchmark_group("two_threads_same_series");
    fn two_threads(iters: u64, op: &(dyn Fn(u64) + Sync)) -> Duration {
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for i in 0..iters {
                        op(i);
                    }
                });
            }
        });
        start.elapsed()
    }
    g.bench_function("raw_atomic_on_mmap_page", |b| {
        b.iter_custom(|n| two_threads(n, &|_| raw.inc()))
    });
    g.bench_function("shmetrics_labelled_counter_and_histogram", |b| {
        b.iter_custom(|n| two_threads(n, &|i| sh.record((i % 500) as f64 * 0.001)))
    });
    g.bench_function("prometheus_client_labelled_counter_and_histogram", |b| {
        b.iter_custom(|n| two_threads(n, &|i| pc.record((i % 500) as f64 * 0.001)))
    });
    g.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
