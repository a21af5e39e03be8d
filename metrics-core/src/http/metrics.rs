//! [`HttpMetrics`]: the three request families of a store, and their options.

use std::sync::Arc;
use std::time::Duration;

use quanta::Clock;

use super::labels::{MAX_CONST_LABELS, METHODS, METRICS_PATH, UNMATCHED, status_label};
use super::routes::RouteCache;
use super::trace::{RequestHeaders, TraceSource};
use crate::error::{Error, Result};
use crate::family::Family;
use crate::family::counter::Counter;
use crate::family::gauge::Gauge;
use crate::family::histogram::Histogram;
use crate::format::GaugeMode;
use crate::format::desc::{NativeOpts, Opts};
use crate::format::names::DEFAULT_BUCKETS;
use crate::store::Store;

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
    metrics_path: Option<String>,
    unmatched: String,
    series_limit: Option<usize>,
    native: Option<NativeOpts>,
    classic: bool,
    trace: TraceSource,
    exemplar_interval: Duration,
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

    /// Gives the latency histogram native buckets too (off by default): a Prometheus
    /// started with `--enable-feature=native-histograms` scrapes them (protobuf); scrapers
    /// of the text formats keep getting the classic buckets, unless
    /// [`classic_buckets(false)`](HttpMetricsBuilder::classic_buckets) leaves those out.
    ///
    /// ```
    /// use shmetrics_core::{NativeOpts, http::HttpMetrics};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = shmetrics_core::Store::open(dir.path())?;
    /// let metrics = HttpMetrics::builder(&store).native(NativeOpts::default()).build()?;
    /// # let _ = metrics;
    /// # Ok::<(), shmetrics_core::Error>(())
    /// ```
    pub fn native(mut self, native: NativeOpts) -> Self {
        self.native = Some(native);
        self
    }

    /// Whether traced requests carry exemplars (default `true`): the trace id of the W3C
    /// `traceparent` header of a sampled trace, as `trace_id`, on the request counter and
    /// the latency bucket, at most once per bucket per
    /// [`exemplar_interval`](HttpMetricsBuilder::exemplar_interval) in each process.
    /// Requests without a trace cost one header lookup.
    pub fn exemplars(mut self, on: bool) -> Self {
        self.trace = if on {
            TraceSource::TraceParent
        } else {
            TraceSource::Off
        };
        self
    }

    /// Takes a request's trace id (16 bytes) from `f` instead of the `traceparent` header:
    /// e.g. from the current OpenTelemetry span's context. `None` (or all zeros): no
    /// exemplar.
    ///
    /// ```
    /// use shmetrics_core::http::{HttpMetrics, RequestHeaders, parse_traceparent};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = shmetrics_core::Store::open(dir.path())?;
    /// // A proxy that forwards the trace under another name.
    /// let metrics = HttpMetrics::builder(&store)
    ///     .trace_id(|h: &dyn RequestHeaders| h.header("x-trace").and_then(parse_traceparent))
    ///     .build()?;
    /// # let _ = metrics;
    /// # Ok::<(), shmetrics_core::Error>(())
    /// ```
    pub fn trace_id(
        mut self,
        f: impl Fn(&dyn RequestHeaders) -> Option<[u8; 16]> + Send + Sync + 'static,
    ) -> Self {
        self.trace = TraceSource::Custom(Arc::new(f));
        self
    }

    /// At most one exemplar write per bucket (and per request counter series) per
    /// `interval` in each process (default 1 s; zero: every traced request).
    pub fn exemplar_interval(mut self, interval: Duration) -> Self {
        self.exemplar_interval = interval;
        self
    }

    /// Whether the latency histogram keeps its classic buckets (default `true`). `false`
    /// needs [`native`](HttpMetricsBuilder::native) buckets: the text formats then show the
    /// latency's count and sum only.
    pub fn classic_buckets(mut self, on: bool) -> Self {
        self.classic = on;
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
    /// `/health`. The scrape endpoint's path is left out already (see
    /// [`metrics_path`](HttpMetricsBuilder::metrics_path)).
    pub fn exclude(mut self, path: impl Into<String>) -> Self {
        self.exclude.push(path.into());
        self
    }

    /// Where the scrape endpoint is served (default [`METRICS_PATH`], `/metrics`): its
    /// requests are not recorded, so scrapes do not count as traffic. `None` records it
    /// like any route.
    pub fn metrics_path(mut self, path: Option<&str>) -> Self {
        self.metrics_path = path.map(str::to_string);
        self
    }

    /// The scrape endpoint's path (see [`metrics_path`](HttpMetricsBuilder::metrics_path)).
    pub fn endpoint_path(&self) -> Option<&str> {
        self.metrics_path.as_deref()
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
        if !self.classic && self.native.is_none() {
            return Err(Error::InvalidOption {
                name: "classic_buckets".into(),
                reason: "a latency histogram without classic buckets needs native ones: \
                         call native(NativeOpts::default()) too"
                    .into(),
            });
        }
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
        let mut duration_opts = Opts::new(
            name("http_request_duration_seconds"),
            "HTTP request latency in seconds, until the response body was sent, by method and route template.",
        )
        .label_names(duration_labels);
        if self.classic {
            duration_opts = duration_opts.buckets(self.buckets.clone());
        }
        if let Some(n) = self.native {
            duration_opts = duration_opts.native(n);
        }
        let duration = self.store.register::<Histogram>(limit(duration_opts))?;
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
                exclude: self.exclude.into_iter().chain(self.metrics_path).collect(),
                unmatched: self.unmatched.into(),
                trace: self.trace,
                exemplar_interval: self.exemplar_interval.as_nanos().min(u128::from(u64::MAX)) as u64,
                clock: Clock::new(),
            }),
        })
    }
}

/// Request metrics of one store: the three families and the options. Cheap to clone.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    pub(super) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) requests: Family<Counter>,
    pub(super) duration: Family<Histogram>,
    pub(super) in_flight: Gauge,
    pub(super) cache: RouteCache,
    pub(super) const_values: Vec<String>,
    pub(super) method: bool,
    pub(super) path: bool,
    pub(super) status: bool,
    pub(super) status_class: bool,
    pub(super) exclude: Vec<String>,
    pub(super) unmatched: Arc<str>,
    /// Where traced requests' trace ids come from.
    pub(super) trace: TraceSource,
    /// Nanoseconds between two exemplar writes of one bucket.
    pub(super) exemplar_interval: u64,
    /// Request latency: raw TSC reads (no thread-local lookup, no scaling per read),
    /// converted once per request.
    pub(super) clock: Clock,
}

impl Inner {
    /// Label values of a series: the enabled ones of (method, path, status), then the
    /// constant labels. Returns the buffer and the count.
    #[inline]
    pub(super) fn labels<'a>(
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

    /// Whether requests to `path` (raw path or route template) are not recorded.
    #[inline]
    pub(super) fn excluded(&self, path: &str) -> bool {
        self.exclude.iter().any(|e| e == path)
    }

    pub(super) fn request_counter(&self, method: u8, route: &str, status: u16) -> &Counter {
        let (buf, n) = self.labels(method, route, Some(status));
        self.requests.labels(&buf[..n])
    }

    pub(super) fn duration_histogram(&self, method: u8, route: &str) -> &Histogram {
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
            metrics_path: Some(METRICS_PATH.to_string()),
            unmatched: UNMATCHED.into(),
            series_limit: None,
            native: None,
            classic: true,
            trace: TraceSource::TraceParent,
            exemplar_interval: Duration::from_secs(1),
        }
    }

    /// Request metrics with the default names and labels.
    pub fn new(store: &Store) -> Result<Self> {
        HttpMetrics::builder(store).build()
    }

    /// Whether requests to `path` (raw path or route template) are not recorded.
    #[inline]
    pub fn excluded(&self, path: &str) -> bool {
        self.inner.excluded(path)
    }
}
