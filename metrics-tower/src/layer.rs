//! [`MetricsLayer`]: the tower layer.

use shmetrics_core::Store;
use shmetrics_core::http::HttpMetrics;
use tower_layer::Layer;

use crate::service::Metrics;

/// Records `http_requests_total`, `http_request_duration_seconds` and
/// `http_requests_in_flight` for every request through the wrapped service.
///
/// ```
/// use axum::{Router, routing::get};
/// use shmetrics_tower::MetricsLayer;
/// # let dir = tempfile::tempdir().unwrap();
/// let store = shmetrics_core::Store::open(dir.path())?;
/// let app: Router = Router::new()
///     .route("/users/{id}", get(|| async { "user" }))
///     .layer(MetricsLayer::new(&store)?);
/// # Ok::<(), shmetrics_core::Error>(())
/// ```
///
/// Options (prefix, constant labels, buckets, which labels, status classes, excluded
/// paths) are set on [`HttpMetrics::builder`] and passed to [`MetricsLayer::from_metrics`].
#[derive(Clone, Debug)]
pub struct MetricsLayer {
    metrics: HttpMetrics,
}

impl MetricsLayer {
    /// A layer with the default names and labels, recording into `store`.
    pub fn new(store: &Store) -> shmetrics_core::Result<Self> {
        Ok(MetricsLayer::from_metrics(HttpMetrics::new(store)?))
    }

    /// A layer recording into `metrics` (built with [`HttpMetrics::builder`]).
    ///
    /// ```
    /// use shmetrics_core::http::HttpMetrics;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = shmetrics_core::Store::open(dir.path())?;
    /// let layer = shmetrics_tower::MetricsLayer::from_metrics(
    ///     HttpMetrics::builder(&store)
    ///         .prefix("ckms")
    ///         .const_label("service", "ckms")
    ///         .status_class(true)
    ///         .exclude("/metrics")
    ///         .exclude("/health")
    ///         .build()?,
    /// );
    /// # let _ = layer;
    /// # Ok::<(), shmetrics_core::Error>(())
    /// ```
    pub fn from_metrics(metrics: HttpMetrics) -> Self {
        MetricsLayer { metrics }
    }

    /// The metrics this layer records into.
    pub fn metrics(&self) -> &HttpMetrics {
        &self.metrics
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics::new(inner, self.metrics.clone())
    }
}
