//! Drives N requests through an axum router (bare or with the metrics layer), for
//! profilers: `valgrind --tool=callgrind target/release/examples/profile_axum [bare|noop|layer] [N]`.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;

/// Counts allocations; with TRACE set, prints a backtrace of each.
struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static TRACE: AtomicBool = AtomicBool::new(false);

// SAFETY: forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        if TRACE.swap(false, Ordering::Relaxed) {
            eprintln!(
                "alloc {} bytes:\n{}",
                l.size(),
                std::backtrace::Backtrace::force_capture()
            );
            TRACE.store(true, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;
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
    rt.block_on(async {
        for i in 0..n {
            if i == n - 1 {
                ALLOCS.store(0, Ordering::Relaxed);
                TRACE.store(std::env::var_os("TRACE").is_some(), Ordering::Relaxed);
            }
            let req = http::Request::get("/users/42").body(Body::empty()).unwrap();
            let res = app.clone().oneshot(req).await.unwrap();
            axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        }
        TRACE.store(false, Ordering::Relaxed);
        eprintln!(
            "{mode}: {} allocations in the last request",
            ALLOCS.load(Ordering::Relaxed)
        );
    });
}
