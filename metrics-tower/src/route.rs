//! Where the route template comes from: axum's `MatchedPath`, a [`RouteSlot`] filled after
//! routing, or the gRPC method path.

use http::HeaderMap;
use shmetrics_core::http::RequestTracker;
use std::sync::{Arc, OnceLock};

// Responses carry a guard in their future and body: see `Guard`.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Option<Guard>>() == 64);

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

    /// A slot holding `route` already.
    pub(crate) fn with(route: &str) -> Self {
        let slot = RouteSlot::default();
        slot.set(route);
        slot
    }

    /// Sets the route template that matched (the first call wins).
    pub fn set(&self, route: &str) {
        let _ = self.0.set(route.into());
    }
}

/// A request being tracked, with where its route comes from. Its response future and
/// body carry it (64 bytes), so it holds what every request needs inline and the rest
/// behind one pointer.
#[derive(Debug)]
pub(crate) struct Guard {
    pub(crate) tracker: RequestTracker,
    /// Where the route comes from when the tracker does not have it yet: filled by
    /// `RouteLayer` when the router matches (the layer runs outside the router), or the
    /// gRPC method path (a route unless the method turns out not to exist). `None`: the
    /// route was known at the request (the layer runs inside the router).
    route: Option<RouteSlot>,
    pub(crate) grpc: bool,
}

impl Guard {
    pub(crate) fn new(tracker: RequestTracker, route: Option<RouteSlot>, grpc: bool) -> Self {
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
            None => None,
            // An unknown method is answered UNIMPLEMENTED: its path is not a route.
            Some(_) if self.grpc && self.tracker.status() == Some(GRPC_UNIMPLEMENTED) => None,
            Some(slot) => slot.get(),
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
