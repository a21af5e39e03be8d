//! [`MetricsLayer`]: the tower layer.

use shmetrics_core::Store;
use shmetrics_core::http::HttpMetrics;
#[cfg(feature = "axum")]
use shmetrics_core::http::{HttpMetricsBuilder, METRICS_PATH, MetricsEndpoint};
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
/// Requests to `/metrics` (the scrape endpoint) are not recorded. Options (prefix,
/// constant labels, buckets, which labels, status classes, excluded paths, the endpoint's
/// path) are set on [`HttpMetrics::builder`] and passed to [`MetricsLayer::from_metrics`];
/// `MetricsLayer::pair` (feature `axum`) also gives the `/metrics` router.
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

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl MetricsLayer {
    /// Everything an axum app needs, in one call: the layer (default names and labels;
    /// scrapes of `/metrics` are not recorded) and a router serving `/metrics` with
    /// [`MetricsEndpoint::from_env`] (`METRICS_AUTH_TOKEN`, `ENABLE_METRICS`). Merge the
    /// router into the app and add the layer last, so that it sees every route:
    ///
    /// ```
    /// use axum::{Router, routing::get};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = shmetrics_tower::Store::open(dir.path())?;
    /// let (metrics_layer, metrics_router) = shmetrics_tower::MetricsLayer::pair(&store)?;
    /// let app: Router = Router::new()
    ///     .route("/users/{id}", get(|| async { "user" }))
    ///     .merge(metrics_router)
    ///     .layer(metrics_layer);
    /// # Ok::<(), shmetrics_tower::Error>(())
    /// ```
    pub fn pair<S>(store: &Store) -> shmetrics_core::Result<(MetricsLayer, axum::Router<S>)>
    where
        S: Clone + Send + Sync + 'static,
    {
        MetricsLayer::pair_with(HttpMetrics::builder(store), MetricsEndpoint::from_env(store)?)
    }

    /// [`MetricsLayer::pair`] with options: the metrics `builder` (its
    /// [`metrics_path`](HttpMetricsBuilder::metrics_path), `/metrics` by default, is where
    /// the router serves `endpoint`, and is not recorded).
    pub fn pair_with<S>(
        builder: HttpMetricsBuilder,
        endpoint: MetricsEndpoint,
    ) -> shmetrics_core::Result<(MetricsLayer, axum::Router<S>)>
    where
        S: Clone + Send + Sync + 'static,
    {
        let path = builder.endpoint_path().unwrap_or(METRICS_PATH).to_string();
        let layer = MetricsLayer::from_metrics(builder.build()?);
        Ok((
            layer,
            axum::Router::new().route(&path, crate::metrics_route(endpoint)),
        ))
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics::new(inner, self.metrics.clone())
    }
}
