//! Where the route template comes from, and [`RouteLayer`], the helper for a metrics layer
//! that wraps the whole router from outside.

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use axum::extract::MatchedPath;
use http::{HeaderMap, Request};
use shmetrics_core::http::RequestTracker;
use tower_layer::Layer;
use tower_service::Service;

/// Shared between the metrics layer (outside the router) and [`RouteLayer`] (inside it):
/// the route template that matched, set once routing is done.
#[derive(Clone, Debug, Default)]
pub struct RouteSlot(Arc<OnceLock<MatchedPath>>);

impl RouteSlot {
    /// The route that matched, if any yet.
    pub fn get(&self) -> Option<&str> {
        self.0.get().map(MatchedPath::as_str)
    }
}

#[derive(Debug)]
pub(crate) enum Route {
    /// Known at the request (the layer runs inside the router): given to the tracker.
    Known,
    /// Filled by `RouteLayer` when the router matches.
    Slot(RouteSlot),
    /// gRPC: the method path (a route unless the method turns out not to exist).
    Grpc(Arc<str>),
}

/// A request being tracked, with where its route comes from.
#[derive(Debug)]
pub(crate) struct Guard {
    pub(crate) tracker: RequestTracker,
    route: Route,
    pub(crate) grpc: bool,
}

impl Guard {
    pub(crate) fn new(tracker: RequestTracker, route: Route, grpc: bool) -> Self {
        Guard { tracker, route, grpc }
    }

    pub(crate) fn finish(self) {
        // Recording happens in `drop`.
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.grpc && self.tracker.status().is_none() {
            // Ended before the server sent a status: the call was cancelled.
            self.tracker.set_status(GRPC_CANCELLED);
        }
        let route = match &self.route {
            Route::Known => None,
            Route::Slot(s) => s.get(),
            // An unknown method is answered UNIMPLEMENTED: its path is not a route.
            Route::Grpc(_) if self.tracker.status() == Some(GRPC_UNIMPLEMENTED) => None,
            Route::Grpc(path) => Some(&**path),
        };
        self.tracker.record(route);
    }
}

const GRPC_CANCELLED: u16 = 1;
const GRPC_UNIMPLEMENTED: u16 = 12;

/// Whether the request is gRPC (`content-type: application/grpc...`).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-status` of a header or trailer map.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

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
            let _ = slot.0.set(m.clone());
        }
        self.inner.call(req)
    }
}
