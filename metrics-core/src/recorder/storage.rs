//! From a key of the `metrics` facade to a series of the store: the name and labels made
//! valid and put in order, the family declared on the name's first use (its help text and
//! unit from `describe_*`, buckets and gauge mode from the builder's matchers), the series'
//! handle made once per key and kept by the registry of `metrics-util`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use metrics::{CounterFn, GaugeFn, HistogramFn, Key, SharedString, Unit};

use super::config::Config;
use super::names::{sanitize_label_name, sanitize_metric_name, with_unit};
use crate::error::Result;
use crate::family::Family;
use crate::family::counter::Counter;
use crate::family::gauge::Gauge;
use crate::family::histogram::Histogram;
use crate::format::desc::Opts;
use crate::format::{ErrorKind, MetricType};
use crate::read::snapshot::Value;
use crate::store::Store;

/// What `describe_*` said of a name.
struct Description {
    unit: Option<Unit>,
    help: SharedString,
}

/// A family the recorder declared, and the series it made in it.
pub(super) struct Entry {
    family: AnyFamily,
    /// Label names, sorted: the order of every series' values.
    label_names: Vec<String>,
    /// Per series: the keys that name it (the same labels in other orders are other keys),
    /// and what the idle sweep last saw of it.
    pub(super) series: HashMap<Vec<String>, Tracked>,
}

/// A series as the idle sweep follows it.
pub(super) struct Tracked {
    pub(super) keys: Vec<Key>,
    pub(super) last: Option<Value>,
    pub(super) since: Instant,
}

#[derive(Clone)]
enum AnyFamily {
    Counter(Family<Counter>),
    Gauge(Family<Gauge>),
    Histogram(Family<Histogram>),
}

/// The name of a type the facade has.
fn type_name(ty: MetricType) -> &'static str {
    match ty {
        MetricType::Counter => "counter",
        MetricType::Gauge => "gauge",
        _ => "histogram",
    }
}

impl AnyFamily {
    fn metric_type(&self) -> MetricType {
        match self {
            AnyFamily::Counter(_) => MetricType::Counter,
            AnyFamily::Gauge(_) => MetricType::Gauge,
            AnyFamily::Histogram(_) => MetricType::Histogram,
        }
    }

    pub(super) fn remove(&self, values: &[&str]) -> Result<bool> {
        match self {
            AnyFamily::Counter(f) => f.remove(values),
            AnyFamily::Gauge(f) => f.remove(values),
            AnyFamily::Histogram(f) => f.remove(values),
        }
    }
}

/// The recorder's state: the `Storage` of its registry.
pub(crate) struct Shared {
    pub(super) store: Store,
    pub(super) config: Config,
    descriptions: RwLock<HashMap<String, Description>>,
    /// By family name (a counter's without `_total`).
    pub(super) families: Mutex<HashMap<String, Entry>>,
}

impl Shared {
    pub(super) fn new(store: Store, config: Config) -> Self {
        Shared {
            store,
            config,
            descriptions: RwLock::new(HashMap::new()),
            families: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps the first description of `name` (later ones are ignored, as by
    /// metrics-exporter-prometheus). It applies to families declared after it.
    pub(super) fn describe(&self, name: &str, unit: Option<Unit>, help: SharedString) {
        let name = sanitize_metric_name(name);
        let mut d = self.descriptions.write().unwrap_or_else(PoisonError::into_inner);
        d.entry(name).or_insert(Description { unit, help });
    }

    pub(super) fn lock_families(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.families.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The family and label values of `key` as a metric of type `ty`, the family declared
    /// if it is the name's first use; `None` (counted and logged once) if the name is taken
    /// by another type or was first used with other label names, or the store refuses it.
    fn resolve(&self, key: &Key, ty: MetricType) -> Option<(AnyFamily, Vec<String>)> {
        let base = sanitize_metric_name(key.name());
        let (unit, help) = {
            let d = self.descriptions.read().unwrap_or_else(PoisonError::into_inner);
            match d.get(&base) {
                Some(d) => (d.unit, d.help.to_string()),
                None => (None, String::new()),
            }
        };
        let name = with_unit(&base, unit);
        let family_name = match ty {
            MetricType::Counter => name.strip_suffix("_total").unwrap_or(&name).to_string(),
            _ => name.clone(),
        };
        // Global labels first, the key's own override them; sorted by name, so that the
        // same labels in any order are one series.
        let mut labels = BTreeMap::new();
        for (k, v) in &self.config.global_labels {
            labels.insert(k.clone(), v.clone());
        }
        for l in key.labels() {
            labels.insert(sanitize_label_name(l.key()), l.value().to_string());
        }
        let (label_names, values): (Vec<String>, Vec<String>) = labels.into_iter().unzip();

        let mut families = self.lock_families();
        let entry = match families.get_mut(&family_name) {
            Some(e) => e,
            None => {
                let family = match self.declare(ty, &base, &name, &help, &label_names) {
                    Ok(f) => f,
                    Err(e) => {
                        self.refuse(&format!("metric {:?} not recorded: {e}", key.name()));
                        return None;
                    }
                };
                families.entry(family_name.clone()).or_insert(Entry {
                    family,
                    label_names: label_names.clone(),
                    series: HashMap::new(),
                })
            }
        };
        if entry.family.metric_type() != ty {
            self.refuse(&format!(
                "metric {:?} not recorded as a {}: the name is a {}",
                key.name(),
                type_name(ty),
                type_name(entry.family.metric_type())
            ));
            return None;
        }
        if entry.label_names != label_names {
            self.refuse(&format!(
                "metric {:?} not recorded with labels [{}]: it was first used with [{}]",
                key.name(),
                label_names.join(", "),
                entry.label_names.join(", ")
            ));
            return None;
        }
        let tracked = entry.series.entry(values.clone()).or_insert_with(|| Tracked {
            keys: Vec::new(),
            last: None,
            since: Instant::now(),
        });
        tracked.keys.push(key.clone());
        Some((entry.family.clone(), values))
    }

    fn declare(
        &self,
        ty: MetricType,
        base: &str,
        name: &str,
        help: &str,
        labels: &[String],
    ) -> Result<AnyFamily> {
        let opts = Opts::new(name, help).label_names(labels.iter().map(String::as_str));
        let c = &self.config;
        Ok(match ty {
            MetricType::Counter => AnyFamily::Counter(self.store.register::<Counter>(opts)?),
            MetricType::Gauge => {
                let mode = c.gauge_mode(base);
                AnyFamily::Gauge(self.store.register::<Gauge>(opts.mode(mode))?)
            }
            _ => {
                let mut opts = opts;
                if let Some(native) = c.native(base) {
                    opts = opts.native(native);
                    if let Some(b) = c.explicit_buckets(base) {
                        opts = opts.buckets(b.to_vec());
                    }
                } else {
                    opts = opts.buckets(c.buckets(base).to_vec());
                }
                AnyFamily::Histogram(self.store.register::<Histogram>(opts)?)
            }
        })
    }

    fn refuse(&self, detail: &str) {
        self.store
            .shared()
            .writer
            .count_error(ErrorKind::Recorder, &|| detail.to_string());
    }
}

/// A counter of the facade: the store's handle, or nothing for a refused key.
pub(crate) struct RecCounter(Option<Counter>);
/// A gauge of the facade.
pub(crate) struct RecGauge(Option<Gauge>);
/// A histogram of the facade.
pub(crate) struct RecHistogram(Option<Histogram>);

impl CounterFn for RecCounter {
    #[inline]
    fn increment(&self, value: u64) {
        if let Some(c) = &self.0 {
            c.inc_by(value);
        }
    }

    #[inline]
    fn absolute(&self, value: u64) {
        if let Some(c) = &self.0 {
            c.absolute(value);
        }
    }
}

impl GaugeFn for RecGauge {
    #[inline]
    fn increment(&self, value: f64) {
        if let Some(g) = &self.0 {
            g.add(value);
        }
    }

    #[inline]
    fn decrement(&self, value: f64) {
        if let Some(g) = &self.0 {
            g.sub(value);
        }
    }

    #[inline]
    fn set(&self, value: f64) {
        if let Some(g) = &self.0 {
            g.set(value);
        }
    }
}

impl HistogramFn for RecHistogram {
    #[inline]
    fn record(&self, value: f64) {
        if let Some(h) = &self.0 {
            h.observe(value);
        }
    }
}

impl metrics_util::registry::Storage<Key> for Shared {
    type Counter = Arc<RecCounter>;
    type Gauge = Arc<RecGauge>;
    type Histogram = Arc<RecHistogram>;

    fn counter(&self, key: &Key) -> Self::Counter {
        let handle = self
            .resolve(key, MetricType::Counter)
            .and_then(|(f, values)| match f {
                AnyFamily::Counter(f) => Some(f.labels(&refs(&values)).clone()),
                _ => None,
            });
        Arc::new(RecCounter(handle))
    }

    fn gauge(&self, key: &Key) -> Self::Gauge {
        let handle = self
            .resolve(key, MetricType::Gauge)
            .and_then(|(f, values)| match f {
                AnyFamily::Gauge(f) => Some(f.labels(&refs(&values)).clone()),
                _ => None,
            });
        Arc::new(RecGauge(handle))
    }

    fn histogram(&self, key: &Key) -> Self::Histogram {
        let handle = self
            .resolve(key, MetricType::Histogram)
            .and_then(|(f, values)| match f {
                AnyFamily::Histogram(f) => Some(f.labels(&refs(&values)).clone()),
                _ => None,
            });
        Arc::new(RecHistogram(handle))
    }
}

fn refs(values: &[String]) -> Vec<&str> {
    values.iter().map(String::as_str).collect()
}

impl Entry {
    /// The family's label names.
    pub(super) fn label_names(&self) -> &[String] {
        &self.label_names
    }

    /// Removes the series with `values` from every worker's scrape.
    pub(super) fn remove(&self, values: &[String]) -> Result<bool> {
        self.family.remove(&refs(values))
    }
}
