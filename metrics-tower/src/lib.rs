//! # shmetrics-tower
//!
//! A tower layer recording exact request metrics across all worker processes of a service,
//! through a [`shmetrics_core::Store`], and the axum route for `/metrics`.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use shmetrics_core::{Store, http::MetricsEndpoint};
//! use shmetrics_tower::{MetricsLayer, metrics_route};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Store::from_env()?; // PROMETHEUS_MULTIPROC_DIR=/dev/shm/prometheus/<api>
//! let app = Router::new()
//!     .route("/users/{id}", get(|| async { "user" }))
//!     .route("/metrics", metrics_route(MetricsEndpoint::from_env(&store)?))
//!     .layer(MetricsLayer::new(&store)?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:10010").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! What it records (names, labels and options are shared with `shmetrics-actix`, see
//! [`shmetrics_core::http`]):
//!
//! * `http_requests_total{method,path,status}`, `http_request_duration_seconds{method,path}`
//!   and `http_requests_in_flight`;
//! * `path` is the route template (axum's [`MatchedPath`](axum::extract::MatchedPath)), never
//!   the raw path: a scan of 404s adds one series, `path="unmatched"`;
//! * latency runs until the response body is finished or dropped; a request whose client
//!   goes away is recorded with status 499; the in-flight gauge is a drop guard;
//! * gRPC (tonic): `path` is `/package.Service/Method`, `status` the `grpc-status` (from the
//!   response head or its trailers); a dropped call is recorded as 1 (CANCELLED).
//!
//! With `Router::layer` the route is known as the request arrives. A layer that wraps the
//! whole router from outside needs [`RouteLayer`] inside the router to learn it.

#![deny(missing_docs)]
#![deny(missing_debug_implementations)]
#![forbid(unsafe_code)]

mod body;
mod endpoint;
mod future;
mod layer;
mod route;
mod service;

pub use body::ResponseBody;
pub use endpoint::{into_response, metrics_route};
pub use future::ResponseFuture;
pub use layer::MetricsLayer;
pub use route::{RouteLayer, RouteService, RouteSlot};
pub use service::Metrics;
pub use shmetrics_core::http::{HttpMetrics, HttpMetricsBuilder, MetricsEndpoint};
