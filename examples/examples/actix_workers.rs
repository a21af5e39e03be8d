//! A multi-worker actix-web service with one `/metrics` for all workers.
//!
//! ```sh
//! cargo run --release --example actix_workers -- --workers 4 --port 10010
//! ```
//!
//! Same routes as `axum_workers`: `GET /health`, `GET /users/{id}` (JSON), `POST /orders`
//! (201), `GET /error` (500), `GET /slow?ms=N` (N capped at 10,000), `GET /metrics`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use serde::Deserialize;
use shmetrics_examples::{MAX_SLOW_MS, Worker, http_metrics, metrics_endpoint};

const APPLICATION: &str = "actix-workers";

fn main() -> ExitCode {
    shmetrics_examples::main(APPLICATION, worker)
}

#[derive(Deserialize)]
struct Slow {
    ms: Option<u64>,
}

static ORDERS: AtomicU64 = AtomicU64::new(0);

/// The routes, the same with and without the metrics middleware.
fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(|| async { "ok" }))
        .service(
            web::resource("/users/{id}").route(web::get().to(|id: web::Path<String>| async move {
                HttpResponse::Ok().json(serde_json::json!({ "id": *id, "name": format!("user {id}") }))
            })),
        )
        .service(web::resource("/orders").route(web::post().to(|| async {
            let id = ORDERS.fetch_add(1, Ordering::Relaxed) + 1;
            // Through the `metrics` facade: merged across workers like the rest.
            metrics::counter!("orders_created_total").increment(1);
            HttpResponse::Created().json(serde_json::json!({ "order": id, "pid": std::process::id() }))
        })))
        .service(web::resource("/error").route(web::get().to(|| async {
            HttpResponse::InternalServerError().json(serde_json::json!({ "error": "boom" }))
        })))
        .service(
            web::resource("/slow").route(web::get().to(|q: web::Query<Slow>| async move {
                let ms = q.ms.unwrap_or(100).min(MAX_SLOW_MS);
                actix_web::rt::time::sleep(Duration::from_millis(ms)).await;
                HttpResponse::Ok().json(serde_json::json!({ "slept_ms": ms }))
            })),
        );
}

fn worker(w: Worker) -> Result<(), Box<dyn std::error::Error>> {
    // CPU, memory, file descriptors and threads, sampled each second.
    let _process = shmetrics_examples::process_metrics(&w, None);
    let endpoint = metrics_endpoint(&w.store, &w.application)?;
    // The request metrics, answering `/metrics` too (not counted as a request).
    let metrics =
        shmetrics_actix::Metrics::with_endpoint_from(http_metrics(&w.store, &w.options), endpoint.clone())?;
    let measured = w.options.metrics;
    // `--peer`: actix-web-prom, each worker counting and serving its own requests.
    let peer = w
        .options
        .peer
        .then(|| {
            actix_web_prom::PrometheusMetricsBuilder::new("api")
                .endpoint("/metrics")
                .build()
        })
        .transpose()
        .map_err(|e| format!("actix-web-prom: {e}"))?;
    actix_web::rt::System::new().block_on(async move {
        // One thread per worker process, as Sanic and gunicorn workers; a client that goes
        // away stops its handler (recorded as 499, as with axum).
        macro_rules! serve {
            ($server:expr) => {
                $server
                    .workers(1)
                    .h1_allow_half_closed(false)
                    .listen(w.listener)?
                    .run()
                    .await?
            };
        }
        if let Some(peer) = peer {
            serve!(HttpServer::new(move || App::new()
                .wrap(peer.clone())
                .configure(routes)));
        } else if measured {
            serve!(HttpServer::new(move || {
                App::new().wrap(metrics.clone()).configure(routes)
            }));
        } else {
            serve!(HttpServer::new(move || {
                App::new()
                    .service(shmetrics_actix::metrics_resource("/metrics", endpoint.clone()))
                    .configure(routes)
            }));
        }
        Ok(())
    })
}
