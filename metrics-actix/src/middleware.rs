//! [`Metrics`] (the `Transform`), [`MetricsMiddleware`] and [`MetricsResponse`].

use std::future::{Future, Ready, ready};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::cell::RefCell;
use std::rc::Rc;

use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::Method;
use actix_web::http::uri::PathAndQuery;
use actix_web::{Error, HttpRequest};
use futures_util::future::{Either, LocalBoxFuture};
use pin_project_lite::pin_project;
use shmetrics_core::Store;
use shmetrics_core::http::{HttpMetrics, METRICS_PATH, MetricsEndpoint, RequestHeaders, RequestTracker};

use crate::body::MetricsBody;
use crate::endpoint::answer;

/// Middleware factory recording `http_requests_total`, `http_request_duration_seconds`
/// and `http_requests_in_flight`. Register it with `App::wrap`; clone it into each
/// worker's `App` (the store is shared).
///
/// Requests to `/metrics` (the scrape endpoint) are not recorded. Options (prefix,
/// constant labels, buckets, which labels, status classes, excluded paths, the endpoint's
/// path) are set on [`HttpMetrics::builder`] and passed to [`Metrics::from_metrics`].
/// [`Metrics::with_endpoint`] also answers the scrapes itself.
#[derive(Clone, Debug)]
pub struct Metrics {
    metrics: HttpMetrics,
    endpoint: Option<Endpoint>,
}

/// The scrape endpoint a [`Metrics`] serves itself.
#[derive(Clone, Debug)]
struct Endpoint {
    path: Arc<str>,
    endpoint: MetricsEndpoint,
}

impl Metrics {
    /// Middleware with the default names and labels, recording into `store`.
    pub fn new(store: &Store) -> shmetrics_core::Result<Self> {
        Ok(Metrics::from_metrics(HttpMetrics::new(store)?))
    }

    /// Everything an actix-web app needs, in one call: middleware that records every
    /// request (default names and labels) and answers `GET /metrics` (and `HEAD`) itself
    /// with [`MetricsEndpoint::from_env`] (`METRICS_AUTH_TOKEN`, `ENABLE_METRICS`); scrapes
    /// are not recorded.
    ///
    /// ```
    /// use actix_web::{App, web};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = shmetrics_actix::Store::open(dir.path())?;
    /// let metrics = shmetrics_actix::Metrics::with_endpoint(&store)?;
    /// let app = App::new()
    ///     .wrap(metrics.clone())
    ///     .route("/users/{id}", web::get().to(|| async { "user" }));
    /// # let _ = app;
    /// # Ok::<(), shmetrics_actix::Error>(())
    /// ```
    pub fn with_endpoint(store: &Store) -> shmetrics_core::Result<Self> {
        Metrics::with_endpoint_from(HttpMetrics::builder(store), MetricsEndpoint::from_env(store)?)
    }

    /// [`Metrics::with_endpoint`] with options: the metrics `builder` (its
    /// [`metrics_path`](shmetrics_core::http::HttpMetricsBuilder::metrics_path), `/metrics`
    /// by default, is where `endpoint` is served, and is not recorded).
    pub fn with_endpoint_from(
        builder: shmetrics_core::http::HttpMetricsBuilder,
        endpoint: MetricsEndpoint,
    ) -> shmetrics_core::Result<Self> {
        let path: Arc<str> = builder.endpoint_path().unwrap_or(METRICS_PATH).into();
        let mut m = Metrics::from_metrics(builder.build()?);
        m.endpoint = Some(Endpoint { path, endpoint });
        Ok(m)
    }

    /// Middleware recording into `metrics`.
    pub fn from_metrics(metrics: HttpMetrics) -> Self {
        Metrics {
            metrics,
            endpoint: None,
        }
    }

    /// The metrics this middleware records into.
    pub fn metrics(&self) -> &HttpMetrics {
        &self.metrics
    }
}

impl<S, B> Transform<S, ServiceRequest> for Metrics
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<MetricsBody<B>>>;
    type Error = Error;
    type Transform = MetricsMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(MetricsMiddleware {
            service,
            metrics: self.metrics.clone(),
            endpoint: self.endpoint.clone(),
            routed: Rc::new(RefCell::new(None)),
        }))
    }
}

/// The middleware service of [`Metrics`].
pub struct MetricsMiddleware<S> {
    service: S,
    metrics: HttpMetrics,
    endpoint: Option<Endpoint>,
    /// A request of this app that completed: its resource map resolves the route of a
    /// request dropped before its response (routing is done, but the request is gone).
    routed: Rc<RefCell<Option<HttpRequest>>>,
}

impl<S> std::fmt::Debug for MetricsMiddleware<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsMiddleware")
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl<S, B> Service<ServiceRequest> for MetricsMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<MetricsBody<B>>>;
    type Error = Error;
    type Future = MetricsResponse<S, B>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        if let Some(ep) = &self.endpoint {
            if req.path() == &*ep.path && (req.method() == Method::GET || req.method() == Method::HEAD) {
                return MetricsResponse::scrape(Box::pin(scrape(ep.endpoint.clone(), req)));
            }
        }
        self.record(req)
    }
}

/// Answers a scrape (the merge reads files, so it runs on the blocking pool).
async fn scrape<B>(
    endpoint: MetricsEndpoint,
    req: ServiceRequest,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    let res = answer(endpoint, req.headers()).await;
    Ok(req.into_response(res).map_into_right_body())
}

impl<S, B> MetricsMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    /// Calls the app, tracking the request.
    fn record(&self, req: ServiceRequest) -> MetricsResponse<S, B> {
        if self.metrics.excluded(req.path()) {
            return MetricsResponse::new(self.service.call(req), None, None);
        }
        let mut tracker = self.metrics.start(req.method().as_str());
        if let Some(id) = self.metrics.trace_id(&Headers(req.headers())) {
            tracker.set_trace_id(id);
        }
        // The route is read off the routed request when the response comes (no second
        // match). Until one request has completed there is no resource map to resolve a
        // request dropped before its response with, so the first ones match now.
        if self.routed.borrow().is_none() {
            if let Some(p) = req.match_pattern().map(|p| normalize_pattern(&p)) {
                if self.metrics.excluded(&p) {
                    tracker.cancel();
                    return MetricsResponse::new(self.service.call(req), None, None);
                }
                tracker.set_route(&p);
            }
        }
        let dropped = DropRoute {
            path: req.uri().path_and_query().cloned(),
            routed: Rc::clone(&self.routed),
        };
        MetricsResponse::new(self.service.call(req), Some(tracker), Some(dropped))
    }
}

/// A request's headers, as the exemplar sources read them.
struct Headers<'a>(&'a actix_web::http::header::HeaderMap);

/// The W3C trace context header.
const TRACEPARENT: actix_web::http::header::HeaderName =
    actix_web::http::header::HeaderName::from_static("traceparent");

/// Up to this many header names, `traceparent` is searched for name by name.
const SCAN_HEADERS: usize = 16;

impl RequestHeaders for Headers<'_> {
    #[inline]
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.get(name).map(|v| v.as_bytes())
    }

    #[inline]
    fn traceparent(&self) -> Option<&[u8]> {
        // As in shmetrics-tower: comparing a handful of header names with this one costs
        // less than hashing it for the map's lookup, which only a request that has it pays.
        if self.0.len_keys() <= SCAN_HEADERS && !self.0.keys().any(|k| *k == TRACEPARENT) {
            return None;
        }
        self.0.get(&TRACEPARENT).map(|v| v.as_bytes())
    }
}

/// What resolves the route of a request dropped before its response: its path (only
/// the path's part of the URI, which a server request's URI mostly is: a clone of the
/// buffer it points into, no copy) and a request of the same app that was routed.
struct DropRoute {
    path: Option<PathAndQuery>,
    routed: Rc<RefCell<Option<HttpRequest>>>,
}

/// A resource pattern as the router's segments give it: `{id:\d+}` becomes `{id}` and a
/// tail `{tail}*` becomes `{tail}` (so both ways of learning a route give one series).
fn normalize_pattern(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let mut depth = 0usize;
    let mut in_name = false;
    let mut chars = p.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    in_name = true;
                    out.push('{');
                }
            }
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    out.push('}');
                    in_name = false;
                    if chars.peek() == Some(&'*') {
                        chars.next();
                    }
                }
            }
            ':' if depth == 1 => in_name = false,
            c if depth == 0 || in_name => out.push(c),
            _ => {}
        }
    }
    out
}

/// The route template of a routed request, rebuilt from the segments the router captured
/// (`/users/42` with `id` = `42` gives `/users/{id}`); `None` if no resource matched.
fn routed_template(req: &HttpRequest, buf: &mut String) -> bool {
    let info = req.match_info();
    if !info.unprocessed().is_empty() {
        return false;
    }
    let path = info.as_str();
    buf.clear();
    let base = path.as_ptr() as usize;
    let mut at = 0;
    let mut segments: [(usize, usize, &str); 8] = [(0, 0, ""); 8];
    let mut n = 0;
    for (name, value) in info.iter() {
        let start = (value.as_ptr() as usize).wrapping_sub(base);
        // Only captured segments are slices of the path; static items are not.
        if start <= path.len() && start + value.len() <= path.len() && n < segments.len() {
            segments[n] = (start, start + value.len(), name);
            n += 1;
        }
    }
    let segments = &mut segments[..n];
    segments.sort_unstable_by_key(|s| s.0);
    for (start, end, name) in segments.iter() {
        if *start < at {
            continue;
        }
        buf.push_str(&path[at..*start]);
        buf.push('{');
        buf.push_str(name);
        buf.push('}');
        at = *end;
    }
    buf.push_str(&path[at..]);
    true
}

pin_project! {
    /// Response future of [`MetricsMiddleware`]. Dropped before the response (client
    /// gone): the request is recorded with status 499.
    pub struct MetricsResponse<S, B>
    where
        S: Service<ServiceRequest>,
    {
        // The app's response, or a scrape this middleware answers itself.
        #[pin]
        fut: Either<S::Future, Scrape<B>>,
        tracker: Option<RequestTracker>,
        dropped: Option<DropRoute>,
        _body: PhantomData<B>,
    }

    impl<S, B> PinnedDrop for MetricsResponse<S, B>
    where
        S: Service<ServiceRequest>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let (Some(t), Some(d)) = (this.tracker.as_mut(), this.dropped.as_ref()) {
                // Dropped before the response: resolve the route with an earlier request's
                // resource map (it is the same app's).
                if !t.has_route() {
                    if let Some(p) = d.routed.borrow().as_ref().and_then(|r| r.resource_map().match_pattern(d.path.as_ref().map_or("/", PathAndQuery::path))) {
                        t.set_route(&normalize_pattern(&p));
                    }
                }
            }
        }
    }
}

impl<S, B> MetricsResponse<S, B>
where
    S: Service<ServiceRequest>,
{
    fn new(fut: S::Future, tracker: Option<RequestTracker>, dropped: Option<DropRoute>) -> Self {
        MetricsResponse {
            fut: Either::Left(fut),
            tracker,
            dropped,
            _body: PhantomData,
        }
    }
}

impl<S, B> MetricsResponse<S, B>
where
    S: Service<ServiceRequest>,
{
    fn scrape(fut: Scrape<B>) -> Self {
        MetricsResponse {
            fut: Either::Right(fut),
            tracker: None,
            dropped: None,
            _body: PhantomData,
        }
    }
}

/// A scrape answered by the middleware.
type Scrape<B> = LocalBoxFuture<'static, Result<ServiceResponse<EitherBody<MetricsBody<B>>>, Error>>;

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
    type Output = Result<ServiceResponse<EitherBody<MetricsBody<B>>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let fut = match this.fut.as_pin_mut() {
            Either::Left(fut) => fut,
            Either::Right(scrape) => return scrape.poll(cx),
        };
        let res = match std::task::ready!(fut.poll(cx)) {
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
            if !t.has_route() {
                thread_local! {
                    static TEMPLATE: RefCell<String> = const { RefCell::new(String::new()) };
                }
                TEMPLATE.with_borrow_mut(|buf| {
                    if routed_template(res.request(), buf) {
                        t.set_route(buf);
                    }
                });
            }
            t.set_status(res.status().as_u16());
        }
        if let Some(d) = this.dropped.as_ref() {
            // The first completed request lends its resource map to dropped ones.
            if d.routed.borrow().is_none() {
                *d.routed.borrow_mut() = Some(res.request().clone());
            }
        }
        Poll::Ready(Ok(res.map_body(move |_, body| {
            EitherBody::left(MetricsBody::new(body, tracker))
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_pattern;

    #[test]
    fn patterns_normalize_to_segment_names() {
        for (p, want) in [
            ("/users/{id}", "/users/{id}"),
            (r"/orders/{id:\d+}", "/orders/{id}"),
            (r"/codes/{code:[A-Z]{3}}/x", "/codes/{code}/x"),
            ("/files/{tail}*", "/files/{tail}"),
            ("/files/{tail:.*}", "/files/{tail}"),
            ("/static", "/static"),
            ("/a/{x}/b/{y:[0-9]+}", "/a/{x}/b/{y}"),
        ] {
            assert_eq!(normalize_pattern(p), want, "{p}");
        }
    }
}
