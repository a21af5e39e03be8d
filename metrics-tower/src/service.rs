//! [`Metrics`]: the service the layer produces.

use std::task::{Context, Poll};

#[cfg(feature = "axum")]
use axum::extract::MatchedPath;
use http::{Request, Response};
use shmetrics_core::http::{HttpMetrics, RequestHeaders};
use tower_service::Service;

use crate::body::ResponseBody;
use crate::future::ResponseFuture;
use crate::route::{Guard, RouteSlot, is_grpc};

/// A request's headers, as the exemplar sources read them.
struct Headers<'a>(&'a http::HeaderMap);

/// The W3C trace context header.
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Up to this many header names, `traceparent` is searched for name by name.
const SCAN_HEADERS: usize = 16;

impl RequestHeaders for Headers<'_> {
    #[inline]
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.get(name).map(http::HeaderValue::as_bytes)
    }

    #[inline]
    fn traceparent(&self) -> Option<&[u8]> {
        // Most requests carry a handful of headers, most of them standard ones: comparing
        // each name with this one (for a standard name, only its kind) costs a fraction
        // of hashing the name for the map's lookup. Every request pays for this search.
        // Only a request that has one pays for the lookup of its value.
        if self.0.keys_len() <= SCAN_HEADERS && !self.0.keys().any(|k| *k == TRACEPARENT) {
            return None;
        }
        self.0.get(&TRACEPARENT).map(http::HeaderValue::as_bytes)
    }
}

/// Middleware recording request metrics (see [`MetricsLayer`](crate::MetricsLayer)).
#[derive(Clone, Debug)]
pub struct Metrics<S> {
    inner: S,
    metrics: HttpMetrics,
}

impl<S> Metrics<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, metrics: HttpMetrics) -> Self {
        Metrics { inner, metrics }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Metrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        if self.metrics.excluded(req.uri().path()) {
            return ResponseFuture::new(self.inner.call(req), None);
        }
        // gRPC runs over HTTP/2 only: HTTP/1 requests skip the header lookup.
        let grpc = req.version() == http::Version::HTTP_2 && is_grpc(req.headers());
        let mut tracker = self.metrics.start(req.method().as_str());
        if let Some(id) = self.metrics.trace_id(&Headers(req.headers())) {
            tracker.set_trace_id(id);
        }
        #[cfg(feature = "axum")]
        let matched = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
        #[cfg(not(feature = "axum"))]
        let matched: Option<&str> = None;
        let route = match matched {
            // Inside the router (`Router::layer`): the route template is known now.
            Some(m) if self.metrics.excluded(m) => {
                tracker.cancel();
                return ResponseFuture::new(self.inner.call(req), None);
            }
            Some(m) => {
                tracker.set_route(m);
                None
            }
            // gRPC methods are a closed set: the path is the method (`/pkg.Service/Method`).
            None if grpc => Some(RouteSlot::with(req.uri().path())),
            // Outside the router: `RouteLayer` inside it fills this slot when a route matches.
            None => {
                let slot = RouteSlot::default();
                req.extensions_mut().insert(slot.clone());
                Some(slot)
            }
        };
        let guard = Guard::new(tracker, route, grpc);
        ResponseFuture::new(self.inner.call(req), Some(guard))
    }
}
