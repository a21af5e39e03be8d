//! Where the route template comes from: axum's `MatchedPath`, a [`RouteSlot`] filled after
//! routing, or the gRPC method path.

use http::HeaderMap;
use shmetrics_core::http::RequestTracker;
use std::sync::{Arc, OnceLock};

/// Put in the request's extensions by a metrics layer that does not know the route when
/// the request arrives (it wraps the router from outside): the route template that
/// matched, set once routing is done, by `RouteLayer` (axum) or by the application's own
/// router (hyper: `req.extensions().get::<RouteSlot>().map(|s| s.set("/users/{id}"))`).
#[derive(Clone, Debug, Default)]
pub struct RouteSlot(Arc<OnceLock<Box<str>>>);

impl RouteSlot {
    /// The route that matched, if any yet.
    pub fn get(&self) -> Option<&str> {
        self.0.get().map(|r| &**r)
    }

    /// Sets the route template that matched (the first call wins).
    pub fn set(&self, route: &str) {
        let _ = self.0.set(route.into());
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
