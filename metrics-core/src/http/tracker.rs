//! [`RequestTracker`]: one request from its start to its record.

use std::sync::Arc;

use super::labels::{DROPPED_STATUS, METHODS, method_index};
use super::metrics::{HttpMetrics, Inner};
use super::routes::RouteEntry;
use super::trace::{RequestHeaders, trace_label_data};
use crate::family::counter::Counter;
use crate::family::histogram::Histogram;
use crate::family::metric::sealed::Sealed;
use crate::write::exemplar::NewExemplar;

impl HttpMetrics {
    /// Starts tracking a request: counts it in flight until the tracker is finished or
    /// dropped, when the request is recorded.
    #[inline]
    pub fn start(&self, method: &str) -> RequestTracker {
        self.inner.in_flight.inc();
        RequestTracker {
            metrics: Arc::clone(&self.inner),
            started: self.inner.clock.raw(),
            uncached: None,
            trace: [0; 16],
            entry: NO_ENTRY,
            status: NO_STATUS,
            method: method_index(method),
            done: false,
        }
    }

    /// The trace id of a request with these headers, from the configured source (the
    /// `traceparent` header by default; `None` when exemplars are off or the request has no
    /// sampled trace). Adapters pass it to [`RequestTracker::set_trace_id`].
    #[inline]
    pub fn trace_id<H: RequestHeaders>(&self, headers: &H) -> Option<[u8; 16]> {
        self.inner.trace.trace_id(headers)
    }
}

/// One request being served. Records it when finished or dropped, whichever comes first.
///
/// Carry it into the response body, so that latency covers the body and a client that
/// goes away mid-response is still recorded; it is also the in-flight drop guard.
///
/// It is 48 bytes: adapters move it into their response futures and bodies, which
/// frameworks move again, so every byte is copied several times per request. What only a
/// few requests need (a route without a cache slot) lives behind one pointer.
pub struct RequestTracker {
    metrics: Arc<Inner>,
    /// Raw reading of `metrics.clock` at the start.
    started: u64,
    /// The route, when it has no route cache slot (the cache is full, or its slot holds
    /// another route): rare, so it is boxed to keep the tracker small.
    uncached: Option<Box<Box<str>>>,
    /// The request's trace id, all zeros for none: its exemplars' label.
    trace: [u8; 16],
    /// The route cache slot of the route's handles, [`NO_ENTRY`] until the route is known.
    entry: u16,
    /// The response status, [`NO_STATUS`] until it is set.
    status: u16,
    /// Index into `METHODS`.
    method: u8,
    done: bool,
}

// Adapters' futures and bodies carry it: a field that makes it bigger is a per-request cost.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<RequestTracker>() == 48);

/// [`RequestTracker::entry`] of a tracker whose route is not cached (or not known).
const NO_ENTRY: u16 = u16::MAX;
/// [`RequestTracker::status`] before a status is set (no HTTP or gRPC status is this).
const NO_STATUS: u16 = u16::MAX;

impl std::fmt::Debug for RequestTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTracker")
            .field("method", &METHODS[usize::from(self.method)])
            .field("route", &self.route_str())
            .field("status", &self.status())
            .field("elapsed", &self.elapsed().1)
            .finish()
    }
}

impl RequestTracker {
    /// The route template that matched (`/users/{id}`). Without one, the request is
    /// recorded as unmatched.
    #[inline]
    pub fn set_route(&mut self, route: &str) {
        let m = &*self.metrics;
        let slot = m.cache.slot(
            route,
            self.method,
            || m.duration_histogram(self.method, route).clone(),
            || m.excluded(route),
        );
        match slot {
            Some(i) => {
                self.entry = i;
                self.uncached = None;
            }
            None => {
                self.entry = NO_ENTRY;
                self.uncached = Some(Box::new(route.into()));
            }
        }
    }

    /// The clock's raw reading now, and the time since the start.
    #[inline]
    fn elapsed(&self) -> (u64, std::time::Duration) {
        let clock = &self.metrics.clock;
        let now = clock.raw();
        (now, clock.delta(self.started, now))
    }

    /// Whether a route was set.
    #[inline]
    pub fn has_route(&self) -> bool {
        self.entry != NO_ENTRY || self.uncached.is_some()
    }

    #[inline]
    fn entry(&self) -> Option<&RouteEntry> {
        if self.entry == NO_ENTRY {
            return None;
        }
        self.metrics.cache.entry(self.entry)
    }

    fn route_str(&self) -> Option<&str> {
        self.entry()
            .map(|e| &*e.route)
            .or(self.uncached.as_deref().map(|r| &**r))
    }

    /// The response status (HTTP status, or gRPC status code for gRPC). `u16::MAX` is no
    /// status: the request is recorded as if none was set.
    #[inline]
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    /// The status set so far.
    pub fn status(&self) -> Option<u16> {
        (self.status != NO_STATUS).then_some(self.status)
    }

    /// The request's trace id (see [`HttpMetrics::trace_id`]): its counter series and
    /// latency bucket get an exemplar `trace_id` (sampled: see `HttpMetricsBuilder::
    /// exemplar_interval`).
    #[inline]
    pub fn set_trace_id(&mut self, id: [u8; 16]) {
        self.trace = id;
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
        let (now, elapsed) = self.elapsed();
        if let Some(r) = route {
            self.set_route(r);
        }
        if !self.has_route() {
            // No route: the one shared unmatched value, cached like a route.
            let unmatched = Arc::clone(&self.metrics.unmatched);
            self.set_route(&unmatched);
        }
        self.done = true;
        let m = &*self.metrics;
        let code = self.status().unwrap_or(DROPPED_STATUS);
        let key = if m.status_class { code / 100 * 100 } else { code };
        let (counter, duration) = match self.entry() {
            Some(e) => {
                if e.excluded {
                    // An excluded route, known only now (the layer sits outside the router).
                    m.in_flight.dec();
                    return;
                }
                let make = || m.request_counter(self.method, &e.route, code);
                let counter = match e.counter(key, || make().clone()) {
                    Some(c) => c,
                    None => make(),
                };
                (counter, &e.duration)
            }
            None => {
                let route = self.uncached.as_deref().map_or(&*m.unmatched, |r| &**r);
                if m.excluded(route) {
                    m.in_flight.dec();
                    return;
                }
                (
                    m.request_counter(self.method, route, code),
                    m.duration_histogram(self.method, route),
                )
            }
        };
        counter.inc();
        duration.observe_duration(elapsed);
        if self.trace != [0; 16] {
            write_exemplars(m, counter, duration, elapsed, now, &self.trace);
        }
        m.in_flight.dec();
    }
}

/// The exemplars of a traced request: on its counter series (value 1) and its latency
/// bucket (value: the latency), each at most once per interval per bucket in this process.
#[cold]
#[inline(never)]
fn write_exemplars(
    m: &Inner,
    counter: &Counter,
    duration: &Histogram,
    elapsed: std::time::Duration,
    raw_now: u64,
    id: &[u8; 16],
) {
    let now = m.clock.delta_as_nanos(0, raw_now);
    let secs = elapsed.as_secs_f64();
    let (bucket, buckets) = duration.exemplar_bucket(secs);
    let targets = [
        (Sealed::cell(counter), 0, 1, 1.0),
        (Sealed::cell(duration), bucket, buckets, secs),
    ];
    // The label and the wall-clock time only for an exemplar that is due: most traced
    // requests of a busy service find both of theirs written less than an interval ago.
    let mut made = None;
    for (cell, bucket, buckets, value) in targets {
        if cell.exemplar_due(bucket, buckets, now, m.exemplar_interval) {
            let (data, time) = made.get_or_insert_with(|| (trace_label_data(id), crate::sys::unix_nanos()));
            let ex = NewExemplar {
                data: &data[..],
                pairs: 1,
                value,
                time: *time,
            };
            cell.write_exemplar(bucket, buckets, &ex);
        }
    }
}

impl Drop for RequestTracker {
    fn drop(&mut self) {
        self.record(None);
    }
}
