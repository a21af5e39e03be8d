//! HTTP request metrics and the `/metrics` endpoint, independent of any web framework.
//!
//! `shmetrics-tower` (axum, hyper, tonic) and `shmetrics-actix` adapt these types to their
//! framework, so both record the same names, labels and values:
//!
//! * `http_requests_total{method,path,status}`: requests, by route template;
//! * `http_request_duration_seconds{method,path}`: latency until the response body is
//!   finished (or dropped), Prometheus' default buckets;
//! * `http_requests_in_flight`: requests being served (gauge, `livesum`).
//!
//! `path` is a route template (`/users/{id}`), never the raw path: requests no route
//! matched share one value ([`UNMATCHED`] by default), methods outside the standard set
//! share [`OTHER_METHOD`]. A request that ends before its response (client gone) is
//! recorded with status [`DROPPED_STATUS`] (499, nginx's "client closed request").
//! Requests to the scrape endpoint ([`METRICS_PATH`] unless
//! [`HttpMetricsBuilder::metrics_path`] says otherwise) are not recorded.
//!
//! Here: [`metrics`](HttpMetrics) (the families and options), the request tracker
//! ([`RequestTracker`]) with its route cache, the label values, and the endpoint
//! ([`MetricsEndpoint`]: bearer token, on/off switch, content negotiation ([`negotiate`]),
//! gzip).
//!
//! ```
//! use shmetrics_core::{Store, http::HttpMetrics};
//! # let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path())?;
//! let metrics = HttpMetrics::builder(&store).exclude("/health").build()?; // and /metrics
//!
//! // In a middleware:
//! let mut tracker = metrics.start("GET");
//! tracker.set_route("/users/{id}");
//! tracker.set_status(200);
//! tracker.finish(); // or drop it when the response body is dropped
//!
//! let snap = store.snapshot()?;
//! let labels = [("method", "GET"), ("path", "/users/{id}"), ("status", "200")];
//! assert_eq!(snap.counter("http_requests", &labels), Some(1));
//! # Ok::<(), shmetrics_core::Error>(())
//! ```

mod endpoint;
mod labels;
mod metrics;
mod negotiate;
mod routes;
mod trace;
mod tracker;

pub use endpoint::{
    ENV_AUTH_TOKEN, ENV_ENABLE, EndpointResponse, MetricsEndpoint, ScrapeRequest, parse_enabled,
};
pub use labels::{
    DROPPED_STATUS, MAX_CONST_LABELS, METRICS_PATH, OTHER_METHOD, UNMATCHED, method_label, status_label,
};
pub use metrics::{HttpMetrics, HttpMetricsBuilder};
pub use negotiate::negotiate;
pub use trace::{RequestHeaders, TraceIdFn, parse_traceparent};
pub use tracker::RequestTracker;
