//! The expositions of a [`Snapshot`], in each [`Format`]: OpenMetrics text (written here
//! directly for the common case, or through prometheus-client's [`Collector`] when
//! registered in a caller's registry), and, from prometheus-client's Prometheus data model,
//! the Prometheus protobuf format ([`protobuf`]) and the Prometheus text format 0.0.4
//! ([`prometheus_text`]).

mod format;
#[cfg(feature = "protobuf")]
mod prometheus_text;
#[cfg(feature = "protobuf")]
mod protobuf;

pub use format::Format;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, LabelSetEncoder, NativeHistogram, NativeHistogramBuckets,
    NoLabelSet, text,
};
use prometheus_client::metrics::MetricType as PcMetricType;
use prometheus_client::registry::Registry;

use super::snapshot::{MergedFamily, MergedSeries, ScrapeStats, Snapshot, Value};
use crate::format::MetricType;
use crate::format::names::{escape_help, format_bound, write_labels};
use crate::format::native::Sparse;

fn pc_type(t: MetricType) -> PcMetricType {
    match t {
        MetricType::Counter | MetricType::CounterF64 => PcMetricType::Counter,
        MetricType::Gauge => PcMetricType::Gauge,
        MetricType::Histogram => PcMetricType::Histogram,
        MetricType::Summary => PcMetricType::Unknown,
    }
}

impl Snapshot {
    /// The exposition of `registry` (your own metrics, if any) followed by this snapshot,
    /// in `format`. Fails with [`Error::FormatUnavailable`](crate::Error::FormatUnavailable)
    /// for a format this binary lacks (see [`Format::is_available`]).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = shmetrics_core::Store::open(dir.path()).unwrap();
    /// use shmetrics_core::Format;
    /// store.counter("jobs", "Jobs done").unwrap().inc();
    /// let body = store.snapshot()?.encode_as(Format::PrometheusText, Default::default())?;
    /// let text = String::from_utf8(body).unwrap();
    /// assert!(text.contains("# TYPE jobs_total counter\njobs_total 1\n"));
    /// # Ok::<(), shmetrics_core::Error>(())
    /// ```
    pub fn encode_as(self, format: Format, registry: Registry) -> crate::error::Result<Vec<u8>> {
        match format {
            Format::OpenMetrics => self.encode(registry).map(String::into_bytes),
            #[cfg(feature = "protobuf")]
            Format::PrometheusText => {
                let families = protobuf::families(self, registry)?;
                let mut out = String::with_capacity(families.len() * 256);
                prometheus_text::write(&mut out, &families);
                Ok(out.into_bytes())
            }
            #[cfg(feature = "protobuf")]
            Format::Protobuf => Ok(protobuf::encode(protobuf::families(self, registry)?)),
            #[cfg(not(feature = "protobuf"))]
            f => Err(crate::error::Error::FormatUnavailable { format: f.name() }),
        }
    }

    /// The OpenMetrics exposition of `registry` (your own metrics, if any) followed by
    /// this snapshot, ending with `# EOF`. What [`Store::scrape`](crate::Store::scrape)
    /// and the `/metrics` endpoints serve.
    ///
    /// Python summaries keep their `summary` type here. prometheus-client has no summary
    /// type, so a snapshot registered as a collector
    /// ([`Store::scrape_into`](crate::Store::scrape_into)) writes each of them as two
    /// gauges, `<name>_count` and `<name>_sum`: the same series, another `# TYPE`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = shmetrics_core::Store::open(dir.path()).unwrap();
    /// store.counter("jobs", "Jobs done").unwrap().inc();
    /// let mut reader = shmetrics_core::Reader::new(dir.path())?;
    /// let text = reader.snapshot()?.encode(Default::default())?;
    /// assert!(text.contains("jobs_total 1\n") && text.ends_with("# EOF\n"));
    /// # Ok::<(), shmetrics_core::Error>(())
    /// ```
    pub fn encode(mut self, mut registry: Registry) -> crate::error::Result<String> {
        // Histograms and summaries are written here, the rest by prometheus-client: its
        // encoder has no summary type, and writes `le` bounds its own way, where this
        // crate writes them as Python's prometheus_client does (`names::format_bound`).
        // Counters with exemplars too: prometheus-client takes exemplars only from its own
        // metric types.
        let (own, families) = std::mem::take(&mut self.families).into_iter().partition(|f| {
            matches!(f.metric_type, MetricType::Summary | MetricType::Histogram)
                || f.series.iter().any(|s| !s.exemplars.is_empty())
        });
        self.families = families;
        let own: Vec<MergedFamily> = own;
        let estimate = 64 + self.stats.series * 64;
        registry.register_collector(Box::new(self));
        let mut body = String::with_capacity(estimate);
        text::encode_registry(&mut body, &registry).map_err(|_| crate::error::Error::Encode)?;
        for fam in &own {
            match fam.metric_type {
                MetricType::Summary => write_summary(&mut body, fam),
                MetricType::Histogram => write_histogram(&mut body, fam),
                _ => write_counter(&mut body, fam),
            }
        }
        text::encode_eof(&mut body).map_err(|_| crate::error::Error::Encode)?;
        Ok(body)
    }
}

/// Writes a sample's name and labels (`extra` last, e.g. the `le` of a bucket).
fn write_sample_head(
    out: &mut String,
    name: &str,
    suffix: &str,
    names: &[String],
    values: &[Box<str>],
    extra: Option<(&str, &str)>,
) {
    out.push_str(name);
    out.push_str(suffix);
    let pairs = names
        .iter()
        .map(String::as_str)
        .zip(values.iter().map(|v| &**v))
        .chain(extra);
    write_labels(out, pairs);
    out.push(' ');
}

/// Writes a histogram family: per series its cumulative buckets (bounds written by
/// [`format_bound`]), `_count` and `_sum`.
fn write_histogram(out: &mut String, fam: &MergedFamily) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "# HELP {} {}", fam.name, escape_help(&fam.help));
    let _ = writeln!(out, "# TYPE {} histogram", fam.name);
    for s in &fam.series {
        let Value::Histogram(h) = &s.value else {
            continue;
        };
        let names = s.label_names(fam);
        let bounds = h.bounds.as_deref().unwrap_or(&fam.buckets);
        let mut cumulative = 0u64;
        for (i, (bound, n)) in bounds.iter().zip(&h.buckets).enumerate() {
            cumulative = cumulative.saturating_add(*n);
            let le = format_bound(*bound);
            write_sample_head(out, &fam.name, "_bucket", names, &s.labels, Some(("le", &le)));
            let _ = write!(out, "{cumulative}");
            write_exemplar(out, s, i);
            out.push('\n');
        }
        if h.buckets.is_empty() {
            // Native buckets only: text shows the count as the one (+Inf) bucket.
            write_sample_head(out, &fam.name, "_bucket", names, &s.labels, Some(("le", "+Inf")));
            let _ = write!(out, "{}", h.count());
            write_exemplar(out, s, 0);
            out.push('\n');
        }
        write_sample_head(out, &fam.name, "_count", names, &s.labels, None);
        let _ = writeln!(out, "{}", h.count());
        write_sample_head(out, &fam.name, "_sum", names, &s.labels, None);
        let _ = writeln!(out, "{}", format_bound(h.sum));
    }
}

/// Writes a counter family with its exemplars as OpenMetrics text.
fn write_counter(out: &mut String, fam: &MergedFamily) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "# HELP {} {}", fam.name, escape_help(&fam.help));
    let _ = writeln!(out, "# TYPE {} counter", fam.name);
    for s in &fam.series {
        write_sample_head(out, &fam.name, "_total", s.label_names(fam), &s.labels, None);
        match s.value {
            Value::Counter(v) => {
                let _ = write!(out, "{v}");
            }
            Value::CounterF64(v) => out.push_str(&format_bound(v)),
            _ => continue,
        }
        write_exemplar(out, s, 0);
        out.push('\n');
    }
}

/// Appends ` # {labels} value timestamp`, the exemplar of bucket `i` of series `s`, if it
/// has one.
fn write_exemplar(out: &mut String, s: &MergedSeries, i: usize) {
    use std::fmt::Write as _;
    let Some((_, e)) = s.exemplars.iter().find(|(b, _)| *b == i) else {
        return;
    };
    out.push_str(" # ");
    let pairs = e.labels.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    write_labels(out, pairs);
    if e.labels.is_empty() {
        out.push_str("{}");
    }
    let t = e
        .timestamp
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let _ = write!(
        out,
        " {} {}.{:09}",
        format_bound(e.value),
        t.as_secs(),
        t.subsec_nanos()
    );
}

/// Writes a summary family (count and sum, no quantiles) as OpenMetrics text.
fn write_summary(out: &mut String, fam: &MergedFamily) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "# HELP {} {}", fam.name, escape_help(&fam.help));
    let _ = writeln!(out, "# TYPE {} summary", fam.name);
    for s in &fam.series {
        let Value::Summary { count, sum } = s.value else {
            continue;
        };
        for (suffix, v) in [("_count", count), ("_sum", sum)] {
            write_sample_head(out, &fam.name, suffix, s.label_names(fam), &s.labels, None);
            let _ = writeln!(out, "{}", format_bound(v));
        }
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for fam in &self.families {
            let help = if self.raw_help {
                fam.help.clone()
            } else {
                escape_help(&fam.help)
            };
            if fam.metric_type == MetricType::Summary {
                // No summary type in prometheus-client: the same series as two gauges.
                for (suffix, count) in [("_count", true), ("_sum", false)] {
                    let name = format!("{}{suffix}", fam.name);
                    let mut metric = encoder.encode_descriptor(&name, &help, None, PcMetricType::Gauge)?;
                    for s in &fam.series {
                        let Value::Summary { count: c, sum } = s.value else {
                            continue;
                        };
                        let v = Value::Gauge(if count { c } else { sum });
                        encode_series(&mut metric, fam, s, &v)?;
                    }
                }
                continue;
            }
            let mut metric = encoder.encode_descriptor(&fam.name, &help, None, pc_type(fam.metric_type))?;
            for s in &fam.series {
                encode_series(&mut metric, fam, s, &s.value)?;
            }
        }
        if self.self_metrics {
            self.encode_self(&mut encoder)?;
        }
        Ok(())
    }
}

/// Encodes `value` as series `s` of `fam`.
fn encode_series(
    metric: &mut prometheus_client::encoding::MetricEncoder<'_>,
    fam: &MergedFamily,
    s: &MergedSeries,
    value: &Value,
) -> Result<(), std::fmt::Error> {
    let names = s.label_names(fam);
    if names.is_empty() {
        return encode_value(metric, value, &fam.buckets);
    }
    let labels = SeriesLabels {
        names,
        values: &s.labels,
    };
    encode_value(&mut metric.encode_family(&labels)?, value, &fam.buckets)
}

/// The labels of one series: the family's names with the series' values, encoded
/// pair by pair without collecting them first.
struct SeriesLabels<'a> {
    names: &'a [String],
    values: &'a [Box<str>],
}

impl EncodeLabelSet for SeriesLabels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        for (name, value) in self.names.iter().zip(self.values.iter()) {
            (name.as_str(), &**value).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// `v` as an integer if it is one exactly (written without a fraction, and faster).
fn whole(v: f64) -> Option<i64> {
    const EXACT: f64 = (1u64 << 53) as f64;
    (v.fract() == 0.0 && v.abs() < EXACT).then_some(v as i64)
}

fn encode_value(
    series: &mut prometheus_client::encoding::MetricEncoder<'_>,
    value: &Value,
    bounds: &[f64],
) -> Result<(), std::fmt::Error> {
    match value {
        Value::Counter(v) => series.encode_counter::<NoLabelSet, _, u64>(v, None),
        Value::CounterF64(v) => match whole(*v) {
            Some(i) if i >= 0 => series.encode_counter::<NoLabelSet, _, u64>(&(i as u64), None),
            _ => series.encode_counter::<NoLabelSet, _, f64>(v, None),
        },
        Value::Gauge(v) => match whole(*v) {
            Some(i) => series.encode_gauge(&i),
            None => series.encode_gauge(v),
        },
        Value::Histogram(h) => {
            let bounds = h.bounds.as_deref().unwrap_or(bounds);
            let mut pairs: Vec<(f64, u64)> = bounds.iter().copied().zip(h.buckets.iter().copied()).collect();
            let Some(native) = &h.native else {
                return series.encode_histogram::<NoLabelSet>(h.sum, h.count(), &pairs, None);
            };
            let count = native.count();
            if pairs.is_empty() {
                // Native buckets only: encoders without native support show the count.
                pairs.push((f64::INFINITY, count));
            }
            let (pos_spans, pos_deltas) = Sparse::spans_and_deltas(&native.positive);
            let (neg_spans, neg_deltas) = Sparse::spans_and_deltas(&native.negative);
            let mut pos_spans = pos_spans;
            // No bucket, no zero bucket width, no zero count: one empty span tells
            // Prometheus this is a native histogram (as Go's client does).
            if native.zero_threshold == 0.0 && count == 0 && pos_spans.is_empty() && neg_spans.is_empty() {
                pos_spans.push((0, 0));
            }
            series.encode_histogram_with_native::<NoLabelSet>(
                h.sum,
                count,
                &pairs,
                None,
                NativeHistogram {
                    schema: i32::from(native.schema),
                    zero_threshold: native.zero_threshold,
                    zero_count: native.zero_count,
                    negative: NativeHistogramBuckets {
                        spans: &neg_spans,
                        deltas: &neg_deltas,
                    },
                    positive: NativeHistogramBuckets {
                        spans: &pos_spans,
                        deltas: &pos_deltas,
                    },
                    created: None,
                },
            )
        }
        Value::Summary { .. } => Ok(()), // written by the caller
    }
}

impl Snapshot {
    fn encode_self(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        for (name, help, v) in self_gauges(s) {
            let mut m = encoder.encode_descriptor(name, help, None, PcMetricType::Gauge)?;
            m.encode_gauge(&v)?;
        }
        let mut m = encoder.encode_descriptor(
            "shmetrics_store_errors",
            "Operations the store refused, by kind: growth (filesystem full or file limit), \
             invalid_value (negative, NaN or infinite value), label_count (wrong number of label values), \
             label_value (label value too long), slot_skipped (unusable file at a worker slot's name).",
            None,
            PcMetricType::Counter,
        )?;
        for (kind, n) in &s.store_errors {
            let labels = [("kind", *kind)];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
        let mut m = encoder.encode_descriptor(
            "shmetrics_cardinality_overflow",
            "Label lookups sent to a family's overflow series because it reached its series limit.",
            None,
            PcMetricType::Counter,
        )?;
        for (family, n) in &s.overflow {
            let labels = [("family", family.as_str())];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
        let mut m = encoder.encode_descriptor(
            "shmetrics_family_conflicts",
            "Families skipped in some file because that file declares them differently.",
            None,
            PcMetricType::Gauge,
        )?;
        m.encode_gauge(&(s.conflicts as f64))?;
        Ok(())
    }
}

/// The scrape's own gauges: (name, help, value).
fn self_gauges(s: &ScrapeStats) -> [(&'static str, &'static str, f64); 12] {
    [
        (
            "shmetrics_scrape_duration_seconds",
            "Time this scrape spent reading and merging the store's files.",
            s.duration.as_secs_f64(),
        ),
        (
            "shmetrics_live_files",
            "Store files whose writing process is alive.",
            s.live_files as f64,
        ),
        (
            "shmetrics_dead_files",
            "Store files whose writing process has exited (their counters still count).",
            s.dead_files as f64,
        ),
        (
            "shmetrics_corrupt_files",
            "Files skipped because they are truncated, corrupt or of another format.",
            s.corrupt_files as f64,
        ),
        (
            "shmetrics_newer_files",
            "Store files of a newer format version, left alone (a rolling upgrade or downgrade).",
            s.newer_files as f64,
        ),
        (
            "shmetrics_unreadable_files",
            "Files this scrape could not read (no descriptor left, no permission, changed while read); retried at every scrape.",
            s.unreadable_files as f64,
        ),
        (
            "shmetrics_foreign_files",
            "Files in the store directory that do not belong to the store (left in place).",
            s.foreign_files as f64,
        ),
        ("shmetrics_series", "Series in this exposition.", s.series as f64),
        (
            "shmetrics_python_files",
            "Python prometheus_client multiprocess files (*.db) merged.",
            s.python_files as f64,
        ),
        (
            "shmetrics_python_dead_files",
            "Python live* gauge files not merged because their process is gone (/proc liveness).",
            s.python_dead_files as f64,
        ),
        (
            "shmetrics_python_skipped_entries",
            "Entries of Python files skipped: names Prometheus does not accept, or samples foreign to the file's type.",
            s.python_skipped as f64,
        ),
        (
            "shmetrics_mapped_bytes",
            "Bytes of store files mapped by the scraping process.",
            s.mapped_bytes as f64,
        ),
    ]
}
