//! Drives N requests through an axum router (bare or with the metrics layer), for
//! profilers: `valgrind --tool=callgrind --toggle-collect='*requests*'
//! target/release/examples/profile_axum [bare|noop|layer] [N]`.
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
    let dir = tempfile::tempdir().unwrap();
    let store = shmetrics_benches::builder(dir.path()).open().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut app: Router = Router::new().route("/users/{id}", axum::routing::get(|| async { "user" }));
    match mode.as_str() {
        "layer" => app = app.layer(shmetrics_tower::MetricsLayer::new(&store).unwrap()),
        "noop" => app = app.layer(shmetrics_benches::noop::NoopLayer),
        _ => {}
    }
    // As `axum::serve` does for every connection: the routes' services are built once.
    let app: Router = app.with_state(());
    rt.block_on(requests(&app, n));
    let allocations = ALLOC.count();
    ALLOC.reset(false);
    eprintln!("{mode}: {allocations} allocations in the last request");
}

/// The measured part: `n` requests (`--toggle-collect='*requests*'` counts only these, not
/// the setup, whose TSC calibration varies with time).
async fn requests(app: &Router, n: usize) {
    for i in 0..n {
        if i == n - 1 {
            ALLOC.reset(std::env::var_os("TRACE").is_some());
        }
        let req = http::Request::get("/users/42").body(Body::empty()).unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
    }
}
