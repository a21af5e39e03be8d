//! [`RouteLayer`]: tells a metrics layer outside an axum router which route matched.

use std::task::{Context, Poll};

use axum::extract::MatchedPath;
use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use crate::route::RouteSlot;

/// Tells a [`MetricsLayer`](crate::MetricsLayer) that wraps the whole router from outside
/// which route matched. Add it to the router with `Router::layer`; a layer applied with
/// `Router::layer` itself needs no helper.
///
/// ```
/// use axum::{Router, routing::get};
/// use shmetrics_tower::{MetricsLayer, RouteLayer};
/// use tower_layer::Layer;
/// # let dir = tempfile::tempdir().unwrap();
/// # let store = shmetrics_core::Store::open(dir.path())?;
/// let router: Router = Router::new()
///     .route("/users/{id}", get(|| async { "user" }))
///     .layer(RouteLayer);
/// // E.g. to count requests that no route matched with their own middleware stack:
/// let service = MetricsLayer::new(&store)?.layer(router);
/// # let _ = service;
/// # Ok::<(), shmetrics_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteLayer;

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteService { inner }
    }
}

/// Service of [`RouteLayer`].
#[derive(Clone, Debug)]
pub struct RouteService<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for RouteService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let (Some(slot), Some(m)) = (
            req.extensions().get::<RouteSlot>(),
            req.extensions().get::<MatchedPath>(),
        ) {
            slot.set(m.as_str());
        }
        self.inner.call(req)
    }
}
