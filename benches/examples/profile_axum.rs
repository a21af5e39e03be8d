//! Drives N requests through an axum router (bare or with the metrics layer), for
//! profilers: `valgrind --tool=callgrind --toggle-collect='*requests*'
//! target/release/examples/profile_axum [bare|noop|layer|layer-off] [N] [typical|traced]`: see
//! `requests` for the headers; `layer-off` is the layer with exemplars off.
use axum::Router;
use shmetrics_testing::CountingAllocator;

/// Counts allocations; with TRACE set, prints a backtrace of each in the last request.
#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

use axum::body::Body;
use tower::ServiceExt;

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let n: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let headers = std::env::args().nth(3).unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let store = shmetrics_benches::builder(dir.path()).open().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut app: Router = Router::new().route("/users/{id}", axum::routing::get(|| async { "user" }));
    match mode.as_str() {
        "layer" => app = app.layer(shmetrics_tower::MetricsLayer::new(&store).unwrap()),
        "layer-off" => {
            let metrics = shmetrics_core::http::HttpMetrics::builder(&store)
                .exemplars(false)
                .build()
                .unwrap();
            app = app.layer(shmetrics_tower::MetricsLayer::from_metrics(metrics))
        }
        "noop" => app = app.layer(shmetrics_benches::noop::NoopLayer),
        _ => {}
    }
    // As `axum::serve` does for every connection: the routes' services are built once.
    let app: Router = app.with_state(());
    rt.block_on(requests(&app, n, &headers));
    let allocations = ALLOC.count();
    ALLOC.reset(false);
    eprintln!("{mode}: {allocations} allocations in the last request");
}

/// The measured part: `n` requests (`--toggle-collect='*requests*'` counts only these, not
/// the setup, whose TSC calibration varies with time). `headers`: `typical` gives each
/// request what a client typically sends, `traced` that and a `traceparent` header.
async fn requests(app: &Router, n: usize, headers: &str) {
    let mut map = http::HeaderMap::new();
    if headers == "typical" || headers == "traced" {
        for (k, v) in [
            ("host", "api.example.com"),
            ("user-agent", "curl/8.5.0"),
            ("accept", "*/*"),
            ("accept-encoding", "gzip"),
        ] {
            map.insert(k, http::HeaderValue::from_static(v));
        }
    }
    if headers == "traced" {
        map.insert(
            "traceparent",
            http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
    }
    for i in 0..n {
        if i == n - 1 {
            ALLOC.reset(std::env::var_os("TRACE").is_some());
        }
        let mut req = http::Request::get("/users/42").body(Body::empty()).unwrap();
        *req.headers_mut() = map.clone();
        let res = app.clone().oneshot(req).await.unwrap();
        axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
    }
}
