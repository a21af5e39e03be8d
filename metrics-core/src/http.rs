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

use quanta::Clock;
use std::io::Write;
use std::sync::{Arc, LazyLock};

use prometheus_client::registry::Registry;
use subtle::ConstantTimeEq;

use crate::Opts;
use crate::error::{Error, Result};
use crate::family::Family;
use crate::format::GaugeMode;
use crate::metrics::{Counter, Gauge, Histogram};
use crate::names::DEFAULT_BUCKETS;
use crate::store::{CONTENT_TYPE, Store};

/// `path` label value of requests that no route matched.
pub const UNMATCHED: &str = "unmatched";
/// `method` label value of methods outside the standard set.
pub const OTHER_METHOD: &str = "OTHER";
/// Status recorded for a request whose response never completed its head (the client went
/// away and the server dropped the request): 499, as nginx logs it.
pub const DROPPED_STATUS: u16 = 499;
/// Most constant labels per layer.
pub const MAX_CONST_LABELS: usize = 16;

/// `method` label values: the standard methods (RFC 9110 and PATCH), then `OTHER`.
const METHODS: [&str; 10] = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    OTHER_METHOD,
];

fn method_index(method: &str) -> u8 {
    METHODS[..9].iter().position(|m| *m == method).unwrap_or(9) as u8
}

/// The `method` label of a request method: itself if standard (RFC 9110 and PATCH),
/// [`OTHER_METHOD`] otherwise.
pub fn method_label(method: &str) -> &'static str {
    METHODS[usize::from(method_index(method))]
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
                cache: RouteCache::new(),
                const_values,
                method: self.method,
                path: self.path,
                status: self.status,
                status_class: self.status_class,
                exclude: self.exclude,
                unmatched: self.unmatched.into(),
                clock: Clock::new(),
            }),
        })
    }
}

/// Request metrics of one store: the three families and the options. Cheap to clone.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    inner: Arc<Inner>,
}

/// Slots of the route cache (direct-mapped).
const ROUTE_CACHE_SLOTS: usize = 512;
/// Statuses one route entry keeps counters for (others use the family directly).
const ENTRY_STATUSES: usize = 16;
/// `StatusSlot::key` states: empty, being filled, filled (low 16 bits: the status).
const SLOT_EMPTY: u32 = 0;
const SLOT_PENDING: u32 = 1 << 16;
const SLOT_READY: u32 = 2 << 16;

/// One status's request counter in a route entry, filled once.
#[derive(Debug)]
struct StatusSlot {
    key: std::sync::atomic::AtomicU32,
    counter: std::sync::atomic::AtomicPtr<Counter>,
}

/// Handles of one (route, method): resolved once, reused by every request of the route.
#[derive(Debug)]
struct RouteEntry {
    route: Box<str>,
    method: u8,
    duration: Histogram,
    statuses: [StatusSlot; ENTRY_STATUSES],
}

impl RouteEntry {
    /// The request counter for `status`, resolving (and keeping) it on first use.
    #[inline]
    fn counter(&self, m: &Inner, status: u16) -> Option<&Counter> {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
        for slot in &self.statuses {
            let key = slot.key.load(Acquire);
            if key == SLOT_READY | u32::from(status) {
                // SAFETY: READY is stored (Release) after the pointer, which points to a
                // counter owned by this entry until the entry is dropped, and the entry
                // outlives `&self`.
                return Some(unsafe { &*slot.counter.load(Acquire) });
            }
            if key == SLOT_EMPTY {
                if slot
                    .key
                    .compare_exchange(SLOT_EMPTY, SLOT_PENDING | u32::from(status), AcqRel, Acquire)
                    .is_err()
                {
                    return None; // another thread is filling it: use the family this time
                }
                let c = m.request_counter(self.method, &self.route, status).clone();
                slot.counter.store(Box::into_raw(Box::new(c)), Release);
                slot.key.store(SLOT_READY | u32::from(status), Release);
                // SAFETY: just published; owned by this entry until it is dropped.
                return Some(unsafe { &*slot.counter.load(Acquire) });
            }
        }
        None
    }
}

impl Drop for RouteEntry {
    fn drop(&mut self) {
        for slot in &mut self.statuses {
            let p = *slot.counter.get_mut();
            if !p.is_null() {
                // SAFETY: allocated by `counter` with `Box::into_raw`, freed once, here.
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }
}

/// Reuses the label handles of known routes ("label handles for known routes are
/// reused"): a request of a route seen before costs one short hash and one compare of
/// its template instead of two family lookups. A slot is filled once and never replaced
/// (entries are freed with the metrics), so readers take no lock; a route that collides
/// with a filled slot uses the families directly.
struct RouteCache {
    slots: Box<[std::sync::atomic::AtomicPtr<RouteEntry>]>,
    hasher: foldhash::fast::RandomState,
}

impl RouteCache {
    fn new() -> Self {
        RouteCache {
            slots: (0..ROUTE_CACHE_SLOTS)
                .map(|_| std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The entry of (route, method), created on first use; `None` if its slot holds
    /// another route.
    #[inline]
    fn entry(&self, m: &Inner, route: &str, method: u8) -> Option<*const RouteEntry> {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        let mut h = self.hasher.build_hasher();
        h.write(route.as_bytes());
        h.write_u8(method);
        let slot = &self.slots[h.finish() as usize & (ROUTE_CACHE_SLOTS - 1)];
        let p = slot.load(Acquire);
        if !p.is_null() {
            // SAFETY: non-null slots hold entries published (Release) fully built and
            // never freed before the cache is dropped, which cannot happen while `&self`
            // is borrowed.
            let e = unsafe { &*p };
            return (e.method == method && *e.route == *route).then_some(p.cast_const());
        }
        let entry = Box::into_raw(Box::new(RouteEntry {
            route: route.into(),
            method,
            duration: m.duration_histogram(method, route).clone(),
            statuses: std::array::from_fn(|_| StatusSlot {
                key: std::sync::atomic::AtomicU32::new(SLOT_EMPTY),
                counter: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
            }),
        }));
        match slot.compare_exchange(std::ptr::null_mut(), entry, AcqRel, Acquire) {
            Ok(_) => Some(entry.cast_const()),
            Err(other) => {
                // SAFETY: `entry` was never published; this is its only owner.
                drop(unsafe { Box::from_raw(entry) });
                // SAFETY: as above, for the entry another thread published.
                let e = unsafe { &*other };
                (e.method == method && *e.route == *route).then_some(other.cast_const())
            }
        }
    }
}

impl Drop for RouteCache {
    fn drop(&mut self) {
        for s in self.slots.iter() {
            let p = s.swap(std::ptr::null_mut(), std::sync::atomic::Ordering::AcqRel);
            if !p.is_null() {
                // SAFETY: allocated by `entry` with `Box::into_raw`, published once, and
                // freed once, here, with exclusive access (`&mut self`).
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }
}

impl std::fmt::Debug for RouteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used = self
            .slots
            .iter()
            .filter(|s| !s.load(std::sync::atomic::Ordering::Relaxed).is_null())
            .count();
        f.debug_struct("RouteCache").field("used", &used).finish()
    }
}

#[derive(Debug)]
struct Inner {
    requests: Family<Counter>,
    duration: Family<Histogram>,
    in_flight: Gauge,
    cache: RouteCache,
    const_values: Vec<String>,
    method: bool,
    path: bool,
    status: bool,
    status_class: bool,
    exclude: Vec<String>,
    unmatched: Arc<str>,
    /// Request latency: raw TSC reads (no thread-local lookup, no scaling per read),
    /// converted once per request.
    clock: Clock,
}

impl Inner {
    /// Label values of a series: the enabled ones of (method, path, status), then the
    /// constant labels. Returns the buffer and the count.
    #[inline]
    fn labels<'a>(
        &'a self,
        method: u8,
        route: &'a str,
        status: Option<u16>,
    ) -> ([&'a str; 3 + MAX_CONST_LABELS], usize) {
        let mut buf: [&str; 3 + MAX_CONST_LABELS] = [""; 3 + MAX_CONST_LABELS];
        let mut n = 0;
        if self.method {
            buf[n] = METHODS[usize::from(method)];
            n += 1;
        }
        if self.path {
            buf[n] = route;
            n += 1;
        }
        if let (true, Some(code)) = (self.status, status) {
            buf[n] = status_label(code, self.status_class);
            n += 1;
        }
        for v in &self.const_values {
            buf[n] = v;
            n += 1;
        }
        (buf, n)
    }

    fn request_counter(&self, method: u8, route: &str, status: u16) -> &Counter {
        let (buf, n) = self.labels(method, route, Some(status));
        self.requests.labels(&buf[..n])
    }

    fn duration_histogram(&self, method: u8, route: &str) -> &Histogram {
        let (buf, n) = self.labels(method, route, None);
        self.duration.labels(&buf[..n])
    }
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
            started: self.inner.clock.raw(),
            entry: None,
            route: None,
            status: None,
            method: method_index(method),
            done: false,
        }
    }
}

/// One request being served. Records it when finished or dropped, whichever comes first.
///
/// Carry it into the response body, so that latency covers the body and a client that
/// goes away mid-response is still recorded; it is also the in-flight drop guard.
pub struct RequestTracker {
    metrics: Arc<Inner>,
    /// Raw reading of `metrics.clock` at the start.
    started: u64,
    /// The route's cached handles, once the route is known (owned by `metrics`).
    entry: Option<std::ptr::NonNull<RouteEntry>>,
    /// The route, when it had no cache entry.
    route: Option<Arc<str>>,
    status: Option<u16>,
    /// Index into `METHODS` (kept small: trackers travel inside futures and bodies).
    method: u8,
    done: bool,
}

// SAFETY: `entry` points into `metrics`' route cache, whose entries are shared, immutable
// but for atomics, and live as long as `metrics` (an `Arc` this tracker holds); every
// other field is `Send + Sync`.
unsafe impl Send for RequestTracker {}
// SAFETY: see `Send`.
unsafe impl Sync for RequestTracker {}

impl std::fmt::Debug for RequestTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTracker")
            .field("method", &METHODS[usize::from(self.method)])
            .field("route", &self.route_str())
            .field("status", &self.status)
            .field("elapsed", &self.elapsed())
            .finish()
    }
}

impl RequestTracker {
    /// The route template that matched (`/users/{id}`). Without one, the request is
    /// recorded as unmatched.
    #[inline]
    pub fn set_route(&mut self, route: &str) {
        match self.metrics.cache.entry(&self.metrics, route, self.method) {
            Some(e) => {
                self.entry = std::ptr::NonNull::new(e.cast_mut());
                self.route = None;
            }
            None => {
                self.entry = None;
                self.route = Some(route.into());
            }
        }
    }

    fn elapsed(&self) -> std::time::Duration {
        let clock = &self.metrics.clock;
        clock.delta(self.started, clock.raw())
    }

    /// Whether a route was set.
    pub fn has_route(&self) -> bool {
        self.entry.is_some() || self.route.is_some()
    }

    fn entry(&self) -> Option<&RouteEntry> {
        // SAFETY: entries live in `self.metrics`' route cache until it is dropped, and
        // `self` holds `self.metrics`.
        self.entry.map(|e| unsafe { e.as_ref() })
    }

    fn route_str(&self) -> Option<&str> {
        self.entry().map(|e| &*e.route).or(self.route.as_deref())
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

    /// Forgets the request without recording it (it turned out to be excluded); the
    /// in-flight gauge goes back down.
    pub fn cancel(mut self) {
        if !self.done {
            self.done = true;
            self.metrics.in_flight.dec();
        }
    }

    /// Records the request now.
    pub fn finish(mut self) {
        self.record(None);
    }

    /// Records the request now, with `route` (when it is `Some`) instead of the route set
    /// before: for adapters that learn the route late. Later calls, and the drop, do
    /// nothing.
    #[inline]
    pub fn record(&mut self, route: Option<&str>) {
        if self.done {
            return;
        }
        let elapsed = self.elapsed();
        if let Some(r) = route {
            self.set_route(r);
        }
        if self.entry.is_none() && self.route.is_none() {
            // No route: the one shared unmatched value, cached like a route.
            let unmatched = Arc::clone(&self.metrics.unmatched);
            self.set_route(&unmatched);
        }
        self.done = true;
        let m = &*self.metrics;
        let code = self.status.unwrap_or(DROPPED_STATUS);
        let route = self.route_str().unwrap_or(&m.unmatched);
        if !m.exclude.is_empty() && m.exclude.iter().any(|e| e == route) {
            // An excluded route, known only now (the layer sits outside the router).
            m.in_flight.dec();
            return;
        }
        let key = if m.status_class { code / 100 * 100 } else { code };
        match self.entry() {
            Some(e) => {
                match e.counter(m, key) {
                    Some(c) => c.inc(),
                    None => m.request_counter(self.method, route, code).inc(),
                }
                e.duration.observe_duration(elapsed);
            }
            None => {
                m.request_counter(self.method, route, code).inc();
                m.duration_histogram(self.method, route).observe_duration(elapsed);
            }
        }
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
/// `METRICS_AUTH_TOKEN` (if set and not empty, scrapers must send `Authorization: Bearer
/// <token>`, compared in constant time; 401 otherwise) and `ENABLE_METRICS` (a false
/// spelling such as `false`, `0`, `no`, `off`: 404), read by [`MetricsEndpoint::from_env`].
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
    ///
    /// Fails (refuse to start on it) when `ENABLE_METRICS` is neither a usual true nor a
    /// usual false spelling (see [`parse_enabled`]), or when the token, once the
    /// whitespace around it is trimmed (a newline left by `echo` into an env file), holds
    /// characters a scraper cannot send in a header.
    pub fn from_env(store: &Store) -> Result<Self> {
        let enabled = match std::env::var(ENV_ENABLE) {
            Ok(v) => parse_enabled(&v).ok_or_else(|| Error::InvalidOption {
                name: ENV_ENABLE.into(),
                reason: format!(
                    "{v:?} is neither true (true, 1, yes, on, y, t, enable, enabled) nor false \
                     (false, 0, no, off, n, f, disable, disabled, none): set one of them"
                ),
            })?,
            Err(_) => true,
        };
        let token = match std::env::var(ENV_AUTH_TOKEN) {
            Ok(t) => {
                let t = t.trim();
                if t.bytes().any(|b| !b.is_ascii_graphic()) {
                    return Err(Error::InvalidOption {
                        name: ENV_AUTH_TOKEN.into(),
                        reason: "the token holds spaces or characters that are not printable ASCII: \
                                 a scraper cannot send it in an Authorization header; use e.g. \
                                 `openssl rand -hex 32`"
                            .into(),
                    });
                }
                Some(t.to_string())
            }
            Err(_) => None,
        };
        Ok(MetricsEndpoint::new(store).bearer_token(token).enabled(enabled))
    }

    /// Requires `Authorization: Bearer <token>` (`None` or empty: no token). Whitespace
    /// around the token is trimmed.
    pub fn bearer_token(mut self, token: Option<impl Into<String>>) -> Self {
        self.token = token
            .map(Into::into)
            .map(|t| t.trim().to_string())
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
        let body = match self.store.snapshot().and_then(|s| s.encode(registry)) {
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

/// An `ENABLE_METRICS` value: `Some(true)` for `true`, `1`, `yes`, `on`, `y`, `t`,
/// `enable`, `enabled` (and an empty value, as if unset), `Some(false)` for `false`, `0`,
/// `no`, `off`, `n`, `f`, `disable`, `disabled`, `none`, `0.0`, in any case and with
/// spaces around; `None` for anything else (refuse to start rather than guess).
pub fn parse_enabled(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "true" | "1" | "yes" | "on" | "y" | "t" | "enable" | "enabled" | "1.0" => Some(true),
        "false" | "0" | "no" | "off" | "n" | "f" | "disable" | "disabled" | "none" | "0.0" => Some(false),
        _ => None,
    }
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
        // Parameter names are case-insensitive (`Q=0` is `q=0`).
        let q_zero = it.any(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            name.trim().eq_ignore_ascii_case("q") && value.trim().parse::<f32>().is_ok_and(|q| q == 0.0)
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
        assert!(!accepts_gzip(Some(b"gzip;Q=0")));
        assert!(!accepts_gzip(Some(b"gzip; Q = 0.0")));
        assert!(accepts_gzip(Some(b"gzip;Q=1")));
        assert!(!accepts_gzip(Some(b"identity")));
        assert!(!accepts_gzip(None));
    }

    #[test]
    fn enable_values() {
        for off in [
            "false", "0", "no", "OFF", " False ", "disabled", "disable", "n", "none", "f", "0.0",
        ] {
            assert_eq!(parse_enabled(off), Some(false), "{off}");
        }
        for on in ["true", "1", "yes", "", "on", "Enabled", "y", "T"] {
            assert_eq!(parse_enabled(on), Some(true), "{on}");
        }
        for unknown in ["maybe", "2", "falsy", "nope"] {
            assert_eq!(parse_enabled(unknown), None, "{unknown}");
        }
    }
}
