//! A multi-worker axum service with one `/metrics` for all workers.
//!
//! ```sh
//! cargo run --release --example axum_workers -- --workers 4 --port 10010
//! curl localhost:10010/users/42
//! curl localhost:10010/metrics
//! ```
//!
//! Routes: `GET /health`, `GET /users/{id}` (JSON), `POST /orders` (201), `GET /error`
//! (500), `GET /slow?ms=N` (N capped at 10,000), `GET /metrics`. `POST /orders` also counts
//! `orders_created_total` through the `metrics` facade; `--axum-prometheus` adds that
//! library's layer (its series merged across workers too).

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use shmetrics_examples::{MAX_SLOW_MS, Options, Worker, http_metrics, metrics_endpoint};
use shmetrics_tower::{MetricsLayer, metrics_route};

const APPLICATION: &str = "axum-workers";

fn main() -> ExitCode {
    shmetrics_examples::main(APPLICATION, worker)
}

#[derive(Deserialize)]
struct Slow {
    ms: Option<u64>,
}

static ORDERS: AtomicU64 = AtomicU64::new(0);

/// The app of one worker process (with the metrics layer unless `--no-metrics`).
fn app(
    store: &shmetrics_core::Store,
    application: &str,
    options: &Options,
) -> shmetrics_core::Result<Router> {
    let routes = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/users/{id}",
            get(|Path(id): Path<String>| async move {
                Json(serde_json::json!({ "id": id, "name": format!("user {id}") }))
            }),
        )
        .route(
            "/orders",
            post(|| async {
                let id = ORDERS.fetch_add(1, Ordering::Relaxed) + 1;
                // Through the `metrics` facade: merged across workers like the rest.
                metrics::counter!("orders_created_total").increment(1);
                (
                    StatusCode::CREATED,
                    Json(serde_json::json!({ "order": id, "pid": std::process::id() })),
                )
            }),
        )
        .route(
            "/error",
            get(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(serde_json::json!({ "error": "boom" })),
                )
            }),
        )
        .route(
            "/slow",
            get(|Query(q): Query<Slow>| async move {
                let ms = q.ms.unwrap_or(100).min(MAX_SLOW_MS);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Json(serde_json::json!({ "slept_ms": ms }))
            }),
        );
    if options.peer {
        // The usual in-process library: each worker counts and serves its own requests.
        let (layer, handle) = axum_prometheus::PrometheusMetricLayer::pair();
        return Ok(routes
            .route("/metrics", get(move || std::future::ready(handle.render())))
            .layer(layer));
    }
    let endpoint = metrics_endpoint(store, application)?;
    let app = if options.metrics {
        // The request metrics and `/metrics` (not counted as a request) in one call.
        let (layer, metrics) = MetricsLayer::pair_with(http_metrics(store, options), endpoint)?;
        routes.merge(metrics).layer(layer)
    } else {
        routes.route("/metrics", metrics_route(endpoint))
    };
    Ok(if options.axum_prometheus {
        // A library instrumented with `metrics`: without its own exporter, its
        // `axum_http_requests_*` series go through the recorder into the store.
        app.layer(axum_prometheus::PrometheusMetricLayer::new())
    } else {
        app
    })
}

fn worker(w: Worker) -> Result<(), Box<dyn std::error::Error>> {
    // One thread per worker process, as Sanic and gunicorn workers.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Inside the runtime: axum-prometheus (`--peer`) spawns its upkeep task when built.
    let app = {
        let _entered = rt.enter();
        app(&w.store, &w.application, &w.options)?
    };
    // CPU, memory, file descriptors, threads and the runtime's tasks, sampled each second.
    let _process = shmetrics_examples::process_metrics(&w, Some(rt.handle().clone()));
    rt.block_on(async move {
        w.listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(w.listener)?;
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM");
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                tracing::info!("worker stopping");
            })
            .await?;
        Ok(())
    })
}
