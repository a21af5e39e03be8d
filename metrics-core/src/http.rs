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
//!
//! ```
//! use shmetrics_core::{Store, http::HttpMetrics};
//! # let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path())?;
//! let metrics = HttpMetrics::builder(&store).exclude("/metrics").build()?;
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

use std::io::Write;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use prometheus_client::registry::Registry;
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};
use crate::family::Family;
use crate::format::GaugeMode;
use crate::metrics::{Counter, Gauge, Histogram};
use crate::names::DEFAULT_BUCKETS;
use crate::store::{CONTENT_TYPE, Store};
use crate::{Opts, encode};

/// `path` label value of requests that no route matched.
pub const UNMATCHED: &str = "unmatched";
/// `method` label value of methods outside the standard set.
pub const OTHER_METHOD: &str = "OTHER";
/// Status recorded for a request whose response never completed its head (the client went
/// away and the server dropped the request): 499, as nginx logs it.
pub const DROPPED_STATUS: u16 = 499;
/// Most constant labels per layer.
pub const MAX_CONST_LABELS: usize = 16;

/// The standard methods (RFC 9110 and PATCH); others are recorded as [`OTHER_METHOD`].
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => OTHER_METHOD,
    }
}

static CODES: LazyLock<Box<[Box<str>]>> = LazyLock::new(|| (0..1000).map(|c| c.to_string().into()).collect());
const CLASSES: [&str; 10] = [
    "0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx",
];

/// The `status` label of a status code: `"404"`, or its class `"4xx"`.
pub fn status_label(code: u16, class: bool) -> &'static str {
    let code = usize::from(code.min(999));
    if class { CLASSES[code / 100] } else { &CODES[code] }
}

/// Which labels the request metrics carry and how (see [`HttpMetrics::builder`]).
#[derive(Clone, Debug)]
pub struct HttpMetricsBuilder {
    store: Store,
    prefix: Option<String>,
    const_labels: Vec<(String, String)>,
    buckets: Vec<f64>,
    method: bool,
    path: bool,
    status: bool,
    status_class: bool,
    exclude: Vec<String>,
    unmatched: String,
    series_limit: Option<usize>,
}

impl HttpMetricsBuilder {
    /// Prefixes the three names: `<prefix>_http_requests_total`, ...
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Adds a label with a fixed value to every series (e.g. `("service", "ckms")`).
    pub fn const_label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.const_labels.push((name.into(), value.into()));
        self
    }

    /// Latency buckets in seconds (default: Prometheus' 0.005 ... 10).
    pub fn buckets(mut self, buckets: impl Into<Vec<f64>>) -> Self {
        self.buckets = buckets.into();
        self
    }

    /// Whether series carry the `method` label (default `true`).
    pub fn method_label(mut self, on: bool) -> Self {
        self.method = on;
        self
    }

    /// Whether series carry the `path` label (default `true`).
    pub fn path_label(mut self, on: bool) -> Self {
        self.path = on;
        self
    }

    /// Whether `http_requests_total` carries the `status` label (default `true`).
    pub fn status_label(mut self, on: bool) -> Self {
        self.status = on;
        self
    }

    /// Records the status class (`2xx`) instead of the code (default `false`).
    pub fn status_class(mut self, on: bool) -> Self {
        self.status_class = on;
        self
    }

    /// Does not record requests to this path (raw path or route template), e.g.
    /// `/metrics` or `/health`.
    pub fn exclude(mut self, path: impl Into<String>) -> Self {
        self.exclude.push(path.into());
        self
    }

    /// The `path` value of requests no route matched (default [`UNMATCHED`]).
    pub fn unmatched_path(mut self, value: impl Into<String>) -> Self {
        self.unmatched = value.into();
        self
    }

    /// Series limit of the request families (default: the store's).
    pub fn series_limit(mut self, limit: usize) -> Self {
        self.series_limit = Some(limit);
        self
    }

    /// Declares the three families in the store (or finds them, if this process declared
    /// them identically already: building the layer twice is fine).
    pub fn build(self) -> Result<HttpMetrics> {
        if self.const_labels.len() > MAX_CONST_LABELS {
            return Err(Error::InvalidOption {
                name: "const_labels".into(),
                reason: format!("at most {MAX_CONST_LABELS} constant labels"),
            });
        }
        let name = |base: &str| match &self.prefix {
            Some(p) => format!("{p}_{base}"),
            None => base.to_string(),
        };
        let const_names: Vec<&str> = self.const_labels.iter().map(|(n, _)| n.as_str()).collect();
        let mut request_labels = Vec::new();
        let mut duration_labels = Vec::new();
        if self.method {
            request_labels.push("method");
            duration_labels.push("method");
        }
        if self.path {
            request_labels.push("path");
            duration_labels.push("path");
        }
        if self.status {
            request_labels.push("status");
        }
        request_labels.extend(&const_names);
        duration_labels.extend(&const_names);
        let limit = |o: Opts| match self.series_limit {
            Some(l) => o.series_limit(l),
            None => o,
        };
        let requests = self.store.register::<Counter>(limit(
            Opts::new(
                name("http_requests"),
                "HTTP requests, by method, route template and status.",
            )
            .label_names(request_labels),
        ))?;
        let duration = self.store.register::<Histogram>(limit(
            Opts::new(
                name("http_request_duration_seconds"),
                "HTTP request latency in seconds, until the response body was sent, by method and route template.",
            )
            .label_names(duration_labels)
            .buckets(self.buckets.clone()),
        ))?;
        let in_flight_family = self.store.register::<Gauge>(
            Opts::new(name("http_requests_in_flight"), "HTTP requests being served.")
                .label_names(const_names.iter().copied())
                .mode(GaugeMode::LiveSum),
        )?;
        let const_values: Vec<String> = self.const_labels.iter().map(|(_, v)| v.clone()).collect();
        let values: Vec<&str> = const_values.iter().map(String::as_str).collect();
        let in_flight = in_flight_family.labels(&values).clone();
        Ok(HttpMetrics {
            inner: Arc::new(Inner {
                requests,
                duration,
                in_flight,
                const_values,
                method: self.method,
                path: self.path,
                status: self.status,
                status_class: self.status_class,
                exclude: self.exclude,
                unmatched: self.unmatched.into(),
            }),
        })
    }
}

/// Request metrics of one store: the three families and the options. Cheap to clone.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    requests: Family<Counter>,
    duration: Family<Histogram>,
    in_flight: Gauge,
    const_values: Vec<String>,
    method: bool,
    path: bool,
    status: bool,
    status_class: bool,
    exclude: Vec<String>,
    unmatched: Arc<str>,
}

impl HttpMetrics {
    /// Options for request metrics in `store`.
    pub fn builder(store: &Store) -> HttpMetricsBuilder {
        HttpMetricsBuilder {
            store: store.clone(),
            prefix: None,
            const_labels: Vec::new(),
            buckets: DEFAULT_BUCKETS.to_vec(),
            method: true,
            path: true,
            status: true,
            status_class: false,
            exclude: Vec::new(),
            unmatched: UNMATCHED.into(),
            series_limit: None,
        }
    }

    /// Request metrics with the default names and labels.
    pub fn new(store: &Store) -> Result<Self> {
        HttpMetrics::builder(store).build()
    }

    /// Whether requests to `path` (raw path or route template) are not recorded.
    #[inline]
    pub fn excluded(&self, path: &str) -> bool {
        self.inner.exclude.iter().any(|e| e == path)
    }

    /// Starts tracking a request: counts it in flight until the tracker is finished or
    /// dropped, when the request is recorded.
    #[inline]
    pub fn start(&self, method: &str) -> RequestTracker {
        self.inner.in_flight.inc();
        RequestTracker {
            metrics: Arc::clone(&self.inner),
            method: method_label(method),
            route: None,
            status: None,
            started: Instant::now(),
            done: false,
        }
    }
}

/// One request being served. Records it when finished or dropped, whichever comes first.
///
/// Carry it into the response body, so that latency covers the body and a client that
/// goes away mid-response is still recorded; it is also the in-flight drop guard.
#[derive(Debug)]
pub struct RequestTracker {
    metrics: Arc<Inner>,
    method: &'static str,
    route: Option<Arc<str>>,
    status: Option<u16>,
    started: Instant,
    done: bool,
}

impl RequestTracker {
    /// The route template that matched (`/users/{id}`). Without one, the request is
    /// recorded as unmatched.
    #[inline]
    pub fn set_route(&mut self, route: impl Into<Arc<str>>) {
        self.route = Some(route.into());
    }

    /// Whether a route was set.
    pub fn has_route(&self) -> bool {
        self.route.is_some()
    }

    /// The response status (HTTP status, or gRPC status code for gRPC).
    #[inline]
    pub fn set_status(&mut self, status: u16) {
        self.status = Some(status);
    }

    /// The status set so far.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// Records the request now.
    pub fn finish(mut self) {
        self.record(None);
    }

    /// Records the request now, with `route` (when it is `Some`) instead of the route set
    /// before. Adapters that keep the route in their own form (axum's `MatchedPath`) use
    /// it to avoid a copy per request. Later calls, and the drop, do nothing.
    #[inline]
    pub fn record(&mut self, route: Option<&str>) {
        if self.done {
            return;
        }
        self.done = true;
        let m = &*self.metrics;
        let elapsed = self.started.elapsed();
        let route: &str = route.or(self.route.as_deref()).unwrap_or(&m.unmatched);
        if m.exclude.iter().any(|e| e == route) {
            // An excluded route, known only now (the layer sits outside the router).
            m.in_flight.dec();
            return;
        }
        let status = status_label(self.status.unwrap_or(DROPPED_STATUS), m.status_class);
        let mut buf: [&str; 3 + MAX_CONST_LABELS] = [""; 3 + MAX_CONST_LABELS];
        let mut n = 0;
        if m.method {
            buf[n] = self.method;
            n += 1;
        }
        if m.path {
            buf[n] = route;
            n += 1;
        }
        let duration_prefix = n;
        if m.status {
            buf[n] = status;
            n += 1;
        }
        for v in &m.const_values {
            buf[n] = v;
            n += 1;
        }
        m.requests.labels(&buf[..n]).inc();
        // The duration labels: the same without status.
        if m.status {
            buf.copy_within(duration_prefix + 1..n, duration_prefix);
            n -= 1;
        }
        m.duration.labels(&buf[..n]).observe_duration(elapsed);
        m.in_flight.dec();
    }
}

impl Drop for RequestTracker {
    fn drop(&mut self) {
        self.record(None);
    }
}

/// The `/metrics` endpoint, independent of the web framework: bearer-token check, on/off
/// switch, a fresh registry per scrape, OpenMetrics text, optional gzip.
///
/// As the seed's production guide: `METRICS_AUTH_TOKEN` (if set and not empty, scrapers
/// must send `Authorization: Bearer <token>`, compared in constant time; 401 otherwise)
/// and `ENABLE_METRICS` (`false`, `0`, `no` or `off`: 404).
#[derive(Clone)]
pub struct MetricsEndpoint {
    store: Store,
    token: Option<Arc<[u8]>>,
    enabled: bool,
    gzip: bool,
    extra: Option<RegistryFn>,
}

/// Registers the caller's own metrics in a scrape's registry.
type RegistryFn = Arc<dyn Fn(&mut Registry) + Send + Sync>;

/// What the endpoint answers; adapters turn it into their response type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointResponse {
    /// HTTP status.
    pub status: u16,
    /// Headers to send.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// The variable holding the scrape token.
pub const ENV_AUTH_TOKEN: &str = "METRICS_AUTH_TOKEN";
/// The variable switching the endpoint off.
pub const ENV_ENABLE: &str = "ENABLE_METRICS";

impl MetricsEndpoint {
    /// An open, enabled endpoint for `store`, with gzip when the scraper accepts it.
    pub fn new(store: &Store) -> Self {
        MetricsEndpoint {
            store: store.clone(),
            token: None,
            enabled: true,
            gzip: true,
            extra: None,
        }
    }

    /// An endpoint configured from `METRICS_AUTH_TOKEN` and `ENABLE_METRICS`.
    pub fn from_env(store: &Store) -> Self {
        let token = std::env::var(ENV_AUTH_TOKEN).ok();
        let enabled = std::env::var(ENV_ENABLE).ok();
        MetricsEndpoint::new(store)
            .bearer_token(token)
            .enabled(enabled.as_deref().is_none_or(parse_enabled))
    }

    /// Requires `Authorization: Bearer <token>` (`None` or empty: no token).
    pub fn bearer_token(mut self, token: Option<impl Into<String>>) -> Self {
        self.token = token
            .map(Into::into)
            .filter(|t| !t.is_empty())
            .map(|t| Arc::from(t.into_bytes().into_boxed_slice()));
        self
    }

    /// Switches the endpoint on or off (off: 404).
    pub fn enabled(mut self, on: bool) -> Self {
        self.enabled = on;
        self
    }

    /// Whether to gzip the body when the scraper sends `Accept-Encoding: gzip`.
    pub fn gzip(mut self, on: bool) -> Self {
        self.gzip = on;
        self
    }

    /// Registers the caller's own metrics in each scrape's fresh registry (a build-info
    /// gauge, process metrics...).
    pub fn registry(mut self, f: impl Fn(&mut Registry) + Send + Sync + 'static) -> Self {
        self.extra = Some(Arc::new(f));
        self
    }

    /// Whether the endpoint is switched on.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Whether a token is required.
    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    /// The answer to a request with these `Authorization` and `Accept-Encoding` header
    /// values.
    pub fn respond(&self, authorization: Option<&[u8]>, accept_encoding: Option<&[u8]>) -> EndpointResponse {
        let text = |status: u16, body: &str| EndpointResponse {
            status,
            headers: vec![("content-type", "text/plain; charset=utf-8".into())],
            body: body.as_bytes().to_vec(),
        };
        if !self.enabled {
            return text(404, "metrics are disabled (ENABLE_METRICS)\n");
        }
        if let Some(token) = &self.token {
            if !bearer_matches(authorization, token) {
                let mut r = text(401, "a valid bearer token is required\n");
                r.headers
                    .push(("www-authenticate", "Bearer realm=\"metrics\"".into()));
                return r;
            }
        }
        let mut registry = Registry::default();
        if let Some(f) = &self.extra {
            f(&mut registry);
        }
        let body = match self
            .store
            .scrape_into(&mut registry)
            .and_then(|()| encode(&registry))
        {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("scrape failed: {e}");
                return text(500, &format!("scrape failed: {e}\n"));
            }
        };
        let mut headers = vec![("content-type", CONTENT_TYPE.to_string())];
        if self.gzip && accepts_gzip(accept_encoding) {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            if enc.write_all(body.as_bytes()).is_ok() {
                if let Ok(gz) = enc.finish() {
                    headers.push(("content-encoding", "gzip".into()));
                    headers.push(("vary", "accept-encoding".into()));
                    return EndpointResponse {
                        status: 200,
                        headers,
                        body: gz,
                    };
                }
            }
        }
        EndpointResponse {
            status: 200,
            headers,
            body: body.into_bytes(),
        }
    }
}

impl std::fmt::Debug for MetricsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsEndpoint")
            .field("store", &self.store)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("enabled", &self.enabled)
            .field("gzip", &self.gzip)
            .finish()
    }
}

/// `ENABLE_METRICS` values that switch the endpoint off: `false`, `0`, `no`, `off`.
pub fn parse_enabled(v: &str) -> bool {
    !matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "false" | "0" | "no" | "off"
    )
}

/// Whether `Authorization` carries `Bearer <token>`; the token is compared in constant
/// time (only its length may show in timing).
fn bearer_matches(authorization: Option<&[u8]>, token: &[u8]) -> bool {
    let Some(h) = authorization else { return false };
    let h = h.trim_ascii();
    if h.len() < 7 || !h[..7].eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let given = h[7..].trim_ascii();
    bool::from(given.ct_eq(token))
}

fn accepts_gzip(accept: Option<&[u8]>) -> bool {
    let Some(a) = accept else { return false };
    let Ok(a) = std::str::from_utf8(a) else {
        return false;
    };
    a.split(',').any(|part| {
        let mut it = part.split(';');
        let coding = it.next().unwrap_or("").trim();
        let q_zero = it.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
        });
        coding.eq_ignore_ascii_case("gzip") && !q_zero
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("get"), OTHER_METHOD);
        assert_eq!(method_label("PROPFIND"), OTHER_METHOD);
        assert_eq!(status_label(404, false), "404");
        assert_eq!(status_label(404, true), "4xx");
        assert_eq!(status_label(0, false), "0");
        assert_eq!(status_label(65535, false), "999");
    }

    #[test]
    fn bearer() {
        assert!(bearer_matches(Some(b"Bearer s3cret"), b"s3cret"));
        assert!(bearer_matches(Some(b"bearer   s3cret "), b"s3cret"));
        assert!(!bearer_matches(Some(b"Bearer s3cre"), b"s3cret"));
        assert!(!bearer_matches(Some(b"Basic s3cret"), b"s3cret"));
        assert!(!bearer_matches(Some(b"s3cret"), b"s3cret"));
        assert!(!bearer_matches(None, b"s3cret"));
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(Some(b"gzip")));
        assert!(accepts_gzip(Some(b"deflate, GZIP;q=0.5")));
        assert!(!accepts_gzip(Some(b"gzip;q=0")));
        assert!(!accepts_gzip(Some(b"identity")));
        assert!(!accepts_gzip(None));
    }

    #[test]
    fn enable_values() {
        for off in ["false", "0", "no", "OFF", " False "] {
            assert!(!parse_enabled(off), "{off}");
        }
        for on in ["true", "1", "yes", ""] {
            assert!(parse_enabled(on), "{on}");
        }
    }
}
