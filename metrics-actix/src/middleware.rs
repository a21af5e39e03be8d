//! [`Metrics`] (the `Transform`), [`MetricsMiddleware`] and [`MetricsResponse`].

use std::future::{Future, Ready, ready};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use pin_project_lite::pin_project;
use shmetrics_core::Store;
use shmetrics_core::http::{HttpMetrics, RequestTracker};

use crate::body::MetricsBody;

/// Middleware factory recording `http_requests_total`, `http_request_duration_seconds`
/// and `http_requests_in_flight`. Register it with `App::wrap`; clone it into each
/// worker's `App` (the store is shared).
///
/// Options (prefix, constant labels, buckets, which labels, status classes, excluded
/// paths) are set on [`HttpMetrics::builder`] and passed to [`Metrics::from_metrics`].
#[derive(Clone, Debug)]
pub struct Metrics {
    metrics: HttpMetrics,
}

impl Metrics {
    /// Middleware with the default names and labels, recording into `store`.
    pub fn new(store: &Store) -> shmetrics_core::Result<Self> {
        Ok(Metrics::from_metrics(HttpMetrics::new(store)?))
    }

    /// Middleware recording into `metrics`.
    pub fn from_metrics(metrics: HttpMetrics) -> Self {
        Metrics { metrics }
    }

    /// The metrics this middleware records into.
    pub fn metrics(&self) -> &HttpMetrics {
        &self.metrics
    }
}

impl<S, B> Transform<S, ServiceRequest> for Metrics
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<MetricsBody<B>>;
    type Error = Error;
    type Transform = MetricsMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(MetricsMiddleware {
            service,
            metrics: self.metrics.clone(),
        }))
    }
}

/// The middleware service of [`Metrics`].
#[derive(Debug)]
pub struct MetricsMiddleware<S> {
    service: S,
    metrics: HttpMetrics,
}

impl<S, B> Service<ServiceRequest> for MetricsMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<MetricsBody<B>>;
    type Error = Error;
    type Future = MetricsResponse<S, B>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        if self.metrics.excluded(req.path()) {
            return MetricsResponse::new(self.service.call(req), None);
        }
        // The resource map knows the route before routing runs, so a request dropped in
        // its handler still gets its template.
        let pattern = req.match_pattern();
        if pattern.as_deref().is_some_and(|p| self.metrics.excluded(p)) {
            return MetricsResponse::new(self.service.call(req), None);
        }
        let mut tracker = self.metrics.start(req.method().as_str());
        if let Some(p) = pattern {
            tracker.set_route(p);
        }
        MetricsResponse::new(self.service.call(req), Some(tracker))
    }
}

pin_project! {
    /// Response future of [`MetricsMiddleware`]. Dropped before the response (client
    /// gone): the request is recorded with status 499.
    pub struct MetricsResponse<S, B>
    where
        S: Service<ServiceRequest>,
    {
        #[pin]
        fut: S::Future,
        tracker: Option<RequestTracker>,
        _body: PhantomData<B>,
    }
}

impl<S, B> MetricsResponse<S, B>
where
    S: Service<ServiceRequest>,
{
    fn new(fut: S::Future, tracker: Option<RequestTracker>) -> Self {
        MetricsResponse {
            fut,
            tracker,
            _body: PhantomData,
        }
    }
}

impl<S, B> std::fmt::Debug for MetricsResponse<S, B>
where
    S: Service<ServiceRequest>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsResponse")
            .field("tracker", &self.tracker)
            .finish()
    }
}

impl<S, B> Future for MetricsResponse<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Output = Result<ServiceResponse<MetricsBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match std::task::ready!(this.fut.poll(cx)) {
            Ok(res) => res,
            Err(err) => {
                if let Some(mut t) = this.tracker.take() {
                    t.set_status(err.as_response_error().status_code().as_u16());
                    t.finish();
                }
                return Poll::Ready(Err(err));
            }
        };
        let mut tracker = this.tracker.take();
        if let Some(t) = &mut tracker {
            t.set_status(res.status().as_u16());
        }
        Poll::Ready(Ok(res.map_body(move |_, body| MetricsBody::new(body, tracker))))
    }
}
