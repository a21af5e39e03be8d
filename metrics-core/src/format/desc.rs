//! Metric declarations: [`Opts`] (what the caller asks for) and the validated
//! description every process of an application must agree on.

use crate::error::Error;
use crate::format::names;
use crate::format::native::{MAX_SCHEMA, MIN_SCHEMA, NativeSpec};
use crate::format::records::FamilyRecord;
use crate::format::{GaugeMode, MAX_HELP_BYTES, MetricType};

/// A family name checked: valid, not in the store's own namespace, without the `_total`
/// of a counter (as in Python's client, `requests_total` and `requests` are one counter).
fn checked_name(ty: MetricType, mut name: String) -> Result<String, Error> {
    if matches!(ty, MetricType::Counter | MetricType::CounterF64) {
        if let Some(stripped) = name.strip_suffix("_total") {
            name = stripped.to_string();
        }
    }
    names::check_metric_name(&name).map_err(|reason| Error::InvalidMetricName {
        name: name.clone(),
        reason,
    })?;
    if name.starts_with(SELF_PREFIX) {
        return Err(Error::InvalidMetricName {
            name,
            reason: format!("starts with `{SELF_PREFIX}`, which is reserved for the store's own metrics"),
        });
    }
    Ok(name)
}

/// Label names checked: valid, distinct, not too many.
fn checked_labels(metric: &str, label_names: Vec<String>) -> Result<Vec<String>, Error> {
    let mut labels: Vec<String> = Vec::with_capacity(label_names.len());
    for l in label_names {
        names::check_label_name(&l).map_err(|reason| Error::InvalidLabelName {
            metric: metric.to_string(),
            label: l.clone(),
            reason,
        })?;
        if labels.contains(&l) {
            return Err(Error::InvalidLabelName {
                metric: metric.to_string(),
                label: l,
                reason: "appears twice".into(),
            });
        }
        labels.push(l);
    }
    if labels.len() > crate::format::MAX_LABELS {
        return Err(Error::InvalidOption {
            name: metric.to_string(),
            reason: format!("more than {} label names", crate::format::MAX_LABELS),
        });
    }
    Ok(labels)
}

/// Refuses label names the store adds itself: `le` of histogram buckets, `pid` of
/// per-process gauges.
fn check_reserved(metric: &str, ty: MetricType, mode: GaugeMode, labels: &[String]) -> Result<(), Error> {
    let reserved: &[&str] = match ty {
        MetricType::Histogram => &["le"],
        MetricType::Gauge if mode.per_process() => &["pid"],
        _ => &[],
    };
    match labels.iter().find(|l| reserved.contains(&l.as_str())) {
        Some(l) => Err(Error::InvalidLabelName {
            metric: metric.to_string(),
            label: l.clone(),
            reason: match ty {
                MetricType::Histogram => "is reserved for histogram buckets".into(),
                _ => format!("is added by the store in gauge mode `{mode}`"),
            },
        }),
        None => Ok(()),
    }
}

/// Options for declaring a metric family with [`Store::register`](crate::Store::register).
///
/// ```
/// use shmetrics_core::{GaugeMode, Opts};
/// let opts = Opts::new("queue_depth", "Jobs waiting, per queue")
///     .label_names(["queue"])
///     .mode(GaugeMode::LiveMax)
///     .series_limit(100);
/// # let _ = opts;
/// ```
#[derive(Clone, Debug)]
pub struct Opts {
    pub(crate) name: String,
    pub(crate) help: String,
    pub(crate) label_names: Vec<String>,
    pub(crate) series_limit: Option<usize>,
    pub(crate) buckets: Option<Vec<f64>>,
    pub(crate) mode: Option<GaugeMode>,
    pub(crate) native: Option<NativeOpts>,
}

/// Native histogram buckets (Prometheus' sparse exponential buckets) for
/// [`Opts::native`]: one series per label set holds every bucket, at a resolution chosen
/// here, instead of one series per classic bucket.
///
/// Bucket `i` holds the observations `v` with `2^((i−1)·2^−schema) < v ≤ 2^(i·2^−schema)`
/// (negative observations the same way, on their own side); observations with
/// `|v| ≤ zero_threshold` go to the zero bucket. Defaults: schema 3 (buckets grow by a
/// factor of about 1.09, as Go's and prometheus-client's default bucket factor of 1.1
/// gives), zero threshold 2^−128 (as they use), at most 160 buckets per merged series.
///
/// Processes that declare one family with other settings (two releases of a rolling
/// deploy) are merged exactly: every series is brought to the coarsest schema and the
/// widest zero bucket among them. A merged series with more than `max_buckets` buckets has
/// its resolution halved until it fits (counts move to the wider buckets, none is lost).
///
/// ```
/// use shmetrics_core::{NativeOpts, Opts};
/// let latency = Opts::new("job_seconds", "Job latency").native(NativeOpts::default().schema(4));
/// let both = Opts::new("rpc_seconds", "RPC latency")
///     .native(NativeOpts::with_factor(1.1)) // schema 3
///     .buckets(vec![0.01, 0.1, 1.0]); // classic buckets too, for scrapers without native support
/// # let _ = (latency, both);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NativeOpts {
    pub(crate) schema: i8,
    pub(crate) zero_threshold: f64,
    pub(crate) max_buckets: u32,
}

impl Default for NativeOpts {
    fn default() -> Self {
        NativeOpts {
            schema: 3,
            zero_threshold: DEFAULT_ZERO_THRESHOLD,
            max_buckets: 160,
        }
    }
}

/// The default zero threshold of native histograms: 2^−128, as Prometheus' clients use.
pub const DEFAULT_ZERO_THRESHOLD: f64 = 2.938735877055719e-39;

impl NativeOpts {
    /// The schema whose bucket growth factor is the largest one at most `factor` (Go's
    /// `NativeHistogramBucketFactor`): 1.1 gives schema 3, 2 gives schema 0. Factors
    /// below the finest schema's give schema 8; large ones, schema −4.
    pub fn with_factor(factor: f64) -> Self {
        // Schema s grows buckets by 2^(2^-s): the first (coarsest) schema at most `factor`.
        let mut schema = MIN_SCHEMA;
        while schema < MAX_SCHEMA && (-f64::from(schema)).exp2().exp2() > factor {
            schema += 1;
        }
        NativeOpts {
            schema,
            ..NativeOpts::default()
        }
    }

    /// The resolution: −4 (a factor of 65,536 per bucket) to 8 (2^(1/256) per bucket).
    pub fn schema(mut self, schema: i8) -> Self {
        self.schema = schema;
        self
    }

    /// Observations with `|v| <=` this go to the zero bucket (finite, at least 0).
    pub fn zero_threshold(mut self, threshold: f64) -> Self {
        self.zero_threshold = threshold;
        self
    }

    /// Most buckets a merged series shows (both sides together); 0 for no limit.
    pub fn max_buckets(mut self, n: u32) -> Self {
        self.max_buckets = n;
        self
    }

    pub(crate) fn spec(&self) -> NativeSpec {
        NativeSpec {
            schema: self.schema,
            zero_threshold: self.zero_threshold,
            max_buckets: self.max_buckets,
        }
    }
}

impl Opts {
    /// A family called `name` (for counters, without the `_total` suffix, which the
    /// exposition adds) described by `help`.
    pub fn new(name: impl Into<String>, help: impl Into<String>) -> Self {
        Opts {
            name: name.into(),
            help: help.into(),
            label_names: Vec::new(),
            series_limit: None,
            buckets: None,
            mode: None,
            native: None,
        }
    }

    /// The family's label names, in the order values are given to
    /// [`Family::labels`](crate::Family::labels).
    pub fn label_names<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.label_names = names.into_iter().map(Into::into).collect();
        self
    }

    /// Most distinct label sets this process records for the family; further label sets
    /// are counted in one overflow series whose label values are all `__overflow__`.
    /// Defaults to the store's limit ([`StoreBuilder::series_limit`](crate::StoreBuilder::series_limit)).
    pub fn series_limit(mut self, limit: usize) -> Self {
        self.series_limit = Some(limit);
        self
    }

    /// Histogram bucket upper bounds (strictly increasing; `+Inf` is added). Histograms
    /// only; defaults to [`DEFAULT_BUCKETS`](crate::DEFAULT_BUCKETS), or to none for a
    /// histogram with [native buckets](Opts::native).
    pub fn buckets(mut self, bounds: impl Into<Vec<f64>>) -> Self {
        self.buckets = Some(bounds.into());
        self
    }

    /// Gives a histogram native buckets (see [`NativeOpts`]): they go out in the Prometheus
    /// protobuf format, to a Prometheus started with `--enable-feature=native-histograms`.
    /// Without [`buckets`](Opts::buckets) the histogram has native buckets only, and the
    /// text formats show its count and sum (a single `+Inf` bucket); with them, it has
    /// both, and text scrapers get the classic buckets. Histograms only.
    pub fn native(mut self, native: NativeOpts) -> Self {
        self.native = Some(native);
        self
    }

    /// How the processes' values combine. Gauges only; defaults to [`GaugeMode::All`]
    /// (as in Python's `prometheus_client`).
    pub fn mode(mut self, mode: GaugeMode) -> Self {
        self.mode = Some(mode);
        self
    }
}

/// The names a family of type `ty` called `name` claims in an exposition: its samples',
/// and the suffixed names parsers reserve for its type (e.g. `<name>_created`). Two
/// families whose claims meet make Prometheus drop samples and OpenMetrics parsers reject
/// the exposition.
pub(crate) fn claimed_names(ty: MetricType, name: &str) -> Vec<String> {
    let suffixes: &[&str] = match ty {
        MetricType::Counter | MetricType::CounterF64 => &["", "_total", "_created"],
        MetricType::Gauge => &[""],
        MetricType::Histogram => &["", "_count", "_sum", "_bucket", "_created"],
        MetricType::Summary => &["", "_count", "_sum", "_created"],
    };
    suffixes.iter().map(|s| format!("{name}{s}")).collect()
}

/// The first name both families claim, if any (families of one name excepted).
pub(crate) fn clash(a: (MetricType, &str), b: (MetricType, &str)) -> Option<String> {
    if a.1 == b.1 {
        return None;
    }
    let theirs = claimed_names(b.0, b.1);
    claimed_names(a.0, a.1).into_iter().find(|n| theirs.contains(n))
}

/// The label value used for every label of the overflow series.
pub const OVERFLOW_LABEL_VALUE: &str = "__overflow__";

/// Prefix reserved for the store's own metrics.
pub(crate) const SELF_PREFIX: &str = "shmetrics_";

/// A validated family description.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FamilyDesc {
    pub name: String,
    pub help: String,
    pub ty: MetricType,
    pub mode: GaugeMode,
    pub labels: Vec<String>,
    /// Upper bounds with +Inf last (histograms), empty otherwise (and for histograms with
    /// native buckets only).
    pub buckets: Vec<f64>,
    /// Native buckets (histograms only).
    pub native: Option<NativeSpec>,
    pub series_limit: usize,
}

impl FamilyDesc {
    /// Validates `opts` for a family of type `ty`.
    pub(crate) fn new(ty: MetricType, opts: Opts, default_limit: usize) -> Result<Self, Error> {
        let name = checked_name(ty, opts.name)?;
        if opts.help.len() > MAX_HELP_BYTES {
            return Err(Error::InvalidOption {
                name,
                reason: format!(
                    "help text of {} bytes: at most {MAX_HELP_BYTES} bytes are stored; shorten it",
                    opts.help.len()
                ),
            });
        }
        let labels = checked_labels(&name, opts.label_names)?;
        let mode = match (ty, opts.mode) {
            (MetricType::Gauge, m) => m.unwrap_or_default(),
            (_, Some(_)) => {
                return Err(Error::InvalidOption {
                    name,
                    reason: "a gauge mode applies to gauges only".into(),
                });
            }
            (_, None) => GaugeMode::All,
        };
        let native = match (ty, opts.native) {
            (MetricType::Histogram, Some(n)) => {
                let spec = n.spec();
                spec.check().map_err(|reason| Error::InvalidOption {
                    name: name.clone(),
                    reason: format!("native buckets: {reason}"),
                })?;
                Some(spec)
            }
            (_, Some(_)) => {
                return Err(Error::InvalidOption {
                    name,
                    reason: "native buckets apply to histograms only".into(),
                });
            }
            (_, None) => None,
        };
        let buckets = match (ty, opts.buckets) {
            (MetricType::Histogram, None) if native.is_some() => Vec::new(),
            (MetricType::Histogram, b) => {
                let b = b.unwrap_or_else(|| names::DEFAULT_BUCKETS.to_vec());
                names::normalize_buckets(&b).map_err(|reason| Error::InvalidBuckets {
                    metric: name.clone(),
                    reason,
                })?
            }
            (_, Some(_)) => {
                return Err(Error::InvalidOption {
                    name,
                    reason: "buckets apply to histograms only".into(),
                });
            }
            (_, None) => Vec::new(),
        };
        check_reserved(&name, ty, mode, &labels)?;
        let series_limit = opts.series_limit.unwrap_or(default_limit);
        if series_limit == 0 {
            return Err(Error::InvalidOption {
                name,
                reason: "series limit must be at least 1".into(),
            });
        }
        Ok(FamilyDesc {
            name,
            help: opts.help,
            ty,
            mode,
            labels,
            buckets,
            native,
            series_limit,
        })
    }

    pub(crate) fn record(&self, id: u32, stats_offset: u64) -> FamilyRecord {
        FamilyRecord {
            id,
            ty: self.ty,
            mode: self.mode,
            name: self.name.clone(),
            help: self.help.clone(),
            labels: self.labels.clone(),
            buckets: self.buckets.clone(),
            native: self.native,
            stats_offset,
        }
    }

    /// Whether two declarations are the same (help text and limits may differ).
    pub(crate) fn same_schema(&self, other: &FamilyDesc) -> bool {
        self.ty == other.ty
            && self.mode == other.mode
            && self.labels == other.labels
            && self.buckets == other.buckets
            && self.native == other.native
    }

    /// Value slots per series.
    pub(crate) fn slots(&self) -> usize {
        crate::format::series_slots(self.ty, self.mode, self.buckets.len(), self.native.is_some())
    }

    pub(crate) fn from_record(r: &FamilyRecord) -> Self {
        FamilyDesc {
            name: r.name.clone(),
            help: r.help.clone(),
            ty: r.ty,
            mode: r.mode,
            labels: r.labels.clone(),
            buckets: r.buckets.clone(),
            native: r.native,
            series_limit: 0,
        }
    }

    /// Human-readable schema, for conflict messages.
    pub(crate) fn describe(&self) -> String {
        let kind = match self.ty {
            MetricType::Counter => "counter (integer)".to_string(),
            MetricType::CounterF64 => "counter (float)".to_string(),
            MetricType::Gauge => format!("gauge (mode {})", self.mode),
            MetricType::Summary => "summary".to_string(),
            MetricType::Histogram => {
                let b: Vec<String> = self
                    .buckets
                    .iter()
                    .map(|b| {
                        if b.is_infinite() {
                            "+Inf".into()
                        } else {
                            b.to_string()
                        }
                    })
                    .collect();
                match &self.native {
                    Some(n) if b.is_empty() => format!(
                        "native histogram (schema {}, zero threshold {})",
                        n.schema, n.zero_threshold
                    ),
                    Some(n) => format!(
                        "histogram (buckets [{}], native schema {}, zero threshold {})",
                        b.join(", "),
                        n.schema,
                        n.zero_threshold
                    ),
                    None => format!("histogram (buckets [{}])", b.join(", ")),
                }
            }
        };
        format!("{kind} with labels [{}]", self.labels.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(ty: MetricType, opts: Opts) -> Result<FamilyDesc, Error> {
        FamilyDesc::new(ty, opts, 10)
    }

    #[test]
    fn counter_suffix_is_stripped() {
        let d = desc(MetricType::Counter, Opts::new("requests_total", "h")).unwrap();
        assert_eq!(d.name, "requests");
    }

    #[test]
    fn reserved_labels_and_options_are_refused() {
        let e = desc(MetricType::Histogram, Opts::new("h", "h").label_names(["le"])).unwrap_err();
        assert!(e.to_string().contains("reserved for histogram buckets"), "{e}");
        let e = desc(
            MetricType::Gauge,
            Opts::new("g", "h").label_names(["pid"]).mode(GaugeMode::LiveAll),
        )
        .unwrap_err();
        assert!(e.to_string().contains("added by the store"), "{e}");
        assert!(
            desc(
                MetricType::Gauge,
                Opts::new("g", "h").label_names(["pid"]).mode(GaugeMode::Sum)
            )
            .is_ok()
        );
        assert!(desc(MetricType::Counter, Opts::new("c", "h").buckets(vec![1.0])).is_err());
        assert!(
            desc(
                MetricType::Counter,
                Opts::new("c", "h").native(NativeOpts::default())
            )
            .is_err()
        );
        for bad in [
            NativeOpts::default().schema(9),
            NativeOpts::default().schema(-5),
            NativeOpts::default().zero_threshold(-1.0),
            NativeOpts::default().zero_threshold(f64::NAN),
        ] {
            let e = desc(MetricType::Histogram, Opts::new("h", "h").native(bad)).unwrap_err();
            assert!(e.to_string().contains("native buckets"), "{e}");
        }
        assert!(desc(MetricType::Counter, Opts::new("c", "h").mode(GaugeMode::Max)).is_err());
        assert!(desc(MetricType::Counter, Opts::new("c", "h").label_names(["a", "a"])).is_err());
        assert!(desc(MetricType::Counter, Opts::new("shmetrics_x", "h")).is_err());
        assert!(desc(MetricType::Counter, Opts::new("c", "h").series_limit(0)).is_err());
    }

    #[test]
    fn native_alone_has_no_classic_buckets_and_both_keep_them() {
        let n = desc(
            MetricType::Histogram,
            Opts::new("h", "h").native(NativeOpts::default()),
        )
        .unwrap();
        assert!(n.buckets.is_empty() && n.native.is_some());
        assert_eq!(n.slots(), 2);
        let both = desc(
            MetricType::Histogram,
            Opts::new("h", "h")
                .native(NativeOpts::default())
                .buckets(vec![1.0]),
        )
        .unwrap();
        assert_eq!(both.buckets, vec![1.0, f64::INFINITY]);
        assert_eq!(both.slots(), 4);
        assert_eq!(NativeOpts::with_factor(1.1).schema, 3);
        assert_eq!(NativeOpts::with_factor(2.0).schema, 0);
        assert_eq!(NativeOpts::with_factor(1.0001).schema, 8);
        assert_eq!(NativeOpts::with_factor(1e9).schema, -4);
    }

    #[test]
    fn describe_names_the_schema() {
        let d = desc(
            MetricType::Histogram,
            Opts::new("h", "h").label_names(["route"]).buckets(vec![0.5, 1.0]),
        )
        .unwrap();
        assert_eq!(
            d.describe(),
            "histogram (buckets [0.5, 1, +Inf]) with labels [route]"
        );
    }
}
