//! Exemplars: one histogram observation and one counter increment without and with an
//! exemplar, beside prometheus-client's in-process `HistogramWithExemplars` and
//! `CounterWithExemplar`; and what a traced request costs the tower middleware, paired
//! against the same request without a `traceparent` header (see `middleware.rs` for the
//! pairing): with the default sampling (at most one exemplar write per bucket per second)
//! and with every traced request writing one.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::exemplar::{CounterWithExemplar, HistogramWithExemplars};
use shmetrics_benches::{builder, paired, paired_quartiles};
use shmetrics_core::http::HttpMetrics;
use shmetrics_core::{Counter, DEFAULT_BUCKETS, Histogram, Opts};

/// The 32 hex digits of a W3C trace id.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TraceLabels {
    trace_id: String,
}

fn store_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

fn observe(c: &mut Criterion) {
    let dir = store_dir();
    let store = builder(dir.path()).open().unwrap();
    let hist = store
        .register::<Histogram>(
            Opts::new("latency_seconds", "Latency")
                .label_names(["route"])
                .buckets(DEFAULT_BUCKETS),
        )
        .unwrap()
        .labels(&["/a"])
        .clone();
    let counter = store
        .register::<Counter>(Opts::new("requests_total", "Requests").label_names(["route"]))
        .unwrap()
        .labels(&["/a"])
        .clone();
    let labels = [("trace_id", TRACE_ID)];
    // The exemplar slots exist before the measurement, as after a service's first requests.
    hist.observe_with_exemplar(0.042, &labels);
    counter.inc_by_with_exemplar(1, &labels);

    let mut g = c.benchmark_group("exemplar_observe");
    g.bench_function("shmetrics_histogram", |b| {
        b.iter(|| black_box(&hist).observe(black_box(0.042)))
    });
    g.bench_function("shmetrics_histogram_with_exemplar", |b| {
        b.iter(|| black_box(&hist).observe_with_exemplar(black_box(0.042), black_box(&labels)))
    });
    g.bench_function("shmetrics_counter", |b| {
        b.iter(|| black_box(&counter).inc_by(black_box(1)))
    });
    g.bench_function("shmetrics_counter_with_exemplar", |b| {
        b.iter(|| black_box(&counter).inc_by_with_exemplar(black_box(1), black_box(&labels)))
    });

    // prometheus-client takes the exemplar as an owned label set: building it (one
    // `String`) is part of what a caller pays per exemplar.
    let pc_hist = HistogramWithExemplars::<TraceLabels>::new(DEFAULT_BUCKETS.iter().copied());
    let pc_counter = CounterWithExemplar::<TraceLabels>::default();
    g.bench_function("prometheus_client_histogram", |b| {
        b.iter(|| black_box(&pc_hist).observe(black_box(0.042), None, None))
    });
    g.bench_function("prometheus_client_histogram_with_exemplar", |b| {
        b.iter(|| {
            let labels = TraceLabels {
                trace_id: black_box(TRACE_ID).to_owned(),
            };
            black_box(&pc_hist).observe(black_box(0.042), Some(labels), None)
        })
    });
    g.bench_function("prometheus_client_counter", |b| {
        b.iter(|| black_box(&pc_counter).inc_by(black_box(1), None, None))
    });
    g.bench_function("prometheus_client_counter_with_exemplar", |b| {
        b.iter(|| {
            let labels = TraceLabels {
                trace_id: black_box(TRACE_ID).to_owned(),
            };
            black_box(&pc_counter).inc_by(black_box(1), Some(labels), None)
        })
    });
    // What every traced request pays before sampling: the header's trace id.
    g.bench_function("parse_traceparent", |b| {
        b.iter(|| shmetrics_core::http::parse_traceparent(black_box(TRACEPARENT.as_bytes())))
    });
    g.finish();
}

fn middleware(c: &mut Criterion) {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    let dir = store_dir();
    let store = builder(dir.path()).open().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let routes: Router = Router::new().route("/users/{id}", get(|| async { "user" }));
    let layered = |metrics: HttpMetrics| -> Router {
        routes
            .clone()
            .layer(shmetrics_tower::MetricsLayer::from_metrics(metrics))
            .with_state(())
    };
    let bare: Router = routes.clone().with_state(());
    let sampled = layered(HttpMetrics::new(&store).unwrap());
    // Same names, another store: two layers in one store would count the same series.
    let dir_every = store_dir();
    let store_every = builder(dir_every.path()).open().unwrap();
    let every = layered(
        HttpMetrics::builder(&store_every)
            .exemplar_interval(Duration::ZERO)
            .build()
            .unwrap(),
    );
    let dir_off = store_dir();
    let store_off = builder(dir_off.path()).open().unwrap();
    let off = layered(HttpMetrics::builder(&store_off).exemplars(false).build().unwrap());

    // A request's headers: none, or what a client typically sends, without and with a
    // trace. Both sides of a pair get the same ones (cloned inside the timed part).
    let none = http::HeaderMap::new();
    let mut typical = http::HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("accept-encoding", "gzip"),
    ] {
        typical.insert(k, http::HeaderValue::from_static(v));
    }
    let mut traced = typical.clone();
    traced.insert("traceparent", http::HeaderValue::from_static(TRACEPARENT));
    let send = |app: &Router, headers: &http::HeaderMap| {
        let app = app.clone();
        rt.block_on(async move {
            let mut req = http::Request::get("/users/42").body(Body::empty()).unwrap();
            *req.headers_mut() = headers.clone();
            let res = app.oneshot(req).await.unwrap();
            axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap()
        });
    };
    // Every exemplar slot the requests use exists before the measurement.
    send(&sampled, &traced);
    send(&every, &traced);

    // The whole layer, and every traced request writing its two exemplars
    // (`exemplar_interval(ZERO)`), against the layer with exemplars off: differences well
    // above the noise.
    let mut g = c.benchmark_group("exemplar_middleware_axum");
    g.bench_function("layer_untraced_minus_bare", |b| {
        b.iter_custom(|n| paired(n, || send(&bare, &typical), || send(&sampled, &typical)))
    });
    g.bench_function("traced_every_minus_off", |b| {
        b.iter_custom(|n| paired(n, || send(&off, &traced), || send(&every, &traced)))
    });
    g.finish();

    // The layer with exemplars off costs what it cost before exemplars existed (one branch
    // more). What exemplars add to it is tens of nanoseconds at most, near one sample's
    // noise: printed as the median and quartiles of 2,000 paired rounds of 256 requests
    // each, the same requests on both sides.
    println!("exemplar_middleware_axum, on minus off, per request: median [quartiles]");
    for (name, headers) in [
        ("untraced_no_headers", &none),
        ("untraced_typical_headers", &typical),
        ("traced_typical_headers", &traced),
    ] {
        let [q1, median, q3] =
            paired_quartiles(2000, 256, || send(&off, headers), || send(&sampled, headers));
        println!("  {name:<26} {median:6.1} ns  [{q1:.1}, {q3:.1}]");
    }
}

criterion_group!(benches, observe, middleware);
criterion_main!(benches);
