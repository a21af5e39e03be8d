//! A recorder for the [`metrics`] facade (feature `metrics`): every `counter!`,
//! `gauge!` and `histogram!` of the application and of the libraries it uses, written into
//! the store, so that the merged scrape of all workers counts them exactly.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! let store = shmetrics_core::Store::open(dir.path())?;
//! let recorder = shmetrics_core::recorder::RecorderBuilder::new(&store)
//!     .set_buckets_for_metric(shmetrics_core::recorder::Matcher::Suffix("_seconds".into()), &[0.01, 0.1, 1.0])?
//!     .build();
//! metrics::with_local_recorder(&recorder, || {
//!     metrics::describe_counter!("jobs_total", "Jobs done");
//!     metrics::counter!("jobs_total", "queue" => "mail").increment(1);
//!     metrics::histogram!("job_seconds").record(0.042);
//! });
//! let text = store.scrape()?;
//! assert!(text.contains(r#"jobs_total{queue="mail"} 1"#));
//! assert!(text.contains(r#"job_seconds_bucket{le="0.1"} 1"#));
//! # Ok::<(), shmetrics_core::Error>(())
//! ```
//!
//! In a service, [`install`] (or [`RecorderBuilder::install`]) makes it the global
//! recorder, once per process, beside the store's own families and the HTTP middlewares:
//! they all go out in the same exposition.
//!
//! How keys become series:
//!
//! * Names and label names that Prometheus cannot accept are sanitized as
//!   metrics-exporter-prometheus does (every other character becomes `_`); a unit given to
//!   `describe_*` is appended (`_bytes`, `_seconds`, before a counter's `_total`), as its
//!   recommended naming does. Counters are exposed as `<name>_total`.
//! * The same labels in any order are one series; global labels
//!   ([`RecorderBuilder::add_global_label`]) come first and a key's own label of the same
//!   name overrides them.
//! * A name's first use declares its family: its type, its label names, and the help text
//!   and unit `describe_*` gave before it. A key whose name is taken by another type, or
//!   that has other label names than the first use, is not recorded: counted in
//!   `shmetrics_store_errors_total{kind="recorder"}` and logged once.
//! * Counters: `increment` adds to this process's count; `absolute` raises it to the
//!   value if lower ([`Counter::absolute`](crate::Counter::absolute)), so an absolute
//!   counter keeps its monotonic meaning per process and the scrape shows the sum over
//!   processes.
//! * Gauges: combined over processes by a [`GaugeMode`], [`GaugeMode::LiveSum`] unless
//!   [`RecorderBuilder::set_gauge_mode_for_metric`] says otherwise: the sum over live
//!   workers, which is the value itself in one process and the total of a pool, a queue or
//!   a count of connections across workers.
//! * Histograms: classic buckets (Prometheus' default ones, or
//!   [`set_buckets`](RecorderBuilder::set_buckets) /
//!   [`set_buckets_for_metric`](RecorderBuilder::set_buckets_for_metric)), or native ones
//!   ([`set_native_histogram_for_metric`](RecorderBuilder::set_native_histogram_for_metric)).
//!   Summaries (metrics-exporter-prometheus' default for a histogram without buckets) have
//!   quantiles that cannot be merged across processes: there are none.
//! * The handle of a key is made once and kept: a `counter!` in a hot loop costs a lookup
//!   of its key and an atomic add in the shared file, never an allocation.

mod config;
mod names;
mod storage;

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use metrics::{Key, KeyName, Metadata, SharedString, Unit};
use metrics_util::registry::Registry;

use crate::error::{Error, Result};
use crate::format::GaugeMode;
use crate::format::desc::NativeOpts;
use crate::format::names::{DEFAULT_BUCKETS, normalize_buckets};
use crate::store::Store;
use config::Config;
pub use config::Matcher;
use storage::Shared;

/// Settings of a [`ShmetricsRecorder`].
#[derive(Clone, Debug)]
pub struct RecorderBuilder {
    store: Store,
    config: Config,
}

impl RecorderBuilder {
    /// A recorder writing into `store`, with the defaults: Prometheus' default buckets,
    /// gauges in [`GaugeMode::LiveSum`], no global label, no idle timeout.
    pub fn new(store: &Store) -> Self {
        RecorderBuilder {
            store: store.clone(),
            config: Config {
                buckets: DEFAULT_BUCKETS.to_vec(),
                buckets_for: Vec::new(),
                native_for: Vec::new(),
                modes: Vec::new(),
                global_labels: Vec::new(),
                idle_timeout: None,
            },
        }
    }

    /// The buckets of every histogram no other setting names.
    pub fn set_buckets(mut self, bounds: &[f64]) -> Result<Self> {
        self.config.buckets = checked_buckets(bounds)?;
        Ok(self)
    }

    /// The buckets of the histograms whose names `matcher` matches.
    pub fn set_buckets_for_metric(mut self, matcher: Matcher, bounds: &[f64]) -> Result<Self> {
        let bounds = checked_buckets(bounds)?;
        self.config.buckets_for.push((matcher, bounds));
        Ok(self)
    }

    /// Native buckets for the histograms whose names `matcher` matches (sent to a
    /// Prometheus started with `--enable-feature=native-histograms`); they keep classic
    /// buckets too only if [`set_buckets_for_metric`](Self::set_buckets_for_metric)
    /// names them.
    pub fn set_native_histogram_for_metric(mut self, matcher: Matcher, native: NativeOpts) -> Self {
        self.config.native_for.push((matcher, native));
        self
    }

    /// How the gauges whose names `matcher` matches combine over processes (default
    /// [`GaugeMode::LiveSum`]): e.g. [`GaugeMode::Max`] for a version or a configuration
    /// value every worker sets alike, [`GaugeMode::All`] for one series per process.
    pub fn set_gauge_mode_for_metric(mut self, matcher: Matcher, mode: GaugeMode) -> Self {
        self.config.modes.push((matcher, mode));
        self
    }

    /// A label every series gets (a key's own label of the same name overrides it).
    pub fn add_global_label(mut self, name: impl AsRef<str>, value: impl Into<String>) -> Self {
        let name = names::sanitize_label_name(name.as_ref());
        self.config.global_labels.retain(|(n, _)| *n != name);
        self.config.global_labels.push((name, value.into()));
        self
    }

    /// Removes from the scrape (as [`Family::remove`](crate::Family::remove) does) every
    /// series this process recorded whose merged value has not changed for `timeout`: no
    /// process touched it. Off (`None`) by default. A thread of this process checks every
    /// quarter of `timeout` (at least every 60 s); a series used again comes back with
    /// what is recorded after its removal. A gauge set again to the same value counts as
    /// untouched.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.idle_timeout = timeout.filter(|t| !t.is_zero());
        self
    }

    /// The recorder (and, with an idle timeout, its sweeping thread).
    pub fn build(self) -> ShmetricsRecorder {
        let inner = Arc::new(Inner {
            registry: Registry::new(Arc::new(Shared::new(self.store, self.config))),
        });
        if let Some(timeout) = inner.shared().config.idle_timeout {
            spawn_sweeper(Arc::downgrade(&inner), timeout);
        }
        ShmetricsRecorder { inner }
    }

    /// Builds the recorder and makes it the global one of this process. Fails if a global
    /// recorder is already installed. Returns a handle to it (e.g. for
    /// [`ShmetricsRecorder::sweep_idle`]).
    pub fn install(self) -> Result<ShmetricsRecorder> {
        let recorder = self.build();
        metrics::set_global_recorder(recorder.clone()).map_err(|_| Error::InvalidOption {
            name: "metrics recorder".into(),
            reason: "a global recorder of the `metrics` facade is already installed in this process".into(),
        })?;
        Ok(recorder)
    }
}

/// Installs a recorder with the default settings as the global recorder of the `metrics`
/// facade (see [`RecorderBuilder::install`]).
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let store = shmetrics_core::Store::open(dir.path())?;
/// shmetrics_core::recorder::install(&store)?;
/// metrics::counter!("jobs_total", "queue" => "mail").increment(1);
/// assert!(store.scrape()?.contains(r#"jobs_total{queue="mail"} 1"#));
/// # Ok::<(), shmetrics_core::Error>(())
/// ```
pub fn install(store: &Store) -> Result<ShmetricsRecorder> {
    RecorderBuilder::new(store).install()
}

fn checked_buckets(bounds: &[f64]) -> Result<Vec<f64>> {
    let mut b = normalize_buckets(bounds).map_err(|reason| Error::InvalidOption {
        name: "metrics recorder buckets".into(),
        reason,
    })?;
    b.pop(); // +Inf, which the family's declaration appends again
    Ok(b)
}

struct Inner {
    registry: Registry<Key, Arc<Shared>>,
}

impl Inner {
    fn shared(&self) -> &Shared {
        self.registry.storage()
    }
}

/// A [`metrics::Recorder`] writing into a [`Store`] (see the [module](self) docs).
/// Clones share their state.
#[derive(Clone)]
pub struct ShmetricsRecorder {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ShmetricsRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmetricsRecorder")
            .field("config", &self.inner.shared().config)
            .finish_non_exhaustive()
    }
}

impl ShmetricsRecorder {
    /// Removes now what the idle timeout would remove (see
    /// [`RecorderBuilder::idle_timeout`]); without a timeout, nothing. Returns the number
    /// of series removed.
    pub fn sweep_idle(&self) -> Result<usize> {
        match self.inner.shared().config.idle_timeout {
            Some(t) => sweep(&self.inner, t, Instant::now()),
            None => Ok(0),
        }
    }
}

impl metrics::Recorder for ShmetricsRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.shared().describe(key.as_str(), unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.shared().describe(key.as_str(), unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.shared().describe(key.as_str(), unit, description);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> metrics::Counter {
        self.inner
            .registry
            .get_or_create_counter(key, |c| metrics::Counter::from_arc(Arc::clone(c)))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> metrics::Gauge {
        self.inner
            .registry
            .get_or_create_gauge(key, |g| metrics::Gauge::from_arc(Arc::clone(g)))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> metrics::Histogram {
        self.inner
            .registry
            .get_or_create_histogram(key, |h| metrics::Histogram::from_arc(Arc::clone(h)))
    }
}

fn spawn_sweeper(inner: Weak<Inner>, timeout: Duration) {
    let every = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
    let spawned = std::thread::Builder::new()
        .name("shmetrics-idle".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                // The recorder is gone: so is the sweeper.
                let Some(inner) = inner.upgrade() else { return };
                if let Err(e) = sweep(&inner, timeout, Instant::now()) {
                    tracing::warn!("shmetrics: idle series sweep failed: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("shmetrics: no idle series sweep (thread not started: {e})");
    }
}

/// One idle sweep: reads the merged values, and removes the series of this recorder whose
/// value has not changed for `timeout`. The keys of removed series leave the registry
/// after the families' lock is released (the registry's lock is taken before it when a
/// key is registered).
fn sweep(inner: &Inner, timeout: Duration, now: Instant) -> Result<usize> {
    let shared = inner.shared();
    let snapshot = shared.store.snapshot()?;
    let mut gone_keys = Vec::new();
    let mut removed = 0;
    {
        let mut families = shared.lock_families();
        for (name, entry) in families.iter_mut() {
            let merged = snapshot.family(name);
            let label_names = entry.label_names().to_vec();
            let mut idle = Vec::new();
            for (values, tracked) in entry.series.iter_mut() {
                let pairs: Vec<(&str, &str)> = label_names
                    .iter()
                    .map(String::as_str)
                    .zip(values.iter().map(String::as_str))
                    .collect();
                let value = merged.and_then(|f| f.get(&pairs)).cloned();
                if value != tracked.last {
                    tracked.last = value;
                    tracked.since = now;
                } else if now.duration_since(tracked.since) >= timeout {
                    idle.push(values.clone());
                }
            }
            for values in idle {
                entry.remove(&values)?;
                removed += 1;
                if let Some(t) = entry.series.remove(&values) {
                    gone_keys.extend(t.keys);
                }
            }
        }
    }
    for key in gone_keys {
        // A key is of one kind: deleting it from the other two finds nothing.
        inner.registry.delete_counter(&key);
        inner.registry.delete_gauge(&key);
        inner.registry.delete_histogram(&key);
    }
    Ok(removed)
}
