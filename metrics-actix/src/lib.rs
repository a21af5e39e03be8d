//! # shmetrics-actix
//!
//! actix-web middleware recording exact request metrics across all worker processes of a
//! service through a [`shmetrics_core::Store`], and the `/metrics` resource. Same names,
//! labels, buckets and options as `shmetrics-tower` (both use [`shmetrics_core::http`]).
//!
//! ```no_run
//! use actix_web::{App, HttpServer, web};
//! use shmetrics_core::{Store, http::MetricsEndpoint};
//! use shmetrics_actix::{Metrics, metrics_resource};
//!
//! #[actix_web::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let store = Store::from_env()?; // PROMETHEUS_MULTIPROC_DIR=/dev/shm/prometheus/<api>
//!     let metrics = Metrics::new(&store)?;
//!     let endpoint = MetricsEndpoint::from_env(&store)?;
//!     HttpServer::new(move || {
//!         App::new()
//!             .wrap(metrics.clone())
//!             .service(metrics_resource("/metrics", endpoint.clone()))
//!             .route("/users/{id}", web::get().to(|| async { "user" }))
//!     })
//!     .h1_allow_half_closed(false) // a client that goes away stops its handler (499)
//!     .bind("127.0.0.1:10010")?
//!     .run()
//!     .await?;
//!     Ok(())
//! }
//! ```
//!
//! * `path` is the route template (`match_pattern()`), never the raw path: requests no
//!   resource matched share `path="unmatched"`; non-standard methods share `OTHER`.
//! * Latency runs until the response body is finished or dropped; a request dropped
//!   before its response (client gone) is recorded with status 499; the in-flight gauge
//!   is a drop guard carried in the body.
//! * A client that goes away: hyper (axum) stops the handler, actix by default finishes it
//!   and writes into the closed connection, so the request is recorded with the status the
//!   handler produced. Set `HttpServer::h1_allow_half_closed(false)` to have actix stop it
//!   too: it is then recorded with status 499, as with `shmetrics-tower`.
//! * Works with actix's worker threads (one middleware per worker, one store) and with
//!   several worker processes sharing a `SO_REUSEPORT` port (one store directory).

#![deny(missing_docs)]
#![deny(unreachable_pub)]
#![deny(missing_debug_implementations)]
#![forbid(unsafe_code)]

mod body;
mod endpoint;
mod middleware;

pub use body::MetricsBody;
pub use endpoint::{into_response, metrics_handler, metrics_resource};
pub use middleware::{Metrics, MetricsMiddleware, MetricsResponse};
pub use shmetrics_core::http::{
    HttpMetrics, HttpMetricsBuilder, METRICS_PATH, MetricsEndpoint, RequestTracker,
};
/// The store and metric types, so that this crate is the one dependency an app needs.
pub use shmetrics_core::{
    self as core, Counter, CounterF64, DEFAULT_BUCKETS, Error, Family, Gauge, GaugeMode, Histogram,
    NativeOpts, Result, Store, StoreBuilder,
};
