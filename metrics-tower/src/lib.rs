//! # shmetrics-tower
//!
//! A tower layer recording exact request metrics across all worker processes of a service,
//! through a [`Store`], and the axum route for `/metrics`.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = shmetrics_tower::Store::from_env()?; // PROMETHEUS_MULTIPROC_DIR=/dev/shm/prometheus/<api>
//! let (metrics_layer, metrics_router) = shmetrics_tower::MetricsLayer::pair(&store)?;
//! let app = Router::new()
//!     .route("/users/{id}", get(|| async { "user" }))
//!     .merge(metrics_router) // GET /metrics: METRICS_AUTH_TOKEN, ENABLE_METRICS
//!     .layer(metrics_layer); // every route; scrapes of /metrics are not counted
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:10010").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! Without the default `axum` feature the crate has no axum in its dependencies: the layer
//! then serves hyper and tonic services (gRPC method paths as routes; a hyper router sets
//! the route with [`RouteSlot::set`]), and `/metrics` is served with
//! [`MetricsEndpoint::respond`].
//!
//! What it records (names, labels and options are shared with `shmetrics-actix`, see
//! [`shmetrics_core::http`]):
//!
//! * `http_requests_total{method,path,status}`, `http_request_duration_seconds{method,path}`
//!   and `http_requests_in_flight`;
//! * `path` is the route template (axum's `MatchedPath`), never
//!   the raw path: a scan of 404s adds one series, `path="unmatched"`;
//! * latency runs until the response body is finished or dropped; a request whose client
//!   goes away is recorded with status 499; the in-flight gauge is a drop guard;
//! * gRPC (tonic): `path` is `/package.Service/Method`, `status` the `grpc-status` (from the
//!   response head or its trailers); a dropped call is recorded as 1 (CANCELLED).
//!
//! With `Router::layer` the route is known as the request arrives. A layer that wraps the
//! whole router from outside needs `RouteLayer` inside the router to learn it.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![deny(unreachable_pub)]
#![deny(missing_debug_implementations)]
#![forbid(unsafe_code)]

mod body;
#[cfg(feature = "axum")]
mod endpoint;
mod future;
mod layer;
mod route;
#[cfg(feature = "axum")]
mod route_layer;
mod service;

pub use body::ResponseBody;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use endpoint::{into_response, metrics_route};
pub use future::ResponseFuture;
pub use layer::MetricsLayer;
pub use route::RouteSlot;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use route_layer::{RouteLayer, RouteService};
pub use service::Metrics;
pub use shmetrics_core::http::{
    HttpMetrics, HttpMetricsBuilder, METRICS_PATH, MetricsEndpoint, RequestTracker,
};
/// The store and metric types, so that this crate is the one dependency an app needs.
pub use shmetrics_core::{
    self as core, Counter, CounterF64, DEFAULT_BUCKETS, Error, Family, Gauge, GaugeMode, Histogram,
    NativeOpts, Result, Store, StoreBuilder,
};
